"""The task contract: every way to name a task, and every bad task as a one-line error with exit code 2."""

import sys

import numpy as np
import pytest

import autotune
from autotune import TaskError, load_task
from tests.conftest import EXAMPLES, TASKS, assert_one_line_error, run_cli


def test_load_file_default_attribute():
    task = load_task(str(EXAMPLES / "torch_digits.py"))
    assert isinstance(task, autotune.Task) and task.backend == "torch"
    assert task.reference.endswith("torch_digits.py:task")
    data = task.load_data()
    assert data.n_train > 1000 and data.x_train.shape[1] == 64


def test_load_file_named_attribute():
    task = load_task(f"{TASKS / 'torch_tasks.py'}:regression")
    assert task.loss == "mse"


def test_load_module_attribute(monkeypatch):
    monkeypatch.syspath_prepend(str(TASKS))
    task = load_task("torch_tasks:small")
    assert task.reference == "torch_tasks:small"


def test_task_validates_its_fields():
    with pytest.raises(TaskError, match="no model"):
        autotune.Task(backend="torch", model=None, data=lambda: None)
    with pytest.raises(TaskError, match="unknown backend 'jax'"):
        autotune.Task(backend="jax", model=lambda: None, data=lambda: None)
    with pytest.raises(TaskError, match="unknown loss"):
        autotune.Task(backend="torch", model=lambda: None, data=lambda: None, loss="hinge")
    task = autotune.Task(backend="PyTorch", model=lambda: None, data=lambda: None)
    assert task.backend == "torch"


def test_data_shape_is_checked():
    bad = autotune.Task(backend="torch", model=lambda: None,
                        data=lambda: ((np.zeros((4, 2)), np.zeros(3)), (np.zeros((2, 2)), np.zeros(2))))
    with pytest.raises(TaskError, match="4 inputs but 3 targets"):
        bad.load_data()
    raising = autotune.Task(backend="torch", model=lambda: None, data=lambda: 1 / 0)
    with pytest.raises(TaskError, match="ZeroDivisionError"):
        raising.load_data()


BAD_TASKS = {
    "syntax.py": ("def broken(:\n", ["syntax error", "line 1"]),
    "notask.py": ("x = 1\n", ["no attribute 'task'"]),
    "wrongtype.py": ("task = 42\n", ["is a int, not an autotune.Task"]),
    "nomodel.py": ("import autotune\ntask = autotune.Task(backend='torch', model=None, data=lambda: None)\n",
                   ["no model"]),
    "badbackend.py": ("import autotune\ntask = autotune.Task(backend='caffe', model=lambda: 0, data=lambda: 0)\n",
                      ["unknown backend 'caffe'", "torch"]),
    "importfails.py": ("import not_a_module_anywhere\n", ["No module named 'not_a_module_anywhere'", "install"]),
}


@pytest.mark.parametrize("name", sorted(BAD_TASKS))
def test_bad_task_is_a_one_line_error(tmp_path, name):
    source, fragments = BAD_TASKS[name]
    path = tmp_path / name
    path.write_text(source)
    result = run_cli("fit-batch", str(path))
    assert_one_line_error(result, *fragments)


def test_missing_file_is_a_one_line_error(tmp_path):
    assert_one_line_error(run_cli("fit-batch", str(tmp_path / "nowhere.py")), "not found")


def test_missing_module_is_a_one_line_error():
    assert_one_line_error(run_cli("fit-batch", "no_such_package.tasks:task"), "not found")


def test_import_autotune_imports_no_framework():
    code = ("import sys, autotune; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'mindspore') if m in sys.modules))")
    import subprocess
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
