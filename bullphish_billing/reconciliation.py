"""Reconciliation with KaseyaOne: does it still hold what it acknowledged? (rule 11)

A check reads, per partner-date, what KaseyaOne holds (`GET /v1/billing/usage`, page by page
into a temporary DuckDB table) and compares it in SQL (`sql/reconciliation/*.sql`) with the
accepted rows of `ops.acknowledged_metrics`, metric by metric: match, missing_at_kaseyaone,
differs, or unexpected_at_kaseyaone. Every check of a partner-date is a row of
`ops.reconciliation`, every metric not as acknowledged a row of
`ops.reconciliation_differences`. A partner-date whose read fails (after the client's retries)
is recorded `failed` with the error, and the others go on.

Repair (`plan_repairs`), made by the next daily run and never by the on-demand command: a metric
missing or differing at KaseyaOne is re-sent once with the acknowledged units under a new
Idempotency-Key (the outbox key is derived from the content, so the same content under the
old parent would be answered as a replay and store nothing: the key is salted with the check
id), and the difference row records the re-send (`repaired_by`, `repaired_at`). A metric
KaseyaOne holds that we never acknowledged is reported, never deleted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from bullphish_billing import delivery
from bullphish_billing.clients import ApiError, ContractViolationError, KaseyaOneClient
from bullphish_billing.text import bounded
from bullphish_billing.warehouse import sqlfiles
from bullphish_billing.warehouse.db import fetch_all, transaction

log = logging.getLogger(__name__)

MISSING = "missing_at_kaseyaone"
DIFFERS = "differs"
UNEXPECTED = "unexpected_at_kaseyaone"
DIFFERENCES = (MISSING, DIFFERS, UNEXPECTED)

CLEAN, WITH_DIFFERENCES, FAILED = "clean", "differences", "failed"

PartnerDate = tuple[dt.date, str]

_HELD_SCHEMA = pa.schema(
    [
        ("usage_date", pa.date32()),
        ("partner_id", pa.string()),
        ("organization_id", pa.string()),
        ("billing_type", pa.string()),
        ("units", pa.int64()),
        ("received_at", pa.string()),
    ]
)


@dataclass(frozen=True)
class Check:
    """One partner-date of a reconciliation (a row of ops.reconciliation)."""

    usage_date: dt.date
    partner_id: str
    status: str
    matched: int = 0
    missing: int = 0
    differing: int = 0
    unexpected: int = 0
    error: str | None = None

    @property
    def differences(self) -> int:
        return self.missing + self.differing + self.unexpected


@dataclass
class ReconcileReport:
    """A reconciliation pass: its checks, the re-sends it made, what it left unchecked."""

    check_id: str
    checks: list[Check] = field(default_factory=list)
    repaired: int = 0
    """Metrics re-sent before the check (the repair of the previous check's findings)."""
    in_flight: list[PartnerDate] = field(default_factory=list)
    """Partner-dates not checked: a batch of theirs is still pending (sent perhaps, its answer
    not recorded), so what KaseyaOne holds may be newer than what it acknowledged."""
    error: str | None = None
    """Why the reconciliation as a whole failed (the warehouse, say), if it did."""
    seconds: float = 0.0

    @property
    def differences(self) -> int:
        return sum(c.differences for c in self.checks)

    @property
    def failed(self) -> int:
        return sum(c.status == FAILED for c in self.checks) + (self.error is not None)

    @property
    def exit_code(self) -> int:
        return 1 if self.differences or self.failed else 0

    def one_line(self) -> str:
        """For example `8 partner-date(s) checked: 7 clean, 1 with differences; 3 differences
        (2 missing at KaseyaOne, 1 differs, 0 unexpected)`."""
        counts: dict[str, int] = defaultdict(int)
        for c in self.checks:
            counts[c.status] += 1
        parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        text = f"{len(self.checks)} partner-date(s) checked" + (f": {parts}" if parts else "")
        text += (
            f"; {self.differences} difference(s) ({sum(c.missing for c in self.checks)} missing "
            f"at KaseyaOne, {sum(c.differing for c in self.checks)} differ, "
            f"{sum(c.unexpected for c in self.checks)} unexpected)"
        )
        if self.repaired:
            text += f"; {self.repaired} metric(s) re-sent"
        if self.in_flight:
            text += f"; {len(self.in_flight)} with a batch pending, not checked"
        if self.error:
            text += f"; failed: {self.error}"
        return text

    def partners_to_look_at(self) -> frozenset[str]:
        """The partners with a difference or a failed check, on any date of this pass."""
        return frozenset(c.partner_id for c in self.checks if c.differences or c.status == FAILED)

    def rows(self) -> list[dict[str, Any]]:
        """The checks that are not clean, ids and numbers only (for an artifact)."""
        return [
            {
                "usage_date": c.usage_date.isoformat(),
                "partner_id": c.partner_id,
                "status": c.status,
                "matched": c.matched,
                "missing_at_kaseyaone": c.missing,
                "differs": c.differing,
                "unexpected_at_kaseyaone": c.unexpected,
                "error": c.error or "",
            }
            for c in self.checks
            if c.status != CLEAN
        ]


def new_check_id() -> str:
    return f"chk-{uuid.uuid4()}"


def partner_dates(
    con: duckdb.DuckDBPyConnection,
    dates: Sequence[dt.date],
    partner_ids: Sequence[str] | None = None,
) -> tuple[list[PartnerDate], list[PartnerDate]]:
    """(to check, in flight) among the partner-dates of `dates` that KaseyaOne acknowledged
    metrics of, or that were sent a batch (sql/reconciliation/partner_dates.sql)."""
    rows = fetch_all(
        con,
        sqlfiles.text("reconciliation/partner_dates"),
        {"dates": list(dates), "p": list(partner_ids) if partner_ids else None},
    )
    return [(d, p) for d, p, busy in rows if not busy], [(d, p) for d, p, busy in rows if busy]


async def check(
    client: KaseyaOneClient,
    con: duckdb.DuckDBPyConnection,
    pairs: Sequence[PartnerDate],
    *,
    check_id: str,
    run_id: str | None = None,
    concurrency: int = 4,
    on_checked: Callable[[PartnerDate], None] | None = None,
) -> list[Check]:
    """Read what KaseyaOne holds for each partner-date (a few side by side, each list's pages
    appended to a temporary table as they come), compare it with what it acknowledged, and
    record the check (ops.reconciliation, ops.reconciliation_differences). `on_checked` is
    called as each partner-date has been read (progress)."""
    con.execute(
        "CREATE OR REPLACE TEMPORARY TABLE reconcile_held (usage_date DATE, partner_id VARCHAR, "
        "organization_id VARCHAR, billing_type VARCHAR, units BIGINT, received_at TIMESTAMPTZ)"
    )
    checked: list[tuple[dt.date, str, dt.datetime, str | None]] = []
    gate = asyncio.Semaphore(max(1, concurrency))
    held = _HeldBuffer(con)

    async def read(pair: PartnerDate) -> None:
        usage_date, partner_id = pair
        async with gate:
            read_at = dt.datetime.now(dt.UTC)
            error = None
            try:
                pages = await _read_held(client, usage_date, partner_id)
            except ApiError as exc:  # after the client's retries; redacted by the client
                error = bounded(str(exc))
                log.warning("reconcile %s %s: KaseyaOne not read: %s", *pair, error)
            else:
                held.add(pages)  # whole partner-dates only: a failed read leaves nothing
            checked.append((usage_date, partner_id, read_at, error))
        if on_checked is not None:
            on_checked(pair)

    await asyncio.gather(*(read(p) for p in pairs))
    held.flush()
    return record(con, checked, check_id=check_id, run_id=run_id)


class _HeldBuffer:
    """What KaseyaOne holds, appended to reconcile_held in batches of about BATCH_ROWS rows (one
    INSERT per batch, not per page: each INSERT blocks the event loop that reads the pages)."""

    BATCH_ROWS = 50_000

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.tables: list[pa.Table] = []
        self.rows = 0

    def add(self, tables: list[pa.Table]) -> None:
        self.tables += tables
        self.rows += sum(t.num_rows for t in tables)
        if self.rows >= self.BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            self.tables.clear()
            return
        self.con.register("held_pages", pa.concat_tables(self.tables))
        self.con.execute(
            "INSERT INTO reconcile_held SELECT usage_date, partner_id, organization_id, "
            "billing_type, units, TRY_CAST(received_at AS TIMESTAMPTZ) FROM held_pages"
        )
        self.con.unregister("held_pages")
        self.tables.clear()
        self.rows = 0


async def _read_held(
    client: KaseyaOneClient, usage_date: dt.date, partner_id: str
) -> list[pa.Table]:
    """What KaseyaOne holds for the partner-date, a table per page."""
    return [
        _page_table(page.records, usage_date, partner_id)
        async for page in client.stored_usage_pages(partner_id, usage_date)
    ]


def _page_table(records: list[Any], usage_date: dt.date, partner_id: str) -> pa.Table:
    """A page of StoredMetric records as columns, or ContractViolationError for a record that
    is not one of the partner-date asked for: a column at a time (Arrow checks the types), and
    record by record only to name the first bad one."""
    try:
        organizations = pa.array([r["organization_id"] for r in records], pa.string())
        billing_types = pa.array([r["billing_type"] for r in records], pa.string())
        received = pa.array([r["received_at"] for r in records], pa.string())
        units = [r["units"] for r in records]
        fine = (
            {r["partner_id"] for r in records} <= {partner_id}
            and {r["usage_date"] for r in records} <= {usage_date.isoformat()}
            and all(type(u) is int for u in units)
            and organizations.null_count == billing_types.null_count == received.null_count == 0
        )
        if fine:
            n = len(records)
            return pa.table(
                [
                    pa.array([usage_date] * n, pa.date32()),
                    pa.array([partner_id] * n, pa.string()),
                    organizations,
                    billing_types,
                    pa.array(units, pa.int64()),
                    received,
                ],
                schema=_HELD_SCHEMA,
            )
    except (KeyError, TypeError, pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    return _page_table_exact(records, usage_date, partner_id)


def _page_table_exact(records: list[Any], usage_date: dt.date, partner_id: str) -> pa.Table:
    """`_page_table` record by record: the same table, or the error naming the first record
    that is not a StoredMetric of the partner-date."""
    day = usage_date.isoformat()
    columns: dict[str, list[Any]] = {name: [] for name in _HELD_SCHEMA.names}
    for index, record in enumerate(records):
        r = record if isinstance(record, dict) else {}
        units = r.get("units")
        if not (
            r.get("partner_id") == partner_id
            and r.get("usage_date") == day
            and isinstance(r.get("organization_id"), str)
            and isinstance(r.get("billing_type"), str)
            and isinstance(units, int)
            and not isinstance(units, bool)
            and isinstance(r.get("received_at"), str)
        ):
            raise ContractViolationError(
                f"stored usage record {index} is not a StoredMetric of {partner_id} on {day}",
                api="kaseyaone",
                method="GET",
                path="/v1/billing/usage",
                status=200,
            )
        columns["usage_date"].append(usage_date)
        columns["partner_id"].append(partner_id)
        columns["organization_id"].append(r["organization_id"])
        columns["billing_type"].append(r["billing_type"])
        columns["units"].append(units)
        columns["received_at"].append(r["received_at"])
    return pa.table(columns, schema=_HELD_SCHEMA)


def record(
    con: duckdb.DuckDBPyConnection,
    checked: Sequence[tuple[dt.date, str, dt.datetime, str | None]],
    *,
    check_id: str,
    run_id: str | None = None,
) -> list[Check]:
    """Compare reconcile_held (what KaseyaOne holds) with what it acknowledged, for the
    partner-dates `checked` ((date, partner, read at, error or None)), and record the check in
    one transaction. Return its checks, by date and partner."""
    con.register(
        "checked_input",
        pa.table(
            {
                "usage_date": pa.array([c[0] for c in checked], pa.date32()),
                "partner_id": pa.array([c[1] for c in checked], pa.string()),
                "checked_at": pa.array([c[2] for c in checked], pa.timestamp("us", tz="UTC")),
                "error": pa.array([c[3] for c in checked], pa.string()),
            }
        ),
    )
    con.execute("CREATE OR REPLACE TEMPORARY TABLE reconcile_checked AS FROM checked_input")
    con.unregister("checked_input")
    con.execute(
        "CREATE TEMPORARY TABLE IF NOT EXISTS reconcile_held (usage_date DATE, partner_id "
        "VARCHAR, organization_id VARCHAR, billing_type VARCHAR, units BIGINT, "
        "received_at TIMESTAMPTZ)"
    )
    con.execute(sqlfiles.text("reconciliation/compare"))
    params = {"check": check_id, "run": run_id}
    with transaction(con):
        con.execute(sqlfiles.text("reconciliation/record_checks"), params)
        con.execute(sqlfiles.text("reconciliation/record_differences"), {"check": check_id})
    rows = fetch_all(
        con,
        "SELECT usage_date, partner_id, status, matched, missing, differing, unexpected, error "
        "FROM ops.reconciliation WHERE check_id = ? ORDER BY usage_date, partner_id",
        [check_id],
    )
    for name in ("reconcile_compared", "reconcile_checked", "reconcile_held"):
        con.execute(f"DROP TABLE IF EXISTS {name}")
    return [
        Check(d, p, s, m or 0, mi or 0, di or 0, u or 0, e) for d, p, s, m, mi, di, u, e in rows
    ]


def repaired_by_run(con: duckdb.DuckDBPyConnection, run_id: str) -> set[PartnerDate]:
    """The partner-dates whose differences the run `run_id` re-sent (`plan_repairs`)."""
    rows = fetch_all(
        con,
        "SELECT DISTINCT o.usage_date, o.partner_id FROM ops.outbox AS o "
        "JOIN ops.reconciliation_differences AS d ON d.repaired_by = o.idempotency_key "
        "WHERE o.run_id = ?",
        [run_id],
    )
    return {(d, p) for d, p in rows}


def plan_repairs(con: duckdb.DuckDBPyConnection, dates: Sequence[dt.date], run_id: str) -> int:
    """Write to the outbox, as pending, the re-send of every open difference of `dates` that
    is ours to repair (sql/reconciliation/repairs.sql), and record it on the difference row,
    in one transaction; return how many metrics. The key of a re-send is salted with the check
    that found it: new to KaseyaOne (so it stores it), and the same if this is planned again."""
    rows = fetch_all(con, sqlfiles.text("reconciliation/repairs"), {"dates": list(dates)})
    if not rows:
        return 0
    groups: dict[tuple[str, dt.date, str], list[dict]] = defaultdict(list)
    for check_id, usage_date, partner_id, organization_id, billing_type, units in rows:
        groups[(check_id, usage_date, partner_id)].append(
            {"organization_id": organization_id, "billing_type": billing_type, "units": units}
        )
    by_date: dict[dt.date, list[delivery.OutboxBatch]] = defaultdict(list)
    repaired: list[tuple[str, dt.date, str, str, str, str]] = []
    for (check_id, usage_date, partner_id), metrics in groups.items():
        for batch in delivery.batches(usage_date, partner_id, metrics, f"reconcile:{check_id}"):
            by_date[usage_date].append(batch)
            repaired += [
                (
                    check_id,
                    usage_date,
                    partner_id,
                    m["organization_id"],
                    m["billing_type"],
                    batch.idempotency_key,
                )
                for m in batch.metrics
            ]
    marks = pa.table(
        {
            "check_id": [r[0] for r in repaired],
            "usage_date": pa.array([r[1] for r in repaired], pa.date32()),
            "partner_id": [r[2] for r in repaired],
            "organization_id": [r[3] for r in repaired],
            "billing_type": [r[4] for r in repaired],
            "repaired_by": [r[5] for r in repaired],
        }
    )
    with transaction(con):
        for usage_date, outbox in by_date.items():
            delivery.write_outbox(con, usage_date, outbox, run_id)
        con.register("repair_marks", marks)
        con.execute(
            """
            UPDATE ops.reconciliation_differences AS d
            SET repaired_by = m.repaired_by, repaired_at = now()
            FROM repair_marks AS m
            WHERE d.check_id = m.check_id AND d.usage_date = m.usage_date
              AND d.partner_id = m.partner_id AND d.organization_id = m.organization_id
              AND d.billing_type = m.billing_type
            """
        )
        con.unregister("repair_marks")
    log.info("reconciliation: %d metric(s) re-sent to repair the last check", len(repaired))
    return len(repaired)
