"""Backfills' date rules: which dates of a range to bill, what counts as done, what a date did.

The flow `backfill` (flows/backfill.py) wires these with the runner (backfill_runner.py); the
command (commands.py) shows it on the terminal. What a backfill promises:

- Each date is billed by the daily flow with that date's `as_of`, never today's state.
- Idempotent: a date whose every partner-date an earlier non-dry run delivered (or skipped),
  with nothing pending, is not extracted again (`completed_dates`); numbers KaseyaOne already
  acknowledged are not re-sent. A backfill that was stopped can simply be started again.
- `force` bills every date again with new keys (KaseyaOne's upsert makes that safe).
- A date that fails does not stop the others; the summary lists it and the exit code is 1.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import duckdb

from bullphish_billing import stages
from bullphish_billing.dates import check_usage_date
from bullphish_billing.errors import UsageError
from bullphish_billing.results import DONE, BatchStatus
from bullphish_billing.run_context import RunContext
from bullphish_billing.warehouse.db import fetch_all

DEFAULT_CONCURRENCY = 2


class BackfillRangeError(UsageError):
    """The range or the concurrency asked for cannot be backfilled (one line, exit 2)."""


# -- before any work -----------------------------------------------------------------------
def date_range(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def check_range(start: dt.date, end: dt.date, concurrency: int = DEFAULT_CONCURRENCY) -> None:
    """End not before start, both billable dates (not after yesterday, within the 400-day
    history), concurrency at least 1: else BackfillRangeError."""
    if end < start:
        raise BackfillRangeError(f"--end {end} is before --start {start}")
    for day in (start, end):
        try:
            check_usage_date(day)
        except ValueError as exc:
            raise BackfillRangeError(str(exc)) from None
    if concurrency < 1:
        raise BackfillRangeError(f"concurrency must be at least 1, got {concurrency}")


def known_partners(ctx: RunContext, as_of: dt.date) -> set[str]:
    """The partner ids BullPhish ID lists as of a date (the ids only, nothing stored)."""

    async def fetch() -> set[str]:
        found: set[str] = set()
        async with ctx.bullphish() as client:
            async for page in client.iter_partners(as_of):
                found |= {
                    r["id"]
                    for r in page.records
                    if isinstance(r, dict) and isinstance(r.get("id"), str)
                }
        return found

    return asyncio.run(fetch())


def preflight(
    ctx: RunContext,
    start: dt.date,
    end: dt.date,
    partner_ids: list[str] | None,
    dry_run: bool,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> None:
    """Every check that can fail a backfill before it bills anything: the range, the
    configuration, both APIs' credentials, and the partners asked for (each must be listed
    by BullPhish ID as of the end date; a date on which one did not exist yet fails alone)."""
    check_range(start, end, concurrency)
    ctx.settings.require_apis()
    stages.check_bullphish(ctx, end)
    if not dry_run:
        stages.check_kaseyaone(ctx)
    if partner_ids:
        stages.require_known(partner_ids, known_partners(ctx, end), end)


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
              SELECT usage_date FROM ops.outbox WHERE status = $pending)
          AND w.usage_date NOT IN (
              SELECT usage_date FROM ops.quarantine WHERE entity = 'partner')
        GROUP BY w.usage_date
        HAVING bool_and(coalesce(list_contains($done, l.status), false))
        """,
        {
            "days": days,
            "partners": partner_ids or None,
            "done": sorted(DONE),
            "pending": str(BatchStatus.PENDING),
        },
    )
    return {r[0] for r in rows}
