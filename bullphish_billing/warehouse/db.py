"""Opening the warehouse: one short-lived read-write connection per stage.

DuckDB lets one process hold a file read-write; a second writer (another run, an analyst's
read-write CLI) makes `connect` fail. Runs in two processes (a backfill from the command line
while a deployment runs the daily flow) take turns on the file, stage by stage, so opening it
waits while another process holds it, up to `lock_wait_s` (BILLING_WAREHOUSE_LOCK_WAIT_S).
A file still locked after that becomes a one-line `WarehouseError`, and so does a write that
the storage refuses while the connection is open (a full disk, a file system turned
read-only): DuckDB rolls the transaction back, so nothing half-written stays.

Every other failure to open or migrate the file is a one-line `WarehouseError` too, raised
before anything is written to it: a file that is no DuckDB database, one cut short (too short
for the blocks in use its header counts: DuckDB would open it, write to it, and fail later on a
missing block), one written by a newer version, and one in which a table or view of ours has
another shape (`migrate`: another program's file, or the analysts' copy).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from bullphish_billing import stopping
from bullphish_billing.errors import WarehouseError
from bullphish_billing.text import bounded, shown
from bullphish_billing.warehouse.migrations import SchemaShapeError, SchemaVersionError, migrate

log = logging.getLogger(__name__)


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


def _connect(
    path: Path, lock_wait_s: float, *, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """Connect, trying again while another process holds the file, for up to `lock_wait_s`."""
    deadline = time.monotonic() + lock_wait_s
    pause, warned = 0.05, False
    while True:
        try:
            return duckdb.connect(
                str(path), read_only=read_only, config={"memory_limit": MEMORY_LIMIT}
            )
        except duckdb.IOException as exc:
            # a run asked to stop waits a few seconds at most (stopping.STOP_WAIT_S)
            remaining = stopping.wait_until(deadline) - time.monotonic()
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


HEADER_BYTES = 3 * 4096
"""A DuckDB file starts with its main header and two database headers, 4 KiB each; its blocks
follow (measured on 2.0.1: a cleanly closed file is this plus its blocks, exactly)."""


def _check_complete(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Raise WarehouseError if the file is too short for the blocks in use that its header
    counts (a copy cut short, a disk that filled while it was copied). DuckDB opens such a
    file and fails later, on the first missing block, after having written to it.

    Blocks in use, not all blocks: a checkpoint may cut free blocks off the end of the file
    after writing the header that still counts them (DuckDB 2.0.1,
    SingleFileBlockManager::Truncate)."""
    used, block_size = con.execute(
        "SELECT used_blocks, block_size FROM pragma_database_size() "
        "WHERE database_name = current_database()"
    ).fetchall()[0]
    needed, size = HEADER_BYTES + used * block_size, os.path.getsize(path)
    if size < needed:
        raise WarehouseError(
            f"the warehouse {shown(path)} is damaged: {size:,} bytes, too short for the "
            f"{used:,} blocks its header counts in use ({needed:,} bytes; cut short?); "
            "nothing was written to it: restore it from a backup"
        )


class _OpenFiles:
    """The connections `open_warehouse` holds, per file, in this process.

    DuckDB shares one database among a process's connections to a file (a backfill's dates
    run in threads), and blocks another thread allocates are counted before they are written:
    the file's length is only checked against its header when no connection of this process
    has it open, and no other thread connects to it meanwhile."""

    def __init__(self) -> None:
        self.first = threading.Lock()  # held while a file nobody here has open is opened
        self._lock = threading.Lock()
        self._count: Counter[str] = Counter()

    def held(self, key: str) -> bool:
        with self._lock:
            return self._count[key] > 0

    def add(self, key: str, n: int) -> None:
        with self._lock:
            self._count[key] += n
            if self._count[key] <= 0:
                del self._count[key]


_OPEN = _OpenFiles()


