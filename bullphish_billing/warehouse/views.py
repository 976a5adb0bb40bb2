"""The analyst views: what the feed billed, how it changed, what a PSA would invoice.

Each view is one file, `sql/views/<view>.sql`: a chain of named CTEs that reads top to bottom,
then its `COMMENT ON` text and every output column's comment. `schema.migrate` creates them in
the same transaction as the tables, and re-creates in an existing warehouse every view whose SQL
or comments differ from these files; `create_views` refuses a view with a column left
uncommented.

- `billing_changes`: per partner, organization, billing type and day, the units against the
  partner's previous reported day: up, down, same, new or stopped.
- `invoice_preview`: per partner, organization, billing type and month, the units under each
  PSA unit-change policy (high-water mark, end of period, prorated daily).
- `unmapped_organizations`: billed organizations the partner's PSA has not mapped.
- `run_history`: every run, partner and date with its status and reason.
- `stale_active_targets`: per date and billed organization, active users not updated for
  BILLING_STALE_DAYS (a warning; billing does not change).
- `reconciliation_open`: the differences with KaseyaOne its latest check of each partner-date
  found, with their re-send once the next run made it.
- `metric_explanations`: per metric and reason, why its units are what they are (`explain`).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from bullphish_billing.warehouse import sqlfiles


@dataclass(frozen=True)
class View:
    name: str  # schema.view

    @property
    def sql(self) -> str:
        """`CREATE OR REPLACE VIEW` and its `COMMENT ON` statements, from its file."""
        return sqlfiles.text(f"views/{self.name.split('.')[1]}")


VIEWS: tuple[View, ...] = (
    View("main.billing_changes"),
    View("main.invoice_preview"),
    View("main.unmapped_organizations"),
    View("main.run_history"),
    View("main.stale_active_targets"),
    View("main.reconciliation_open"),
    View("main.metric_explanations"),
)


def create_views(con: duckdb.DuckDBPyConnection, views: tuple[View, ...] = VIEWS) -> None:
    """Create (or replace) the views with their comments, in the caller's transaction."""
    for view in views:
        con.execute(view.sql)
        schema, name = view.name.split(".")
        uncommented = [
            row[0]
            for row in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = "
                "current_database() AND schema_name = ? AND table_name = ? "
                "AND (comment IS NULL OR comment = '') ORDER BY column_index",
                [schema, name],
            ).fetchall()
        ]
        if uncommented:
            raise RuntimeError(f"view {view.name} has columns without a comment: {uncommented}")
