"""Raw retention: drop the target snapshots older than BILLING_RAW_RETENTION_DAYS.

`raw.targets` holds one row per user per usage date (about 850,000 a day at scale S), so
without a limit the warehouse grows for ever. At the end of each run that is not a dry run,
after delivery and reconciliation and before the analysts' file is published, `apply` keeps
the snapshots of the N usage dates ending yesterday (UTC) and drops the older ones: rows with
`usage_date < yesterday - (N - 1) days` (`kept_from`). N = 0 keeps every snapshot.

Only `raw.targets` is dropped. What explains a number stays: the counts per reason
(`ops.target_fates`, behind the view `metric_explanations`), the metrics, the run log, the
outbox, `raw.organizations` and `raw.partners` (small, and the views read them).

Each usage date is dropped in one transaction that deletes its rows and records each
partner-date dropped in `ops.raw_retention`: a crash leaves both or neither, and the next run
applies the rule again. A partner-date another run holds (its lease: that run may be billing
it from this very snapshot) is left for a later run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from bullphish_billing import lease
from bullphish_billing.warehouse import sqlfiles
from bullphish_billing.warehouse.db import fetch_all, transaction
from bullphish_billing.warehouse.schema import catalog

CRASH_POINT = "in-retention"
LEASES_PER_TRANSACTION = 256
"""Partner-dates leased (one open file each) and dropped per transaction, at most."""


def kept_from(yesterday: dt.date, retention_days: int) -> dt.date | None:
    """The oldest usage date whose snapshot is kept: `yesterday - (retention_days - 1)`, so
    that the N dates ending yesterday are kept; None when `retention_days` is 0 (keep all)."""
    if retention_days <= 0:
        return None
    return yesterday - dt.timedelta(days=retention_days - 1)


@dataclass
class RetentionReport:
    """What one application of the rule dropped, and what it left to a later run."""

    kept_from: dt.date | None
    retention_days: int
    dropped: dict[dt.date, int] = field(default_factory=dict)
    """raw.targets rows deleted per usage date."""
    partner_dates: int = 0
    left_to_others: int = 0
    """Partner-dates due that another run held: the next run drops them."""

    @property
    def rows(self) -> int:
        return sum(self.dropped.values())

    def one_line(self) -> str:
        if self.kept_from is None:
            return "raw retention off (BILLING_RAW_RETENTION_DAYS=0): every snapshot kept"
        text = (
            f"raw retention {self.retention_days} day(s), kept from {self.kept_from}: "
            f"{self.rows} target row(s) of {len(self.dropped)} date(s) dropped"
        )
        if self.left_to_others:
            text += f"; {self.left_to_others} partner-date(s) held by another run left for later"
        return text


def due(
    con: duckdb.DuckDBPyConnection,
    kept: dt.date,
    usage_date: dt.date | None = None,
    partner_ids: list[str] | None = None,
) -> list[tuple[dt.date, str, int]]:
    """The partner-dates before `kept` whose snapshot is still to drop, with their rows:
    (usage_date, partner_id, targets), oldest first."""
    return [
        (d, p, n)
        for d, p, n in fetch_all(
            con,
            sqlfiles.text("retention/due"),
            {"kept_from": kept, "d": usage_date, "partners": partner_ids},
        )
    ]


def apply(
    con: duckdb.DuckDBPyConnection,
    *,
    yesterday: dt.date,
    retention_days: int,
    run_id: str,
    leases: lease.RunLeases,
    crash: Callable[[str], None] | None = None,
) -> RetentionReport:
    """Drop the target snapshots older than the retention (see the module docstring), one
    transaction per usage date (and per LEASES_PER_TRANSACTION partners), each recorded in
    ops.raw_retention in that same transaction. `crash` is the run's crash-point hook
    (crashpoints.py), called inside the transaction before its COMMIT."""
    kept = kept_from(yesterday, retention_days)
    report = RetentionReport(kept, retention_days)
    if kept is None:
        return report
    by_date: dict[dt.date, list[str]] = {}
    for usage_date, partner_id, _ in due(con, kept):
        by_date.setdefault(usage_date, []).append(partner_id)
    for usage_date, partners in by_date.items():
        for start in range(0, len(partners), LEASES_PER_TRANSACTION):
            chunk = partners[start : start + LEASES_PER_TRANSACTION]
            with _leased(leases, usage_date, chunk) as taken:
                report.left_to_others += len(chunk) - len(taken)
                if taken:
                    rows, n = _drop(con, kept, retention_days, usage_date, taken, run_id, crash)
                    report.partner_dates += n
                    if n:
                        report.dropped[usage_date] = report.dropped.get(usage_date, 0) + rows
    return report


@contextmanager
def _leased(
    leases: lease.RunLeases, usage_date: dt.date, partner_ids: list[str]
) -> Iterator[list[str]]:
    """For a block, the partners of `partner_ids` whose partner-date lease is this run's or
    free (taken without waiting; those taken here are given back at the end)."""
    taken: list[str] = []
    borrowed: list[lease.Key] = []
    try:
        for partner_id in partner_ids:
            key = lease.partner_date(usage_date, partner_id)
            if leases.holds(key):
                taken.append(partner_id)
            elif leases.try_acquire(key):
                borrowed.append(key)
                taken.append(partner_id)
        yield taken
    finally:
        for key in borrowed:
            leases.release(key)


def _drop(
    con: duckdb.DuckDBPyConnection,
    kept: dt.date,
    retention_days: int,
    usage_date: dt.date,
    partner_ids: list[str],
    run_id: str,
    crash: Callable[[str], None] | None,
) -> tuple[int, int]:
    """In one transaction: record the partner-dates' drop in ops.raw_retention (counted in
    the transaction, under their leases) and delete their raw.targets rows. Returns (rows
    deleted, partner-dates recorded)."""
    with closing(con.cursor()) as cur, transaction(cur):
        dropping = due(cur, kept, usage_date, partner_ids)
        if not dropping:
            return 0, 0
        cur.register(
            "dropping",
            pa.table(
                {
                    "usage_date": [d for d, _, _ in dropping],
                    "partner_id": [p for _, p, _ in dropping],
                    "targets": pa.array([n for _, _, n in dropping], pa.int64()),
                }
            ),
        )
        cur.execute(
            "INSERT INTO ops.raw_retention SELECT usage_date, partner_id, targets, ?, ?, now(), ? "
            "FROM dropping",
            [retention_days, kept, run_id],
        )
        deleted = cur.execute(
            "DELETE FROM raw.targets WHERE usage_date = ? AND list_contains(?, partner_id)",
            [usage_date, [p for _, p, _ in dropping]],
        ).fetchall()[0][0]
        cur.unregister("dropping")
        if crash is not None:
            crash(CRASH_POINT)
        return deleted, len(dropping)


def snapshot_dropped(
    con: duckdb.DuckDBPyConnection, usage_date: dt.date, partner_id: str
) -> dict[str, object] | None:
    """The latest drop of the partner-date's target snapshot when no extraction followed it
    (dropped_at, retention_days, kept_from, targets_dropped); None while it is kept, and in
    a warehouse written before schema version 4 (no ops.raw_retention: nothing dropped)."""
    if "ops.raw_retention" not in catalog(con):
        return None
    cur = con.execute(sqlfiles.text("retention/snapshot"), {"d": usage_date, "p": partner_id})
    names = [d[0] for d in cur.description]
    row = cur.fetchone()
    return dict(zip(names, row, strict=True)) if row else None