def _connect_or_fail(
    path: Path, lock_wait_s: float, *, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """`_connect`, its failures as a one-line WarehouseError (a reader's in its own words)."""
    verb = "read" if read_only else "open"
    try:
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        return _connect(path, lock_wait_s, read_only=read_only)
    except duckdb.IOException as exc:
        if _locked(exc) and read_only:
            raise WarehouseError(
                f"the warehouse {shown(path)} is held by a run (waited {lock_wait_s:.0f} s): "
                "try again when its stage is done"
            ) from None
        if _locked(exc):
            waited = f" (waited {lock_wait_s:.0f} s)" if lock_wait_s else ""
            raise WarehouseError(
                f"the warehouse {shown(path)} is locked by another process{waited} (another "
                "run, or a DuckDB session open on it, even read-only): close it or wait"
            ) from None
        if "Could not read enough bytes" in str(exc):  # a block it needs is past the end
            raise WarehouseError(
                f"the warehouse {shown(path)} is damaged: {path.stat().st_size:,} bytes, too "
                "short for the blocks DuckDB reads when it opens it (cut short?); nothing was "
                "written to it: restore it from a backup"
            ) from None
        raise WarehouseError(
            f"cannot {verb} the warehouse {shown(path)}: {bounded(str(exc))}"
        ) from None
    except (OSError, duckdb.Error) as exc:
        raise WarehouseError(
            f"cannot {verb} the warehouse {shown(path)}: {bounded(str(exc))}"
        ) from None


def _connect_checked(path: Path, key: str, lock_wait_s: float) -> duckdb.DuckDBPyConnection:
    """Connect; a file no connection of this process has open is checked for completeness
    first (see `_OpenFiles`). The connection is counted in `_OPEN`."""
    if _OPEN.held(key):
        con = _connect_or_fail(path, lock_wait_s)
        _OPEN.add(key, 1)
        return con
    with _OPEN.first:
        check = not _OPEN.held(key) and path.exists()
        con = _connect_or_fail(path, lock_wait_s)
        try:
            if check:
                _check_complete(con, path)
        except BaseException:
            con.close()
            raise
        _OPEN.add(key, 1)
        return con


def _open(path: Path, key: str, lock_wait_s: float) -> duckdb.DuckDBPyConnection:
    """Connect and migrate; every failure is a one-line WarehouseError, raised before
    anything is written to the file."""
    con = _connect_checked(path, key, lock_wait_s)
    try:
        try:
            migrate(con)
        except SchemaVersionError as exc:
            raise WarehouseError(str(exc)) from None
        except SchemaShapeError as exc:
            raise WarehouseError(
                f"the warehouse {shown(path)} is not a bullphish-billing warehouse: {exc}; "
                "nothing was written to it (is BILLING_WAREHOUSE the right file?)"
            ) from None
        except (duckdb.Error, OSError) as exc:
            failure = storage_failure(exc)
            verb, reason = ("open", exc) if failure is None else ("write", failure)
            raise WarehouseError(
                f"cannot {verb} the warehouse {shown(path)}: {bounded(str(reason))}"
            ) from None
    except BaseException:
        _close(con, key)
        raise
    return con


def _close(con: duckdb.DuckDBPyConnection, key: str) -> None:
    try:
        con.close()
    finally:
        _OPEN.add(key, -1)


@contextmanager
def open_warehouse(
    path: Path | str, *, lock_wait_s: float = 0.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection to the warehouse, schema applied, closed on exit. While another
    process holds the file, wait for it up to `lock_wait_s` seconds. Every failure to open or
    migrate it is a one-line WarehouseError, raised before anything is written to it."""
    path = Path(path)
    key = os.path.realpath(path)
    con = _open(path, key, lock_wait_s)
    try:
        yield con
    except (duckdb.Error, OSError) as exc:
        failure = storage_failure(exc)
        if failure is None:
            raise
        raise WarehouseError(
            f"cannot write the warehouse {shown(path)}: {bounded(str(failure))}"
        ) from None
    finally:
        _close(con, key)


@contextmanager
def open_read_only(
    path: Path | str, *, lock_wait_s: float = 0.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the warehouse, as an analyst's session opens it: no schema
    applied, nothing written. While a run holds the file (a stage at a time), wait for it up
    to `lock_wait_s` seconds; while this connection is open a run's stage waits for it, so
    keep it short. A missing or unreadable file is a one-line WarehouseError."""
    path = Path(path)
    if not path.exists():
        raise WarehouseError(f"no warehouse at {shown(path)}: nothing was processed yet")
    con = _connect_or_fail(path, lock_wait_s, read_only=True)
    try:
        yield con
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
