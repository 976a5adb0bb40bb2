"""The daily run's Prefect tasks, one per stage. Logic lives in `bullphish_billing.stages`.

HTTP retries happen inside the clients (backoff, Retry-After, token refresh); a task retries
only when a whole stage failed (the API stayed down past the clients' retries), and only
stages that are safe to repeat: reading the partner list and extracting replace what they
wrote. Delivery never retries as a task: what it could not send stays in the outbox for the
next run. Caching is off: every stage writes to the warehouse, and settings must not be
hashed into cache keys.
"""

from __future__ import annotations

import datetime as dt

import duckdb
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from bullphish_billing import (
    mappings,
    partner_artifacts,
    reconciliation,
    retention,
    stages,
    stopping,
)
from bullphish_billing.errors import UserError
from bullphish_billing.extract import ExtractResult
from bullphish_billing.notable import Findings, NotableChange
from bullphish_billing.publish import PublishError, PublishResult
from bullphish_billing.results import (
    Evaluation,
    MappingStatus,
    PartnerDecision,
    PartnerOutcome,
    PartnerStatus,
    outcome_counts,
)
from bullphish_billing.run_context import RunContext
from bullphish_billing.text import bounded, shown
from bullphish_billing.warehouse.db import WarehouseError


def _worth_retrying(task: object, task_run: object, state: State) -> bool:
    """Retry a stage that failed on the way to an API, not one that failed on bad
    configuration or an unusable warehouse: those would fail the same way again. Nothing is
    retried once the command is asked to stop (stopping.py)."""
    if stopping.stopping():
        return False
    try:
        state.result()
    except UserError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True


@task(
    name="list-partners",
    task_run_name="list-partners-{usage_date}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_worth_retrying,
)
def list_partners(ctx: RunContext, usage_date: dt.date) -> list[PartnerDecision]:
    return stages.list_partners(ctx, usage_date)


@task(name="deliver-pending", cache_policy=NO_CACHE)
def deliver_pending(ctx: RunContext) -> stages.DeliveryOutcome:
    return stages.deliver_earlier(ctx)


@task(
    name="extract",
    task_run_name="extract-{usage_date}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=_worth_retrying,
)
def extract(
    ctx: RunContext,
    usage_date: dt.date,
    partner_ids: list[str],
    left_to_others: dict[str, str] | None = None,
) -> dict[str, ExtractResult]:
    return stages.extract(ctx, usage_date, partner_ids, left_to_others)


@task(name="evaluate", task_run_name="evaluate-{usage_date}", cache_policy=NO_CACHE)
def evaluate(ctx: RunContext, usage_date: dt.date, partner_ids: list[str]) -> dict[str, Evaluation]:
    return stages.evaluate(ctx, usage_date, partner_ids)


@task(name="deliver", task_run_name="deliver-{usage_date}", cache_policy=NO_CACHE)
def deliver(
    ctx: RunContext, usage_date: dt.date, partner_ids: list[str], force: bool = False
) -> stages.DeliveryOutcome:
    return stages.deliver_date(ctx, usage_date, partner_ids, force=force)


@task(name="notable-changes", task_run_name="notable-changes-{usage_date}", cache_policy=NO_CACHE)
def notable_changes(ctx: RunContext, usage_date: dt.date, partner_ids: list[str]) -> Findings:
    return stages.notable_changes(ctx, usage_date, partner_ids)


@task(name="mappings", task_run_name="mappings-{usage_date}", cache_policy=NO_CACHE)
def fetch_mappings(
    ctx: RunContext, usage_date: dt.date, partner_ids: list[str]
) -> list[mappings.MappingFetch]:
    """The partners' organization mappings, side by side over one client. They only inform
    analysts, so nothing here may fail the run: a failure is logged, the previous mappings
    stay."""
    try:
        fetches = stages.fetch_mappings(ctx, partner_ids)
    except Exception as exc:  # noqa: BLE001 - informational: never fails the run
        error = bounded(str(exc))
        fetches = [mappings.MappingFetch(p, MappingStatus.FAILED, error=error) for p in partner_ids]
    for fetch in fetches:
        if fetch.status == MappingStatus.FAILED:
            get_run_logger().warning(
                "organization mappings of %s not fetched (the previous ones stay): %s",
                fetch.partner_id,
                fetch.error,
            )
    return fetches


