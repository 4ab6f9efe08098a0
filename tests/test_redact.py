"""No password in any output: every URL form libpq and SQLAlchemy accept, keyword strings, stored studies."""

import sqlite3

import pytest

from autotune.redact import redact, url_secrets
from autotune.storage import open_storage
from autotune.errors import StorageError
from tests.conftest import ROOT, TASKS, assert_one_line_error, run_cli

# (text holding a password, the password as written, fragments that must survive)
FORMS = {
    "userinfo": ("postgresql://alice:hunter2@db.example/tune", "hunter2", ["alice", "db.example/tune"]),
    "percent-encoded @ and :": ("postgresql://alice:hu%40nt%3Aer2@db.example/tune", "hu%40nt%3Aer2", ["alice"]),
    "raw colons": ("postgresql://alice:hu:nt:er2@db.example:5432/tune", "hu:nt:er2", ["alice", "5432/tune"]),
    "raw @": ("postgresql://alice:hu@nter2@db.example/tune", "hu@nter2", ["alice", "db.example/tune"]),
    "raw slash": ("postgresql://alice:hu/nter2@db.example/tune", "hu/nter2", ["db.example/tune"]),
    "driver and IPv6 host": ("postgresql+psycopg2://alice:hunter2@[::1]:5432/tune", "hunter2", ["[::1]:5432"]),
    "libpq multi-host": ("postgresql://alice:hunter2@h1:5432,h2:5433/tune", "hunter2", ["h1:5432,h2:5433"]),
    "query password": ("postgresql://db.example/tune?user=u&password=hunter2", "hunter2", ["user=u", "db.example"]),
    "query password first": ("postgresql://db.example/tune?password=hunter2&user=u", "hunter2", ["&user=u"]),
    "query, socket host": ("postgresql:///tune?host=/var/run/postgresql&password=hunter2", "hunter2",
                           ["host=/var/run/postgresql"]),
    "sslpassword": ("postgresql://alice@db.example/tune?sslpassword=hunter2&sslmode=verify-full", "hunter2",
                    ["sslmode=verify-full", "alice@db.example"]),
    "mysql passwd": ("mysql+pymysql://db.example/tune?user=u&passwd=hunter2", "hunter2", ["user=u"]),
    "percent-encoded key": ("postgresql://db.example/tune?pass%77ord=hunter2", "hunter2", ["db.example"]),
    "percent-encoded value": ("postgresql://db.example/tune?password=hu%26nter2", "hu%26nter2", ["db.example"]),
    "libpq keywords": ("host=db.example password=hunter2 user=u", "hunter2", ["host=db.example", "user=u"]),
    "libpq quoted keyword": ("host=db.example password = 'hun ter2' user=u", "hun ter2", ["user=u"]),
    "inside a message": ("could not connect to 'postgresql://alice:hunter2@db.example/tune', retrying", "hunter2",
                         ["retrying", "alice"]),
    "a mapping in a message": ("connect() got {'user': 'u', 'password': 'hunter2'}", "hunter2", ["'user': 'u'"]),
}


@pytest.mark.parametrize("case", sorted(FORMS))
def test_every_form_is_masked_even_without_knowing_the_url(case):
    text, secret, kept = FORMS[case]
    for masked in (redact(text), redact(text, url_secrets(text))):
        assert secret not in masked and "***" in masked, masked
        assert "nter2" not in masked and "hunter" not in masked, masked  # no tail of it either
        for fragment in kept:
            assert fragment in masked, (fragment, masked)


def test_the_secrets_of_the_url_in_use_are_masked_anywhere():
    url = "postgresql://alice:hu%40nter2@db.example/tune?sslpassword=k3y-pass"
    assert url_secrets(url) == {"hu%40nter2", "k3y-pass"}
    quoted = "FATAL: password 'hu@nter2' rejected, key k3y-pass, again hu%40nter2"
    assert redact(quoted, url_secrets(url)) == "FATAL: password '***' rejected, key ***, again ***"
    assert redact("no url here") == "no url here"


def test_a_raw_at_in_the_password_is_refused_before_connecting():
    with pytest.raises(StorageError) as info:
        open_storage("postgresql://alice:hu@nter2@127.0.0.1:9/tune")
    assert "percent-encode" in str(info.value) and "nter2" not in str(info.value)


@pytest.mark.parametrize("url", [
    "postgresql://alice:hunter2@127.0.0.1:9/none",
    "postgresql://alice:hu@nter2@127.0.0.1:9/none",
    "postgresql://127.0.0.1:9/none?user=u&password=hunter2",
    "postgresql://alice:hu%3Anter2@127.0.0.1:9/none?sslpassword=hunter2",
    "nosuchdb://alice:hunter2@127.0.0.1:9/none",
])
def test_cli_errors_never_show_the_password(tmp_path, url):
    for command in (("tune", f"{TASKS / 'torch_tasks.py'}:small"), ("best", "s"), ("studies",)):
        result = run_cli(*command, "--storage", url, cwd=tmp_path)
        assert_one_line_error(result, "storage")
        assert "nter2" not in result.stderr + result.stdout and "hunter" not in result.stderr + result.stdout


def test_a_study_stored_under_a_url_with_a_password_keeps_no_trace_of_it(tmp_path):
    db = tmp_path / "s.db"
    url = f"sqlite:///file:{db}?password=hunter2&uri=true"  # SQLite ignores the parameter; the URL holds it
    outputs = [run_cli("tune", "--confirm", "0", f"{TASKS / 'torch_tasks.py'}:small", "--trials", "2", "--trial-time", "0.3",
                       "--search-space", str(ROOT / "tests" / "spaces" / "small.yaml"), "--no-range-test",
                       "--storage", url, "--study", "s", cwd=tmp_path)]
    assert outputs[0].returncode == 0, outputs[0].stderr
    assert "password=***" in outputs[0].stderr  # the start line names the storage
    outputs += [run_cli(*args, "--storage", url, cwd=tmp_path) for args in
                (("best", "s"), ("studies",), ("report", "s", "--format", "json", "-o", "-"), ("best", "nope"))]
    for result in outputs:
        assert "hunter2" not in result.stdout + result.stderr
    assert outputs[-1].returncode == 2
    assert b"hunter2" not in db.read_bytes()
    rows = sqlite3.connect(db).execute("select value_json from study_user_attributes "
                                       "union all select value_json from trial_user_attributes").fetchall()
    assert rows and not any("hunter2" in value for (value,) in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db", "studies"]  # no stray folder named after the URL
    written = sorted((tmp_path / "studies" / "s").iterdir())  # the report tune writes at its end
    assert [p.name for p in written] == ["report.html", "report.json"]
    assert not any(b"hunter2" in p.read_bytes() for p in written)
