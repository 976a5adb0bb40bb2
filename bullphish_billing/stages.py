"""The stages of a daily run as plain, typed functions; the Prefect tasks wrap these.

Each stage opens what it needs (the warehouse for a short while, an API client) from the
settings it is given and closes it before returning, so the stages can be retried, tested and
timed one by one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from bullphish_billing import billing_rules, delivery, mappings, notable, publish
from bullphish_billing.clients import (
    BullPhishClient,
    FinalApiError,
    KaseyaOneClient,
    ListBudget,
    RetryPolicy,
)
from bullphish_billing.crashpoints import crashpoint
from bullphish_billing.errors import ConfigurationError, UnknownPartnerError
from bullphish_billing.extract import ExtractResult, extract_partner_list, extract_partners
from bullphish_billing.results import Evaluation, PartnerDecision
from bullphish_billing.settings import Settings
from bullphish_billing.warehouse.db import fetch_value, open_warehouse


def bullphish_client(settings: Settings) -> BullPhishClient:
    settings.require_apis()
    return BullPhishClient(
        str(settings.bullphish_api_url),
        settings.bullphish_api_token,  # type: ignore[arg-type]
        page_limit=settings.page_limit,
        max_connections=settings.max_connections,
        retry=_retry(settings),
        **_bounds(settings),
    )


def _bounds(settings: Settings) -> dict:
    """What a server may make a client hold or spend: per response, per list."""
    return {
        "max_body_bytes": int(settings.max_response_mb * 1024 * 1024),
        "list_budget": ListBudget(
            max_records=settings.max_list_records,
            max_empty_pages=settings.list_empty_pages,
            spare_pages=settings.list_spare_pages,
            deadline_s=settings.list_deadline_s,
            run_deadline=settings.run_deadline(),
        ),
    }


def _retry(settings: Settings) -> RetryPolicy:
    deadline = settings.http_deadline_s
    return RetryPolicy(
        request_deadline_s=deadline,
        connect_timeout_s=min(5.0, deadline),
        read_timeout_s=min(30.0, deadline),
        run_deadline=settings.run_deadline(),
    )


def kaseyaone_client(settings: Settings) -> KaseyaOneClient:
    settings.require_apis()
    return KaseyaOneClient(
        str(settings.kaseyaone_api_url),
        str(settings.kaseyaone_client_id),
        settings.kaseyaone_client_secret,  # type: ignore[arg-type]
        retry=_retry(settings),
        **_bounds(settings),
    )


def check_bullphish(settings: Settings, usage_date: dt.date) -> None:
    """Read the first page of partners: a 401 means the token is wrong (a configuration
    error); anything else is left to extraction, which reports it per partner-date."""

    async def probe() -> None:
        async with bullphish_client(settings) as client:
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


def list_partners(settings: Settings, usage_date: dt.date, run_id: str) -> list[PartnerDecision]:
    """Extract the partner list and decide, per partner, billable / skipped / held (rule 1)."""

    async def fetch() -> None:
        async with bullphish_client(settings) as client:
            with open_warehouse(
                settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s
            ) as con:
                await extract_partner_list(client, con, usage_date, run_id)

    asyncio.run(fetch())
    with open_warehouse(settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s) as con:
        return billing_rules.decide_partners(con, usage_date, run_id)


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


def extract(
    settings: Settings, usage_date: dt.date, partner_ids: list[str], run_id: str
) -> dict[str, ExtractResult]:
    """Extract organizations and targets of each partner-date into the warehouse."""

    async def fetch() -> dict[str, ExtractResult]:
        async with bullphish_client(settings) as client:
            with open_warehouse(
                settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s
            ) as con:
                return await extract_partners(
                    client,
                    con,
                    usage_date,
                    partner_ids,
                    run_id,
                    concurrency=max(1, settings.max_connections // 2),
                    max_unwritten_records=settings.max_list_records,
                )

    if not partner_ids:
        return {}
    return asyncio.run(fetch())


def evaluate(
    settings: Settings, usage_date: dt.date, partner_ids: list[str], run_id: str
) -> dict[str, Evaluation]:
    """Apply the billing rules and store the partner-dates' metrics."""
    with open_warehouse(settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s) as con:
        return billing_rules.evaluate(
            con, usage_date, partner_ids, hold_threshold=settings.hold_threshold, run_id=run_id
        )


