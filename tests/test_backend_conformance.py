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
