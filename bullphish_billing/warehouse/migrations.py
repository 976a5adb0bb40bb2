"""The warehouse's numbered migrations, and `migrate`, which applies them on every open.

How `migrate` brings a warehouse file up to date, on every open (one transaction, so a failure
leaves the file as it was):

1. It reads the file's catalog and version (the highest of `ops.schema_version`; 0 for a new
   file) and, before writing anything, refuses a file of a newer version (SchemaVersionError)
   or one in which a table or view of ours has another shape (SchemaShapeError).
2. It applies the migrations numbered above that version, in order, each recorded as a row of
   `ops.schema_version`: a new warehouse gets all of them, one at version N gets N+1..latest.
3. Last, it re-creates (CREATE OR REPLACE) every view whose SQL or comments in the file differ
   from `sql/views/*.sql` (as DuckDB stores them: it normalizes the text). So an edited view
   reaches every warehouse at its next run, with no migration of its own; a file already up to
   date is not written to.

A migration is for tables (and for dropping a view): number it N+1 below, change the table's
declaration in `schema.TABLES` (the latest shape, which `migrate` checks files against and
publishes), and write its step (an ALTER, a backfill, ...). A file at version N is checked
against the shape of migrations 1..N, so each step must keep creating what it created: 0001
creates the tables of version 1 (`VERSION_1_TABLES`, the tables of main at b9acdc2, which
tests/integration/test_migrations.py upgrades) from their declarations in `schema.TABLES`, which
no migration has changed yet; before the first change of one of them, give 0001 its own copy of
its version-1 declaration. A new table is created by its own migration (0002 onwards).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from bullphish_billing.text import shown
from bullphish_billing.warehouse.schema import (
    ANALYTICS_MARKER,
    OUR_NAMES,
    SCHEMAS,
    TABLES,
    Shape,
    catalog,
    create_table,
)
from bullphish_billing.warehouse.views import VIEWS, View, create_views


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[duckdb.DuckDBPyConnection, bool], None]
    """Runs in migrate's transaction; `keys=False` leaves out primary keys (the analysts'
    copy)."""


def _create(con: duckdb.DuckDBPyConnection, keys: bool, names: tuple[str, ...]) -> None:
    """Create the tables `names` of `schema.TABLES` (their current declarations)."""
    by_name = {table.name: table for table in TABLES}
    for name in names:
        create_table(con, by_name[name], keys=keys)


VERSION_1_TABLES = (
    "ops.schema_version",
    "raw.partners",
    "raw.organizations",
    "raw.targets",
    "ops.extractions",
    "ops.quarantine",
    "ops.runs",
    "ops.partner_runs",
    "main.billing_metrics",
    "ops.outbox",
    "ops.rejected_metrics",
    "ops.acknowledged_metrics",
    "ops.mapping_fetches",
    "ops.organization_mappings",
    "ops.notable_changes",
)
"""The tables of version 1, none changed since: 0001 creates them from `schema.TABLES`. The
first migration that changes one of them gives 0001 its own copy of its version-1 declaration."""


def _0001_initial(con: duckdb.DuckDBPyConnection, keys: bool) -> None:
    """Schema version 1: the schemas raw and ops, the tables of main at b9acdc2."""
    for schema in SCHEMAS:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    _create(con, keys, VERSION_1_TABLES)


def _0002_reconciliation(con: duckdb.DuckDBPyConnection, keys: bool) -> None:
    """Schema version 2: the reconciliation with KaseyaOne's stored usage (issue 14)."""
    _create(con, keys, ("ops.reconciliation", "ops.reconciliation_differences"))


_SERVED_DATE_TIMES = (
    ("raw.partners", "partner", "updated_at", "id"),
    ("raw.organizations", "organization", "created_at", "partner_id"),
    ("raw.targets", "target", "updated_at", "partner_id"),
)


