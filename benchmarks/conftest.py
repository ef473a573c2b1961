"""Fixtures of the pytest-benchmark suites; the shared helpers are in benchmarks/suite.py."""

import pytest

from benchmarks.suite import DTYPES


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def dtype(request):
    return request.param
