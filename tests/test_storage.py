"""Storage faults on real storages: nothing finished is lost, a fault is one line, a typo creates nothing."""

import optuna
import pytest

from tests.conftest import assert_one_line_error, run_cli


@pytest.mark.parametrize("url", ["sqlite:///typo/s.db", "journal:typo/j.log", "sqlite:///file:typo/s.db?mode=ro&uri=true"])
@pytest.mark.parametrize("command", [("best", "s"), ("studies",), ("report", "s")])
def test_a_read_command_on_a_mistyped_storage_creates_nothing(tmp_path, url, command):
    result = run_cli(*command, "--storage", url, cwd=tmp_path)
    assert_one_line_error(result, "no storage file", "typo/")
    assert list(tmp_path.iterdir()) == []


def test_studies_on_a_fresh_machine_lists_none_and_creates_nothing(tmp_path):
    listed = run_cli("studies", "--json", cwd=tmp_path)
    assert listed.returncode == 0 and listed.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []
