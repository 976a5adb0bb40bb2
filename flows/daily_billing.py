"""The daily billing flow: one usage date, every eligible partner, wiring only."""

from __future__ import annotations

import datetime as dt
import uuid

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture, wait
from prefect.runtime import flow_run
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from bullphish_billing import (
    lease,
    notable,
    outcomes,
    reporting,
    stages,
    stale_targets,
    stopping,
)
from bullphish_billing.clients import StoppedError
from bullphish_billing.dates import yesterday_utc
from bullphish_billing.errors import UserError
from bullphish_billing.results import Decision, RunSummary
from bullphish_billing.run_context import RunContext
from bullphish_billing.settings import load_settings
from tasks import billing, shards


# The per-partner report tasks are mapped: a few threads keep the Prefect API busy, more
# only contend (measured at 84 partners: 1.2 s with 8 threads, 1.75 s with one per task).
@flow(
    name="daily-billing",
    flow_run_name="daily-billing-{usage_date}",
    log_prints=False,
    task_runner=ThreadPoolTaskRunner(max_workers=8),
)
def daily_billing(
    usage_date: dt.date | None = None,
    partner_ids: list[str] | None = None,
    dry_run: bool = False,
    force: bool = False,
    lease_wait_s: float = lease.DEFAULT_WAIT_S,
    reconcile_earlier: bool = True,
    housekeeping: bool = True,
    report_each_partner: bool = True,
) -> RunSummary | State:
    """Bill one usage date (default: yesterday, UTC): extract, validate, aggregate, deliver.

    The run ends Completed exactly when the command line would exit 0, and Failed otherwise
    (a partner held, failed or partly delivered, batches left pending, bad configuration),
    with its one-line summary as the state's message and the RunSummary as its data, so that
    automations (alerts) react to it.

    Configuration comes from the environment (never from parameters, which Prefect stores).
    `force` re-sends every metric, changed or not (new keys: KaseyaOne applies them again).
    A partner-date another run is billing is waited for, up to `lease_wait_s` seconds, then
    left to that run and reported failed (`bullphish_billing/lease.py`).
    After delivery the run reconciles the date with what KaseyaOne holds, and, unless
    `reconcile_earlier` is off (a backfill reconciles each date it bills, without the window),
    the day before and the date BILLING_RECONCILE_DAYS before it, repairing the differences of
    that window (`stages.reconcile_schedule`). Last, unless it is a dry run, it drops the target
    snapshots older than BILLING_RAW_RETENTION_DAYS (`retention.py`) and publishes the
    analysts' file. Those last steps, with the organization mappings, are its housekeeping: a
    backfill turns `housekeeping` off for its dates and does it once, at its end (per date,
    it cost a backfill more with every date already billed).
    Each partner's outcome is a `report-<partner>-<date>` task run of its own; a backfill turns
    `report_each_partner` off, and one `report-partners-<date>` task run writes its dates'
    partner artifacts (task runs are most of what a date costs the Prefect server; every
    partner stays in the date's table artifact).
    """
    day = usage_date or yesterday_utc()
    run_id = str(flow_run.get_id() or uuid.uuid4())
    reports: list[PrefectFuture[None]] = []
    ctx: RunContext | None = None
    try:
        settings = load_settings()
        with lease.run_leases(settings.warehouse, run_id) as leases:
            ctx = RunContext.start(settings, run_id, leases)
            return _ended(
                _bill(
                    ctx,
                    day,
                    partner_ids,
                    dry_run,
                    force,
                    lease_wait_s,
                    reports,
                    reconcile_earlier,
                    housekeeping,
                    report_each_partner,
                )
            )
    except UserError as exc:
        # bad configuration or input: fail the run with a one-line message, no traceback
        get_run_logger().error("%s", exc)
        return Failed(message=str(exc), data=exc)
    except StoppedError as exc:
        # asked to stop (SIGTERM, Ctrl-C) before it decided on any partner: it ends recorded
        get_run_logger().warning("%s", exc)
        if ctx is not None:
            stages.finish_stopped(ctx)
        return Failed(message=str(exc), data=exc)
    finally:
        # the analysts' file, after every run that started, however it ended
        if housekeeping:
            billing.publish(ctx, day, return_state=True)
        wait(reports)  # the per-partner report tasks and their artifacts, run meanwhile


def _ended(summary: RunSummary) -> RunSummary | State:
    """The run's final state: Completed when the command would exit 0, else Failed with the
    summary line (Prefect's own Failed type: a renamed Completed would stay green)."""
    if summary.exit_code == 0:
        return summary
    return Failed(message=f"{summary.usage_date}: {summary.one_line()}", data=summary)


