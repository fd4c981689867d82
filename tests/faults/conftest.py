"""The fault suite's size: ``QUICK`` in ``make test``, ``FULL`` with ``--full-faults``."""

from __future__ import annotations

import pytest

from tools import faults


@pytest.fixture(scope="module")
def size(request: pytest.FixtureRequest) -> faults.Sizes:
    return faults.FULL if request.config.getoption("--full-faults") else faults.QUICK
