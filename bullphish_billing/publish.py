"""The analysts' file: a complete copy of the warehouse, replaced atomically after each run.

Analysts open it (BILLING_ANALYTICS_FILE; by default `analytics.duckdb` next to the warehouse)
read-only, at any time. Each publish builds a new file beside it (every table but
`raw.targets`, every view, without primary keys), checkpoints and fsyncs it, and renames it
over the old one, which an open session goes on reading until it reconnects.

The new file starts as a copy of the previous one, and only what changed is written into it:
per table, the usage dates whose rows differ (compared by count and a hash of each row, in
`sql/publish/`): writing grows with what changed, not with the history (the comparison
still reads all of it, without writing: 1.2 s of 2 s at 180 S-sized days).
Comparing content rather than keeping a log of what runs touched means that two publishes at
once, a crash between runs, or a file restored from a backup cannot make the copy miss a date.
When there is no usable previous file (none, another schema that cannot be migrated, a stray
WAL beside it, more free blocks than used ones), the file is built from empty, as the first
publish does. It replaces only a file it wrote (one holding `ops.analytics_file`); anything
else is left with a one-line PublishError. Why, with the measurements:
docs/decisions/2026-11-25-analysts-file-by-rename.md and
docs/decisions/2026-12-03-analysts-file-updated-by-content.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb

from bullphish_billing.errors import RunFailure
from bullphish_billing.text import bounded, shown
from bullphish_billing.warehouse import sqlfiles
from bullphish_billing.warehouse.db import fetch_all, fetch_value, transaction
from bullphish_billing.warehouse.migrations import (
    SchemaShapeError,
    SchemaVersionError,
    migrate,
    shape_problem,
)
from bullphish_billing.warehouse.schema import ANALYTICS_MARKER, TABLES, catalog, create_table

NOT_PUBLISHED = frozenset({"raw.targets", "ops.schema_version"})  # migrate writes the version
PUBLISHED_TABLES = tuple(t.name for t in TABLES if t.name not in NOT_PUBLISHED)


class PublishError(RunFailure):
    """The analysts' file was not published (one line); the file at the path is untouched."""


@dataclass(frozen=True)
class PublishResult:
    path: Path
    tables: int
    rows: int  # rows written: every row of a new file, the changed ones of an update
    seconds: float
    incremental: bool = False  # started from the previous file, copying what changed


def _temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(target: Path) -> list[Path]:
    """Delete temporary files that a publish killed halfway left behind (their process is
    gone); those of live processes (a publish in progress) are left alone."""
    removed = []
    for path in target.parent.glob(f".{target.name}.*.tmp*"):
        parts = path.name[len(target.name) + 2 :].split(".")
        if parts and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_analytics_file(path: Path) -> bool:
    """Whether the DuckDB file at `path` is an analysts' file publish wrote (read-only look)."""
    with duckdb.connect(str(path), read_only=True) as other:
        found = catalog(other)
    if ANALYTICS_MARKER.name in found:
        return True
    # published before the marker existed: the keyless copy of our schema
    return TABLES[0].name in found and shape_problem(found, keys=False) is None


def check_replaceable(target: Path) -> None:
    """Raise PublishError unless `target` is missing or an analysts' file publish wrote."""
    if not target.exists():
        return
    try:
        ours = _is_analytics_file(target)
    except duckdb.Error as exc:
        if "WAL does not match" not in str(exc):
            raise _unreadable(target, exc) from None
        ours = _is_analytics_file_without_its_wal(target)
    if not ours:
        raise PublishError(
            f"{shown(target)} (BILLING_ANALYTICS_FILE) is not an analysts' file written by "
            "bullphish-billing, so it was not replaced: move it away or choose another path"
        )


def _unreadable(target: Path, exc: BaseException) -> PublishError:
    return PublishError(
        f"cannot tell whether {shown(target)} (BILLING_ANALYTICS_FILE) is an analysts' file, "
        f"so it was not replaced: {bounded(str(exc))}"
    )


def _is_analytics_file_without_its_wal(target: Path) -> bool:
    """`_is_analytics_file` for a file beside a WAL that does not match it (a read-write
    session on an earlier copy that crashed): the WAL is set aside for the look, then removed
    if the file is ours (publishing removes it anyway), else put back."""
    wal = Path(f"{target}.wal")
    aside = _temp_path(wal)
    os.replace(wal, aside)
    try:
        ours = _is_analytics_file(target)
    except duckdb.Error as exc:
        os.replace(aside, wal)
        raise _unreadable(target, exc) from None
    if ours:
        aside.unlink()
    else:
        os.replace(aside, wal)
    return ours


def publish(con: duckdb.DuckDBPyConnection, target: Path) -> PublishResult:
    """Copy the warehouse `con` is open on into a new file and rename it over `target`.

    The copy reads one snapshot of the warehouse (one transaction), so the file holds a state
    the warehouse really had. Concurrent publishes (parallel runs) each build their own file;
    the last rename wins, and each is complete. A file at `target` that is not an analysts'
    file is not replaced, and a failure to write the new file (a full disk) leaves the old
    one: both are a PublishError.
    """
    target = Path(target)
    check_replaceable(target)
    try:
        return _publish(con, target)
    except (duckdb.Error, OSError) as exc:
        raise PublishError(
            f"cannot write the analysts' file {shown(target)}: {bounded(str(exc))}"
        ) from None


