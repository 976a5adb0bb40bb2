"""The stages of a daily run as plain, typed functions; the Prefect tasks wrap these.

Each stage takes the run's context (run_context.py) and opens what it needs from it (the
warehouse for a short while, an API client), closing it before returning, so the stages can be
retried, tested and timed one by one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import resource
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from bullphish_billing import (
    billing_rules,
    delivery,
    lease,
    mappings,
    notable,
    outcomes,
    publish,
    reconciliation,
    retention,
    shards,
    staging,
    stale_targets,
    stopping,
    target_fates,
)
from bullphish_billing.clients import BullPhishClient, FinalApiError
from bullphish_billing.dates import today_utc, yesterday_utc
from bullphish_billing.errors import ConfigurationError, UnknownPartnerError
from bullphish_billing.extract import (
    ExtractResult,
    SnapshotSink,
    extract_partner_list,
    extract_partners,
)
from bullphish_billing.reporting import unattributed_quarantine
from bullphish_billing.results import Evaluation, PartnerDecision, RunSummary
from bullphish_billing.run_context import RunContext
from bullphish_billing.shards import Shard, ShardRun
from bullphish_billing.warehouse.db import fetch_value
from bullphish_billing.warehouse.raw import WarehouseSink


# -- before any work -----------------------------------------------------------------------
def check_bullphish(ctx: RunContext, usage_date: dt.date) -> None:
    """Read the first page of partners: a 401 means the token is wrong (a configuration
    error); anything else is left to extraction, which reports it per partner-date."""

    async def probe() -> None:
        async with ctx.bullphish() as client:
            pages = client.iter_partners(usage_date)
            try:
                await anext(pages)
            finally:
                await pages.aclose()

    try:
        asyncio.run(probe())
    except FinalApiError as exc:
        if exc.status == 401:
            raise ConfigurationError(
                "BullPhish ID refused BULLPHISH_API_TOKEN (401 unauthorized)"
            ) from None
        raise
    except Exception:  # noqa: BLE001 - down or flaky: the extract stage will say so
        return


def check_kaseyaone(ctx: RunContext) -> None:
    """Fetch a KaseyaOne token: a 401 means the client credentials are wrong (exit 2).
    Transient trouble is left to delivery, which keeps the batches pending."""

    async def probe() -> None:
        async with ctx.kaseyaone() as client:
            await client.list_billing_types()

    try:
        asyncio.run(probe())
    except FinalApiError as exc:
        if exc.status in (400, 401):
            raise ConfigurationError(
                f"KaseyaOne refused KASEYAONE_CLIENT_ID/KASEYAONE_CLIENT_SECRET "
                f"({exc.status} {exc.code})"
            ) from None
        raise
    except Exception:  # noqa: BLE001 - down or flaky: delivery will say so, batch by batch
        return


def start(ctx: RunContext, usage_date: dt.date, dry_run: bool) -> None:
    """Everything that can refuse the run before it bills anything (the configuration, both
    APIs' credentials: exit 2), then the run's row in `ops.runs`."""
    ctx.settings.require_apis()
    check_bullphish(ctx, usage_date)
    if not dry_run:
        check_kaseyaone(ctx)
    with ctx.warehouse() as con:
        outcomes.start_run(con, ctx.run_id, usage_date, dry_run)


# -- the partners --------------------------------------------------------------------------
def list_partners(ctx: RunContext, usage_date: dt.date) -> list[PartnerDecision]:
    """Extract the partner list and decide, per partner, billable / skipped / held (rule 1)."""

    async def fetch() -> None:
        async with ctx.bullphish() as client:
            with ctx.warehouse() as con:
                await extract_partner_list(client, con, usage_date, ctx.run_id)

    asyncio.run(fetch())
    with ctx.warehouse() as con:
        return billing_rules.decide_partners(con, usage_date, ctx.run_id)


def select_partners(
    decisions: list[PartnerDecision], only: list[str] | None, usage_date: dt.date
) -> list[PartnerDecision]:
    """Narrow the decisions to the partners asked for; an unknown one is an error."""
    if not only:
        return decisions
    require_known(only, {d.partner_id for d in decisions}, usage_date)
    return [d for d in decisions if d.partner_id in set(only)]


def require_known(asked: Iterable[str], known: set[str], as_of: dt.date) -> None:
    """UnknownPartnerError unless BullPhish ID lists every partner asked for."""
    unknown = set(asked) - known
    if unknown:
        raise UnknownPartnerError.of(unknown, len(known), as_of)


# -- one date's partner-dates --------------------------------------------------------------
def take_partner_dates(
    ctx: RunContext,
    usage_date: dt.date,
    partner_ids: list[str],
    wait_s: float,
    on_wait: Callable[[lease.Key, str], None] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Take the lease of each partner-date, waiting up to `wait_s` for those another run is
    billing (two runs never bill one partner-date at once). Return the partners taken, and
    those left to the other run, each with the reason."""
    keys = {lease.partner_date(usage_date, p): p for p in partner_ids}
    busy = {
        keys[key]: f"another run is billing it: {holder}; not billed by this run, run it again"
        for key, holder in ctx.leases.acquire(keys, wait_s=wait_s, on_wait=on_wait).items()
    }
    return [p for p in partner_ids if p not in busy], busy


def extract(
    ctx: RunContext,
    usage_date: dt.date,
    partner_ids: list[str],
    left_to_others: Mapping[str, str] | None = None,
) -> dict[str, ExtractResult]:
    """Extract organizations and targets of each partner-date into the warehouse. The
    partner-dates in `left_to_others` (another run holds them: the reason why) are not
    extracted, and come back as failed with that reason."""

    async def fetch() -> dict[str, ExtractResult]:
        async with ctx.bullphish() as client:
            with ctx.warehouse() as con:
                return await _extract(
                    ctx, client, WarehouseSink(con, usage_date, ctx.run_id), usage_date, partner_ids
                )

    results = asyncio.run(fetch()) if partner_ids else {}
    return _with_others(results, left_to_others)


def _extract(
    ctx: RunContext,
    client: BullPhishClient,
    sink: SnapshotSink,
    usage_date: dt.date,
    partner_ids: list[str],
) -> Awaitable[dict[str, ExtractResult]]:
    """The one extraction, in-process or in a shard: partners two lists at a time within
    BILLING_MAX_CONNECTIONS, snapshots held up to BILLING_MAX_LIST_RECORDS."""
    return extract_partners(
        client,
        sink,
        usage_date,
        partner_ids,
        concurrency=max(1, ctx.settings.max_connections // 2),
        max_unwritten_records=ctx.settings.max_list_records,
    )


def _with_others(
    results: dict[str, ExtractResult], left_to_others: Mapping[str, str] | None
) -> dict[str, ExtractResult]:
    for partner_id, reason in (left_to_others or {}).items():
        results[partner_id] = ExtractResult(partner_id, 0, 0, 0, error=reason)
    return results


# -- extract shards (scale-out: README "Scaling out") --------------------------------------
def plan_shards(ctx: RunContext, usage_date: dt.date, partner_ids: list[str]) -> list[Shard]:
    """Split the partners into BILLING_SHARDS shards balanced by their last known size."""
    with ctx.warehouse() as con:
        sizes = shards.last_sizes(con, usage_date, partner_ids)
    return shards.pack(partner_ids, ctx.settings.shards, sizes, ctx.settings.max_connections)


def extract_shard(
    ctx: RunContext, usage_date: dt.date, partner_ids: list[str], *, run_id: str, shard: int
) -> staging.Manifest:
    """Shard `shard` of run `run_id`: extract the partners exactly as `extract` does, but into
    Parquet files under BILLING_STAGING_URL, then write the manifest, last. The shard never
    opens the warehouse (it may run on another host); what an earlier attempt of it staged is
    removed first. While it extracts it beats (`staging.Heartbeat`), so that the run waiting
    for it can tell a slow shard from a dead one."""
    location = staging.shard_location(ctx.settings.staging_location, usage_date, run_id, shard)
    staging.remove(location)
    sink = staging.StagingSink(location)

    async def fetch() -> dict[str, ExtractResult]:
        async with ctx.bullphish() as client:
            return await _extract(ctx, client, sink, usage_date, partner_ids)

    started = time.monotonic()
    with staging.Heartbeat(location):
        results = asyncio.run(fetch()) if partner_ids else {}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats = {
        "seconds": round(time.monotonic() - started, 3),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),  # the process's, in all
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }
    manifest = staging.Manifest(usage_date, run_id, shard, ctx.run_id, results, sink.files, stats)
    staging.write_manifest(location, manifest)
    return manifest


def load_shards(
    ctx: RunContext,
    usage_date: dt.date,
    runs: list[ShardRun],
    left_to_others: Mapping[str, str] | None = None,
) -> dict[str, ExtractResult]:
    """Load what the shards of this run staged, in one transaction, and return every
    partner's extract result. A shard whose run did not complete, or whose manifest is
    missing or does not match its files, has its partners failed with a reason naming its
    run; the others are loaded. Then the shards' files are removed, or with
    BILLING_STAGING_KEEP_DAYS marked judged today and kept that many days (`staging.prune`
    removes the older ones, and never a shard of a run still at work)."""
    results: dict[str, ExtractResult] = {}
    loaded: list[tuple[staging.ShardLocation, staging.Manifest]] = []
    locations = []
    for run in runs:
        location = staging.shard_location(
            ctx.settings.staging_location, usage_date, ctx.run_id, run.shard.number
        )
        locations.append(location)
        failure = run.failure
        if failure is None:
            try:
                manifest = staging.read_manifest(location)
                _check_manifest(manifest, run, usage_date, ctx.run_id)
            except staging.StagingError as exc:
                failure = f"staged no usable output: {exc}"
        if failure is not None:
            for partner_id in run.shard.partner_ids:
                results[partner_id] = ExtractResult(partner_id, 0, 0, 0, error=run.reason(failure))
            continue
        results.update(manifest.results)
        loaded.append((location, manifest))
    with ctx.warehouse() as con:
        staging.load(con, usage_date, loaded, ctx.run_id)
    keep = ctx.settings.staging_keep_days
    for location in locations:
        if keep:
            staging.mark_judged(location, today_utc())
        else:
            staging.remove(location)
    if keep:
        staging.prune(ctx.settings.staging_location, keep, today_utc())
    return _with_others(results, left_to_others)


def _check_manifest(
    manifest: staging.Manifest, run: ShardRun, usage_date: dt.date, run_id: str
) -> None:
    """The manifest is this shard's, for this run and date, with a result for exactly its
    partners."""
    if (manifest.usage_date, manifest.run_id, manifest.shard) != (
        usage_date,
        run_id,
        run.shard.number,
    ):
        raise staging.StagingError(
            f"the manifest is shard {manifest.shard} of run {manifest.run_id} for "
            f"{manifest.usage_date}, not this one"
        )
    asked, got = set(run.shard.partner_ids), set(manifest.results)
    if asked != got:
        raise staging.StagingError(
            f"the manifest's partners differ from the shard's: {len(asked - got)} missing, "
            f"{len(got - asked)} not asked for"
        )


def evaluate(ctx: RunContext, usage_date: dt.date, partner_ids: list[str]) -> dict[str, Evaluation]:
    """Apply the billing rules and store the partner-dates' metrics, and what happened to
    each of their target records (`target_fates`, for `explain`)."""
    with ctx.warehouse() as con:
        evaluations = billing_rules.evaluate(
            con,
            usage_date,
            partner_ids,
            hold_threshold=ctx.settings.hold_threshold,
            run_id=ctx.run_id,
        )
        target_fates.record(con, usage_date, partner_ids, ctx.run_id)
        return evaluations


def notable_changes(
    ctx: RunContext, usage_date: dt.date, partner_ids: list[str]
) -> notable.Findings:
    """Detect and store the partner-dates' notable changes against the previous day, and
    their stale active users."""
    with ctx.warehouse() as con:
        changes = notable.detect(
            con,
            usage_date,
            partner_ids,
            min_share=ctx.settings.notable_change,
            min_users=ctx.settings.notable_min_users,
            run_id=ctx.run_id,
        )
        stale = stale_targets.detect(
            con, usage_date, partner_ids, stale_days=ctx.settings.stale_days, run_id=ctx.run_id
        )
    return notable.Findings(changes, stale)


# -- delivery ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeliveryOutcome:
    report: delivery.DeliveryReport
    planned_batches: int


def deliver_earlier(ctx: RunContext) -> DeliveryOutcome:
    """Deliver what earlier runs left (rule 9, first thing of a run): what a run that died
    before planning had computed is planned, then every pending batch is sent."""
    with ctx.warehouse() as con:
        planned = delivery.plan_interrupted(con, ctx.run_id, leases=ctx.leases)
    return DeliveryOutcome(report=_send_pending(ctx), planned_batches=planned)


def deliver_date(
    ctx: RunContext, usage_date: dt.date, partner_ids: list[str], *, force: bool = False
) -> DeliveryOutcome:
    """Plan the partner-dates' changed metrics into the outbox (with `force`, every current
    metric), then send every pending batch, and count the metrics KaseyaOne rejects."""
    planned = 0
    if partner_ids:
        ctx.crashpoint("after-compute")
        with ctx.warehouse() as con:
            planned = delivery.plan(con, usage_date, partner_ids, ctx.run_id, force=force)
        ctx.crashpoint("after-plan")
    report = _send_pending(ctx)
    if partner_ids:
        with ctx.warehouse() as con:
            for partner_id, n in delivery.standing_rejections(con, usage_date, partner_ids).items():
                report.rejected[(usage_date, partner_id)] = n
    return DeliveryOutcome(report=report, planned_batches=planned)


def _send_pending(ctx: RunContext) -> delivery.DeliveryReport:
    """Send every pending batch (oldest first) over one KaseyaOne client."""
    with ctx.warehouse() as con:
        if not delivery.pending_batches(con):
            return delivery.DeliveryReport()

    async def send() -> delivery.DeliveryReport:
        async with ctx.kaseyaone() as client:
            with ctx.warehouse() as con:
                return await delivery.send_pending(
                    client, con, leases=ctx.leases, crash=ctx.crashpoint
                )

    return asyncio.run(send())


# -- after delivery ------------------------------------------------------------------------
def reconcile(
    ctx: RunContext,
    dates: list[dt.date],
    *,
    repair: bool,
    check_dates: list[dt.date] | None = None,
    partner_ids: list[str] | None = None,
    record_run: bool = True,
    on_checked: Callable[[reconciliation.PartnerDate], None] | None = None,
    on_planned: Callable[[int], None] | None = None,
) -> reconciliation.ReconcileReport:
    """Reconcile the partner-dates of `dates` with what KaseyaOne holds (rule 11), or of
    `check_dates` only when given. With `repair` (the daily run), first re-send what the
    previous checks of `dates` found missing or differing at KaseyaOne, and check those
    partner-dates too, so that this check sees the repair. `record_run` records the run's id on
    the checks (the on-demand command is no run). `on_planned(n)` is told how many
    partner-dates will be checked, `on_checked` each one as it is read (progress)."""
    started = time.monotonic()
    report = reconciliation.ReconcileReport(reconciliation.new_check_id())
    repaired: set[reconciliation.PartnerDate] = set()
    if repair:
        with ctx.warehouse() as con:
            report.repaired = reconciliation.plan_repairs(con, dates, ctx.run_id)
            if report.repaired:
                repaired = reconciliation.repaired_by_run(con, ctx.run_id)
        if report.repaired:
            _send_pending(ctx)  # what it could not send stays pending: sent by the next run
    checked = set(check_dates if check_dates is not None else dates)
    with ctx.warehouse() as con:
        pairs, report.in_flight = reconciliation.partner_dates(
            con, sorted(checked | {d for d, _ in repaired}, reverse=True), partner_ids
        )
    pairs = [pair for pair in pairs if pair[0] in checked or pair in repaired]
    if on_planned is not None:
        on_planned(len(pairs))

    async def check() -> list[reconciliation.Check]:
        async with ctx.kaseyaone() as client:
            with ctx.warehouse() as con:
                return await reconciliation.check(
                    client,
                    con,
                    pairs,
                    check_id=report.check_id,
                    run_id=ctx.run_id if record_run else None,
                    concurrency=ctx.settings.max_connections,
                    on_checked=on_checked,
                )

    if pairs:
        report.checks = asyncio.run(check())
    report.seconds = time.monotonic() - started
    return report


def reconcile_dates(usage_date: dt.date, days_before: int) -> list[dt.date]:
    """The date and the `days_before` dates before it, newest first: the window whose open
    differences a daily run repairs."""
    return [usage_date - dt.timedelta(days=n) for n in range(days_before + 1)]


def reconcile_schedule(usage_date: dt.date, days_before: int) -> list[dt.date]:
    """The dates a daily run reads back from KaseyaOne, newest first: the date it delivered,
    the day before (a next-day look at the newest date) and the date `days_before` before it
    (the last look at each date, `days_before` days after its delivery). A change KaseyaOne's
    side made to a date of the window is so caught within `days_before` days, as reading the
    whole window every day would catch it, at 3 reads per partner instead of `days_before` + 1
    (measured at scale S: the whole 7-day window cost 10-12% of a run)."""
    return sorted(
        {usage_date - dt.timedelta(days=n) for n in {0, min(1, days_before), days_before}},
        reverse=True,
    )


def fetch_mappings(ctx: RunContext, partner_ids: list[str]) -> list[mappings.MappingFetch]:
    """The partners' organization mappings from KaseyaOne, a few side by side over one client
    and one token (a 404 means not linked: normal), holding at most BILLING_MAX_LIST_RECORDS
    mappings in all. A partner whose fetch failed is returned as a `failed` fetch, so that its
    previous mappings stay."""

    async def fetch_all() -> list[mappings.MappingFetch]:
        async with ctx.kaseyaone() as client:
            return await mappings.fetch_all(
                client, partner_ids, max_mappings=ctx.settings.max_list_records
            )

    return asyncio.run(fetch_all()) if partner_ids else []


def store_mappings(ctx: RunContext, fetches: list[mappings.MappingFetch]) -> int:
    """Store the fetched mappings (failed fetches keep the partner's previous ones)."""
    with ctx.warehouse() as con:
        return mappings.store(con, fetches, ctx.run_id)


def apply_retention(ctx: RunContext) -> retention.RetentionReport:
    """Drop the target snapshots older than BILLING_RAW_RETENTION_DAYS before yesterday
    (UTC), each date in one transaction with its record in ops.raw_retention (retention.py);
    partner-dates another run holds are left for a later run."""
    with ctx.warehouse() as con:
        return retention.apply(
            con,
            yesterday=yesterday_utc(),
            retention_days=ctx.settings.raw_retention_days,
            run_id=ctx.run_id,
            leases=ctx.leases,
            crash=ctx.crashpoint,
        )


def finish(ctx: RunContext, summary: RunSummary) -> RunSummary:
    """Complete the summary with what the warehouse knows (batches still pending, partner
    records nobody's run log shows) and record the run log (`ops.partner_runs`)."""
    with ctx.warehouse() as con:
        summary.still_pending = 0 if summary.dry_run else _still_pending(ctx, con)
        summary.notes = unattributed_quarantine(con, summary.usage_date)
        outcomes.record(con, summary)
    return summary


def finish_stopped(ctx: RunContext) -> None:
    """Close the run's `ops.runs` row when a signal stopped it before it decided on any
    partner (exit 128 + the signal's number: stopping.py)."""
    with ctx.warehouse() as con:
        outcomes.finish_stopped(con, ctx.run_id, 128 + (stopping.stop_signal() or 0))


def _still_pending(ctx: RunContext, con) -> int:
    """Batches left pending, except those of partner-dates another live run holds (that run
    sends them: they are no problem of this run)."""
    return sum(
        n
        for usage_date, partner_id, n in delivery.pending_partner_dates(con)
        if ctx.leases.free_or_ours(lease.partner_date(usage_date, partner_id))
    )


def publish_analytics(ctx: RunContext, *, own_run: bool = True) -> publish.PublishResult | None:
    """Publish the analysts' file after a run that started (None if it never did: a
    configuration or input error before any work). A backfill, whose dates are runs of their
    own, passes `own_run=False` after some of them started."""
    if not ctx.settings.warehouse.exists():
        return None
    with ctx.warehouse() as con:
        if own_run and not fetch_value(
            con, "SELECT count(*) FROM ops.runs WHERE run_id = ?", [ctx.run_id]
        ):
            return None
        return publish.publish(con, ctx.settings.analytics_path)
