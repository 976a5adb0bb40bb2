"""Writing raw snapshots: what BullPhish ID served for (usage_date, partner), replaced whole.

A partner's snapshot is gathered (validated, in memory, as compact Arrow rows) until both its
lists are read to the end; only then is it written, together with the other snapshots that are
complete by then, in one transaction: the old rows of those partner-dates are deleted, the new
ones appended in one statement per table, and the commit makes them visible at once. A partner
whose extract fails is never written, so its previous snapshot stays as it was.
"""

from __future__ import annotations

import datetime as dt
from contextlib import closing
from dataclasses import dataclass, field

import duckdb
import pandas as pd
import pyarrow as pa

from bullphish_billing.validation import ValidatedBatch
from bullphish_billing.warehouse.db import transaction

_RAW_TABLES = {"organization": "raw.organizations", "target": "raw.targets"}


@dataclass
class Snapshot:
    """The organizations, targets and record-level quarantine of one partner-date, validated,
    not yet written."""

    partner_id: str
    batches: dict[str, list[ValidatedBatch]] = field(
        default_factory=lambda: {entity: [] for entity in _RAW_TABLES}
    )
    received: dict[str, int] = field(default_factory=lambda: {entity: 0 for entity in _RAW_TABLES})
    pages: int = 0

    @property
    def size(self) -> int:
        """The records received, bad ones included."""
        return sum(self.received.values())

    def add(self, entity: str, batch: ValidatedBatch, *, received: int = 0) -> None:
        """One validated batch of `entity`, and `received` records more (extraction counts
        them as pages arrive, before validation, and passes none here)."""
        self.batches[entity].append(batch)
        self.received[entity] += received