def _publish(con: duckdb.DuckDBPyConnection, target: Path) -> PublishResult:
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target)
    temp = _temp_path(target)
    temp_wal = Path(f"{temp}.wal")
    alias = f"publish_{uuid.uuid4().hex[:12]}"  # ATTACH names are shared by the database
    source = fetch_value(
        con, "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    )
    try:
        incremental = _start_from_previous(target, temp)
        if not incremental:
            _start_empty(temp)
        con.execute(f"ATTACH '{temp}' AS {alias}")
        try:
            with transaction(con):
                copy = _copy_changes if incremental else _copy_all
                rows = sum(copy(con, alias, table) for table in PUBLISHED_TABLES)
                marker = f"{alias}.{ANALYTICS_MARKER.name}"
                con.execute(f"DELETE FROM {marker}")
                con.execute(f"INSERT INTO {marker} VALUES (now(), ?)", [source])
            con.execute(f"CHECKPOINT {alias}")
        finally:
            con.execute(f"DETACH {alias}")
        if temp_wal.exists():
            raise PublishError(f"the new analysts' file {shown(temp)} was not checkpointed")
        _fsync(temp)
        Path(f"{target}.wal").unlink(missing_ok=True)  # a crashed read-write session's WAL
        os.replace(temp, target)
        with contextlib.suppress(OSError):  # a directory fsync is not possible everywhere
            _fsync(target.parent)
    finally:
        temp.unlink(missing_ok=True)
        temp_wal.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    return PublishResult(target, len(PUBLISHED_TABLES), rows, seconds, incremental)


def _start_empty(temp: Path) -> None:
    """A new file with the warehouse's tables, views and comments, no rows, and the marker."""
    with duckdb.connect(str(temp)) as fresh:
        migrate(fresh, keys=False)
        create_table(fresh, ANALYTICS_MARKER, keys=False)  # what makes it ours to replace


def _start_from_previous(target: Path, temp: Path) -> bool:
    """Copy the previous analysts' file to `temp` and bring its schema up to date, so that
    only what changed since needs copying: whether that worked. Not when there is none, when a
    read-write session left a WAL beside it, when it predates the marker, or when it cannot be
    read or migrated: then `temp` is removed and the file is built from empty."""
    if not target.exists() or Path(f"{target}.wal").exists():
        return False
    try:
        shutil.copyfile(target, temp)
        with duckdb.connect(str(temp)) as previous:
            if ANALYTICS_MARKER.name not in catalog(previous):
                raise _NotReusable
            used, free = previous.execute(
                "SELECT used_blocks, free_blocks FROM pragma_database_size()"
            ).fetchall()[0]
            if free > used:  # updates left it mostly free blocks: build it compact again
                raise _NotReusable
            migrate(previous, keys=False)  # a column a migration added reads as changed
        return True
    except (_NotReusable, SchemaShapeError, SchemaVersionError, duckdb.Error, OSError):
        temp.unlink(missing_ok=True)
        Path(f"{temp}.wal").unlink(missing_ok=True)
        return False


class _NotReusable(Exception):
    pass


def _copy_all(con: duckdb.DuckDBPyConnection, alias: str, table: str) -> int:
    return int(fetch_value(con, f"INSERT INTO {alias}.{table} BY NAME SELECT * FROM {table}") or 0)


def _copy_changes(con: duckdb.DuckDBPyConnection, alias: str, table: str) -> int:
    """Make `table` of the attached previous file `alias` equal to the warehouse's, copying
    only the usage dates whose rows differ (the whole table for one without usage dates, when
    it differs): the rows written."""
    names = {"table": table, "copy": alias, "columns": _CONTENT_COLUMNS[table]}
    if table not in _DATED:
        if not fetch_value(con, sqlfiles.template("publish/table_differs", **names)):
            return 0
        con.execute(f"DELETE FROM {alias}.{table}")
        return _copy_all(con, alias, table)
    dates = [d for (d,) in fetch_all(con, sqlfiles.template("publish/changed_dates", **names))]
    if not dates:
        return 0
    changed = "usage_date IN (SELECT unnest($dates::DATE[]))"
    con.execute(f"DELETE FROM {alias}.{table} WHERE {changed}", {"dates": dates})
    inserted = fetch_value(
        con,
        f"INSERT INTO {alias}.{table} BY NAME SELECT * FROM {table} WHERE {changed}",
        {"dates": dates},
    )
    return int(inserted or 0)


_SCHEMA = {t.name: t for t in TABLES}
_CONTENT_COLUMNS = {
    name: ", ".join(c.name for c in _SCHEMA[name].columns) for name in PUBLISHED_TABLES
}
_DATED = frozenset(
    name for name in PUBLISHED_TABLES if any(c.name == "usage_date" for c in _SCHEMA[name].columns)
)
