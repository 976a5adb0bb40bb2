"""The warehouse's numbered migrations, applied in order by `schema.migrate`.

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
creates `schema.TABLES` as it is today (version 1, the tables of main at b9acdc2, which
tests/integration/test_migrations.py upgrades); before the first table change, give 0001 its
own copy of the version-1 declarations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[duckdb.DuckDBPyConnection, bool], None]
    """Runs in migrate's transaction; `keys=False` leaves out primary keys (the analysts'
    copy)."""


def _0001_initial(con: duckdb.DuckDBPyConnection, keys: bool) -> None:
    """Schema version 1: the schemas raw and ops, every table with its comments."""
    from bullphish_billing.warehouse.schema import SCHEMAS, TABLES, create_table

    for schema in SCHEMAS:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for table in TABLES:
        create_table(con, table, keys=keys)


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "initial", _0001_initial),)

LATEST = MIGRATIONS[-1].version

if [m.version for m in MIGRATIONS] != list(range(1, len(MIGRATIONS) + 1)):
    raise RuntimeError("migrations must be numbered 1, 2, 3, ... in order")
