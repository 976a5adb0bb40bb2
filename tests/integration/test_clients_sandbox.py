"""The HTTP clients against the project's sandbox servers (real loopback HTTP).

The sandbox is written from the contracts alone, so these tests check the clients keep the
contracts: every list followed to a null cursor equals what the sandbox's World serves, faults
(429, 5xx, lost responses, 1-second tokens) cost nothing, and idempotent replays work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import orjson
import pytest

from bullphish_billing.clients import (
    BullPhishClient,
    FinalApiError,
    KaseyaOneClient,
    Page,
    RetryPolicy,
)
from bullphish_billing.sandbox import BILLING_TYPES, RunningSandbox, SandboxConfig

# Tiny delays; enough attempts that 40% injected faults per request never exhaust them
# (0.4 ** 15 ~ 1e-6 per request).
POLICY = RetryPolicy(
    max_attempts=15,
    base_delay_s=0.002,
    max_delay_s=0.02,
    request_deadline_s=20.0,
    connect_timeout_s=2.0,
    read_timeout_s=5.0,
)
PER_USER = "bullphish_id.phishing.per_user"


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[RunningSandbox]:
    config = getattr(request, "param", SandboxConfig())
    with RunningSandbox(config) as running:
        yield running


def bullphish(sandbox: RunningSandbox, **kwargs: Any) -> BullPhishClient:
    return BullPhishClient(
        sandbox.bullphish_url, sandbox.config.bullphish_token, retry=POLICY, **kwargs
    )


def kaseyaone(sandbox: RunningSandbox, **kwargs: Any) -> KaseyaOneClient:
    return KaseyaOneClient(
        sandbox.kaseyaone_url,
        sandbox.config.kaseyaone_client_id,
        sandbox.config.kaseyaone_client_secret,
        retry=POLICY,
        **kwargs,
    )


def as_served(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """World's records as they travel (through JSON)."""
    return orjson.loads(orjson.dumps(records))


async def records_of(pages: Any) -> list[dict[str, Any]]:
    got: list[Page] = [page async for page in pages]
    assert [page.number for page in got] == list(range(len(got)))
    return [record for page in got for record in page.records]


async def assert_lists_match_world(
    client: BullPhishClient, sandbox: RunningSandbox, as_of: date
) -> None:
    world = sandbox.world
    assert await records_of(client.iter_partners(as_of)) == as_served(world.partners(as_of))

    async def one_partner(pid: str) -> None:
        orgs, targets = await asyncio.gather(
            records_of(client.iter_organizations(pid, as_of)),
            records_of(client.iter_targets(pid, as_of)),
        )
        assert orgs == as_served(world.organizations(pid, as_of)), pid
        assert targets == as_served(world.targets(pid, as_of)), pid

    await asyncio.gather(*(one_partner(pid) for pid in world.partner_ids()))


def batch_for(
    sandbox: RunningSandbox, partner_id: str, day: date | None = None, units: int = 3
) -> dict[str, Any]:
    orgs = sorted(sandbox.world.linked_organization_ids(partner_id))
    return {
        "module": "bullphish-id",
        "partner_id": partner_id,
        "usage_date": (day or sandbox.world.yesterday).isoformat(),
        "metrics": [
            {"organization_id": org, "billing_type": PER_USER, "units": units} for org in orgs
        ],
    }


def linked_partners(sandbox: RunningSandbox) -> list[str]:
    return [
        p
        for p in sandbox.world.partner_ids()
        if sandbox.world.is_partner_linked(p) and sandbox.world.partner_role(p) != "unlinked"
    ]


@pytest.mark.parametrize(
    "sandbox", [SandboxConfig(short_pages=True, malformed_rate=0.05)], indirect=True
)
async def test_every_list_followed_to_a_null_cursor_equals_the_world(
    sandbox: RunningSandbox,
) -> None:
    async with bullphish(sandbox, page_limit=7) as client:
        for as_of in (sandbox.world.yesterday, sandbox.world.today - timedelta(days=45)):
            await assert_lists_match_world(client, sandbox, as_of)


