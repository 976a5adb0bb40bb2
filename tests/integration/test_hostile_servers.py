"""Servers that keep the HTTP protocol but not the contracts' promises (tests/relay.py in front
of the sandbox): answers that do not add up, lists that never end, bodies that inflate beyond
any page. Each costs at most the partner-date it touches, with its reason; nothing is taken as
delivered that KaseyaOne did not account for, and the next run completes the work once.
"""

from __future__ import annotations

import datetime as dt
import functools
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

import duckdb
import orjson
import pytest
from fault_tools import (
    assert_delivered_exactly_once,
    assert_no_double_sends,
    expected_stored,
    prefect_api_url,  # noqa: F401 - fixture
)
from flow_runs import billed
from relay import Exchange, Relay, Reply, relayed
from sandbox_env import child_env, output, sends_per_key, stored

from bullphish_billing.dates import yesterday_utc
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")

DAY = yesterday_utc() - dt.timedelta(days=6)
SEED = 5  # partners=12: billable p_0001, p_0002, p_0007..p_0012 (p_0007 not linked)
CONFIG = SandboxConfig(seed=SEED, partners=12)


def run_flow(day: dt.date, **kwargs):
    return billed(usage_date=day, **kwargs)


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


# ----------------------------------------------------------------- lists that never end
class Endless:
    """A list of the relay's that never ends: its first page is the sandbox's, then page n
    holds `make(n, first_page_records)` under a fresh cursor, after `delay_s`."""

    def __init__(
        self, path: str, make: Callable[[int, list[dict]], list[Any]], delay_s: float = 0.0
    ) -> None:
        self.path, self.make, self.delay_s = path, make, delay_s
        self.sample: list[dict] = []
        self.pages = 0

    def __call__(self, exchange: Exchange) -> Reply | None:
        if exchange.path != self.path:
            return None
        cursor = exchange.query.get("cursor")
        if cursor is None:
            self.sample = exchange.forward().json()["data"]
            n, data = 0, self.sample
        else:
            n = int(cursor.removeprefix("endless-"))
            data = self.make(n, self.sample)
        self.pages += 1
        time.sleep(self.delay_s)
        return Reply(200, orjson.dumps({"data": data, "next_cursor": f"endless-{n + 1}"}))


def empty_pages(n: int, sample: list[dict]) -> list[dict]:
    return []


def one_record_a_page(n: int, sample: list[dict]) -> list[dict]:
    return [dict(sample[0], id=f"t_E{n}")]


def full_pages(n: int, sample: list[dict]) -> list[dict]:
    return [dict(sample[0], id=f"t_E{n}x{i}") for i in range(1000)]


TARGETS_OF_P1 = "/v1/partners/p_0001/targets"
ENDLESS = {
    "empty pages": (empty_pages, "empty pages in a row"),
    "a record a page": (one_record_a_page, "pages beyond what its records fill"),
}


@pytest.mark.parametrize(("make", "reason"), ENDLESS.values(), ids=ENDLESS.keys())
def test_a_list_that_never_ends_fails_its_partner_and_the_others_are_delivered(
    configure, warehouse_path, make, reason
):
    """p_0001's targets answer fresh cursors forever (empty pages, or a record a page): the
    list is given up within its page budget, p_0001 fails with the reason, the others are
    delivered, and the next run bills p_0001 once."""
    endless = Endless(TARGETS_OF_P1, make)
    with RunningSandbox(CONFIG) as sandbox, Relay(sandbox.bullphish_url, endless) as bp:
        configure(sandbox, bullphish_url=bp.url, BILLING_RUN_DEADLINE_S=60)
        first = run_flow(DAY)
        outcomes = {o.partner_id: o for o in first.outcomes}
        assert outcomes["p_0001"].status == "failed", outcomes["p_0001"]
        assert reason in outcomes["p_0001"].reason, outcomes["p_0001"].reason
        assert endless.pages < 300, "the budget should end the list within a few hundred pages"
        want = expected_stored(sandbox, DAY)
        assert stored(sandbox, DAY) == {k: u for k, u in want.items() if k[0] != "p_0001"}

        configure(sandbox)  # the list ends again
        run_flow(DAY)
        assert_delivered_exactly_once(sandbox, warehouse_path, DAY)


def test_a_stuck_list_leaves_the_others_time_to_be_delivered_before_the_run_deadline(
    configure, warehouse_path
):
    """p_0001's targets trickle a record a second, forever, and the run deadline is 30 s: the
    list may take at most half of the run's time left, so p_0001 fails ("not read to its
    end") and every other partner is delivered within the run, not left pending."""
    endless = Endless(TARGETS_OF_P1, one_record_a_page, delay_s=1.0)
    with RunningSandbox(CONFIG) as sandbox, Relay(sandbox.bullphish_url, endless) as bp:
        configure(sandbox, bullphish_url=bp.url, BILLING_RUN_DEADLINE_S=30)
        summary = run_flow(DAY)
        outcomes = {o.partner_id: o for o in summary.outcomes}
        assert outcomes["p_0001"].status == "failed", outcomes["p_0001"]
        assert "not read to its end" in outcomes["p_0001"].reason
        assert summary.still_pending == 0
        want = expected_stored(sandbox, DAY)
        assert stored(sandbox, DAY) == {k: u for k, u in want.items() if k[0] != "p_0001"}
        assert_no_double_sends(sandbox)