@task(name="reconcile", task_run_name="reconcile-{usage_date}", cache_policy=NO_CACHE)
def reconcile(
    ctx: RunContext, usage_date: dt.date, days_before: int
) -> reconciliation.ReconcileReport:
    """Repair what the last check found ours to repair, then reconcile the date and the
    `days_before` dates before it with what KaseyaOne holds (rule 11). A reconciliation that
    fails as a whole fails no delivery: it is reported (the run's outcome is a problem)."""
    try:
        report = stages.reconcile(
            ctx,
            stages.reconcile_dates(usage_date, days_before),
            check_dates=stages.reconcile_schedule(usage_date, days_before),
            repair=True,
        )
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported in the summary, the run goes on
        report = reconciliation.ReconcileReport(
            reconciliation.new_check_id(), error=bounded(str(exc))
        )
        get_run_logger().error("the reconciliation failed: %s", report.error)
        return report
    get_run_logger().info(
        "reconciled %s and %d day(s) before in %.2f s: %s",
        usage_date,
        days_before,
        report.seconds,
        report.one_line(),
    )
    rows = report.rows()
    markdown = [f"# Reconciliation with KaseyaOne, {usage_date}", "", report.one_line(), ""]
    if rows:
        markdown += [
            "| " + " | ".join(rows[0]) + " |",
            "|" + "---|" * len(rows[0]),
            *("| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows),
            "",
            "Every metric: the view `reconciliation_open`. The next run re-sends what is "
            "missing or differs at KaseyaOne; what it holds that we never sent is only reported.",
        ]
    create_markdown_artifact(
        key=f"reconciliation-{usage_date.isoformat()}",
        markdown="\n".join(markdown),
        description=f"Reconciliation with KaseyaOne of {usage_date} and {days_before} day(s) "
        "before",
    )
    return report


OUTCOME_NAMES = {
    PartnerStatus.DELIVERED: "Delivered",
    PartnerStatus.PARTIAL: "Partly delivered",
    PartnerStatus.SKIPPED: "Skipped",
    PartnerStatus.HELD: "Held",
    PartnerStatus.FAILED: "Not delivered",
    PartnerStatus.DRY_RUN: "Dry run",
}
"""The report task run's state name per partner outcome (its type stays Completed)."""


@task(name="report", task_run_name="report-{partner_id}-{usage_date}", cache_policy=NO_CACHE)
def report_partner(
    partner_id: str,
    usage_date: dt.date,
    outcome: PartnerOutcome,
    changes: list[NotableChange],
    reconciliation_partners: frozenset[str] = frozenset(),
) -> State:
    """The partner's outcome for the date as the task run's state: Completed, named after the
    outcome ("Held", "Not delivered", "Partly delivered", ...) with its reason as the message,
    so the Task Runs tab points at the partner that needs a look (a Failed task run would put
    an ERROR line per partner on the terminal; the flow run is the one that turns red). When
    the partner has something to look at, also as its artifact (`_partner_artifact`)."""
    _partner_artifact(usage_date, outcome, changes, reconciliation_partners)
    told = bounded(f"{outcome.status}: {outcome.reason}" if outcome.reason else outcome.status)
    return Completed(name=OUTCOME_NAMES[outcome.status], message=told)


@task(name="report-partners", task_run_name="report-partners-{usage_date}", cache_policy=NO_CACHE)
def report_partners(
    usage_date: dt.date,
    outcomes: list[PartnerOutcome],
    changes: list[NotableChange],
    reconciliation_partners: frozenset[str] = frozenset(),
) -> State:
    """`report_partner`'s artifacts for every partner of the date, from one task run: a
    backfill's dates report this way. One task run per partner was 100 of a date's 111, and
    their bookkeeping most of the Prefect server's CPU in a backfill (README "Performance");
    a backfill's dates are read from their table artifacts (every partner, with its outcome
    and reason). The message counts the partners per outcome and the artifacts written."""
    written = sum(
        _partner_artifact(usage_date, o, changes, reconciliation_partners) for o in outcomes
    )
    told = f"{outcome_counts(outcomes)}; {written} partner artifact(s)"
    return Completed(message=bounded(told))


def _partner_artifact(
    usage_date: dt.date,
    outcome: PartnerOutcome,
    changes: list[NotableChange],
    reconciliation_partners: frozenset[str],
) -> bool:
    """Write the partner's artifact for the date when it has something to look at
    (`partner_artifacts.worth_an_artifact`: a problem, a notable change, a reconciliation
    difference), under key `billing-p-XXXX`: one key per partner, so the Artifacts page shows
    each partner's history. True when written."""
    partner_id = outcome.partner_id
    if not partner_artifacts.worth_an_artifact(outcome, changes, reconciliation_partners):
        return False
    create_markdown_artifact(
        key=partner_artifacts.key(partner_id),
        markdown=partner_artifacts.markdown(
            outcome, changes, reconciled_differently=partner_id in reconciliation_partners
        ),
        description=f"{partner_id} on {usage_date}: {outcome.status}",
    )
    return True


@task(name="store-mappings", task_run_name="store-mappings-{usage_date}", cache_policy=NO_CACHE)
def store_mappings(
    ctx: RunContext, usage_date: dt.date, fetches: list[mappings.MappingFetch]
) -> int:
    return stages.store_mappings(ctx, fetches)


@task(name="raw-retention", task_run_name="raw-retention-{usage_date}", cache_policy=NO_CACHE)
def apply_retention(ctx: RunContext, usage_date: dt.date) -> retention.RetentionReport | None:
    """Drop the target snapshots older than BILLING_RAW_RETENTION_DAYS (retention.py). It
    fails no billing: a failure is logged, and the next run applies the rule again."""
    try:
        report = stages.apply_retention(ctx)
    except Exception as exc:  # noqa: BLE001 - housekeeping: the run's outcome stands
        get_run_logger().error(
            "raw retention not applied (the next run applies it): %s", bounded(str(exc))
        )
        return None
    get_run_logger().info("%s", report.one_line())
    return report


@task(name="publish", task_run_name="publish-{usage_date}", cache_policy=NO_CACHE)
def publish(
    ctx: RunContext | None, usage_date: dt.date, own_run: bool = True
) -> PublishResult | None:
    """Publish the analysts' file. The flow calls this after any end of a run, even one whose
    settings could not be read (no context then: nothing to publish); a backfill once at its
    end (`own_run=False`: its dates are runs of their own)."""
    if ctx is None:
        return None
    settings = ctx.settings
    try:
        result = stages.publish_analytics(ctx, own_run=own_run)
    except (PublishError, WarehouseError, OSError, duckdb.Error) as exc:  # the outcome stands
        get_run_logger().error(
            "the analysts' file %s was not published (the run's outcome stands): %s",
            shown(settings.analytics_path),
            bounded(str(exc)),
        )
        return None
    if result is not None:
        get_run_logger().info(
            "published %s (%s %d rows, %.1f s)",
            result.path,
            "updated from the previous file:" if result.incremental else "new file:",
            result.rows,
            result.seconds,
        )
    return result
