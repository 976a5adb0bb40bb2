"""The running sandbox: lifecycle, pagination, idempotency, tokens and every fault knob, over
real loopback HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bullphish_billing.sandbox import (
    KaseyaOneState,
    RunningSandbox,
    SandboxConfig,
    World,
    bullphish_app,
    kaseyaone_app,
)

TODAY = dt.date(2025, 11, 25)
YESTERDAY = TODAY - dt.timedelta(days=1)
BULLPHISH_TOKEN = {"Authorization": "Bearer sandbox-bullphish-token"}
CREDENTIALS = {
    "grant_type": "client_credentials",
    "client_id": "sandbox-client",
    "client_secret": "sandbox-secret",
}
REPO = Path(__file__).resolve().parents[2]


def config(**knobs: object) -> SandboxConfig:
    return SandboxConfig(today=TODAY, **knobs)  # type: ignore[arg-type]


@contextmanager
def clients(sandbox: RunningSandbox) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """(BullPhish client, KaseyaOne client holding a token) for the sandbox."""
    with (
        httpx.Client(base_url=sandbox.bullphish_url, headers=BULLPHISH_TOKEN) as bp,
        httpx.Client(base_url=sandbox.kaseyaone_url) as k1,
    ):
        token = until_ok(lambda: k1.post("/oauth/token", data=CREDENTIALS)).json()["access_token"]
        k1.headers["Authorization"] = f"Bearer {token}"
        yield bp, k1


def until_ok(send: Callable[[], httpx.Response], tries: int = 60) -> httpx.Response:
    """What a retrying client does (without the backoff): repeat transient failures."""
    for _ in range(tries):
        response = send()
        if response.status_code != 429 and response.status_code < 500:
            return response
    raise AssertionError("still failing after retries")


def batch(
    partner: str = "p_0002", day: dt.date = YESTERDAY, units: int = 1, org: str = "o_0002o0001"
):
    return {
        "module": "bullphish-id",
        "partner_id": partner,
        "usage_date": day.isoformat(),
        "metrics": [
            {
                "organization_id": org,
                "billing_type": "bullphish_id.phishing.per_organization",
                "units": units,
            }
        ],
    }


def walk(client: httpx.Client, path: str, **params: object) -> tuple[list[dict], list[int], int]:
    """(records, page sizes, empty pages that had a next cursor) of a whole list."""
    records: list[dict] = []
    sizes: list[int] = []
    empty_with_cursor = 0
    cursor = None
    for _ in range(10_000):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = until_ok(lambda q=query: client.get(path, params=q)).json()
        records += page["data"]
        sizes.append(len(page["data"]))
        cursor = page["next_cursor"]
        if cursor is None:
            return records, sizes, empty_with_cursor
        empty_with_cursor += not page["data"]
    raise AssertionError("the cursor never ended")


# ---------------------------------------------------------------------- lifecycle
def sandbox_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bullphish-sandbox"]


def test_starts_fast_on_loopback_and_stops_clean():
    started = time.perf_counter()
    with RunningSandbox(config()) as sandbox:
        assert time.perf_counter() - started < 1.0
        ports = []
        for url in (sandbox.bullphish_url, sandbox.kaseyaone_url):
            assert url.startswith("http://127.0.0.1:")
            ports.append(int(url.rsplit(":", 1)[1]))
        assert (
            httpx.get(f"{sandbox.bullphish_url}/v1/partners", headers=BULLPHISH_TOKEN).status_code
            == 200
        )
        # 127.0.0.1 only: another loopback address of the same host finds nothing listening
        for port in ports:
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.2", port), timeout=1).close()
        assert len(sandbox_threads()) == 1
        stopping = time.perf_counter()
    assert time.perf_counter() - stopping < 2.0
    assert sandbox_threads() == []
    for port in ports:  # freed: connections are refused and the port can be bound again
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


def test_a_taken_port_fails_at_once_and_leaves_nothing_running():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=str(port)), RunningSandbox(config(), kaseyaone_port=port):
            pass
    assert sandbox_threads() == []


def test_keep_alive_requests_are_fast():
    """Guards TCP_NODELAY on accepted sockets: without it each response waits ~40 ms."""
    with RunningSandbox(config()) as sandbox, clients(sandbox) as (bp, _):
        bp.get("/v1/partners")
        started = time.perf_counter()
        for _ in range(30):
            assert bp.get("/v1/partners/p_0001/targets", params={"limit": 50}).status_code == 200
        assert time.perf_counter() - started < 0.6


async def test_an_asyncio_client_in_the_callers_loop():
    with RunningSandbox(config()) as sandbox:
        async with httpx.AsyncClient(base_url=sandbox.bullphish_url, headers=BULLPHISH_TOKEN) as bp:
            responses = await asyncio.gather(
                *(
                    bp.get(f"/v1/partners/{pid}/organizations")
                    for pid in sandbox.world.partner_ids()
                )
            )
    assert [r.status_code for r in responses] == [200] * 12


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_runs_until_ctrl_c_and_stops_cleanly(stop_signal):
    code = (
        # Ctrl-C as a terminal gives it: a child of a job started in the background (CI under
        # `cmd &`) inherits SIGINT ignored, and Python then keeps it ignored
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "import datetime; from bullphish_billing.sandbox import serve, SandboxConfig; "
        "serve(SandboxConfig(today=datetime.date(2025, 11, 25)), 0, 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("BullPhish ID sandbox: http://127.0.0.1:"), first
        url = first.split(": ", 1)[1].strip()
        banner = [first]
        while not banner[-1].startswith("Press Ctrl-C"):
            banner.append(proc.stdout.readline())
        assert httpx.get(f"{url}/v1/partners", headers=BULLPHISH_TOKEN).status_code == 200
        proc.send_signal(stop_signal)
        rest, err = proc.communicate(timeout=30)
        out = "".join(banner) + rest
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Traceback" not in out
    assert "KASEYAONE_CLIENT_ID=sandbox-client" in out


# ---------------------------------------------------------------------- pagination
def test_short_pages_walk_to_the_end_and_match_the_world():
    with RunningSandbox(config(short_pages=True)) as sandbox, clients(sandbox) as (bp, k1):
        world = sandbox.world
        sizes_seen: list[int] = []
        empties = 0
        for pid in ("p_0001", "p_0002", "p_0009"):
            targets, sizes, empty = walk(bp, f"/v1/partners/{pid}/targets", limit=25)
            assert targets == world.targets(pid, YESTERDAY)
            orgs, org_sizes, org_empty = walk(bp, f"/v1/partners/{pid}/organizations", limit=2)
            assert orgs == world.organizations(pid, YESTERDAY)
            sizes_seen += sizes[:-1] + org_sizes[:-1]
            empties += empty + org_empty
        partners, _, _ = walk(bp, "/v1/partners", limit=3)
        assert partners == world.partners(YESTERDAY)
        assert any(0 < s < 25 for s in sizes_seen)  # short, and not the last page
        assert empties > 0  # an empty page whose next_cursor is not null
        # pages are immutable: a cursor reused gives the same bytes
        cursor = bp.get("/v1/partners/p_0002/targets", params={"limit": 10}).json()["next_cursor"]
        again = {
            bp.get("/v1/partners/p_0002/targets", params={"cursor": cursor}).content
            for _ in range(3)
        }
        assert len(again) == 1
        # KaseyaOne lists page the same way
        mappings, _, _ = walk(
            k1, "/v1/partners/p_0009/organization-mappings", module="bullphish-id", limit=1
        )
        assert mappings == world.organization_mappings("p_0009")


def test_full_pages_without_short_pages():
    with RunningSandbox(config()) as sandbox, clients(sandbox) as (bp, _):
        targets, sizes, empty = walk(bp, "/v1/partners/p_0003/targets", limit=7)
        assert targets == sandbox.world.targets("p_0003", YESTERDAY)
        assert set(sizes[:-1]) == {7} and 0 < sizes[-1] <= 7 and empty == 0


def test_malformed_records_are_served_as_the_world_says():
    with RunningSandbox(config(malformed_rate=0.3)) as sandbox, clients(sandbox) as (bp, _):
        for pid in ("p_0002", "p_0010"):
            served, _, _ = walk(bp, f"/v1/partners/{pid}/targets", limit=1000)
            assert served == sandbox.world.targets(pid, YESTERDAY)
            assert any(
                t.get("status") not in ("active", "inactive") or "id" not in t for t in served
            )


# ---------------------------------------------------------------------- KaseyaOne behaviour
def test_replay_returns_the_first_answer_and_changes_nothing():
    with RunningSandbox(config()) as sandbox, clients(sandbox) as (_, k1):
        state = sandbox.kaseyaone
        first = k1.post("/v1/billing/usage", json=batch(), headers={"Idempotency-Key": "r-1"})
        stored = state.stored("p_0002", YESTERDAY)
        # the same body written differently (key order, spacing) is the same body
        same = json.dumps(dict(reversed(list(batch().items()))), indent=2)
        replay = k1.post(
            "/v1/billing/usage",
            content=same,
            headers={"Idempotency-Key": "r-1", "Content-Type": "application/json"},
        )
        assert replay.json() == {**first.json(), "replayed": True}
        assert state.stored("p_0002", YESTERDAY) == stored  # received_at untouched
        reused = k1.post(
            "/v1/billing/usage", json=batch(units=0), headers={"Idempotency-Key": "r-1"}
        )
        assert reused.status_code == 409
        assert state.stored("p_0002", YESTERDAY) == stored
        assert [(r.idempotency_key, r.status, r.replayed) for r in state.requests] == [
            ("r-1", 200, False),
            ("r-1", 200, True),
            ("r-1", 409, False),
        ]
        assert len(state.sends()) == 1 and state.requests[0].body == batch()


def test_idempotency_keys_are_scoped_per_client():
    with RunningSandbox(config()) as sandbox, clients(sandbox) as (_, k1):
        sandbox.kaseyaone.clients["second-client"] = "second-secret"
        token = k1.post(
            "/oauth/token",
            data={**CREDENTIALS, "client_id": "second-client", "client_secret": "second-secret"},
        ).json()["access_token"]
        assert (
            k1.post(
                "/v1/billing/usage", json=batch(), headers={"Idempotency-Key": "s-1"}
            ).status_code
            == 200
        )
        other = k1.post(
            "/v1/billing/usage",
            json=batch(units=0),
            headers={"Idempotency-Key": "s-1", "Authorization": f"Bearer {token}"},
        )
        assert other.json() == {"accepted": 1, "rejected": [], "replayed": False}
        assert [m["units"] for m in sandbox.kaseyaone.stored("p_0002", YESTERDAY)] == [0]


def test_a_later_report_replaces_the_earlier_one():
    with RunningSandbox(config()) as sandbox, clients(sandbox) as (_, k1):
        for i, units in enumerate((1, 0, 1)):
            k1.post(
                "/v1/billing/usage", json=batch(units=units), headers={"Idempotency-Key": f"u-{i}"}
            )
            assert [m["units"] for m in sandbox.kaseyaone.stored("p_0002", YESTERDAY)] == [units]
        k1.post(
            "/v1/billing/usage",
            json=batch(day=YESTERDAY - dt.timedelta(days=1)),
            headers={"Idempotency-Key": "u-other-day"},
        )
        assert len(sandbox.kaseyaone.stored("p_0002")) == 2
        assert len(sandbox.kaseyaone.stored()) == 2


def test_tokens_expire():
    with RunningSandbox(config(token_lifetime_s=1)) as sandbox, clients(sandbox) as (_, k1):
        token = k1.post("/oauth/token", data=CREDENTIALS).json()
        assert token["expires_in"] == 1
        k1.headers["Authorization"] = f"Bearer {token['access_token']}"
        assert (
            k1.get("/v1/billing/billing-types", params={"module": "bullphish-id"}).status_code
            == 200
        )
        time.sleep(1.05)
        expired = k1.get("/v1/billing/billing-types", params={"module": "bullphish-id"})
        assert (expired.status_code, expired.json()["error"]["code"]) == (401, "invalid_token")
        posted = k1.post("/v1/billing/usage", json=batch(), headers={"Idempotency-Key": "t-1"})
        assert posted.status_code == 401 and sandbox.kaseyaone.stored() == []
        fresh = k1.post("/oauth/token", data=CREDENTIALS).json()["access_token"]
        k1.headers["Authorization"] = f"Bearer {fresh}"
        assert (
            k1.get("/v1/billing/billing-types", params={"module": "bullphish-id"}).status_code
            == 200
        )


async def test_the_apps_run_in_process_and_expose_the_store():
    world = World(config())
    state = KaseyaOneState()
    app = kaseyaone_app(world, config(), state)
    assert app.state.kaseyaone is state
    assert isinstance(kaseyaone_app(world, config()).state.kaseyaone, KaseyaOneState)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kaseyaone") as client:
        assert (await client.post("/oauth/token", data=CREDENTIALS)).status_code == 200
        assert state._tokens  # the token lives in the state handed in
    transport = httpx.ASGITransport(app=bullphish_app(world, config()))
    async with httpx.AsyncClient(transport=transport, base_url="http://bullphish") as client:
        response = await client.get("/v1/partners", headers=BULLPHISH_TOKEN)
        assert response.json()["data"] == world.partners(YESTERDAY)


# ---------------------------------------------------------------------- fault knobs
def test_rate_429_refuses_with_retry_after_and_a_retry_succeeds():
    with RunningSandbox(config(rate_429=0.4)) as sandbox, clients(sandbox) as (bp, _):
        statuses = []
        for _ in range(40):
            response = bp.get("/v1/partners")
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.headers["Retry-After"] in ("0", "1")
        assert set(statuses) == {200, 429}
        assert until_ok(lambda: bp.get("/v1/partners")).status_code == 200
        assert sandbox.bullphish_app.state.faults.injected["429"] == statuses.count(429)


def test_rate_5xx_fails_before_anything_is_stored():
    with RunningSandbox(config(rate_5xx=0.5)) as sandbox, clients(sandbox) as (bp, k1):
        day = YESTERDAY - dt.timedelta(days=2)
        orgs = [o["id"] for o in sandbox.world.organizations("p_0002", day)]
        outcomes = {}
        for i, oid in enumerate(orgs):
            response = k1.post(
                "/v1/billing/usage",
                json=batch(day=day, org=oid),
                headers={"Idempotency-Key": f"x-{i}"},
            )
            outcomes[oid] = response.status_code
        assert set(outcomes.values()) <= {200, 500, 502, 503} and len(set(outcomes.values())) > 1
        stored = {m["organization_id"] for m in sandbox.kaseyaone.stored("p_0002", day)}
        assert stored == {oid for oid, status in outcomes.items() if status == 200}
        assert all(r.fault == "5xx" for r in sandbox.kaseyaone.requests if r.status >= 500)
        for i, oid in enumerate(orgs):  # retrying with the same key is safe
            answer = until_ok(
                lambda i=i, oid=oid: k1.post(
                    "/v1/billing/usage",
                    json=batch(day=day, org=oid),
                    headers={"Idempotency-Key": f"x-{i}"},
                )
            )
            assert answer.json()["replayed"] is (outcomes[oid] == 200)
        assert {m["organization_id"] for m in sandbox.kaseyaone.stored("p_0002", day)} == set(orgs)
        assert {bp.get("/v1/partners").status_code for _ in range(30)} >= {200, 500}


def test_lost_responses_are_stored_and_replayed_on_retry():
    with RunningSandbox(config(rate_lost_response=0.5)) as sandbox, clients(sandbox) as (_, k1):
        lost = 0
        for i in range(20):
            send = lambda i=i: k1.post(  # noqa: E731
                "/v1/billing/usage", json=batch(units=i % 2), headers={"Idempotency-Key": f"l-{i}"}
            )
            first = send()
            if first.status_code >= 500:
                lost += 1
                assert sandbox.kaseyaone.stored("p_0002", YESTERDAY)[0]["units"] == i % 2  # stored
                retried = until_ok(send)
                assert retried.json() == {"accepted": 1, "rejected": [], "replayed": True}
            else:
                assert first.json()["replayed"] is False
        assert 0 < lost < 20
        assert len(sandbox.kaseyaone.sends()) == 20  # each batch applied exactly once
        assert sum(r.fault == "lost_response" for r in sandbox.kaseyaone.requests) == lost


def test_latency_is_added_to_every_request():
    with RunningSandbox(config(latency_ms=150)) as sandbox, clients(sandbox) as (bp, k1):
        for send in (
            lambda: bp.get("/v1/partners"),
            lambda: k1.get("/v1/billing/billing-types", params={"module": "bullphish-id"}),
        ):
            started = time.perf_counter()
            assert send().status_code == 200
            assert time.perf_counter() - started >= 0.15


def test_fault_draws_are_seeded():
    def statuses(seed: int) -> list[int]:
        knobs = config(seed=seed, rate_5xx=0.3, rate_429=0.2)
        with RunningSandbox(knobs) as sandbox, clients(sandbox) as (bp, _):
            return [bp.get("/v1/partners").status_code for _ in range(25)]

    assert statuses(1) == statuses(1)
    assert statuses(1) != statuses(2)
