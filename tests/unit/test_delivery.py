"""Delivery (rule 8): batches of at most 1000, content-derived keys, nothing re-sent unless
the numbers changed, and a change back to earlier numbers is a new send, not a replay."""

from __future__ import annotations

import asyncio
import datetime as dt

import duckdb
import pytest

from bullphish_billing import delivery
from bullphish_billing.clients import KaseyaOneClient
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

DAY = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=2)
TYPE = "bullphish_id.phishing.per_organization"


def set_metrics(con: duckdb.DuckDBPyConnection, partner: str, units: dict[str, int]) -> None:
    con.execute("DELETE FROM billing_metrics WHERE partner_id = ?", [partner])
    for org, n in units.items():
        con.execute(
            "INSERT INTO billing_metrics VALUES (?, ?, ?, ?, ?, 'per_organization', 't', now())",
            [DAY, partner, org, TYPE, n],
        )


def deliver(sandbox: RunningSandbox, con: duckdb.DuckDBPyConnection, partner: str) -> int:
    planned = delivery.plan(con, DAY, [partner], "test")

    async def send() -> None:
        c = sandbox.config
        async with KaseyaOneClient(
            sandbox.kaseyaone_url, c.kaseyaone_client_id, c.kaseyaone_client_secret
        ) as client:
            await delivery.send_pending(client, con)

    asyncio.run(send())
    return planned


@pytest.fixture(scope="module")
def sandbox():
    with RunningSandbox(SandboxConfig(partners=10)) as running:
        yield running


def test_a_partner_date_is_sent_in_batches_of_at_most_1000(con):
    set_metrics(con, "p_0002", {f"o_x{i:04d}": 1 for i in range(1234)})
    assert delivery.plan(con, DAY, ["p_0002"], "test") == 2
    sizes = [
        r[0] for r in con.execute("SELECT metrics FROM ops.outbox ORDER BY batch_no").fetchall()
    ]
    assert sizes == [1000, 234]
    keys = [r[0] for r in con.execute("SELECT idempotency_key FROM ops.outbox").fetchall()]
    assert len(set(keys)) == 2
    assert delivery.plan(con, DAY, ["p_0002"], "test") == 2  # same content, same keys: no new rows
    assert con.execute("SELECT count(*) FROM ops.outbox").fetchall() == [(2,)]


def test_unchanged_numbers_send_nothing_changed_ones_send_only_the_change(con, sandbox):
    org_a, org_b = "o_0002o0001", "o_0002o0002"
    set_metrics(con, "p_0002", {org_a: 1, org_b: 1})
    assert deliver(sandbox, con, "p_0002") == 1
    sends = len(sandbox.kaseyaone.sends())
    assert deliver(sandbox, con, "p_0002") == 0
    assert len(sandbox.kaseyaone.sends()) == sends
    set_metrics(con, "p_0002", {org_a: 0, org_b: 1})
    assert deliver(sandbox, con, "p_0002") == 1
    last = sandbox.kaseyaone.sends()[-1].body["metrics"]
    assert last == [{"organization_id": org_a, "billing_type": TYPE, "units": 0}]


def test_changing_back_to_earlier_numbers_is_sent_again_not_replayed(con, sandbox):
    org = "o_0002o0003"
    for units in (1, 0, 1):
        set_metrics(con, "p_0002", {org: units})
        assert deliver(sandbox, con, "p_0002") == 1
        assert not sandbox.kaseyaone.requests[-1].replayed
        stored = {
            m["organization_id"]: m["units"]
            for m in sandbox.kaseyaone.stored("p_0002", DAY)
            if m["billing_type"] == TYPE
        }
        assert stored[org] == units
    keys = [
        r[0]
        for r in con.execute(
            "SELECT idempotency_key FROM ops.outbox WHERE status = 'acknowledged'"
        ).fetchall()
    ]
    assert len(set(keys)) == 3


def test_two_pending_batches_of_one_metric_are_recorded_as_kaseyaone_holds_them(con, sandbox):
    """Answers are recorded together at the end of the stage: where two batches of one run
    name the same metric (an older pending batch, then a correction), the later one holds, as
    in KaseyaOne, and nothing is planned again."""
    org = "o_0002o0001"
    set_metrics(con, "p_0002", {org: 1})
    assert delivery.plan(con, DAY, ["p_0002"], "test") == 1  # pending, not sent
    set_metrics(con, "p_0002", {org: 0})
    assert deliver(sandbox, con, "p_0002") == 1  # a second pending batch; both go now
    stored = {
        m["organization_id"]: m["units"]
        for m in sandbox.kaseyaone.stored("p_0002", DAY)
        if m["billing_type"] == TYPE
    }
    assert stored[org] == 0
    acknowledged = con.execute(
        "SELECT units FROM ops.acknowledged_metrics WHERE organization_id = ?", [org]
    ).fetchall()
    assert acknowledged == [(0,)]
    assert con.execute(
        "SELECT count(*) FROM ops.outbox WHERE status <> 'acknowledged'"
    ).fetchall() == [(0,)]
    assert deliver(sandbox, con, "p_0002") == 0


def test_the_key_is_derived_from_the_content():
    payload = {
        "module": "bullphish-id",
        "partner_id": "p_1",
        "usage_date": "2026-11-20",
        "metrics": [{"organization_id": "o_1", "billing_type": TYPE, "units": 1}],
    }
    same = dict(reversed(list(payload.items())))
    assert delivery.idempotency_key(payload, "genesis") == delivery.idempotency_key(same, "genesis")
    other = payload | {"metrics": [{"organization_id": "o_1", "billing_type": TYPE, "units": 0}]}
    assert delivery.idempotency_key(other, "genesis") != delivery.idempotency_key(
        payload, "genesis"
    )
    key = delivery.idempotency_key(payload, "genesis")
    assert 1 <= len(key) <= 255 and key.isascii() and " " not in key
