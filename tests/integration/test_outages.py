"""Outages: an API that fails for one partner, stops answering mid-response, or is down for a
whole run. The partner-dates it touches fail (or stay pending) with their reason, the others
go on, nothing is recorded as delivered that was not, and the next run completes the work once.

(`tests/integration/test_daily_flow.py::test_kaseyaone_down_leaves_batches_pending_and_the_next_run_delivers_them`
already shows KaseyaOne down for a run, in process; here the same as the user meets it, with
the CLI's exit code and the order of the next run's sends.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import duckdb
import httpx
import pytest
from fault_tools import (
    assert_delivered_exactly_once,
    assert_delivered_partner_dates_are_in_kaseyaone,
    assert_no_double_sends,
    expected_stored,
    prefect_api_url,  # noqa: F401 - fixture
    stored,
)
from flow_runs import billed
from sandbox_env import child_env, output, run_cli

from bullphish_billing import cli
from bullphish_billing.clients import (
    BullPhishClient,
    KaseyaOneClient,
    RetriesExhaustedError,
    RetryPolicy,
)
from bullphish_billing.dates import yesterday_utc
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

DAY = yesterday_utc() - dt.timedelta(days=5)
SEED = 5  # partners=12: billable p_0001, p_0002, p_0007..p_0012 (p_0007 not linked)


# ------------------------------------------------------------------ a proxy that can stall
class StallingProxy:
    """An HTTP/1.1 proxy in front of a sandbox API. A request for which `stall(method, path)`
    is true is forwarded (so the server acts on it), then answered with a status line, headers
    and half a body, and then nothing, until the proxy is closed: a server that stops answering
    mid-response. `stalled` counts those requests."""

    def __init__(self, upstream: str, stall: Callable[[str, str], bool]) -> None:
        self.upstream = upstream
        self.stall = stall
        self.stalled = 0
        self._release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "connection")
                }
                answer = httpx.request(
                    self.command,
                    proxy.upstream + self.path,
                    headers=headers,
                    content=body,
                    timeout=30,
                )
                if proxy.stall(self.command, self.path.split("?")[0]):
                    proxy.stalled += 1
                    self.send_response(answer.status_code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer.content) + 1000))
                    self.end_headers()
                    self.wfile.write(answer.content[: len(answer.content) // 2])
                    self.wfile.flush()
                    proxy._release.wait()
                    self.close_connection = True
                    return
                self.send_response(answer.status_code)
                for name in ("Content-Type", "Retry-After"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StallingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


def run_flow(day: dt.date, **kwargs):
    return billed(usage_date=day, **kwargs)


def only(partners: set[str], metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k[0] in partners}


# ------------------------------------------------------------------------------- the knob
def test_the_sandbox_serves_a_partners_injected_error_with_the_contracts_body():
    config = SandboxConfig(partners=4, partner_errors=(("p_0001", 404), ("p_0002", 410)))
    with RunningSandbox(config) as sandbox:
        auth = {"Authorization": f"Bearer {config.bullphish_token}"}
        base = sandbox.bullphish_url
        for pid, status, code in (("p_0001", 404, "not_found"), ("p_0002", 410, "history_expired")):
            for lst in ("organizations", "targets"):
                answer = httpx.get(f"{base}/v1/partners/{pid}/{lst}", headers=auth)
                assert answer.status_code == status
                assert answer.json()["error"]["code"] == code
                assert set(answer.json()["error"]) == {"code", "message"}
            # the token is still checked first
            assert httpx.get(f"{base}/v1/partners/{pid}/targets").status_code == 401
        assert httpx.get(f"{base}/v1/partners/p_0003/targets", headers=auth).status_code == 200
        listed = httpx.get(f"{base}/v1/partners", headers=auth).json()["data"]
        assert {"p_0001", "p_0002"} <= {p["id"] for p in listed}  # the list is unchanged
    with pytest.raises(ValueError, match="partner_errors"):
        SandboxConfig(partner_errors=(("p_0001", 418),))


# ------------------------------------------------------------- BullPhish ID, per partner
@pytest.mark.usefixtures("prefect_harness")
def test_a_partner_whose_lists_fail_is_failed_with_its_reason_and_the_others_go_on(
    configure, warehouse_path
):
    """503 for as long as the request deadline lasts (its data is down), 404, 410, and a
    response that stops mid-body: each fails its own partner-date, with its reason."""
    failing = {"p_0009": "503", "p_0010": "404", "p_0002": "410", "p_0011": "deadline"}
    config = SandboxConfig(
        seed=SEED,
        partners=12,
        partner_errors=(("p_0009", 503), ("p_0010", 404), ("p_0002", 410)),
    )
    stalls = re.compile(r"/v1/partners/p_0011/(organizations|targets)")
    with (
        RunningSandbox(config) as sandbox,
        StallingProxy(sandbox.bullphish_url, lambda m, path: bool(stalls.fullmatch(path))) as bp,
    ):
        configure(sandbox, bullphish_url=bp.url, BILLING_HTTP_DEADLINE_S=4)
        summary = run_flow(DAY)
        assert bp.stalled >= 1
        outcomes = {o.partner_id: o for o in summary.outcomes}
        for pid, why in failing.items():
            assert outcomes[pid].status == "failed", outcomes[pid]
            assert why in outcomes[pid].reason, outcomes[pid].reason
            assert outcomes[pid].metrics_sent == 0
        assert summary.exit_code == 1
        # the others went on: KaseyaOne holds exactly their metrics
        expected = expected_stored(sandbox, DAY)
        others = {p for p, *_ in expected} - set(failing)
        assert others == {"p_0001", "p_0008", "p_0012"}
        assert stored(sandbox, DAY) == only(others, expected)
        assert_no_double_sends(sandbox)
        assert_delivered_partner_dates_are_in_kaseyaone(sandbox, warehouse_path)
        with duckdb.connect(str(warehouse_path), read_only=True) as con:
            logged = dict(
                con.execute(
                    "SELECT partner_id, reason FROM ops.partner_runs "
                    "WHERE status = 'failed' AND run_id = ?",
                    [summary.run_id],
                ).fetchall()
            )
        assert {p: logged.get(p, "") for p in failing} == {p: outcomes[p].reason for p in failing}

    # the outage is over: the next run of the date bills the partners that failed
    with RunningSandbox(SandboxConfig(seed=SEED, partners=12)) as healthy:
        configure(healthy)
        again = run_flow(DAY)
        assert {o.partner_id for o in again.outcomes if o.status == "delivered"} >= set(failing)
        # (the others were acknowledged by the first run: unchanged, so not sent again)
        assert stored(healthy, DAY) == only(set(failing), expected_stored(healthy, DAY))


# --------------------------------------------------------------- KaseyaOne, a whole run
def dead_url() -> str:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_kaseyaone_down_for_a_run_exits_1_and_the_next_run_sends_the_pending_batches_first(
    tmp_path,
    prefect_api_url,  # noqa: F811
):
    later = DAY + dt.timedelta(days=1)
    warehouse = tmp_path / "warehouse.duckdb"
    with RunningSandbox(SandboxConfig(seed=SEED, partners=10)) as sandbox:
        env = child_env(sandbox, warehouse, prefect_api_url)
        down = run_cli(
            ["run", "--date", DAY.isoformat()],
            env | {"KASEYAONE_API_URL": dead_url(), "BILLING_HTTP_DEADLINE_S": "1"},
            tmp_path,
        )
        assert down.returncode == 1, output(down)
        assert "Traceback" not in output(down)
        assert "pending" in down.stdout
        assert sandbox.kaseyaone.requests == []
        with duckdb.connect(str(warehouse), read_only=True) as con:
            pending = [
                k
                for (k,) in con.execute(
                    "SELECT idempotency_key FROM ops.outbox WHERE status = 'pending'"
                ).fetchall()
            ]
            statuses = dict(
                con.execute(
                    "SELECT partner_id, status FROM ops.partner_runs WHERE usage_date = ?", [DAY]
                ).fetchall()
            )
        assert pending
        assert "delivered" not in statuses.values() and "partial" not in statuses.values()

        up = run_cli(["run", "--date", later.isoformat()], env, tmp_path)
        assert up.returncode == 1, output(up)  # p_0007 unlinked, p_0008 rejections
        posts = [r.idempotency_key for r in sandbox.kaseyaone.requests]
        first = posts[: len(pending)]
        assert set(first) == set(pending), "the pending batches were not sent first"
        for day in (DAY, later):
            assert_delivered_exactly_once(sandbox, warehouse, day)


# ---------------------------------------------------- a server that stops mid-response
@pytest.mark.usefixtures("prefect_harness")
def test_kaseyaone_stalling_mid_response_is_cut_by_the_run_deadline_and_nothing_is_doubled(
    configure, warehouse_path
):
    """KaseyaOne stores each batch and then stops answering mid-response. The request deadline
    is long (600 s); the run deadline (a few seconds) ends the run: exit 1, the batches stay
    pending, and the next run of the same date sends them again under the same keys, which
    KaseyaOne answers as replays: each batch applied once."""
    config = SandboxConfig(seed=SEED, partners=10)
    with (
        RunningSandbox(config) as sandbox,
        StallingProxy(
            sandbox.kaseyaone_url, lambda m, path: m == "POST" and path == "/v1/billing/usage"
        ) as k1,
    ):
        configure(
            sandbox,
            kaseyaone_url=k1.url,
            BILLING_HTTP_DEADLINE_S=600,
            BILLING_RUN_DEADLINE_S=8,
        )
        cut = run_flow(DAY)
        assert k1.stalled >= 1
        assert cut.exit_code == 1 and cut.still_pending > 0
        reasons = [o.reason or "" for o in cut.outcomes if o.status == "failed"]
        assert any("run deadline" in r for r in reasons), reasons
        assert all(o.status not in ("delivered", "partial") for o in cut.outcomes)
        assert_delivered_partner_dates_are_in_kaseyaone(sandbox, warehouse_path)

        configure(sandbox)  # KaseyaOne answers again
        again = run_flow(DAY)
        assert again.earlier_batches_sent >= 1
        stored_before = {r.idempotency_key for r in sandbox.kaseyaone.sends()}
        replayed = {r.idempotency_key for r in sandbox.kaseyaone.requests if r.replayed}
        assert stored_before & replayed  # stored during the stall, replayed now
        assert_delivered_exactly_once(sandbox, warehouse_path, DAY)


# ----------------------------------------------------------------- bounded retries, units
class LoopbackServer:
    """A server whose every request is answered by `respond(handler)`; counts requests."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.requests: list[str] = []
        self._release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests.append(self.path.split("?")[0])
                respond(self)

            do_GET = do_POST = _any

        self.release = self._release
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


