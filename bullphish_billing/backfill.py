"""Backfills: the daily flow for every date of a range, oldest first, a few dates at a time.

What a backfill promises (the flow `backfill` in flows/backfill.py wires these functions):

- Each date is billed by the daily flow with that date's `as_of`, never today's state.
- Idempotent: a date already delivered with unchanged numbers sends nothing (the outbox
  compares with what KaseyaOne acknowledged). A date whose every partner-date was delivered
  (or skipped for an unmet prerequisite) by an earlier non-dry run, with nothing pending, is
  not even extracted again: `completed_dates`. So a backfill that was killed halfway and is
  started again goes on with the rest; what a killed run had sent but not recorded is
  re-sent with the same Idempotency-Key, which KaseyaOne answers as a replay.
- `force` bills every date again: re-extracts, recomputes and re-sends every metric with new
  keys (KaseyaOne's upsert makes that safe).
- A date that fails does not stop the others; the summary lists it and the exit code is 1.
- Dates run side by side, at most `concurrency` at a time, oldest first. They run in threads
  of one process: DuckDB lets one process open the warehouse read-write, and, measured on
  2.0.1, a second `duckdb.connect(path)` in the same process joins the same database
  instance (each connection sees the others' commits), so every stage may open its own short
  connection. Transactions of two connections conflict only when they touch the same rows
  ("Conflict on tuple deletion", or a duplicate key at commit); each date writes its own
  rows, and the partner-date leases (lease.py) keep two runs off the same ones.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import duckdb

from bullphish_billing import stopping
from bullphish_billing.dates import check_usage_date
from bullphish_billing.outcomes import RunSummary
from bullphish_billing.settings import Settings
from bullphish_billing.warehouse.db import fetch_all

DEFAULT_CONCURRENCY = 2
DONE_STATUSES = ("delivered", "skipped")  # a partner-date that needs nothing more


class BackfillRangeError(ValueError):
    """The range or the concurrency asked for cannot be backfilled (one line)."""


# -- what a backfill did -------------------------------------------------------------------
@dataclass(frozen=True)
class DateResult:
    """One date of a backfill.

    status: delivered (exit 0), dry_run (exit 0), problems (the run finished but something
    was held, rejected or failed: exit 1), failed (the date's run itself failed: exit 1),
    done (delivered by an earlier run, not billed again: exit 0).
    """

    usage_date: dt.date
    status: str
    exit_code: int
    detail: str
    metrics_sent: int = 0

    @classmethod
    def from_summary(cls, summary: RunSummary) -> DateResult:
        from bullphish_billing import reporting

        code = summary.exit_code
        status = "problems" if code else ("dry_run" if summary.dry_run else "delivered")
        return cls(
            summary.usage_date,
            status,
            code,
            reporting.one_line(summary),
            sum(o.metrics_sent for o in summary.outcomes),
        )

    @classmethod
    def failure(cls, usage_date: dt.date, reason: object) -> DateResult:
        text = " ".join(str(reason).split())[:300] or "the run failed"
        return cls(usage_date, "failed", 1, text)

    @classmethod
    def done_before(cls, usage_date: dt.date) -> DateResult:
        return cls(usage_date, "done", 0, "delivered by an earlier run (force bills it again)")


@dataclass
class BackfillSummary:
    start: dt.date
    end: dt.date
    dry_run: bool
    force: bool
    results: list[DateResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if any(r.exit_code for r in self.results) else 0

    @property
    def failed(self) -> list[dt.date]:
        return [r.usage_date for r in self.results if r.status == "failed"]

    def one_line(self) -> str:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        sent = sum(r.metrics_sent for r in self.results)
        return (
            f"backfill {self.start}..{self.end}: {len(self.results)} date(s): "
            f"{parts or 'nothing to do'}; {sent} metrics sent"
        )

    def artifact_rows(self) -> list[dict]:
        return [
            {
                "usage_date": r.usage_date.isoformat(),
                "status": r.status,
                "exit_code": r.exit_code,
                "metrics_sent": r.metrics_sent,
                "detail": r.detail,
            }
            for r in self.results
        ]


# -- before any work -----------------------------------------------------------------------
def date_range(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def check_range(start: dt.date, end: dt.date, concurrency: int = DEFAULT_CONCURRENCY) -> None:
    """End not before start, both billable dates (not after yesterday, within the 400-day
    history), concurrency at least 1: else BackfillRangeError."""
    if end < start:
        raise BackfillRangeError(f"end {end} is before start {start}")
    for day in (start, end):
        try:
            check_usage_date(day)
        except ValueError as exc:
            raise BackfillRangeError(str(exc)) from None
    if concurrency < 1:
        raise BackfillRangeError(f"concurrency must be at least 1, got {concurrency}")


def known_partners(settings: Settings, as_of: dt.date) -> set[str]:
    """The partner ids BullPhish ID lists as of a date (the ids only, nothing stored)."""
    from bullphish_billing.stages import bullphish_client

    async def fetch() -> set[str]:
        found: set[str] = set()
        async with bullphish_client(settings) as client:
            async for page in client.iter_partners(as_of):
                found |= {
                    r["id"]
                    for r in page.records
                    if isinstance(r, dict) and isinstance(r.get("id"), str)
                }
        return found

    return asyncio.run(fetch())


def preflight(
    settings: Settings,
    start: dt.date,
    end: dt.date,
    partner_ids: list[str] | None,
    dry_run: bool,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> None:
    """Every check that can fail a backfill before it bills anything: the range, the
    configuration, both APIs' credentials, and the partners asked for (each must be listed
    by BullPhish ID as of the end date; a date on which one did not exist yet fails alone)."""
    from bullphish_billing import stages

    check_range(start, end, concurrency)
    settings.require_apis()
    stages.check_bullphish(settings, end)
    if not dry_run:
        stages.check_kaseyaone(settings)
    if partner_ids:
        known = known_partners(settings, end)
        unknown = set(partner_ids) - known
        if unknown:
            raise stages.UnknownPartnerError.of(unknown, len(known), end)


def completed_dates(
    con: duckdb.DuckDBPyConnection, days: list[dt.date], partner_ids: list[str] | None
) -> set[dt.date]:
    """The dates an earlier run finished: for every partner asked for (default: every partner
    the warehouse knows for the date), the latest non-dry outcome is delivered or skipped;
    nothing of the date is pending in the outbox; no partner record of the date was
    quarantined. Anything else (held, partial, failed, a run that died) is billed again."""
    rows = fetch_all(
        con,
        """
        WITH asked AS (
            SELECT d.usage_date, p.partner_id
            FROM (SELECT unnest($days::DATE[]) AS usage_date) d
            CROSS JOIN (SELECT unnest($partners::VARCHAR[]) AS partner_id) p
        ),
        known AS (
            SELECT usage_date, id AS partner_id FROM raw.partners
            WHERE list_contains($days, usage_date)
            UNION
            SELECT usage_date, partner_id FROM ops.partner_runs
            WHERE list_contains($days, usage_date)
        ),
        wanted AS (
            SELECT * FROM asked
            UNION ALL
            SELECT * FROM known WHERE $partners IS NULL
        ),
        latest AS (
            SELECT pr.usage_date, pr.partner_id, arg_max(pr.status, pr.finished_at) AS status
            FROM ops.partner_runs pr JOIN ops.runs r USING (run_id)
            WHERE NOT r.dry_run AND list_contains($days, pr.usage_date)
            GROUP BY ALL
        )
        SELECT w.usage_date
        FROM wanted w LEFT JOIN latest l USING (usage_date, partner_id)
        WHERE w.usage_date IN (SELECT usage_date FROM raw.partners)
          AND w.usage_date NOT IN (
              SELECT usage_date FROM ops.outbox WHERE status = 'pending')
          AND w.usage_date NOT IN (
              SELECT usage_date FROM ops.quarantine WHERE entity = 'partner')
        GROUP BY w.usage_date
        HAVING bool_and(coalesce(list_contains($done, l.status), false))
        """,
        {"days": days, "partners": partner_ids or None, "done": list(DONE_STATUSES)},
    )
    return {r[0] for r in rows}


# -- running the dates ---------------------------------------------------------------------
class Observer(Protocol):
    """Someone watching a backfill in this process (the terminal's progress bar)."""

    def started(self, total: int, done_before: int) -> None: ...

    def finished(self, result: DateResult, done: int, total: int) -> None: ...


_OBSERVER: contextvars.ContextVar[Observer | None] = contextvars.ContextVar(
    "bullphish_billing_backfill_observer", default=None
)


@contextmanager
def observing(observer: Observer) -> Iterator[None]:
    """Let `observer` watch the backfills run in this context (the flow runs in-process)."""
    token = _OBSERVER.set(observer)
    try:
        yield
    finally:
        _OBSERVER.reset(token)


def observer() -> Observer | None:
    return _OBSERVER.get()


def run_dates(
    days: list[dt.date],
    run_one: Callable[[dt.date], DateResult],
    concurrency: int,
    on_result: Callable[[DateResult, int], None] | None = None,
) -> list[DateResult]:
    """Run `run_one` for every date, oldest first, at most `concurrency` at a time, each in a
    thread with a copy of the caller's context (so Prefect sees each flow as a subflow of
    the caller's). A date that raises is a failed result; it never stops the others.
    `on_result(result, done)` is called as each date ends. Results come back in date order.
    """
    ordered = sorted(days)
    results: dict[dt.date, DateResult] = {}
    lock = threading.Lock()

    def one(day: dt.date) -> None:
        try:
            if stopping.stopping():  # SIGTERM or Ctrl-C: no further date (stopping.py)
                result = DateResult.failure(day, stopping.reason())
            else:
                result = run_one(day)
        except Exception as exc:  # noqa: BLE001 - a failed date is reported, the rest go on
            result = DateResult.failure(day, exc)
        with lock:
            results[day] = result
            if on_result is not None:
                on_result(result, len(results))

    if ordered:
        workers = max(1, min(concurrency, len(ordered)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backfill")
        try:
            # the queue is first in, first out: a free worker takes the oldest date left
            futures = [pool.submit(contextvars.copy_context().run, one, d) for d in ordered]
            for future in futures:
                future.result()
        finally:
            # on an exception, start no further date; the dates in progress finish
            pool.shutdown(wait=True, cancel_futures=True)
    return [results[d] for d in ordered if d in results]


# -- the command line ----------------------------------------------------------------------
class TerminalProgress:
    """The progress bar of `bullphish-billing backfill` (rich, on the terminal)."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar = None
        self._lock = threading.Lock()

    def started(self, total: int, done_before: int) -> None:
        from bullphish_billing.cli_progress import Progress

        with self._lock:
            self._bar = Progress(total, label=self._label)
            self._bar.__enter__()
            for _ in range(done_before):
                self._bar.advance()

    def finished(self, result: DateResult, done: int, total: int) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.describe(f"{result.usage_date} {result.status}")
                self._bar.advance()

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.__exit__(None, None, None)
                self._bar = None


def run_backfill(
    start: dt.date,
    end: dt.date,
    partner_ids: list[str] | None,
    dry_run: bool,
    *,
    force: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> int:
    """The `backfill` command: run the flow in this process with a progress bar, print a
    line per date and the summary, return the exit code. Errors found before any work are
    raised (the CLI prints them on one line, exit 2)."""
    from bullphish_billing.cli import _prepare_prefect
    from bullphish_billing.errors import USER_FACING_ERRORS
    from bullphish_billing.settings import load_settings

    load_settings().require_apis()  # before Prefect starts: a missing setting is quick to say
    _prepare_prefect()
    from flows.backfill import backfill as backfill_flow

    progress = TerminalProgress(f"backfill {start}..{end}")
    try:
        with observing(progress):
            state = backfill_flow(
                start=start,
                end=end,
                partner_ids=partner_ids,
                dry_run=dry_run,
                force=force,
                concurrency=concurrency,
                return_state=True,
            )
    finally:
        progress.close()
    data = state.result(raise_on_failure=False)
    if isinstance(data, USER_FACING_ERRORS):
        raise data
    if isinstance(data, BackfillRangeError):
        from bullphish_billing.cli import UsageError

        raise UsageError(str(data))
    if not isinstance(data, BackfillSummary):
        print(f"bullphish-billing backfill: failed: {state.message}", file=sys.stderr)
        return 1
    for r in data.results:
        print(f"{r.usage_date}  {r.status:<9} {r.detail}")
    signum = stopping.stop_signal()  # stopped: the command exits 128 + signum (cli.py)
    code = data.exit_code if signum is None else 128 + signum
    print(f"{data.one_line()} (exit {code})")
    return code