@pytest.mark.parametrize(
    "sandbox",
    [
        SandboxConfig(
            short_pages=True,
            rate_429=0.2,
            rate_5xx=0.2,
            rate_lost_response=0.3,
            token_lifetime_s=1,
            partners=10,
            targets_per_organization=8,
        )
    ],
    indirect=True,
)
async def test_everything_arrives_complete_through_injected_faults(
    sandbox: RunningSandbox,
) -> None:
    async with bullphish(sandbox, page_limit=5) as client:
        await assert_lists_match_world(client, sandbox, sandbox.world.yesterday)

    world, state = sandbox.world, sandbox.kaseyaone
    sends = [
        (p, world.yesterday - timedelta(days=n)) for p in linked_partners(sandbox) for n in range(4)
    ]
    assert sends
    async with kaseyaone(sandbox) as client:
        results = await asyncio.gather(
            *(
                client.report_usage(batch_for(sandbox, p, day), f"faults-{p}-{day}")
                for p, day in sends
            )
        )
        await asyncio.sleep(1.1)  # every token is now expired
        stored = await asyncio.gather(*(client.list_stored_usage(p, day) for p, day in sends))
        assert client.token_fetches >= 2
        assert await client.list_billing_types() == list(BILLING_TYPES)

    for (pid, day), result, rows in zip(sends, results, stored, strict=True):
        expected = world.linked_organization_ids(pid)
        assert (result.accepted, result.rejected, result.status) == (len(expected), [], 200)
        assert rows == state.stored(pid, day)
        assert {r["organization_id"] for r in rows} == expected
        assert {(r["units"], r["usage_date"]) for r in rows} == {(3, day.isoformat())}
        sent = [r for r in state.requests if r.idempotency_key == f"faults-{pid}-{day}"]
        assert len({orjson.dumps(r.body) for r in sent}) == 1, "retries resend the same body"
        lost = any(r.fault == "lost_response" for r in sent)
        assert result.replayed is lost
        assert sum(r.stored for r in sent) == 1, "stored once, however often sent"
    faults = {r.fault for r in state.requests}
    assert {"lost_response", "5xx", "429"} <= faults, faults


async def test_a_repeated_report_is_a_replay(sandbox: RunningSandbox) -> None:
    pid = linked_partners(sandbox)[0]
    batch = batch_for(sandbox, pid)
    async with kaseyaone(sandbox) as client:
        first = await client.report_usage(batch, "replay-1")
        second = await client.report_usage(batch, "replay-1")
    assert first.replayed is False and second.replayed is True
    assert (second.accepted, second.rejected) == (first.accepted, first.rejected)
    assert len(sandbox.kaseyaone.sends()) == 1


async def test_a_reused_key_with_another_body_is_final_409(sandbox: RunningSandbox) -> None:
    pid = linked_partners(sandbox)[0]
    async with kaseyaone(sandbox) as client:
        await client.report_usage(batch_for(sandbox, pid, units=3), "reused-1")
        with pytest.raises(FinalApiError) as info:
            await client.report_usage(batch_for(sandbox, pid, units=4), "reused-1")
    assert (info.value.status, info.value.code) == (409, "idempotency_key_reused")
    assert "409" in str(info.value) and "idempotency_key_reused" in str(info.value)
    assert {r["units"] for r in sandbox.kaseyaone.stored(pid)} == {3}


async def test_rejected_metrics_and_unlinked_partners(sandbox: RunningSandbox) -> None:
    world = sandbox.world
    unlinked = [p for p in world.partner_ids() if world.partner_role(p) == "unlinked"]
    pid = linked_partners(sandbox)[0]
    batch = batch_for(sandbox, pid)
    batch["metrics"].append({"organization_id": "o_nobody", "billing_type": PER_USER, "units": 1})
    batch["metrics"].append(
        {
            "organization_id": batch["metrics"][0]["organization_id"],
            "billing_type": "bullphish_id.nonsense",
            "units": 1,
        }
    )
    async with kaseyaone(sandbox) as client:
        result = await client.report_usage(batch, "rejects-1")
        assert result.rejected == [
            (len(batch["metrics"]) - 2, "organization_not_linked"),
            (len(batch["metrics"]) - 1, "unknown_billing_type"),
        ]
        assert await client.list_organization_mappings(pid) == world.organization_mappings(pid)
        for other in unlinked:
            with pytest.raises(FinalApiError) as info:
                await client.report_usage(
                    batch_for(sandbox, pid) | {"partner_id": other}, f"unlinked-{other}"
                )
            assert (info.value.status, info.value.code) == (422, "partner_not_linked")


async def test_wrong_credentials_are_final(sandbox: RunningSandbox) -> None:
    async with BullPhishClient(sandbox.bullphish_url, "wrong-token", retry=POLICY) as client:
        with pytest.raises(FinalApiError) as bp:
            await records_of(client.iter_partners(sandbox.world.yesterday))
    async with KaseyaOneClient(
        sandbox.kaseyaone_url, sandbox.config.kaseyaone_client_id, "wrong-secret", retry=POLICY
    ) as k1:
        with pytest.raises(FinalApiError) as k1_info:
            await k1.list_billing_types()
    assert (bp.value.status, bp.value.code) == (401, "unauthorized")
    assert (k1_info.value.status, k1_info.value.code) == (401, "invalid_client")
    for exc in (bp.value, k1_info.value):
        assert "wrong-token" not in str(exc) and "wrong-secret" not in str(exc)


async def test_dates_outside_the_window_are_final(sandbox: RunningSandbox) -> None:
    async with bullphish(sandbox) as client:
        with pytest.raises(FinalApiError) as future:
            await records_of(client.iter_partners(sandbox.world.today))
        with pytest.raises(FinalApiError) as expired:
            await records_of(client.iter_partners(sandbox.world.today - timedelta(days=500)))
    assert (future.value.status, future.value.code) == (400, "as_of_in_future")
    assert (expired.value.status, expired.value.code) == (410, "history_expired")
