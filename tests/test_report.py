"""Study reports from a real study (the digits example, tuned here): the three formats, what ``tune`` writes at
its end, escaping, and studies in awkward states (failed trials, one trial, only pruned, still running)."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import optuna
import pytest

from tests.conftest import EXAMPLES, run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A real study: the digits example, 4 trials of 1 s, tuned through the CLI in a fresh folder."""
    folder = tmp_path_factory.mktemp("tuned")
    storage = f"sqlite:///{folder / 's.db'}"
    result = run_cli("tune", str(EXAMPLES / "torch_digits.py"), "--trials", "4", "--trial-time", "1",
                     "--storage", storage, "--study", "digits", cwd=folder)
    assert result.returncode == 0, result.stderr
    return {"folder": folder, "storage": storage, "tune": result}


@pytest.fixture(scope="module")
def written(tuned):
    """``autotune report digits -o DIR``: all three formats."""
    out = tuned["folder"] / "out"
    result = run_cli("report", "digits", "--storage", tuned["storage"], "-o", str(out), cwd=tuned["folder"])
    assert result.returncode == 0, result.stderr
    return out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    return struct.unpack(">II", data[16:24])  # IHDR: width, height


def test_tune_writes_the_page_and_the_data_and_says_what_to_run_next(tuned):
    folder = tuned["folder"] / "studies" / "digits"
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.json"]
    said = tuned["tune"].stderr
    assert "report: studies/digits/report.html" in said and "written in" in said
    # the report is a phase of the call like the others: its seconds are kept with them
    phases = optuna.load_study(study_name="digits", storage=tuned["storage"]).user_attrs["phases"][-1]
    assert {"fit", "trials", "report"} <= set(phases) and phases["report"] > 0, phases
    for command in ("autotune best digits --storage", "autotune report digits --storage",
                    f"optuna-dashboard {tuned['storage']}"):
        assert command in said, said


def test_report_writes_three_formats_with_one_png_per_drawn_plot(written):
    assert sorted(p.name for p in written.iterdir()) == ["plots", "report.html", "report.json", "report.md"]
    markdown = (written / "report.md").read_text()
    linked = [line.split("](", 1)[1].rstrip(")") for line in markdown.splitlines() if line.startswith("![")]
    assert {"plots/memory.png", "plots/throughput.png", "plots/pareto.png", "plots/learning_rate.png",
            "plots/history.png", "plots/curves.png"} <= set(linked)
    digests = set()
    for link in linked:
        path = written / link
        assert png_size(path) == (900, 500) and path.stat().st_size > 10_000, link
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == len(linked)  # each plot its own image
    assert sorted(p.name for p in (written / "plots").iterdir()) == sorted(Path(link).name for link in linked)


def test_markdown_reads_as_a_report(written, tuned):
    markdown = (written / "report.md").read_text()
    assert "## Chosen configuration" in markdown and "## Trials" in markdown and "## Batch-size ceiling" in markdown
    assert "1 s of training, 8 validation reports" in markdown and "{'seconds'" not in markdown
    assert str(tuned["folder"]) not in markdown and "/work" not in markdown and str(EXAMPLES) not in markdown
    data = json.loads((written / "report.json").read_text())
    for row in data["trials"]:
        if row["state"] == "PRUNED" and row["last_loss"] is not None:  # the loss reached, and at which report
            assert f"{row['last_loss']:.4g} (report {row['last_report']})" in markdown
        if row["state"] != "COMPLETE":  # one pruned before its first report has its reason all the same
            assert row["reason"] and row["reason"][:60] in markdown
    for line in markdown.splitlines():
        if line.startswith("| ") and "e+0" in line:
            raise AssertionError(f"an exponent where a plain number belongs: {line}")


def test_json_holds_the_fit_the_range_tests_and_every_trial(written):
    data = json.loads((written / "report.json").read_text())
    assert data["chosen"]["trial"] in [r["number"] for r in data["trials"]]
    fit = next(iter(data["fits"].values()))
    assert fit["probes"] and all(p["batch_size"] > 0 for p in fit["probes"])
    assert fit["batch_size"] == max(p["batch_size"] for p in fit["probes"] if p["fits"])
    assert len(data["trials"]) >= 4 and data["counts"]["COMPLETE"] >= 1
    assert data["importance_note"] and "10 complete trials" in data["importance_note"]


def test_html_is_one_offline_page_with_headings_and_tables(written):
    page = (written / "report.html").read_text()
    assert "<pre>" not in page and page.count("<h1>") == 1 and "<h2>Trials</h2>" in page and "<table>" in page
    assert page.count("Plotly.newPlot(") >= 6
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page, re.DOTALL)
    assert not any("src" in attributes for attributes, _ in scripts)
    library = [body for _, body in scripts if "plotly.js v" in body]
    assert len(library) == 1  # inlined once; its own text names map-tile servers that no plot here uses
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page.replace(library[0], ""), re.IGNORECASE)
    assert "No plot: parameter importances need at least 10 complete trials" in page


