"""The daily billing flow: one usage date, every eligible partner, wiring only."""

from __future__ import annotations

import datetime as dt
import uuid

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture, wait
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from bullphish_billing import (
    delivery,
    lease,
    notable,
    outcomes,
    reporting,
    stages,
    stopping,
)
from bullphish_billing.clients import StoppedError
from bullphish_billing.dates import yesterday_utc
from bullphish_billing.errors import USER_FACING_ERRORS
from bullphish_billing.extract import ExtractResult
from bullphish_billing.settings import load_settings
from bullphish_billing.warehouse.db import open_warehouse
from tasks import billing


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
) -> outcomes.RunSummary:
    """Bill one usage date (default: yesterday, UTC): extract, validate, aggregate, deliver.

    Configuration comes from the environment (never from parameters, which Prefect stores).
    `force` re-sends every metric, changed or not (new keys: KaseyaOne applies them again).
    A partner-date another run is billing is waited for, up to `lease_wait_s` seconds, then
    left to that run and reported failed (`bullphish_billing/lease.py`).
    """
    day = usage_date or yesterday_utc()
    run_id = str(flow_run.get_id() or uuid.uuid4())
    reports: list[PrefectFuture[None]] = []
    try:
        with lease.run_leases(load_settings().warehouse, run_id) as leases:
            return _bill(day, partner_ids, dry_run, run_id, leases, force, lease_wait_s, reports)
    except USER_FACING_ERRORS as exc:
        # bad configuration or input: fail the run with a one-line message, no traceback
        get_run_logger().error("%s", exc)
        return Failed(message=str(exc), data=exc)
    except StoppedError as exc:
        # asked to stop (SIGTERM, Ctrl-C) before it decided on any partner: it ends recorded
        get_run_logger().warning("%s", exc)
        _finish_stopped(run_id)
        return Failed(message=str(exc), data=exc)
    finally:
        # the analysts' file, after every run that started, however it ended
        billing.publish(day, run_id, return_state=True)
        wait(reports)  # the per-partner artifacts, written meanwhile by the Prefect API


def _bill(
    day: dt.date,
    partner_ids: list[str] | None,
    dry_run: bool,
    run_id: str,
    leases: lease.RunLeases,
    force: bool,
    lease_wait_s: float,
    reports: list[PrefectFuture[None]],
) -> outcomes.RunSummary:
    """The run after its leases are taken. The per-partner report tasks it starts are added
    to `reports` for the caller to wait for (after publishing: the two overlap)."""
    log = get_run_logger()
    settings = load_settings()
    settings.require_apis()
    # configuration and input problems surface here, before any work (exit 2)
    stages.check_bullphish(settings, day)
    if not dry_run:
        stages.check_kaseyaone(settings)
    with open_warehouse(settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s) as con:
        outcomes.start_run(con, run_id, day, dry_run)

    def waiting(key: lease.Key, holder: str) -> None:
        log.warning("waiting for the %s: %s is billing it", key, holder)

    with leases.holding(lease.partner_list(day), wait_s=lease_wait_s, on_wait=waiting):
        listed = billing.list_partners(settings, day, run_id)
    decisions = stages.select_partners(listed, partner_ids, day)
    billable = [d.partner_id for d in decisions if d.decision == "billable"]
    log.info(
        "%s: %d partners, %d billable, %d skipped, %d held",
        day,
        len(decisions),
        len(billable),
        sum(d.decision == "skipped" for d in decisions),
        sum(d.decision == "held" for d in decisions),
    )
    # two runs never bill the same partner-date at once: wait for it, or leave it and say so
    keys = {lease.partner_date(day, p): p for p in billable}
    busy = {
        keys[key]: f"another run is billing it: {holder}; not billed by this run, run it again"
        for key, holder in leases.acquire(keys, wait_s=lease_wait_s, on_wait=waiting).items()
    }
    billable = [p for p in billable if p not in busy]
    earlier = None
    if not dry_run:
        earlier = billing.deliver_pending(settings, run_id)  # rule 9: what a crash left first
    extracts = billing.extract(settings, day, billable, run_id)
    extracts |= {p: ExtractResult(p, 0, 0, 0, error=reason) for p, reason in busy.items()}
    extracted = [p for p, r in extracts.items() if not r.error]
    evaluations = billing.evaluate(settings, day, sorted(extracted), run_id)
    computed = sorted(p for p, e in evaluations.items() if not e.held)
    changes = billing.notable_changes(settings, day, computed, run_id)
    report = None
    if not dry_run:
        report = billing.deliver(settings, day, computed, run_id, force=force).report

    summary = outcomes.RunSummary(
        run_id=run_id,
        usage_date=day,
        dry_run=dry_run,
        outcomes=outcomes.combine(day, decisions, extracts, evaluations, report, dry_run),
        earlier_batches_sent=earlier.report.batches_sent if earlier else 0,
        stopped_by=stopping.stop_signal(),
    )
    with open_warehouse(settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s) as con:
        summary.still_pending = 0 if dry_run else _still_pending(con, leases)
        summary.notes = reporting.unattributed_quarantine(con, day)
        outcomes.record(con, summary)
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
            changes, day, min_share=settings.notable_change, min_users=settings.notable_min_users
        ),
        description=f"Per-user counts that moved, modules switched, on {day}",
    )
    # one task per partner, named after it, writing its artifact (history per partner); they
    # wait on the Prefect API, so the rest of the run goes on meanwhile
    reports += billing.report_partner.map(
        [o.partner_id for o in summary.outcomes],
        unmapped(day),
        summary.outcomes,
        unmapped(changes),
    )
    # the organization mappings only inform analysts: they come last, and not once stopping
    if not dry_run and not stopping.stopping():
        fetched = billing.fetch_mappings(settings, day, computed)
        with leases.holding(lease.organization_mappings(), wait_s=lease_wait_s):
            billing.store_mappings(settings, day, fetched, run_id)  # shared by every date
    log.info("%s", reporting.one_line(summary))
    return summary


def _still_pending(con, leases: lease.RunLeases) -> int:
    """Batches left pending, except those of partner-dates another live run holds (that run
    sends them: they are no problem of this run)."""
    return sum(
        n
        for usage_date, partner_id, n in delivery.pending_partner_dates(con)
        if leases.free_or_ours(lease.partner_date(usage_date, partner_id))
    )


def _finish_stopped(run_id: str) -> None:
    signum = stopping.stop_signal() or 0
    settings = load_settings()
    with open_warehouse(settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s) as con:
        outcomes.finish_stopped(con, run_id, 128 + signum)
