"""Shared fixtures. Prefect's test harness is started once per session, and only by tests
that ask for it (`prefect_harness`), with a temporary PREFECT_HOME."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bpb-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

CONTRACTS = Path(__file__).resolve().parents[2] / "shared" / "contracts"


@pytest.fixture
def warehouse_path(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


@pytest.fixture
def con(warehouse_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    from bullphish_billing.warehouse.db import open_warehouse

    with open_warehouse(warehouse_path) as connection:
        yield connection


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