def test_every_name_from_a_study_is_escaped(tuned, tmp_path):
    hostile = "<img src=x onerror=alert(1)>&<b>"
    optuna.copy_study(from_study_name="digits", from_storage=tuned["storage"], to_storage=tuned["storage"],
                      to_study_name=hostile)
    study = optuna.load_study(study_name=hostile, storage=tuned["storage"])
    study.set_user_attr("task", "<script>alert(2)</script>.py:task")
    out = tmp_path / "hostile"
    result = run_cli("report", hostile, "--storage", tuned["storage"], "--format", "html,md", "-o", str(out))
    assert result.returncode == 0, result.stderr
    page = (out / "report.html").read_text()
    assert hostile not in page and "<script>alert(2)" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;&lt;b&gt;" in page
    markdown = (out / "report.md").read_text()
    assert not re.search(r"(?<!\\)<(img|script)", markdown) and "\\<img src=x onerror=alert(1)\\>" in markdown


def _stored(study: optuna.Study, state: optuna.trial.TrialState, *, val_loss: float | None = None,
            failure: str | None = None, reports: dict[int, float] | None = None) -> None:
    """A trial as the study stores one (configuration, measurements, reports), added to ``study``."""
    config = {"batch_size": 64, "optimizer": "adam", "lr": 1e-3, "lr_reference": 7e-4, "lr_scale": 1.41,
              "optimizer_params": {"beta1": 0.9}}
    attrs = {"config": config}
    if val_loss is not None:
        attrs["measured"] = {"val_loss": val_loss, "throughput": 5000.0, "step_seconds_p50": 0.01,
                             "step_seconds_p95": 0.02, "peak_memory_bytes": 300 * 2 ** 20}
        attrs["history"] = [[index, value, index * 0.1] for index, value in sorted((reports or {}).items())]
    if failure:
        attrs["failure"] = failure
    study.add_trial(optuna.trial.create_trial(
        state=state, value=val_loss if state == optuna.trial.TrialState.COMPLETE else None,
        intermediate_values=reports or {}, user_attrs=attrs))


def _odd_study(storage: str, name: str, kind: str) -> None:
    study = optuna.create_study(study_name=name, storage=storage)
    for key, value in {"objective": "convergence", "backend": "torch", "device": "cpu", "seed": 0,
                       "task": "examples/torch_digits.py:task", "reference_batch": 32,
                       "trial_budget": {"seconds": 1.0, "steps": None, "reports": 8}}.items():
        study.set_user_attr(key, value)
    states = optuna.trial.TrialState
    done, pruned, failed = states.COMPLETE, states.PRUNED, states.FAIL
    if kind == "failed":
        _stored(study, done, val_loss=0.5, reports={2: 1.0, 8: 0.5})
        _stored(study, failed, failure="crash: killed by SIGSEGV")
        _stored(study, failed, failure="error: RuntimeError: boom", reports={2: 2.2})
    elif kind == "one":
        _stored(study, done, val_loss=0.5, reports={2: 1.0, 8: 0.5})
    elif kind == "pruned":
        _stored(study, pruned, failure="pruned: pruned after report 2 of 8", reports={2: 1.9})
        _stored(study, pruned, failure="oom: CUDA out of memory")
    elif kind == "running":
        _stored(study, done, val_loss=0.5, reports={2: 1.0, 8: 0.5})
        study.ask()  # left RUNNING, as by a study still under way


@pytest.mark.parametrize("kind, says", [
    ("failed", "crash: killed by SIGSEGV"), ("one", "only one trial completed"),
    ("pruned", "no trial completed"), ("running", "1 trial(s) still running"), ("empty", "holds no trial yet")])