def write_snapshots(
    con: duckdb.DuckDBPyConnection,
    usage_date: dt.date,
    snapshots: list[Snapshot],
    run_id: str,
    *,
    replacing: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Write complete snapshots in one transaction, each replacing its partner-date's previous
    one. `replacing` names the partners that have one (`extracted_partners`): for the others
    there is nothing to delete. Uses its own cursor, so it may run in a worker thread."""
    if not snapshots:
        return
    with closing(con.cursor()) as cur, transaction(cur):
        replaced = sorted({s.partner_id for s in snapshots} & set(replacing))
        if replaced:
            for table in ("raw.organizations", "raw.targets", "ops.extractions"):
                cur.execute(
                    f"DELETE FROM {table} WHERE usage_date = ? AND list_contains(?, partner_id)",
                    [usage_date, replaced],
                )
            for table in ("ops.quarantine", "ops.normalized_values"):
                cur.execute(
                    f"DELETE FROM {table} WHERE usage_date = ? "
                    "AND list_contains(?, partner_id) AND entity <> 'partner'",
                    [usage_date, replaced],
                )
        for entity in _RAW_TABLES:
            _append(cur, usage_date, snapshots, entity, run_id)
        cur.register(
            "extracted",
            pa.table(
                {
                    "partner_id": [s.partner_id for s in snapshots],
                    "organizations": [s.received["organization"] for s in snapshots],
                    "targets": [s.received["target"] for s in snapshots],
                    "pages": pa.array([s.pages for s in snapshots], pa.int32()),
                }
            ),
        )
        cur.execute(
            "INSERT INTO ops.extractions SELECT ?, partner_id, organizations, targets, pages, "
            "now(), ? FROM extracted",
            [usage_date, run_id],
        )


def _append(
    cur: duckdb.DuckDBPyConnection,
    usage_date: dt.date,
    snapshots: list[Snapshot],
    entity: str,
    run_id: str,
) -> None:
    """Append the snapshots' rows and quarantine of one entity, one statement each."""
    batches = [(s.partner_id, batch) for s in snapshots for batch in s.batches[entity]]
    rows = [
        b.rows.append_column("partner_id", pa.repeat(pa.scalar(p, pa.string()), b.rows.num_rows))
        for p, b in batches
        if b.rows.num_rows
    ]
    if rows:
        _insert_rows(cur, _RAW_TABLES[entity], usage_date, pa.concat_tables(rows), run_id)
    bad = [b.bad.assign(partner_id=p) for p, b in batches if len(b.bad)]
    if bad:
        insert_quarantine(
            cur, pd.concat(bad, ignore_index=True), usage_date, None, entity, "record", run_id
        )
    fixed = [b.normalized.assign(partner_id=p) for p, b in batches if len(b.normalized)]
    if fixed:
        insert_normalized(cur, pd.concat(fixed, ignore_index=True), usage_date, entity, run_id)


def _insert_rows(
    cur: duckdb.DuckDBPyConnection, table: str, usage_date: dt.date, rows: pa.Table, run_id: str
) -> None:
    """Append validated rows (columns named as in `table`) to a raw table, in one statement."""
    if not rows.num_rows:
        return
    cols = ", ".join(rows.column_names)
    cur.register("validated_rows", rows)
    cur.execute(
        f"INSERT INTO {table} (usage_date, {cols}, run_id) SELECT ?, {cols}, ? FROM validated_rows",
        [usage_date, run_id],
    )
    cur.unregister("validated_rows")


def extracted_partners(con: duckdb.DuckDBPyConnection, usage_date: dt.date) -> set[str]:
    """The partners that have a raw snapshot for the date."""
    rows = con.execute(
        "SELECT partner_id FROM ops.extractions WHERE usage_date = ?", [usage_date]
    ).fetchall()
    return {partner_id for (partner_id,) in rows}


def insert_quarantine(
    con: duckdb.DuckDBPyConnection,
    bad: pd.DataFrame,
    usage_date: dt.date,
    partner_id: str | None,
    entity: str,
    stage: str,
    run_id: str,
) -> None:
    """Append quarantine rows (record_id, page_no, page_row, reason[, partner_id]) in one
    statement."""
    if not len(bad):
        return
    con.register("bad_batch", bad)
    # a bad partner record belongs to the partner its (well-formed) id names; other records
    # to the partner given, or to the one their batch names (`partner_id` column)
    if partner_id is not None:
        owner = "?"
    else:
        owner = "partner_id" if "partner_id" in bad.columns else "record_id"
    params = [usage_date, partner_id] if partner_id is not None else [usage_date]
    con.execute(
        "INSERT INTO ops.quarantine (usage_date, partner_id, entity, record_id, page_no, "
        f"page_row, stage, reason, run_id, recorded_at) SELECT ?, {owner}, ?, record_id, "
        "page_no, page_row, ?, reason, ?, now() FROM bad_batch",
        [*params, entity, stage, run_id],
    )
    con.unregister("bad_batch")


def insert_normalized(
    con: duckdb.DuckDBPyConnection,
    fixed: pd.DataFrame,
    usage_date: dt.date,
    entity: str,
    run_id: str,
) -> None:
    """Append rows of values stored as null (record_id, page_no, page_row, reason[,
    partner_id]) in one statement: a partner record's belong to the partner it is."""
    if not len(fixed):
        return
    owner = "partner_id" if "partner_id" in fixed.columns else "record_id"
    con.register("normalized_batch", fixed)
    con.execute(
        "INSERT INTO ops.normalized_values (usage_date, partner_id, entity, record_id, page_no, "
        f"page_row, reason, run_id, recorded_at) SELECT ?, {owner}, ?, record_id, page_no, "
        "page_row, reason, ?, now() FROM normalized_batch",
        [usage_date, entity, run_id],
    )
    con.unregister("normalized_batch")


def replace_partners(
    con: duckdb.DuckDBPyConnection, usage_date: dt.date, batch: ValidatedBatch, run_id: str
) -> None:
    """Replace the partner list of a usage date (and its partner quarantine) in one go."""
    with closing(con.cursor()) as cur, transaction(cur):
        cur.execute("DELETE FROM raw.partners WHERE usage_date = ?", [usage_date])
        for table in ("ops.quarantine", "ops.normalized_values"):
            cur.execute(
                f"DELETE FROM {table} WHERE usage_date = ? AND entity = 'partner'", [usage_date]
            )
        _insert_rows(cur, "raw.partners", usage_date, batch.rows, run_id)
        insert_quarantine(cur, batch.bad, usage_date, None, "partner", "record", run_id)
        insert_normalized(cur, batch.normalized, usage_date, "partner", run_id)
