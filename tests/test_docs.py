"""The README names only options that exist and that `--help` shows."""

import re

from autotune.cli import build_parser
from tests.conftest import ROOT


def _help_texts():
    parser = build_parser()
    texts = [parser.format_help()]
    for action in parser._subparsers._group_actions:  # argparse keeps its subcommands only here
        texts.extend(sub.format_help() for sub in action.choices.values())
    return "\n".join(texts)


def test_every_option_the_readme_names_is_shown_by_a_help():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", readme))
    shown = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", _help_texts()))
    scripts = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "benchmarks").glob("*.py"))
    in_scripts = set(re.findall(r"add_argument\(\s*\"(--[a-z-]+)\"", scripts))
    missing = sorted(named - shown - in_scripts)
    assert not missing, f"the README names options that no --help shows: {missing}"