def _bill(
    ctx: RunContext,
    day: dt.date,
    partner_ids: list[str] | None,
    dry_run: bool,
    force: bool,
    lease_wait_s: float,
    reports: list[PrefectFuture[None]],
    reconcile_earlier: bool = True,
    housekeeping: bool = True,
    report_each_partner: bool = True,
) -> RunSummary:
    """The run after its leases are taken. The per-partner report tasks it starts are added
    to `reports` for the caller to wait for (after publishing: the two overlap)."""
    log = get_run_logger()
    leases = ctx.leases
    # configuration and input problems surface here, before any work (exit 2)
    if ctx.settings.shards > 1:
        shards.require_shard_deployment(ctx.settings.shards)
    stages.start(ctx, day, dry_run)

    def waiting(key: lease.Key, holder: str) -> None:
        log.warning("waiting for the %s: %s is billing it", key, holder)

    with leases.holding(lease.partner_list(day), wait_s=lease_wait_s, on_wait=waiting):
        listed = billing.list_partners(ctx, day)
    decisions = stages.select_partners(listed, partner_ids, day)
    billable = [d.partner_id for d in decisions if d.decision == Decision.BILLABLE]
    log.info(
        "%s: %d partners, %d billable, %d skipped, %d held",
        day,
        len(decisions),
        len(billable),
        sum(d.decision == Decision.SKIPPED for d in decisions),
        sum(d.decision == Decision.HELD for d in decisions),
    )
    billable, busy = stages.take_partner_dates(ctx, day, billable, lease_wait_s, waiting)
    earlier = None
    if not dry_run:
        earlier = billing.deliver_pending(ctx)  # rule 9: what a crash left first
    if ctx.settings.shards > 1 and billable:  # scale-out: README "Scaling out"
        extracts = shards.extract_in_shards(ctx, day, billable, busy)
    else:
        extracts = billing.extract(ctx, day, billable, busy)
    extracted = [p for p, r in extracts.items() if not r.error]
    evaluations = billing.evaluate(ctx, day, sorted(extracted))
    computed = sorted(p for p, e in evaluations.items() if not e.held)
    findings = billing.notable_changes(ctx, day, computed)
    changes = findings.changes
    report = None
    if not dry_run:
        report = billing.deliver(ctx, day, computed, force=force).report
    reconciled = None
    days = ctx.settings.reconcile_days
    if not dry_run and days and not stopping.stopping():
        reconciled = billing.reconcile(ctx, day, days if reconcile_earlier else 0)

    summary = stages.finish(
        ctx,
        RunSummary(
            run_id=ctx.run_id,
            usage_date=day,
            dry_run=dry_run,
            outcomes=outcomes.combine(day, decisions, extracts, evaluations, report, dry_run),
            earlier_batches_sent=earlier.report.batches_sent if earlier else 0,
            stopped_by=stopping.stop_signal(),
            reconciliation_differences=reconciled.differences if reconciled else 0,
            reconciliation_failed=reconciled.failed if reconciled else 0,
            reconciliation_repaired=reconciled.repaired if reconciled else 0,
        ),
    )
    create_table_artifact(
        key=f"billing-{day.isoformat()}",
        table=reporting.artifact_rows(summary),
        description=f"Billing outcome per partner for {day}",
    )
    create_markdown_artifact(
        key=f"billing-issues-{day.isoformat()}",
        markdown=reporting.issues_markdown(summary),
        description=f"Skipped, held, failed and rejected for {day}",
    )
    create_markdown_artifact(
        key=f"notable-changes-{day.isoformat()}",
        markdown=notable.markdown(
            changes,
            day,
            min_share=ctx.settings.notable_change,
            min_users=ctx.settings.notable_min_users,
        )
        + "\n".join(
            stale_targets.markdown_lines(
                findings.stale,
                min_share=ctx.settings.stale_share,
                stale_days=ctx.settings.stale_days,
            )
        ),
        description=f"Per-user counts that moved, modules switched, stale users on {day}",
    )
    # one task per partner, named after it and its outcome (or one for them all, in a
    # backfill); a partner with something to look at (a problem, a notable change, a
    # reconciliation difference) also gets a new version of its artifact (history per
    # partner). They wait on the Prefect API, so the rest of the run goes on meanwhile
    looked_at = reconciled.partners_to_look_at() if reconciled else frozenset()
    if report_each_partner:
        reports += billing.report_partner.map(
            [o.partner_id for o in summary.outcomes],
            unmapped(day),
            summary.outcomes,
            unmapped(changes),
            unmapped(looked_at),
        )
    else:
        reports.append(billing.report_partners.submit(day, summary.outcomes, changes, looked_at))
    if housekeeping and not dry_run:
        tidy_up(ctx, day, computed, lease_wait_s)
    log.info("%s", summary.one_line())
    return summary


def tidy_up(ctx: RunContext, day: dt.date, partner_ids: list[str], lease_wait_s: float) -> None:
    """After billing, not once stopping: the partners' organization mappings (they only
    inform analysts, and are KaseyaOne's current state, shared by every date), then the
    target snapshots older than BILLING_RAW_RETENTION_DAYS. Its callers skip it in a dry run
    (the snapshot a dry run extracted is there to be looked at)."""
    if stopping.stopping():
        return
    fetched = billing.fetch_mappings(ctx, day, partner_ids)
    with ctx.leases.holding(lease.organization_mappings(), wait_s=lease_wait_s):
        billing.store_mappings(ctx, day, fetched)
    if not stopping.stopping():
        billing.apply_retention(ctx, day)
