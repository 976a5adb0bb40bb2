"""Shared fixtures. Prefect's test harness is started once per session, and only by tests
that ask for it (`prefect_harness`), with a temporary PREFECT_HOME."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

if os.environ.get("PYTEST_XDIST_WORKER") or "PREFECT_HOME" not in os.environ:
    # each pytest-xdist worker a home of its own (a worker inherits the controller's)
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="bpb-prefect-home-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture
def warehouse_path(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


@pytest.fixture
def con(warehouse_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    from bullphish_billing.warehouse.db import open_warehouse

    with open_warehouse(warehouse_path) as connection:
        yield connection


@pytest.fixture
def configure(monkeypatch, warehouse_path):
    """Point this test's environment at a running sandbox and `warehouse_path`:
    `configure(sandbox, bullphish_url=..., kaseyaone_url=..., BILLING_X=value, ...)` (the URLs
    override the sandbox's; keyword settings are set as environment variables)."""
    from sandbox_env import sandbox_env

    def apply(sandbox, *, bullphish_url: str = "", kaseyaone_url: str = "", **extra) -> None:
        env = sandbox_env(sandbox, warehouse_path)
        env["BULLPHISH_API_URL"] = bullphish_url or env["BULLPHISH_API_URL"]
        env["KASEYAONE_API_URL"] = kaseyaone_url or env["KASEYAONE_API_URL"]
        for name in ("BILLING_HTTP_DEADLINE_S", "BILLING_RUN_DEADLINE_S"):
            monkeypatch.delenv(name, raising=False)
        for name, value in (env | {k: str(v) for k, v in extra.items()}).items():
            monkeypatch.setenv(name, value)

    return apply


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# Modules that take minutes (a Prefect server, workers, many runs), started first: two xdist
# workers take tests in collection order, and one of these last would leave a worker alone
# at the end of `make test` for as long as it takes.
LONGEST_FIRST = (
    "test_scale_out.py",
    "test_deployments.py",
    "test_bench_smoke.py",
    "test_cli.py",
    "test_backfill.py",
    "test_stop_signals.py",
    "test_crash_safety.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order
