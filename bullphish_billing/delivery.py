"""Delivery to KaseyaOne: the outbox, Idempotency-Keys, and recording the answers.

The protocol (docs/billing-rules.md rules 8-9):
1. `plan` compares each partner-date's metrics with what KaseyaOne last acknowledged
   (`ops.acknowledged_metrics`) and writes the difference, in batches of at most 1000, to
   `ops.outbox` as *pending*, BEFORE anything is sent. Unchanged numbers plan nothing.
2. `send_pending` sends every pending batch (oldest first) and records the answers, with
   the batches they acknowledge, in one transaction once every batch has been sent (or the
   stage stops). A crash before that leaves their batches pending; the next run sends them
   again with the same keys, which KaseyaOne answers as replays: one bill, not two.
3. An answer that breaks the contract (its accepted + rejected is not the batch size, say)
   acknowledges nothing: the partner-date fails, and the batch stays pending, to be sent
   again under the same key until KaseyaOne's answer accounts for every metric.

The Idempotency-Key is derived from the batch content and the key of the partner-date's last
settled batch, so a repeat of the same change gets the same key, while a later change back to
earlier numbers (A, then B, then A again) gets a new one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import orjson
import pyarrow as pa

from bullphish_billing import lease
from bullphish_billing.clients import (
    ApiError,
    ContractViolationError,
    FinalApiError,
    KaseyaOneClient,
)
from bullphish_billing.crashpoints import crashpoint
from bullphish_billing.results import BatchStatus
from bullphish_billing.warehouse.db import fetch_all, transaction

log = logging.getLogger(__name__)
PENDING = str(BatchStatus.PENDING)

MODULE = "bullphish-id"
MAX_BATCH = 1000


@dataclass
class DeliveryReport:
    """Per partner-date: metrics sent, rejected, batches still pending, final errors."""

    sent: dict[tuple[dt.date, str], int] = field(default_factory=lambda: defaultdict(int))
    rejected: dict[tuple[dt.date, str], int] = field(default_factory=lambda: defaultdict(int))
    pending: dict[tuple[dt.date, str], int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[tuple[dt.date, str], str] = field(default_factory=dict)
    batches_sent: int = 0
    replays: int = 0


def idempotency_key(payload: dict, parent: str) -> str:
    """A key from the batch content and the last settled batch of the partner-date."""
    canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(parent.encode() + b"\n" + canonical).hexdigest()
    return f"bpb1-{payload['usage_date']}-{digest[:48]}"


def plan(
    con: duckdb.DuckDBPyConnection,
    usage_date: dt.date,
    partner_ids: list[str],
    run_id: str,
    *,
    force: bool = False,
) -> int:
    """Write the batches that bring KaseyaOne up to date for these partner-dates; return how
    many batches were planned. Metrics equal to the acknowledged ones are not sent again,
    unless `force`: then every current metric is planned (a forced re-send). Its keys are new
    all the same, because the parent key is the last settled batch, so KaseyaOne applies the
    re-send instead of answering it as a replay; the upsert makes that safe."""
    if not partner_ids:
        return 0
    changed = con.execute(
        """
        SELECT m.partner_id, m.organization_id, m.billing_type, m.units
        FROM main.billing_metrics m
        LEFT JOIN ops.acknowledged_metrics a
               USING (usage_date, partner_id, organization_id, billing_type)
        WHERE m.usage_date = $d AND list_contains($p, m.partner_id)
          AND ($force OR a.units IS DISTINCT FROM m.units)
        ORDER BY m.partner_id, m.organization_id, m.billing_type
        """,
        {"d": usage_date, "p": partner_ids, "force": force},
    ).df()
    if changed.empty:
        return 0
    parents = _last_settled_keys(con, usage_date, sorted(set(changed["partner_id"])))
    outbox: list[OutboxBatch] = []
    for partner_id, metrics in changed.groupby("partner_id", sort=True):
        parent = parents.get(str(partner_id), "genesis")
        rows = metrics[["organization_id", "billing_type", "units"]].to_dict("records")
        outbox += batches(usage_date, str(partner_id), rows, parent)
    with transaction(con):  # every batch of every partner-date, in one statement
        write_outbox(con, usage_date, outbox, run_id)
    return len(outbox)


@dataclass(frozen=True)
class OutboxBatch:
    """One batch to write to the outbox: its key, partner, number, payload and size."""

    idempotency_key: str
    partner_id: str
    batch_no: int
    payload: dict
    metrics: list[dict]


def batches(
    usage_date: dt.date, partner_id: str, rows: list[dict], parent: str
) -> list[OutboxBatch]:
    """A partner-date's metrics (organization_id, billing_type, units) in batches of at most
    MAX_BATCH, each keyed from its content and `parent` (the last settled batch's key, or
    another salt that makes the key new: a reconciliation's repair uses its check id)."""
    result = []
    for batch_no, start in enumerate(range(0, len(rows), MAX_BATCH)):
        chunk = [
            {
                "organization_id": r["organization_id"],
                "billing_type": r["billing_type"],
                "units": int(r["units"]),
            }
            for r in rows[start : start + MAX_BATCH]
        ]
        payload = {
            "module": MODULE,
            "partner_id": partner_id,
            "usage_date": usage_date.isoformat(),
            "metrics": chunk,
        }
        key = idempotency_key(payload, f"{parent}#{batch_no}")
        result.append(OutboxBatch(key, partner_id, batch_no, payload, chunk))
    return result


def write_outbox(
    con: duckdb.DuckDBPyConnection, usage_date: dt.date, outbox: list[OutboxBatch], run_id: str
) -> None:
    """Write the batches of one date to the outbox as pending, in one statement (a batch
    already there, same key, is left as it is), in the caller's transaction."""
    if not outbox:
        return
    planned = pa.table(
        {
            "idempotency_key": [b.idempotency_key for b in outbox],
            "partner_id": [b.partner_id for b in outbox],
            "batch_no": pa.array([b.batch_no for b in outbox], pa.int32()),
            "payload": [orjson.dumps(b.payload).decode() for b in outbox],
            "metrics": pa.array([len(b.metrics) for b in outbox], pa.int32()),
        }
    )
    con.register("planned", planned)
    con.execute(
        """
        INSERT INTO ops.outbox (idempotency_key, usage_date, partner_id, batch_no,
            payload, metrics, status, attempts, created_at, run_id)
        SELECT idempotency_key, ?, partner_id, batch_no, payload, metrics, ?, 0, now(), ?
        FROM planned
        ON CONFLICT DO NOTHING
        """,
        [usage_date, PENDING, run_id],
    )
    con.unregister("planned")


def plan_interrupted(
    con: duckdb.DuckDBPyConnection, run_id: str, *, leases: lease.RunLeases | None = None
) -> int:
    """Plan what an earlier run computed but never wrote to the outbox (rule 9).

    That run died between computing a partner-date's metrics and planning them: it is not a
    dry run, it never finished (`ops.runs.finished_at` is NULL), its metrics are still the
    current ones, and it wrote no outbox batch for that partner-date. Those partner-dates are
    planned now, under `run_id`, against what KaseyaOne acknowledged; return how many batches.
    """
    rows = fetch_all(
        con,
        """
        SELECT DISTINCT m.usage_date, m.partner_id
        FROM main.billing_metrics m
        JOIN ops.runs r ON r.run_id = m.run_id
        WHERE NOT r.dry_run AND r.finished_at IS NULL AND m.run_id <> $run
          AND NOT EXISTS (
              SELECT 1 FROM ops.outbox o
              WHERE o.run_id = m.run_id AND o.usage_date = m.usage_date
                AND o.partner_id = m.partner_id)
        ORDER BY ALL
        """,
        {"run": run_id},
    )
    by_date: dict[dt.date, list[str]] = defaultdict(list)
    for usage_date, partner_id in rows:
        # a run that holds the partner-date's lease is alive, not interrupted: its own to plan
        if leases is None or leases.free_or_ours(lease.partner_date(usage_date, partner_id)):
            by_date[usage_date].append(partner_id)
    return sum(plan(con, day, partners, run_id) for day, partners in by_date.items())


def _last_settled_keys(
    con: duckdb.DuckDBPyConnection, usage_date: dt.date, partner_ids: list[str]
) -> dict[str, str]:
    """Per partner, the key of the partner-date's last settled (answered) batch."""
    rows = fetch_all(
        con,
        """
        SELECT partner_id,
               arg_max(idempotency_key, (answered_at, batch_no)) AS key
        FROM ops.outbox
        WHERE usage_date = $d AND list_contains($p, partner_id) AND status <> $pending
        GROUP BY partner_id
        """,
        {"d": usage_date, "p": partner_ids, "pending": PENDING},
    )
    return dict(rows)


def pending_batches(
    con: duckdb.DuckDBPyConnection, partner_ids: list[str] | None = None
) -> list[tuple[str, dt.date, str, str]]:
    """Pending batches, oldest first: (key, usage_date, partner_id, payload JSON)."""
    rows = fetch_all(
        con,
        """
        SELECT idempotency_key, usage_date, partner_id, payload::VARCHAR FROM ops.outbox
        WHERE status = $pending AND ($p IS NULL OR list_contains($p, partner_id))
        ORDER BY created_at, usage_date, partner_id, batch_no
        """,
        {"p": partner_ids, "pending": PENDING},
    )
    return rows


def pending_partner_dates(con: duckdb.DuckDBPyConnection) -> list[tuple[dt.date, str, int]]:
    """Partner-dates with batches still pending: (usage_date, partner_id, batches)."""
    return fetch_all(
        con,
        "SELECT usage_date, partner_id, count(*) FROM ops.outbox WHERE status = ? "
        "GROUP BY ALL ORDER BY ALL",
        [PENDING],
    )


async def send_pending(
    client: KaseyaOneClient,
    con: duckdb.DuckDBPyConnection,
    *,
    partner_ids: list[str] | None = None,
    report: DeliveryReport | None = None,
    leases: lease.RunLeases | None = None,
    crash: Callable[[str], None] = crashpoint,
) -> DeliveryReport:
    """Send every pending batch and record the answers; partner-dates go side by side, the
    batches of one partner-date one after another, oldest first. With the run's `leases`, a
    partner-date another live run holds is left to that run. `crash` is the crash-point hook
    (crashpoints.py)."""
    report = report or DeliveryReport()
    answers: list[_Answer] = []
    groups: dict[tuple[dt.date, str], list[tuple[str, str]]] = defaultdict(list)
    for key, usage_date, partner_id, payload in pending_batches(con, partner_ids):
        groups[(usage_date, partner_id)].append((key, payload))

    async def deliver(group: tuple[dt.date, str], batches: list[tuple[str, str]]) -> None:
        if leases is None:
            await deliver_group(group, batches)
            return
        # in a leased run, a partner-date another live run holds is that run's to send
        with leases.borrowed(lease.partner_date(*group)) as ours:
            if ours:
                await deliver_group(group, batches)
            else:
                log.info("%s %s: left to the run that holds it", group[0], group[1])

    async def deliver_group(group: tuple[dt.date, str], batches: list[tuple[str, str]]) -> None:
        for position, (key, payload_text) in enumerate(batches):
            payload = orjson.loads(payload_text)
            _mark_attempt(con, key)
            try:
                result = await client.report_usage(payload, key)
            except ContractViolationError as exc:
                # KaseyaOne's answer does not say what it holds (it does not add up, or is
                # unreadable): not acknowledged. The batch stays pending and the next run
                # sends it again under the same key, which KaseyaOne answers as a replay.
                _record_transient(con, key, exc)
                report.errors[group] = str(exc)
                report.pending[group] += len(batches) - position
                return
            except FinalApiError as exc:
                _record_failure(con, key, exc)
                report.errors[group] = str(exc)
                report.pending[group] += len(batches) - position - 1
                # a later batch may depend on nothing here, but keep order: stop this group
                return
            except ApiError as exc:
                _record_transient(con, key, exc)
                report.errors[group] = str(exc)
                report.pending[group] += len(batches) - position
                return
            crash("after-send")  # a crash here leaves the batch pending: re-sent, replayed
            answers.append(
                _Answer(
                    key, payload, result.status, result.accepted, result.rejected, result.replayed
                )
            )
            report.batches_sent += 1
            report.replays += int(result.replayed)
            report.sent[group] += len(payload["metrics"])
            report.rejected[group] += len(result.rejected)
            crash("between-batches")

    try:
        await asyncio.gather(*(deliver(g, b) for g, b in groups.items()))
    finally:  # what was answered is recorded, whatever stopped the stage
        _record_answers(con, answers)
    return report


def _mark_attempt(con: duckdb.DuckDBPyConnection, key: str) -> None:
    con.execute("UPDATE ops.outbox SET attempts = attempts + 1 WHERE idempotency_key = ?", [key])


def _record_failure(con: duckdb.DuckDBPyConnection, key: str, exc: ApiError) -> None:
    con.execute(
        "UPDATE ops.outbox SET status = ?, http_status = ?, error = ?, "
        "answered_at = now() WHERE idempotency_key = ?",
        [str(BatchStatus.FAILED), exc.status, str(exc), key],
    )


def _record_transient(con: duckdb.DuckDBPyConnection, key: str, exc: ApiError) -> None:
    con.execute(
        "UPDATE ops.outbox SET http_status = ?, error = ? WHERE idempotency_key = ?",
        [exc.status, str(exc), key],
    )


@dataclass(frozen=True)
class _Answer:
    """KaseyaOne's answer to one batch, until it is recorded."""

    key: str
    payload: dict
    status: int
    accepted: int
    rejected: list[tuple[int, str]]
    replayed: bool


def _record_answers(con: duckdb.DuckDBPyConnection, answers: list[_Answer]) -> None:
    """Mark the batches acknowledged, store their rejections and what KaseyaOne now holds,
    in one transaction. Where two batches answered the same metric, the later one holds."""
    if not answers:
        return
    batches = pa.table(
        {
            "idempotency_key": [a.key for a in answers],
            "http_status": pa.array([a.status for a in answers], pa.int32()),
            "accepted": pa.array([a.accepted for a in answers], pa.int64()),
            "rejected": pa.array([len(a.rejected) for a in answers], pa.int64()),
            "replayed": [a.replayed for a in answers],
        }
    )
    metrics = pa.concat_tables([_answered_metrics(order, a) for order, a in enumerate(answers)])
    with transaction(con):
        con.register("answered_batches", batches)
        con.execute(
            """
            UPDATE ops.outbox AS o
            SET status = ?, http_status = a.http_status, accepted = a.accepted,
                rejected = a.rejected, replayed = a.replayed, error = NULL, answered_at = now()
            FROM answered_batches AS a
            WHERE o.idempotency_key = a.idempotency_key
            """,
            [str(BatchStatus.ACKNOWLEDGED)],
        )
        con.unregister("answered_batches")
        con.register("answered", metrics)
        if any(a.rejected for a in answers):
            con.execute(
                """
                INSERT OR REPLACE INTO ops.rejected_metrics
                SELECT idempotency_key, metric_index, usage_date, partner_id, organization_id,
                       billing_type, units, rejected_reason, now()
                FROM answered WHERE rejected_reason IS NOT NULL
                """
            )
        con.execute(
            """
            INSERT OR REPLACE INTO ops.acknowledged_metrics
            SELECT usage_date, partner_id, organization_id, billing_type, units,
                   rejected_reason IS NULL, rejected_reason, idempotency_key, now()
            FROM answered
            QUALIFY row_number() OVER (
                PARTITION BY usage_date, partner_id, organization_id, billing_type
                ORDER BY answer_order DESC) = 1
            """
        )
        con.unregister("answered")


def _answered_metrics(order: int, answer: _Answer) -> pa.Table:
    metrics = answer.payload["metrics"]
    reasons = dict(answer.rejected)
    n = len(metrics)
    return pa.table(
        {
            "answer_order": pa.array([order] * n, pa.int32()),
            "idempotency_key": pa.array([answer.key] * n, pa.string()),
            "usage_date": pa.array([dt.date.fromisoformat(answer.payload["usage_date"])] * n),
            "partner_id": pa.array([answer.payload["partner_id"]] * n, pa.string()),
            "metric_index": pa.array(range(n), pa.int32()),
            "organization_id": pa.array([m["organization_id"] for m in metrics], pa.string()),
            "billing_type": pa.array([m["billing_type"] for m in metrics], pa.string()),
            "units": pa.array([m["units"] for m in metrics], pa.int64()),
            "rejected_reason": pa.array([reasons.get(i) for i in range(n)], pa.string()),
        }
    )


def standing_rejections(
    con: duckdb.DuckDBPyConnection, usage_date: dt.date, partner_ids: list[str]
) -> dict[str, int]:
    """Per partner, the current metrics of the date that KaseyaOne rejected (now or before)."""
    rows = fetch_all(
        con,
        """
        SELECT m.partner_id, count(*)
        FROM main.billing_metrics m
        JOIN ops.acknowledged_metrics a
          USING (usage_date, partner_id, organization_id, billing_type, units)
        WHERE m.usage_date = $d AND list_contains($p, m.partner_id) AND NOT a.accepted
        GROUP BY m.partner_id
        """,
        {"d": usage_date, "p": partner_ids},
    )
    return dict(rows)