def _0003_normalized_values_and_stale_targets(con: duckdb.DuckDBPyConnection, keys: bool) -> None:
    """Schema version 3 (issue 14): ops.normalized_values, ops.target_fates (counted from the
    next run of each date on), ops.stale_targets; the date-times
    before year 1 that earlier versions stored (they break Python readers) are made null, each
    recorded in ops.normalized_values."""
    _create(con, keys, ("ops.normalized_values", "ops.target_fates", "ops.stale_targets"))
    for table, entity, column, owner in _SERVED_DATE_TIMES:
        unreal = f"{column} < TIMESTAMPTZ '0001-01-01 00:00:00+00'"
        con.execute(
            f"INSERT INTO ops.normalized_values SELECT usage_date, {owner}, '{entity}', id, "
            f"page_no, page_row, '{column}: before year 1, not a real date-time; stored as "
            f"null', 'migration-3', now() FROM {table} WHERE {unreal}"
        )
        con.execute(f"UPDATE {table} SET {column} = NULL WHERE {unreal}")


def _0004_raw_retention(con: duckdb.DuckDBPyConnection, keys: bool) -> None:
    """Schema version 4 (issue 16 item 3): ops.raw_retention, the record of the target
    snapshots BILLING_RAW_RETENTION_DAYS dropped (none before this version)."""
    _create(con, keys, ("ops.raw_retention",))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", _0001_initial),
    Migration(2, "reconciliation", _0002_reconciliation),
    Migration(3, "normalized values, stale targets", _0003_normalized_values_and_stale_targets),
    Migration(4, "raw retention", _0004_raw_retention),
)

LATEST = MIGRATIONS[-1].version

if [m.version for m in MIGRATIONS] != list(range(1, len(MIGRATIONS) + 1)):
    raise RuntimeError("migrations must be numbered 1, 2, 3, ... in order")

SCHEMA_VERSION = LATEST


class SchemaVersionError(Exception):
    """The warehouse was written by a newer version of bullphish-billing."""


class SchemaShapeError(Exception):
    """A table or view of ours has another shape in the file: it is not our warehouse."""


# --------------------------------------------------------------------------- shapes
@functools.cache
def _expected(keys: bool, version: int | None = None) -> dict[str, Shape]:
    """The shape of every table and view of ours, as this DuckDB makes them (built once, in
    memory); with `version`, of the tables alone as migrations 1..version make them."""
    with duckdb.connect(":memory:") as reference:
        if version is None:
            _apply(reference, keys, 0, SCHEMA_VERSION)
            create_views(reference, VIEWS)
        else:
            _apply(reference, keys, 0, version)
        return catalog(reference)


def _difference(got: Shape, want: Shape) -> str | None:
    if got.kind != want.kind:
        return f"is a {got.kind}, not a {want.kind}"
    have, wanted = dict(got.columns), dict(want.columns)
    for column, type_ in want.columns:
        if column not in have:
            return f"has no column {column}"
        if have[column] != type_:
            return f"has column {column} of type {shown(have[column])}, not {type_}"
    extra = [column for column, _ in got.columns if column not in wanted]
    if extra:
        return f"has a column {shown(extra[0])} that ours has not"
    if got.columns != want.columns:
        return "has our columns in another order"
    if got.primary_key != want.primary_key:
        return "has no primary key" if want.primary_key else "has a primary key ours has not"
    return None


def shape_problem(
    found: dict[str, Shape], *, keys: bool = True, version: int | None = None
) -> str | None:
    """What in the catalog `found` (from `catalog`) is not as `migrate(keys=keys)` makes it,
    in words; None if every table and view of ours it holds has our shape. A file holding
    none of them (a new one) has no problem.

    `version`: the file's schema version, when it has one (1 or more). Its tables are then
    compared with those of migrations 1..version, and its views of ours need only be views:
    `migrate` re-creates them from the current SQL."""
    if keys and ANALYTICS_MARKER.name in found:
        return f"it is an analysts' file published by bullphish-billing ({ANALYTICS_MARKER.name})"
    if not any(name in found for name in OUR_NAMES):
        return None
    expected = dict(_expected(keys))
    if version:
        expected = {name: want for name, want in expected.items() if want.kind == "view"}
        expected |= _expected(keys, version)
    for name, want in expected.items():
        got = found.get(name)
        if got is None:
            continue
        if version and want.kind == "view":
            difference = None if got.kind == "view" else f"is a {got.kind}, not a view"
        else:
            difference = _difference(got, want)
        if difference is not None:
            return f"its {want.kind} {name} {difference}"
    return None