@dataclass(frozen=True)
class DeliveryOutcome:
    report: delivery.DeliveryReport
    planned_batches: int


def deliver(
    settings: Settings,
    usage_date: dt.date | None,
    partner_ids: list[str],
    run_id: str,
    *,
    force: bool = False,
) -> DeliveryOutcome:
    """Plan the partner-dates' changed metrics into the outbox (with `force`, every current
    metric), then send every pending batch (earlier runs' first). With `usage_date` None, only
    what earlier runs left is sent: their pending batches, and what a run that died before
    planning had computed."""

    async def send() -> delivery.DeliveryReport:
        async with kaseyaone_client(settings) as client:
            with open_warehouse(
                settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s
            ) as con:
                return await delivery.send_pending(client, con)

    planned = 0
    if usage_date is not None and partner_ids:
        crashpoint("after-compute")
        with open_warehouse(settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s) as con:
            planned = delivery.plan(con, usage_date, partner_ids, run_id, force=force)
        crashpoint("after-plan")
    elif usage_date is None:
        with open_warehouse(settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s) as con:
            planned = delivery.plan_interrupted(con, run_id)
    with open_warehouse(settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s) as con:
        anything = bool(delivery.pending_batches(con))
    report = asyncio.run(send()) if anything else delivery.DeliveryReport()
    if usage_date is not None and partner_ids:
        with open_warehouse(settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s) as con:
            for partner_id, n in delivery.standing_rejections(con, usage_date, partner_ids).items():
                report.rejected[(usage_date, partner_id)] = n
    return DeliveryOutcome(report=report, planned_batches=planned)


def check_kaseyaone(settings: Settings) -> None:
    """Fetch a KaseyaOne token: a 401 means the client credentials are wrong (exit 2).
    Transient trouble is left to delivery, which keeps the batches pending."""

    async def probe() -> None:
        async with kaseyaone_client(settings) as client:
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


def fetch_mappings(settings: Settings, partner_ids: list[str]) -> list[mappings.MappingFetch]:
    """The partners' organization mappings from KaseyaOne, a few side by side over one client
    and one token (a 404 means not linked: normal), holding at most BILLING_MAX_LIST_RECORDS
    mappings in all. A partner whose fetch failed is returned as a `failed` fetch, so that its
    previous mappings stay."""

    async def fetch_all() -> list[mappings.MappingFetch]:
        async with kaseyaone_client(settings) as client:
            return await mappings.fetch_all(
                client, partner_ids, max_mappings=settings.max_list_records
            )

    return asyncio.run(fetch_all()) if partner_ids else []


def store_mappings(settings: Settings, fetches: list[mappings.MappingFetch], run_id: str) -> int:
    """Store the fetched mappings (failed fetches keep the partner's previous ones)."""
    with open_warehouse(settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s) as con:
        return mappings.store(con, fetches, run_id)


def notable_changes(
    settings: Settings, usage_date: dt.date, partner_ids: list[str], run_id: str
) -> list[notable.NotableChange]:
    """Detect and store the partner-dates' notable changes against the previous day."""
    with open_warehouse(settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s) as con:
        return notable.detect(
            con,
            usage_date,
            partner_ids,
            min_share=settings.notable_change,
            min_users=settings.notable_min_users,
            run_id=run_id,
        )


def publish_analytics(settings: Settings, run_id: str) -> publish.PublishResult | None:
    """Publish the analysts' file after a run that started (None if it never did: a
    configuration or input error before any work)."""
    if not settings.warehouse.exists():
        return None
    with open_warehouse(settings.warehouse, lock_wait_s=settings.warehouse_lock_wait_s) as con:
        if not fetch_value(con, "SELECT count(*) FROM ops.runs WHERE run_id = ?", [run_id]):
            return None
        return publish.publish(con, settings.analytics_path)
