"""Shared fixtures. Flow tests share one Prefect test harness for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import flows  # noqa: F401 — offline settings before Prefect is imported
from flows.settings import PROJECT_ROOT

EXAMPLES = PROJECT_ROOT.parent / "shared" / "examples"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect server on 127.0.0.1, started once for every flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def examples() -> Path:
    if not (EXAMPLES / "check.py").is_file():
        pytest.skip(f"the shared example deliveries are not at {EXAMPLES}")
    return EXAMPLES