def test_a_study_in_an_awkward_state_gets_a_sensible_report(tmp_path, kind, says):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    if kind == "empty":
        optuna.create_study(study_name=kind, storage=storage)
    else:
        _odd_study(storage, kind, kind)
    result = run_cli("report", kind, "--storage", storage, "-o", str(tmp_path / "out"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    for name in ("report.html", "report.md"):
        assert says in (tmp_path / "out" / name).read_text(), name
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    if kind == "failed":
        last = {r["number"]: (r["last_loss"], r["reason"]) for r in data["trials"]}
        assert last[2] == (2.2, "error: RuntimeError: boom") and last[1] == (None, "crash: killed by SIGSEGV")
    if kind == "pruned":
        assert data["chosen"] is None and [r["last_loss"] for r in data["trials"]] == [1.9, None]


def test_bad_format_and_a_missing_study_are_one_line_errors(tuned):
    from tests.conftest import assert_one_line_error

    assert_one_line_error(run_cli("report", "digits", "--storage", tuned["storage"], "--format", "pdf"),
                          "--format 'pdf'", "html, md, json")
    assert_one_line_error(run_cli("report", "digits", "--storage", tuned["storage"], "--format", "md,json", "-o", "-"),
                          "prints one format")
    assert_one_line_error(run_cli("report", "nope", "--storage", tuned["storage"]), "no study 'nope'", "digits")


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def open_in_chromium(page_file: Path, screenshot: Path, tmp_path: Path) -> dict:
    """Load ``page_file`` in headless Chromium with every request but the file's own refused; returns the
    JavaScript errors, dialogs, refused requests, and the plot containers with and without a drawn SVG."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    seen: dict = {"errors": [], "dialogs": [], "refused": []}
    url = page_file.resolve().as_uri()

    def route(request_route):
        if request_route.request.url == url:
            request_route.continue_()
        else:
            seen["refused"].append(request_route.request.url)
            request_route.abort()

    with playwright.sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900})  # the profile is --user-data-dir
        try:
            page = context.new_page()
            page.on("pageerror", lambda error: seen["errors"].append(str(error)))
            page.on("console", lambda message: seen["errors"].append(message.text) if message.type == "error" else None)
            page.on("dialog", lambda dialog: (seen["dialogs"].append(dialog.message), dialog.dismiss()))
            page.route("**/*", route)
            page.goto(url, wait_until="load")
            drawn = ("[...document.querySelectorAll('.js-plotly-plot')]"  # an SVG holding at least one data trace
                     ".filter(plot => plot.querySelector('svg.main-svg g.trace')).length")
            page.wait_for_function(f"{drawn} == document.querySelectorAll('div.plot').length", timeout=60_000)
            seen["plots"] = page.evaluate("document.querySelectorAll('.js-plotly-plot').length")
            seen["drawn"] = page.evaluate(drawn)
            seen["containers"] = page.evaluate("document.querySelectorAll('div.plot').length")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    return seen


def test_the_page_renders_in_chromium_offline_with_every_plot_drawn(written, tmp_path):
    screenshot = ARTIFACTS / "report.png"
    seen = open_in_chromium(written / "report.html", screenshot, tmp_path)
    assert seen["errors"] == [] and seen["refused"] == [] and seen["dialogs"] == []
    assert seen["plots"] == seen["containers"] >= 6 and seen["drawn"] == seen["plots"], seen
    width, height = png_size(screenshot)
    assert width == 1280 and height > 3000  # the whole page, kept as the test's artifact


def test_a_hostile_study_name_runs_no_script_in_chromium(tuned, tmp_path):
    hostile = "<img src=x onerror=alert(1)>"
    optuna.copy_study(from_study_name="digits", from_storage=tuned["storage"], to_storage=tuned["storage"],
                      to_study_name=hostile)
    assert run_cli("report", hostile, "--storage", tuned["storage"], "--format", "html",
                   "-o", str(tmp_path / "out")).returncode == 0
    seen = open_in_chromium(tmp_path / "out" / "report.html", ARTIFACTS / "report-hostile.png", tmp_path)
    assert seen["dialogs"] == [] and seen["errors"] == [] and seen["refused"] == []


def test_the_pick_is_measured_against_the_default_configuration_and_other_seeds(written):
    data = json.loads((written / "report.json").read_text())
    context = data["context"]
    baseline = context["baseline"]
    assert baseline["config"] == {"batch_size": 32, "optimizer": "adam", "lr": 1e-3, "optimizer_params": {}}
    assert baseline["val_loss"] is not None or baseline["failure"]
    complete = [r["number"] for r in data["trials"] if r["state"] == "COMPLETE"]
    best = sorted(complete, key=lambda n: data["trials"][n]["val_loss"])[:3]
    assert {c["trial"] for c in context["confirm"]} == set(best)
    for entry in context["confirm"]:
        assert len(entry["values"]) + len(entry["failures"]) == 3 and entry["seeds"][0] == 0
        assert entry["low"] <= entry["mean"] <= entry["high"]
    markdown = (written / "report.md").read_text()
    assert "## Against the default configuration and other seeds" in markdown and "default configuration" in markdown
    if len(context["confirm"]) >= 2:
        assert f"Verdict: {context['verdict']['text']}." in markdown


def test_no_report_and_confirm_0_write_and_run_neither(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    result = run_cli("tune", str(EXAMPLES / "torch_digits.py"), "--trials", "1", "--trial-steps", "5",
                     "--no-range-test", "--storage", storage, "--study", "d", "--confirm", "0", "--no-report",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    attrs = optuna.load_study(study_name="d", storage=storage).user_attrs
    assert not any(key.startswith("context:") for key in attrs) and "confirm" not in attrs["phases"][-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"] and "report:" not in result.stderr


def test_without_a_browser_the_markdown_says_why_its_plots_are_missing(tuned, tmp_path):
    result = run_cli("report", "digits", "--storage", tuned["storage"], "--format", "md", "-o", str(tmp_path),
                     env={"BROWSER_PATH": str(tmp_path / "no-chromium")})  # where kaleido looks first
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "report.md").read_text()
    assert "![" not in markdown and "Plot not rendered: PNG plots need kaleido" in markdown
    assert "apt-get install chromium" in markdown and not (tmp_path / "plots").exists()
    assert "note: report.md has no PNG plots: PNG plots need kaleido" in result.stderr  # not only in the file
