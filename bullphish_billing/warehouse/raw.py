"""Writing raw snapshots: what BullPhish ID served for (usage_date, partner), replaced whole.

A snapshot is written in one transaction on its own cursor: the old rows of that partner-date
are deleted, validated batches are appended as pages arrive (bulk, from DataFrames), and the
commit makes the new snapshot visible at once. A failed extract rolls back and leaves the
previous snapshot as it was.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd

from bullphish_billing.validation import ValidatedBatch


class RawSnapshot:
    """The organizations, targets and record-level quarantine of one partner-date."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, usage_date: dt.date, partner_id: str, run_id: str
    ) -> None:
        self._cur = con.cursor()
        self.usage_date = usage_date
        self.partner_id = partner_id
        self.run_id = run_id
        self.received = {"organization": 0, "target": 0}
        self.pages = 0
        self._cur.execute("BEGIN TRANSACTION")
        key = [usage_date, partner_id]
        for table in ("raw.organizations", "raw.targets", "ops.extractions"):
            self._cur.execute(f"DELETE FROM {table} WHERE usage_date = ? AND partner_id = ?", key)
        self._cur.execute(
            "DELETE FROM ops.quarantine WHERE usage_date = ? AND partner_id = ? "
            "AND entity <> 'partner'",
            key,
        )

    def add(self, entity: str, batch: ValidatedBatch, received: int) -> None:
        """Append one validated batch of `received` records of `entity`."""
        self.received[entity] += received
        table = "raw.organizations" if entity == "organization" else "raw.targets"
        if len(batch.good):
            good = batch.good
            cols = ", ".join(good.columns)
            self._cur.register("good_batch", good)
            self._cur.execute(
                f"INSERT INTO {table} (usage_date, partner_id, {cols}, run_id) "
                f"SELECT ?, ?, {cols}, ? FROM good_batch",
                [self.usage_date, self.partner_id, self.run_id],
            )
            self._cur.unregister("good_batch")
        insert_quarantine(
            self._cur, batch.bad, self.usage_date, self.partner_id, entity, "record", self.run_id
        )

    def commit(self) -> None:
        self._cur.execute(
            "INSERT INTO ops.extractions VALUES (?, ?, ?, ?, ?, now(), ?)",
            [
                self.usage_date,
                self.partner_id,
                self.received["organization"],
                self.received["target"],
                self.pages,
                self.run_id,
            ],
        )
        self._cur.execute("COMMIT")
        self._cur.close()

    def rollback(self) -> None:
        try:
            self._cur.execute("ROLLBACK")
        finally:
            self._cur.close()


def insert_quarantine(
    con: duckdb.DuckDBPyConnection,
    bad: pd.DataFrame,
    usage_date: dt.date,
    partner_id: str | None,
    entity: str,
    stage: str,
    run_id: str,
) -> None:
    """Append quarantine rows (record_id, page_no, page_row, reason) in one statement."""
    if not len(bad):
        return
    con.register("bad_batch", bad)
    # a bad partner record belongs to the partner its (well-formed) id names
    owner = "?" if partner_id is not None else "record_id"
    params = [usage_date, partner_id] if partner_id is not None else [usage_date]
    con.execute(
        "INSERT INTO ops.quarantine (usage_date, partner_id, entity, record_id, page_no, "
        f"page_row, stage, reason, run_id, recorded_at) SELECT ?, {owner}, ?, record_id, "
        "page_no, page_row, ?, reason, ?, now() FROM bad_batch",
        [*params, entity, stage, run_id],
    )
    con.unregister("bad_batch")


def replace_partners(
    con: duckdb.DuckDBPyConnection, usage_date: dt.date, batch: ValidatedBatch, run_id: str
) -> None:
    """Replace the partner list of a usage date (and its partner quarantine) in one go."""
    with_cursor = con.cursor()
    try:
        with_cursor.execute("BEGIN TRANSACTION")
        with_cursor.execute("DELETE FROM raw.partners WHERE usage_date = ?", [usage_date])
        with_cursor.execute(
            "DELETE FROM ops.quarantine WHERE usage_date = ? AND entity = 'partner'", [usage_date]
        )
        good = batch.good
        if len(good):
            cols = ", ".join(good.columns)
            with_cursor.register("good_batch", good)
            with_cursor.execute(
                f"INSERT INTO raw.partners (usage_date, {cols}, run_id) "
                f"SELECT ?, {cols}, ? FROM good_batch",
                [usage_date, run_id],
            )
        insert_quarantine(with_cursor, batch.bad, usage_date, None, "partner", "record", run_id)
        with_cursor.execute("COMMIT")
    except BaseException:
        with_cursor.execute("ROLLBACK")
        raise
    finally:
        with_cursor.close()
