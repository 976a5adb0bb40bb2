"""Opening the warehouse: one short-lived read-write connection per stage.

DuckDB lets one process hold a file read-write; a second writer (another run, an analyst's
read-write CLI) makes `connect` fail. That failure becomes a one-line `WarehouseError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from bullphish_billing.warehouse.schema import SchemaVersionError, migrate


class WarehouseError(Exception):
    """The warehouse cannot be opened or written; the message is one line, safe to print."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


@contextmanager
def open_warehouse(path: Path | str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection to the warehouse, schema applied, closed on exit."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(path))
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            raise WarehouseError(
                f"the warehouse {path} is locked by another process (another run, or a "
                "read-write DuckDB session): close it or wait"
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
