"""The backfill flow: the daily flow once per date of a range, as subflows, wiring only.

The rules (which dates, what counts as done) live in `bullphish_billing/backfill.py`, the
runner (how many at a time, in what order) in `bullphish_billing/backfill_runner.py`.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run
from prefect.states import Failed, State

from bullphish_billing import backfill as rules
from bullphish_billing import backfill_runner as runner
from bullphish_billing import lease
from bullphish_billing.errors import UserError
from bullphish_billing.results import (
    BackfillSummary,
    DateResult,
    DateStatus,
    PartnerStatus,
    RunSummary,
)
from bullphish_billing.run_context import RunContext
from bullphish_billing.settings import load_settings
from flows.daily_billing import daily_billing, tidy_up
from tasks import billing

EVALUATED = frozenset({PartnerStatus.DELIVERED, PartnerStatus.PARTIAL, PartnerStatus.FAILED})
"""The partner statuses whose date may have evaluated the partner: its mappings are fetched."""


@flow(name="backfill", flow_run_name="backfill-{start}-{end}", log_prints=False)
def backfill(
    start: dt.date,
    end: dt.date,
    partner_ids: list[str] | None = None,
    dry_run: bool = False,
    force: bool = False,
    concurrency: int = rules.DEFAULT_CONCURRENCY,
) -> BackfillSummary | State:
    """Bill every usage date from `start` to `end` (inclusive) with the daily flow, oldest
    first, at most `concurrency` dates at a time. Dates an earlier run delivered are not
    billed again unless `force` (which also re-sends unchanged numbers). Configuration comes
    from the environment, as for the daily flow.

    The dates' runs skip the daily flow's housekeeping (organization mappings, raw retention,
    the analysts' file): the backfill does it once, after its last date."""
    log = get_run_logger()
    try:
        settings = load_settings()
        # the backfill's own context, for its checks; each date's run builds its own
        run_id = str(flow_run.get_id() or uuid.uuid4())
        ctx = RunContext.start(settings, run_id, lease.RunLeases(settings.warehouse, run_id))
        rules.preflight(ctx, start, end, partner_ids, dry_run, concurrency)
        days = rules.date_range(start, end)
        with ctx.warehouse() as con:  # also creates it before the threads
            done = set() if dry_run or force else rules.completed_dates(con, days, partner_ids)
    except UserError as exc:
        log.error("%s", exc)
        return Failed(message=str(exc), data=exc)

    todo = [d for d in days if d not in done]
    log.info(
        "backfill %s..%s: %d date(s), %d delivered before, %d to bill, %d at a time",
        start,
        end,
        len(days),
        len(done),
        len(todo),
        concurrency,
    )
    key = f"backfill-{start.isoformat()}-{end.isoformat()}"
    progress_id = create_progress_artifact(
        progress=100.0 * len(done) / len(days),
        key=f"{key}-progress",
        description=f"Backfill {start}..{end}: dates finished",
    )
    watcher = runner.observer()
    if watcher is not None:
        watcher.started(len(days), len(done))
    lock = threading.Lock()
    billed: set[str] = set()  # the partners some date evaluated: their mappings, at the end

    def finished(result: DateResult, count: int) -> None:
        with lock:
            update_progress_artifact(progress_id, progress=100.0 * (len(done) + count) / len(days))
        if result.status == DateStatus.FAILED:
            log.error("%s failed: %s", result.usage_date, result.detail)
        if watcher is not None:
            watcher.finished(result, len(done) + count, len(days))

    def bill(day: dt.date) -> DateResult:
        state = daily_billing(
            usage_date=day,
            partner_ids=partner_ids,
            dry_run=dry_run,
            force=force,
            reconcile_earlier=False,  # each date reconciles itself: no window per date
            housekeeping=False,  # once, at the end
            report_each_partner=False,  # one report task run per date, not one per partner
            return_state=True,
        )
        data = state.result(raise_on_failure=False)
        if isinstance(data, RunSummary):  # Completed, or Failed with problems: it finished
            with lock:
                billed.update(o.partner_id for o in data.outcomes if o.status in EVALUATED)
            return DateResult.from_summary(data)
        return DateResult.failure(day, data if isinstance(data, Exception) else state.message)

    try:
        ran = runner.run_dates(todo, bill, concurrency, on_result=finished)
        if ran and not dry_run:
            try:
                tidy_up(ctx, end, sorted(billed), lease.DEFAULT_WAIT_S)
            except UserError as exc:  # another run holds the mappings: its run stores them
                log.warning("housekeeping after the backfill not done: %s", exc)
    finally:
        ctx.leases.release_all()
        if todo:  # after any date that ran, however the backfill ended
            billing.publish(ctx, end, own_run=False, return_state=True)
    by_day = {r.usage_date: r for r in ran} | {d: DateResult.done_before(d) for d in done}
    summary = BackfillSummary(start, end, dry_run, force, [by_day[d] for d in days])
    create_table_artifact(
        key=key,
        table=summary.artifact_rows(),
        description=summary.one_line(),
    )
    log.info("%s", summary.one_line())
    if summary.exit_code:  # red when any date is: its run failed or had problems
        named = ", ".join(f"{r.usage_date} {r.status}" for r in summary.unclean)
        return Failed(message=f"{summary.one_line()}; not clean: {named}", data=summary)
    return summary
