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

from prefect import task
from prefect.cache_policies import NO_CACHE

from bullphish_billing import stages
from bullphish_billing.billing_rules import Evaluation, PartnerDecision
from bullphish_billing.extract import ExtractResult
from bullphish_billing.settings import Settings


@task(
    name="list-partners",
    task_run_name="list-partners-{usage_date}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10, 60],
)
def list_partners(settings: Settings, usage_date: dt.date, run_id: str) -> list[PartnerDecision]:
    return stages.list_partners(settings, usage_date, run_id)


@task(name="deliver-pending", cache_policy=NO_CACHE)
def deliver_pending(settings: Settings, run_id: str) -> stages.DeliveryOutcome:
    return stages.deliver(settings, None, [], run_id)


@task(
    name="extract",
    task_run_name="extract-{usage_date}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=30,
)
def extract(
    settings: Settings, usage_date: dt.date, partner_ids: list[str], run_id: str
) -> dict[str, ExtractResult]:
    return stages.extract(settings, usage_date, partner_ids, run_id)


@task(name="evaluate", task_run_name="evaluate-{usage_date}", cache_policy=NO_CACHE)
def evaluate(
    settings: Settings, usage_date: dt.date, partner_ids: list[str], run_id: str
) -> dict[str, Evaluation]:
    return stages.evaluate(settings, usage_date, partner_ids, run_id)


@task(name="deliver", task_run_name="deliver-{usage_date}", cache_policy=NO_CACHE)
def deliver(
    settings: Settings, usage_date: dt.date, partner_ids: list[str], run_id: str
) -> stages.DeliveryOutcome:
    return stages.deliver(settings, usage_date, partner_ids, run_id)