def answer(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


async def test_the_run_deadline_cuts_a_response_that_stalls_and_stops_new_requests():
    def stall(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b'{"data": [')
        handler.wfile.flush()
        server.release.wait()

    with LoopbackServer(stall) as server:
        policy = RetryPolicy(
            request_deadline_s=600, read_timeout_s=600, run_deadline=time.monotonic() + 0.5
        )
        async with BullPhishClient(server.url, "token", retry=policy) as client:
            with pytest.raises(RetriesExhaustedError, match="run deadline") as cut:
                await anext(client.iter_partners(DAY))
            assert cut.value.attempts == 1 and len(server.requests) == 1
            with pytest.raises(RetriesExhaustedError, match="run deadline reached") as late:
                await anext(client.iter_partners(DAY))
            assert late.value.attempts == 0 and len(server.requests) == 1  # never sent


async def test_requests_waiting_for_a_token_fetch_that_failed_fail_with_it():
    """KaseyaOne's token endpoint down: one fetch spends its retry budget; the requests that
    queued behind it fail at once instead of each spending another budget in turn."""

    def down(handler: BaseHTTPRequestHandler) -> None:
        answer(handler, 503, b'{"error": {"code": "internal", "message": "down"}}')

    policy = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)
    batch = {"module": "bullphish-id", "partner_id": "p_1", "usage_date": DAY.isoformat(),
             "metrics": [{"organization_id": "o_1", "billing_type": "x", "units": 1}]}  # fmt: skip
    with LoopbackServer(down) as server:
        async with KaseyaOneClient(server.url, "client", "secret", retry=policy) as client:
            results = await asyncio.gather(
                *(client.report_usage(batch, f"key-{i}") for i in range(5)),
                return_exceptions=True,
            )
            assert all(isinstance(r, RetriesExhaustedError) for r in results), results
            assert server.requests == ["/oauth/token"] * 3  # one fetch's attempts, not 5 x 3
            # a later request tries again: a failure is shared, not remembered
            with pytest.raises(RetriesExhaustedError):
                await client.report_usage(batch, "key-later")
            assert server.requests == ["/oauth/token"] * 6


def test_the_cli_says_in_one_line_that_the_run_failed_when_an_api_it_needs_failed(
    monkeypatch, capsys
):
    """BullPhish ID down for the partner list: nothing can be billed; the flow fails with the
    API error, and the CLI prints one line and exits 1 (not a traceback)."""
    from prefect.states import Failed

    import flows.daily_billing

    error = RetriesExhaustedError(
        "gave up after 8 attempt(s)", api="bullphish", method="GET", path="/v1/partners"
    )
    monkeypatch.setattr(
        flows.daily_billing, "daily_billing", lambda **kwargs: Failed(message="x", data=error)
    )
    for name in ("BULLPHISH_API_URL", "KASEYAONE_API_URL"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("BULLPHISH_API_TOKEN", "KASEYAONE_CLIENT_ID", "KASEYAONE_CLIENT_SECRET"):
        monkeypatch.setenv(name, "x")
    assert cli.main(["run", "--date", DAY.isoformat()]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "bullphish-billing run: error: the run failed: bullphish GET /v1/partners failed: "
        "status=- code=-: gave up after 8 attempt(s)"
    ]
