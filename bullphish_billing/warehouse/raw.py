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


SNAPSHOT_PARTS = ("organizations", "targets", "quarantine", "normalized", "extractions")
"""What complete snapshots come to, one Arrow table (or staged Parquet file) each: the rows of
raw.organizations and raw.targets, the record-level quarantine and normalized values of both,
and one row per partner-date for ops.extractions. Each has a `partner_id` column; none the
usage date or the run id, which the load adds."""

_ISSUE_SCHEMA = pa.schema(
    [
        ("partner_id", pa.string()),
        ("entity", pa.string()),
        ("record_id", pa.string()),
        ("page_no", pa.int64()),
        ("page_row", pa.int64()),
        ("reason", pa.string()),
    ]
)

# Each part's load into the warehouse, from `{src}` (a registered table or read_parquet(...)):
# the parameters are always (usage_date, run_id).
_LOADS = {
    "organizations": "INSERT INTO raw.organizations BY NAME "
    "SELECT ?::DATE AS usage_date, *, ? AS run_id FROM {src}",
    "targets": "INSERT INTO raw.targets BY NAME SELECT ?::DATE AS usage_date, *, ? AS run_id "
    "FROM {src}",
    "quarantine": "INSERT INTO ops.quarantine BY NAME SELECT ?::DATE AS usage_date, *, "
    "'record' AS stage, ? AS run_id, now() AS recorded_at FROM {src}",
    "normalized": "INSERT INTO ops.normalized_values BY NAME SELECT ?::DATE AS usage_date, *, "
    "? AS run_id, now() AS recorded_at FROM {src}",
    "extractions": "INSERT INTO ops.extractions BY NAME SELECT ?::DATE AS usage_date, *, "
    "now() AS extracted_at, ? AS run_id FROM {src}",
}


def snapshot_parts(snapshots: list[Snapshot]) -> dict[str, pa.Table]:
    """The snapshots as one Arrow table per part of SNAPSHOT_PARTS (parts without rows left
    out, except `extractions`, which has a row per snapshot)."""
    parts: dict[str, pa.Table] = {}
    issues: dict[str, list[pa.Table]] = {"quarantine": [], "normalized": []}
    for entity, table in _RAW_TABLES.items():
        batches = [(s.partner_id, batch) for s in snapshots for batch in s.batches[entity]]
        rows = [
            b.rows.append_column(
                "partner_id", pa.repeat(pa.scalar(p, pa.string()), b.rows.num_rows)
            )
            for p, b in batches
            if b.rows.num_rows
        ]
        if rows:
            parts[table.removeprefix("raw.")] = pa.concat_tables(rows)
        issues["quarantine"] += [_issues(b.bad, p, entity) for p, b in batches if len(b.bad)]
        issues["normalized"] += [
            _issues(b.normalized, p, entity) for p, b in batches if len(b.normalized)
        ]
    parts |= {part: pa.concat_tables(tables) for part, tables in issues.items() if tables}
    parts["extractions"] = pa.table(
        {
            "partner_id": pa.array([s.partner_id for s in snapshots], pa.string()),
            "organizations_received": pa.array(
                [s.received["organization"] for s in snapshots], pa.int64()
            ),
            "targets_received": pa.array([s.received["target"] for s in snapshots], pa.int64()),
            "pages": pa.array([s.pages for s in snapshots], pa.int32()),
        }
    )
    return parts


def _issues(frame: pd.DataFrame, partner_id: str, entity: str) -> pa.Table:
    """Quarantine or normalized rows of one batch (QUARANTINE_COLUMNS) as `_ISSUE_SCHEMA`."""
    n = len(frame)
    return pa.table(
        {
            "partner_id": pa.repeat(pa.scalar(partner_id, pa.string()), n),
            "entity": pa.repeat(pa.scalar(entity, pa.string()), n),
            "record_id": pa.array(frame["record_id"].astype(object), pa.string(), from_pandas=True),
            "page_no": pa.array(frame["page_no"], pa.int64()),
            "page_row": pa.array(frame["page_row"], pa.int64()),
            "reason": pa.array(frame["reason"].astype(object), pa.string()),
        },
        schema=_ISSUE_SCHEMA,
    )


def load_snapshot_parts(
    cur: duckdb.DuckDBPyConnection,
    usage_date: dt.date,
    sources: dict[str, str],
    partner_ids: list[str],
    run_id: str,
    *,
    replacing: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Within the caller's transaction: replace the partner-dates' snapshots (those of
    `partner_ids` in `replacing` had one: `extracted_partners`) by the parts in `sources`, each
    a relation SQL can read from (a registered table, a `read_parquet(...)`); a part without a
    source has no rows. The one load shared by in-process extraction and staged shards."""
    replaced = sorted(set(partner_ids) & set(replacing))
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
    for part, src in sources.items():
        cur.execute(_LOADS[part].format(src=src), [usage_date, run_id])


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
    parts = snapshot_parts(snapshots)
    with closing(con.cursor()) as cur, transaction(cur):
        for part, table in parts.items():
            cur.register(f"snapshot_{part}", table)
        load_snapshot_parts(
            cur,
            usage_date,
            {part: f"snapshot_{part}" for part in parts},
            [s.partner_id for s in snapshots],
            run_id,
            replacing=replacing,
        )


@dataclass
class WarehouseSink:
    """Where in-process extraction puts complete snapshots: straight into the warehouse,
    replacing those the date had when the sink was made."""

    con: duckdb.DuckDBPyConnection
    usage_date: dt.date
    run_id: str
    existing: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.existing = extracted_partners(self.con, self.usage_date)

    def write(self, snapshots: list[Snapshot]) -> None:
        write_snapshots(self.con, self.usage_date, snapshots, self.run_id, replacing=self.existing)


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