# --------------------------------------------------------- memory, whatever servers send
@functools.cache
def gzip_bomb(inflated: int = 1 << 30) -> bytes:
    """A gzip body of about 1 MB that inflates to `inflated` bytes of zeros."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join([deflate.compress(block) for _ in range(inflated >> 20)] + [deflate.flush()])


def bomb(path: str) -> Callable[[Exchange], Reply | None]:
    def respond(exchange: Exchange) -> Reply | None:
        if exchange.path != path:
            return None
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        return Reply(200, gzip_bomb(), headers)

    return respond


def first_of(*responders: Callable[[Exchange], Reply | None]) -> Callable:
    def respond(exchange: Exchange) -> Reply | None:
        for responder in responders:
            reply = responder(exchange)
            if reply is not None:
                return reply
        return None

    return respond


def endless_mappings(exchange: Exchange) -> Reply | None:
    """Every partner's organization mappings go on forever, a thousand a page."""
    if not exchange.path.endswith("/organization-mappings"):
        return None
    n = int(exchange.query.get("cursor", "0"))
    data = [
        {
            "module_organization_id": f"o_M{n}x{i}",
            "psa": "autotask",
            "psa_company_id": f"{n}-{i}",
            "psa_company_name": f"Company {n}-{i}",
        }
        for i in range(1000)
    ]
    return Reply(200, orjson.dumps({"data": data, "next_cursor": str(n + 1)}))


PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.call([sys.executable, "-m", "bullphish_billing", *sys.argv[1:]])
print("peak-rss-kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def test_the_run_stays_under_1_gib_whatever_the_servers_send(
    tmp_path,
    prefect_api_url,  # noqa: F811
):
    """With the default settings, in one run: p_0001's targets and p_0002's organizations are
    gzip bodies that inflate to 1 GiB, p_0009's and p_0010's targets never end (full pages),
    and KaseyaOne's organization mappings never end for any partner. Each of those partners
    fails with its reason (and p_0007, which KaseyaOne does not link, as always), the others
    are delivered, and the run's peak memory (the CLI's process) stays under 1 GiB."""
    warehouse = tmp_path / "warehouse.duckdb"
    bullphish = first_of(
        bomb("/v1/partners/p_0001/targets"),
        bomb("/v1/partners/p_0002/organizations"),
        Endless("/v1/partners/p_0009/targets", full_pages),
        Endless("/v1/partners/p_0010/targets", full_pages),
    )
    with (
        RunningSandbox(CONFIG) as sandbox,
        Relay(sandbox.bullphish_url, bullphish) as bp,
        Relay(sandbox.kaseyaone_url, endless_mappings) as k1,
    ):
        env = child_env(sandbox, warehouse, prefect_api_url)
        env |= {"BULLPHISH_API_URL": bp.url, "KASEYAONE_API_URL": k1.url}
        env["BILLING_RUN_DEADLINE_S"] = "600"
        result = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, "run", "--date", DAY.isoformat()],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 1, output(result)
        assert "Traceback" not in output(result), output(result)
        peak_kib = int(result.stderr.rsplit("peak-rss-kib", 1)[1].split()[0])
        with duckdb.connect(str(warehouse), read_only=True) as con:
            reasons = dict(
                con.execute(
                    "SELECT partner_id, reason FROM ops.partner_runs WHERE status = 'failed'"
                ).fetchall()
            )
            mappings = con.execute("SELECT count(*) FROM ops.mapping_fetches").fetchall()[0][0]
        for partner in ("p_0001", "p_0002"):
            assert "larger than" in reasons.get(partner, ""), (partner, reasons)
        for partner in ("p_0009", "p_0010"):
            assert "records" in reasons.get(partner, ""), (partner, reasons)
        assert set(reasons) == {"p_0001", "p_0002", "p_0009", "p_0010", "p_0007"}, reasons
        assert mappings == 0, "no partner's endless mappings should have been stored"
        assert "organization mappings of p_0012 not fetched" in output(result)
        want = expected_stored(sandbox, DAY)
        hostile = {"p_0001", "p_0002", "p_0009", "p_0010"}
        assert stored(sandbox, DAY) == {k: u for k, u in want.items() if k[0] not in hostile}
        assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
        print(f"peak RSS of the run: {peak_kib / 1024:.0f} MiB")
