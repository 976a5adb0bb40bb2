"""What `run`, `backfill` and `explain` do on the terminal: run the flow in this process, show its
progress and summary, and turn its end into an exit code (cli.py parses the arguments).

Prefect and the flows are imported only once the settings are known to be complete, so a
missing setting is said at once, not after Prefect has loaded.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading

from bullphish_billing import reporting, stopping
from bullphish_billing.backfill import DEFAULT_CONCURRENCY
from bullphish_billing.backfill_runner import observing
from bullphish_billing.cli_progress import Progress
from bullphish_billing.errors import BillingError, RunFailedError, UserError
from bullphish_billing.results import BackfillSummary, DateResult, RunSummary
from bullphish_billing.settings import load_settings


def prepare_prefect() -> None:
    """A Prefect API for a command run in this process (with none configured, a temporary
    server of our own: one that a signal to our process group does not kill, and that goes
    when we go), and Prefect quiet."""
    from bullphish_billing import prefect_server

    prefect_server.ensure_api()
    # Prefect's telemetry writes to its SQLite database at the same moment as the run and
    # makes it print `database is locked` tracebacks; it has no use here.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the errors this command reports in one line are logged by Prefect without traceback
    from bullphish_billing.terminal import hide_tracebacks

    hide_tracebacks((BillingError,))


def run_date(
    usage_date: dt.date, partners: list[str] | None, dry_run: bool, *, quiet: bool = False
) -> int:
    """Run the daily flow for one date and print its summary; return the exit code."""
    load_settings().require_apis()
    prepare_prefect()
    from flows.daily_billing import daily_billing

    state = daily_billing(
        usage_date=usage_date, partner_ids=partners, dry_run=dry_run, return_state=True
    )
    summary = state.result(raise_on_failure=False)  # Failed with problems still has it
    if not isinstance(summary, RunSummary):
        if isinstance(summary, UserError):
            raise summary
        from bullphish_billing.clients import ApiError

        if isinstance(summary, ApiError):
            raise RunFailedError(f"the run failed: {summary}") from None
        raise RuntimeError(state.message or "the flow failed")
    if not quiet:
        print()
        print(reporting.terminal_table(summary))
        print(f"\n{summary.usage_date}: {summary.one_line()} (exit {summary.exit_code})")
    return summary.exit_code


class TerminalProgress:
    """The progress bar of `bullphish-billing backfill` (rich, on the terminal)."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar = None
        self._lock = threading.Lock()

    def started(self, total: int, done_before: int) -> None:
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
    load_settings().require_apis()
    prepare_prefect()
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
    if isinstance(data, UserError):
        raise data
    if not isinstance(data, BackfillSummary):
        print(f"bullphish-billing backfill: failed: {state.message}", file=sys.stderr)
        return 1
    for r in data.results:
        print(f"{r.usage_date}  {r.status:<9} {r.detail}")
    signum = stopping.stop_signal()  # stopped: the command exits 128 + signum (cli.py)
    code = data.exit_code if signum is None else 128 + signum
    print(f"{data.one_line()} (exit {code})")
    return code


def run_reconcile(start: dt.date, end: dt.date, partner_ids: list[str] | None) -> int:
    """The `reconcile` command: compare what KaseyaOne holds with what it acknowledged for
    every partner-date of the range (without Prefect: it bills nothing), with a progress bar on
    a terminal; print the checks that are not clean and the summary; return 0 clean, 1
    differences or failed checks. It only reports: the next daily run repairs (rule 11)."""
    from bullphish_billing import lease, stages
    from bullphish_billing.backfill import check_range
    from bullphish_billing.errors import UsageError
    from bullphish_billing.run_context import RunContext
    from bullphish_billing.text import shown, shown_list
    from bullphish_billing.warehouse.db import fetch_all

    check_range(start, end)
    settings = load_settings()
    settings.require_apis()
    if not settings.warehouse.exists():
        raise UsageError(
            f"no warehouse at {shown(settings.warehouse)} (BILLING_WAREHOUSE): nothing was "
            "delivered there to reconcile"
        )
    run_id = f"reconcile-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    ctx = RunContext.start(settings, run_id, lease.RunLeases(settings.warehouse, run_id))
    if partner_ids:
        with ctx.warehouse() as con:
            known = {p for (p,) in fetch_all(con, "SELECT DISTINCT partner_id FROM ops.outbox")}
        unknown = sorted(set(partner_ids) - known)
        if unknown:
            raise UsageError(
                f"partner {shown_list(unknown)} was never delivered to KaseyaOne by this "
                "warehouse: nothing to reconcile"
            )
    stages.check_kaseyaone(ctx)  # wrong credentials: one line, exit 2
    days = [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]
    bar: list[Progress] = []

    def planned(total: int) -> None:
        if sys.stderr.isatty():
            bar.append(Progress(total, label=f"reconcile {start}..{end}").__enter__())

    def checked(pair: tuple[dt.date, str]) -> None:
        if bar:
            bar[0].describe(f"{pair[0]} {pair[1]}")
            bar[0].advance()

    try:
        report = stages.reconcile(
            ctx,
            days,
            repair=False,
            partner_ids=partner_ids,
            record_run=False,
            on_planned=planned,
            on_checked=checked,
        )
    finally:
        if bar:
            bar[0].__exit__(None, None, None)
    rows = report.rows()
    if rows:
        print(reporting.text_table(rows))
    print(f"reconcile {start}..{end}: {report.one_line()} (exit {report.exit_code})")
    return report.exit_code


def explain_metrics(
    usage_date: dt.date,
    partner_id: str,
    *,
    organization_id: str | None = None,
    billing_type: str | None = None,
    as_json: bool = False,
    targets: bool = False,
) -> int:
    """The `explain` command: print the explanation of a partner-date's metrics (text or
    JSON) from the warehouse, read-only; return 0. A date or partner never processed is a
    UsageError (exit 2)."""
    from bullphish_billing import explain

    settings = load_settings()
    doc = explain.explain_file(
        settings.warehouse,
        explain.Query(usage_date, partner_id, organization_id, billing_type),
        targets=targets,
        lock_wait_s=settings.warehouse_lock_wait_s,
    )
    print(explain.to_json(doc) if as_json else explain.render(doc))
    return 0