# --------------------------------------------------------------------------- migrating
_MIGRATING = threading.Lock()
"""Connections of one process share the database (runs side by side: a backfill's dates). Two
that create the schema at the same moment fail with "Catalog write-write conflict"
(measured on 2.0.1), so one process migrates one connection at a time. Across processes,
DuckDB's lock on the file already keeps them apart."""


def migrate(con: duckdb.DuckDBPyConnection, *, keys: bool = True) -> int:
    """Create the schema if the warehouse is new, or bring an older one up to date: the
    migrations above its version, then every view whose SQL or comments changed (see
    above). Return the version in force.

    Before writing anything, the file's catalog is compared with the schema: a file written
    by a newer version is refused (SchemaVersionError), and so is one in which a table or view
    of ours has another shape (SchemaShapeError), with nothing written. A file already up to
    date is not written to.

    `keys=False` leaves out the primary keys: for the analysts' read-only copy (`publish`),
    where their indexes would be most of the file's size and of the time to write it."""
    with _MIGRATING:
        return _migrate(con, keys)


def _migrate(con: duckdb.DuckDBPyConnection, keys: bool) -> int:
    found = catalog(con)
    version = TABLES[0].name
    current = 0
    if version in found and found[version] == _expected(keys)[version]:
        current = con.execute(f"SELECT max(version) FROM {version}").fetchall()[0][0] or 0
    if current > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the warehouse has schema version {current}, newer than this program's "
            f"{SCHEMA_VERSION}: upgrade bullphish-billing"
        )
    problem = shape_problem(found, keys=keys, version=current)
    if problem is not None:
        raise SchemaShapeError(problem)
    if current == SCHEMA_VERSION and not stale_views(con):
        return current  # up to date: nothing written
    con.execute("BEGIN")
    try:
        _apply(con, keys, current, SCHEMA_VERSION)
        create_views(con, stale_views(con))  # last: the views the migrations left stale
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION


def _apply(con: duckdb.DuckDBPyConnection, keys: bool, current: int, target: int) -> None:
    """Migrations current+1..target, in order, each recorded in ops.schema_version."""
    for migration in MIGRATIONS:
        if current < migration.version <= target:
            migration.apply(con, keys)
            con.execute(f"INSERT INTO {TABLES[0].name} VALUES (?, now())", [migration.version])


ViewText = tuple[str | None, str | None, tuple[tuple[str, str | None], ...]]


def _view_texts(con: duckdb.DuckDBPyConnection) -> dict[str, ViewText]:
    """Each view of the connection's database: its SQL as DuckDB stores it, its comment and
    its columns' comments."""
    here = "database_name = current_database()"
    columns = dict(
        con.execute(
            f"SELECT lower(schema_name || '.' || table_name), "
            f"list([column_name, comment] ORDER BY column_index) "
            f"FROM duckdb_columns() WHERE {here} GROUP BY ALL"
        ).fetchall()
    )
    return {
        name: (sql, comment, tuple(tuple(c) for c in columns.get(name, [])))
        for name, sql, comment in con.execute(
            f"SELECT lower(schema_name || '.' || view_name), sql, comment "
            f"FROM duckdb_views() WHERE {here} AND NOT internal"
        ).fetchall()
    }


@functools.cache
def _current_view_texts() -> dict[str, ViewText]:
    """Each view of ours as `sql/views/*.sql` makes it (built once, in memory)."""
    with duckdb.connect(":memory:") as reference:
        _apply(reference, True, 0, SCHEMA_VERSION)
        create_views(reference, VIEWS)
        return _view_texts(reference)


def stale_views(con: duckdb.DuckDBPyConnection) -> tuple[View, ...]:
    """The views of ours that the connection's database lacks, or holds with other SQL or
    comments than `sql/views/*.sql` give them. Reads the catalog only."""
    have, want = _view_texts(con), _current_view_texts()
    return tuple(view for view in VIEWS if have.get(view.name) != want[view.name])
