"""The shipped conformance suite (`autotune.testing`) run on each built-in backend installed here.

A built-in backend joins by adding its case to ``BACKEND_CASES`` in conftest.py; a third-party one subclasses
the suite in its own tests, as tests/test_extra_backend.py does for a NumPy backend.
"""

import pytest

from autotune.testing import BackendCase, BackendConformanceSuite
from conftest import BACKEND_CASES, backend_params


class TestBuiltinBackend(BackendConformanceSuite):
    @pytest.fixture(params=backend_params())
    def backend_case(self, request):
        case = BACKEND_CASES[request.param]
        return BackendCase(request.param, tasks=case["tasks"], cap=case["cap"], xfail=case.get("xfail", {}))


@pytest.mark.parametrize("backend_name, message", [
    ("torch", "RuntimeError: expected scalar type Long but found Int"),
    ("torch", "RuntimeError: Expected target dtype to be Long or Byte, but got Float"),
    ("tensorflow", "Value passed to parameter 'labels' has DataType float32 not in list of allowed values"),
    ("tensorflow", "Tensor 'y' was expected to be a float tensor but is a int32 tensor"),
    ("mindspore", "TypeError: For 'NLLLoss', the type of 'target' should be Tensor[Int32], but got Tensor[Int64]"),
])
def test_each_backend_tells_a_type_error_from_a_shape_error(backend_name, message):
    """The model check's fix depends on it: a cast of the data for a type error, another layer for a shape."""
    from autotune.backends import get_backend, is_installed

    if not is_installed(backend_name):
        pytest.skip(f"{backend_name} is not installed")
    backend = get_backend(backend_name)
    assert backend.is_type_error(message)
    assert not backend.is_type_error("mat1 and mat2 shapes cannot be multiplied (2x64 and 32x10)")
