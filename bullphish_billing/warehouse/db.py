"""Opening the warehouse: one short-lived read-write connection per stage.

DuckDB lets one process hold a file read-write; a second writer (another run, an analyst's
read-write CLI) makes `connect` fail. Runs in two processes (a backfill from the command line
while a deployment runs the daily flow) take turns on the file, stage by stage, so opening it
waits while another process holds it, up to `lock_wait_s` (BILLING_WAREHOUSE_LOCK_WAIT_S).
A file still locked after that becomes a one-line `WarehouseError`, and so does a write that
the storage refuses while the connection is open (a full disk, a file system turned
read-only): DuckDB rolls the transaction back, so nothing half-written stays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from bullphish_billing.warehouse.schema import SchemaVersionError, migrate

log = logging.getLogger(__name__)


class WarehouseError(Exception):
    """The warehouse cannot be opened or written; the message is one line, safe to print."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


# what DuckDB (or the OS) says when the storage, not the SQL, is at fault
_STORAGE_FAILURES = (
    "no space left on device",
    "disk quota exceeded",
    "read-only file system",
    "could not write file",
    "could not truncate file",
    "permission denied",
    "database has been invalidated",
)


def storage_failure(exc: BaseException) -> BaseException | None:
    """The exception in `exc`'s chain that says the storage refused a write, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, duckdb.IOException) or (
            isinstance(seen, (duckdb.Error, OSError))
            and any(s in str(seen).lower() for s in _STORAGE_FAILURES)
        ):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


MEMORY_LIMIT = "1GB"
"""DuckDB's memory for the warehouse connection. Its default (80% of the machine) lets the set
queries over a large day hold gigabytes; past this limit DuckDB evicts cached blocks and
spills to a temporary directory beside the warehouse instead."""


def _locked(exc: duckdb.IOException) -> bool:
    return "lock" in str(exc).lower()


def _connect(path: Path, lock_wait_s: float) -> duckdb.DuckDBPyConnection:
    """Connect, trying again while another process holds the file, for up to `lock_wait_s`."""
    deadline = time.monotonic() + lock_wait_s
    pause, warned = 0.05, False
    while True:
        try:
            return duckdb.connect(str(path), config={"memory_limit": MEMORY_LIMIT})
        except duckdb.IOException as exc:
            remaining = deadline - time.monotonic()
            if not _locked(exc) or remaining <= 0:
                raise
            if not warned:
                warned = True
                log.warning(
                    "the warehouse %s is locked by another process: waiting up to %.0f s",
                    path,
                    lock_wait_s,
                )
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 1.0)


@contextmanager
def open_warehouse(
    path: Path | str, *, lock_wait_s: float = 0.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection to the warehouse, schema applied, closed on exit. While another
    process holds the file, wait for it up to `lock_wait_s` seconds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        con = _connect(path, lock_wait_s)
    except duckdb.IOException as exc:
        if _locked(exc):
            waited = f" (waited {lock_wait_s:.0f} s)" if lock_wait_s else ""
            raise WarehouseError(
                f"the warehouse {path} is locked by another process{waited} (another run, or "
                "a DuckDB session open on it, even read-only): close it or wait"
            ) from None
        raise WarehouseError(f"cannot open the warehouse {path}: {_one_line(exc)}") from None
    except (OSError, duckdb.Error) as exc:
        raise WarehouseError(f"cannot open the warehouse {path}: {_one_line(exc)}") from None
    try:
        try:
            migrate(con)
        except SchemaVersionError as exc:
            raise WarehouseError(str(exc)) from None
        yield con
    except (duckdb.Error, OSError) as exc:
        failure = storage_failure(exc)
        if failure is None:
            raise
        raise WarehouseError(f"cannot write the warehouse {path}: {_one_line(failure)}") from None
    finally:
        con.close()


def fetch_all(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> list[tuple]:
    """Run a query and fetch every row (DuckDB 2 holds the connection until consumed)."""
    return con.execute(sql, params).fetchall() if params is not None else con.sql(sql).fetchall()


def fetch_value(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> Any:
    rows = fetch_all(con, sql, params)
    return rows[0][0] if rows else None


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT, or ROLLBACK on any exception."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
