"""Servers that keep the HTTP protocol but not the contracts' promises (tests/relay.py in front
of the sandbox): answers that do not add up, lists that never end, bodies that inflate beyond
any page. Each costs at most the partner-date it touches, with its reason; nothing is taken as
delivered that KaseyaOne did not account for, and the next run completes the work once.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import orjson
import pytest
from fault_tools import assert_delivered_exactly_once, expected_stored
from relay import Exchange, Relay, Reply, relayed
from sandbox_env import sends_per_key

from bullphish_billing.dates import yesterday_utc
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")

DAY = yesterday_utc() - dt.timedelta(days=6)
SEED = 5  # partners=12: billable p_0001, p_0002, p_0007..p_0012 (p_0007 not linked)
CONFIG = SandboxConfig(seed=SEED, partners=12)


def run_flow(day: dt.date, **kwargs):
    from flows.daily_billing import daily_billing

    return daily_billing(usage_date=day, **kwargs)


def outbox(warehouse, partner_id: str) -> list[tuple[str, str]]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(
            "SELECT idempotency_key, status FROM ops.outbox WHERE partner_id = ? ORDER BY ALL",
            [partner_id],
        ).fetchall()


# ------------------------------------------------- KaseyaOne answers that do not add up
MISCOUNTS = {
    "fewer accepted": lambda accepted: accepted - 1,
    "none accepted": lambda accepted: 0,
    "more accepted": lambda accepted: accepted + 1,
}


@pytest.mark.parametrize("miscount", MISCOUNTS.values(), ids=MISCOUNTS.keys())
def test_an_answer_that_does_not_account_for_every_metric_is_not_taken_as_delivered(
    configure, warehouse_path, miscount
):
    """KaseyaOne stores p_0001's batches, then answers 200 with an `accepted` that, with the
    rejections, is not the batch size. The batch is not acknowledged: p_0001 is failed with
    that reason (exit 1) and its batch stays pending; the others are delivered. The next run
    sends it again under the same key, KaseyaOne answers a replay that adds up, and every
    metric is in KaseyaOne exactly once."""

    def miscounted(exchange: Exchange) -> Reply | None:
        if exchange.method != "POST" or exchange.path != "/v1/billing/usage":
            return None
        answer = exchange.forward()  # KaseyaOne stores the batch
        if orjson.loads(exchange.body)["partner_id"] != "p_0001" or answer.status_code != 200:
            return relayed(answer)
        body = answer.json()
        body["accepted"] = miscount(body["accepted"])
        return Reply(200, orjson.dumps(body))

    with RunningSandbox(CONFIG) as sandbox, Relay(sandbox.kaseyaone_url, miscounted) as k1:
        configure(sandbox, kaseyaone_url=k1.url)
        first = run_flow(DAY)
        outcomes = {o.partner_id: o for o in first.outcomes}
        assert outcomes["p_0001"].status == "failed", outcomes["p_0001"]
        assert "accepted" in outcomes["p_0001"].reason, outcomes["p_0001"].reason
        assert first.exit_code == 1 and first.still_pending >= 1
        assert {o.status for p, o in outcomes.items() if p in ("p_0002", "p_0012")} == {"delivered"}
        pending = outbox(warehouse_path, "p_0001")
        assert pending and {status for _, status in pending} == {"pending"}
        with duckdb.connect(str(warehouse_path), read_only=True) as con:
            acknowledged = con.execute(
                "SELECT count(*) FROM ops.acknowledged_metrics WHERE partner_id = 'p_0001'"
            ).fetchall()[0][0]
        assert acknowledged == 0, "a batch KaseyaOne did not account for was acknowledged"
        assert any(k == "p_0001" for k, *_ in expected_stored(sandbox, DAY))

        configure(sandbox)  # KaseyaOne's answers add up again
        again = run_flow(DAY)
        assert again.earlier_batches_sent == len(pending)
        replayed = {r.idempotency_key for r in sandbox.kaseyaone.requests if r.replayed}
        assert {key for key, _ in pending} <= replayed, "not re-sent under the same key"
        assert outbox(warehouse_path, "p_0001") == [(k, "acknowledged") for k, _ in pending]
        assert max(sends_per_key(sandbox).values()) == 1
        assert_delivered_exactly_once(sandbox, warehouse_path, DAY)
