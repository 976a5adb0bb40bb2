"""The daily billing flow: one usage date, every eligible partner, wiring only."""

from __future__ import annotations

import datetime as dt
import uuid

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Failed

from bullphish_billing import outcomes, reporting, stages
from bullphish_billing.dates import yesterday_utc
from bullphish_billing.errors import USER_FACING_ERRORS
from bullphish_billing.settings import load_settings
from bullphish_billing.warehouse.db import open_warehouse
from tasks import billing


@flow(name="daily-billing", flow_run_name="daily-billing-{usage_date}", log_prints=False)
def daily_billing(
    usage_date: dt.date | None = None,
    partner_ids: list[str] | None = None,
    dry_run: bool = False,
) -> outcomes.RunSummary:
    """Bill one usage date (default: yesterday, UTC): extract, validate, aggregate, deliver.

    Configuration comes from the environment (never from parameters, which Prefect stores).
    """
    day = usage_date or yesterday_utc()
    run_id = str(flow_run.get_id() or uuid.uuid4())
    try:
        return _bill(day, partner_ids, dry_run, run_id)
    except USER_FACING_ERRORS as exc:
        # bad configuration or input: fail the run with a one-line message, no traceback
        get_run_logger().error("%s", exc)
        return Failed(message=str(exc), data=exc)


def _bill(
    day: dt.date, partner_ids: list[str] | None, dry_run: bool, run_id: str
) -> outcomes.RunSummary:
    log = get_run_logger()
    settings = load_settings()
    settings.require_apis()
    # configuration and input problems surface here, before any work (exit 2)
    stages.check_bullphish(settings, day)
    if not dry_run:
        stages.check_kaseyaone(settings)
    with open_warehouse(settings.warehouse) as con:
        outcomes.start_run(con, run_id, day, dry_run)
    decisions = stages.select_partners(
        billing.list_partners(settings, day, run_id), partner_ids, day
    )
    billable = [d.partner_id for d in decisions if d.decision == "billable"]
    log.info(
        "%s: %d partners, %d billable, %d skipped, %d held",
        day,
        len(decisions),
        len(billable),
        sum(d.decision == "skipped" for d in decisions),
        sum(d.decision == "held" for d in decisions),
    )
    earlier = None
    if not dry_run:
        earlier = billing.deliver_pending(settings, run_id)  # rule 9: what a crash left first
    extracts = billing.extract(settings, day, billable, run_id)
    extracted = [p for p, r in extracts.items() if not r.error]
    evaluations = billing.evaluate(settings, day, sorted(extracted), run_id)
    report = None
    if not dry_run:
        to_send = sorted(p for p, e in evaluations.items() if not e.held)
        report = billing.deliver(settings, day, to_send, run_id).report

    summary = outcomes.RunSummary(
        run_id=run_id,
        usage_date=day,
        dry_run=dry_run,
        outcomes=outcomes.combine(day, decisions, extracts, evaluations, report, dry_run),
        earlier_batches_sent=earlier.report.batches_sent if earlier else 0,
    )
    with open_warehouse(settings.warehouse) as con:
        summary.still_pending = 0 if dry_run else outcomes.pending_count(con)
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
    log.info("%s", reporting.one_line(summary))
    return summary
