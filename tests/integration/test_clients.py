"""The HTTP clients against small purpose-built servers on loopback (real HTTP, no mocks).

Each test serves a tiny Starlette app with uvicorn in a thread on a free 127.0.0.1 port, to
produce on demand what the sandbox cannot: a hanging response, an exact Retry-After, a second
401, a cursor loop, a body that is not JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson
import pytest
from loopback import Handler, error, form_of, json_response, serve
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from bullphish_billing.clients import (
    ApiError,
    BullPhishClient,
    ContractViolationError,
    FinalApiError,
    KaseyaOneClient,
    LimitExceededError,
    ListBudget,
    Page,
    RetriesExhaustedError,
    RetryPolicy,
    UsageResult,
)
from bullphish_billing.clients.pages import follow_cursor

AS_OF = date(2024, 5, 1)
TOKEN = "bp-token-9f8e7d6c5b4a"
CLIENT_SECRET = "k1-secret-0a1b2c3d4e5f"
FAST = RetryPolicy(
    max_attempts=4,
    base_delay_s=0.01,
    max_delay_s=0.05,
    request_deadline_s=10.0,
    connect_timeout_s=1.0,
    read_timeout_s=2.0,
)


@dataclass
class Seen:
    """What a test server received."""

    requests: list[Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def add(self, request: Request) -> None:
        self.requests.append(request)
        self.bodies.append(await request.body())

    @property
    def count(self) -> int:
        return len(self.requests)


def paged(pages: dict[str | None, tuple[list[dict], str | None]], seen: Seen) -> Handler:
    """A list endpoint serving `pages[cursor] = (records, next_cursor)`."""

    async def handler(request: Request) -> Response:
        await seen.add(request)
        records, next_cursor = pages[request.query_params.get("cursor")]
        return json_response({"data": records, "next_cursor": next_cursor})

    return handler


async def collect(pages: Any) -> list[Page]:
    return [page async for page in pages]


def bullphish(url: str, **kwargs: Any) -> BullPhishClient:
    kwargs.setdefault("retry", FAST)
    return BullPhishClient(url, TOKEN, **kwargs)


# ---------------------------------------------------------------------- BullPhish ID: lists


async def test_list_follows_cursor_through_short_and_empty_pages() -> None:
    seen = Seen()
    pages = {
        None: ([{"id": "p_1"}, {"id": "p_2", "extra": {"kept": True}}], "c1"),
        "c1": ([], "c2"),  # empty page, more follow
        "c2": ([{"id": "p_3", "name": None}], None),
    }
    with serve(paged(pages, seen)) as url:
        async with bullphish(url, page_limit=2) as client:
            got = await collect(client.iter_partners(AS_OF))
    assert [page.number for page in got] == [0, 1, 2]
    assert [r for page in got for r in page.records] == [
        {"id": "p_1"},
        {"id": "p_2", "extra": {"kept": True}},
        {"id": "p_3", "name": None},
    ]
    assert [r.url.path for r in seen.requests] == ["/v1/partners"] * 3
    assert [r.query_params.get("cursor") for r in seen.requests] == [None, "c1", "c2"]
    assert {r.query_params["as_of"] for r in seen.requests} == {"2024-05-01"}
    assert {r.query_params["limit"] for r in seen.requests} == {"2"}
    assert {r.headers["authorization"] for r in seen.requests} == {f"Bearer {TOKEN}"}


async def test_organizations_and_targets_paths_carry_the_partner() -> None:
    seen = Seen()
    with serve(paged({None: ([{"id": "x"}], None)}, seen)) as url:
        async with bullphish(url) as client:
            orgs = await collect(client.iter_organizations("p_42", AS_OF))
            targets = await collect(client.iter_targets("p_42", AS_OF))
    assert orgs == targets == [Page(records=[{"id": "x"}], number=0)]
    assert [r.url.path for r in seen.requests] == [
        "/v1/partners/p_42/organizations",
        "/v1/partners/p_42/targets",
    ]
    assert {r.query_params["limit"] for r in seen.requests} == {"1000"}


async def test_a_cursor_seen_twice_is_a_contract_violation() -> None:
    seen = Seen()
    pages = {None: ([{"id": "a"}], "c1"), "c1": ([{"id": "b"}], "c2"), "c2": ([{"id": "c"}], "c1")}
    with serve(paged(pages, seen)) as url:
        async with bullphish(url) as client:
            with pytest.raises(ContractViolationError, match="repeats") as info:
                await collect(client.iter_targets("p_1", AS_OF))
    assert seen.count == 3
    assert isinstance(info.value, FinalApiError)
    assert info.value.path == "/v1/partners/p_1/targets"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"<html>oops</html>", "not valid JSON"),
        (b'{"data": [{"id": "p_1"}], "next_cursor": nul', "not valid JSON"),
        (b'{"data": []}', "lacks next_cursor"),
        (b'{"next_cursor": null}', "lacks data"),
        (b'{"data": {"id": "p_1"}, "next_cursor": null}', "not an array"),
        (b'{"data": [], "next_cursor": 7}', "not a string"),
        (b"[]", "not an object"),
    ],
)
async def test_bodies_that_break_the_contract_are_final(body: bytes, match: str) -> None:
    seen = Seen()

    async def handler(request: Request) -> Response:
        await seen.add(request)
        return Response(body, media_type="application/json")

    with serve(handler) as url:
        async with bullphish(url) as client:
            with pytest.raises(ContractViolationError, match=match) as info:
                await collect(client.iter_partners(AS_OF))
    assert seen.count == 1, "a contract violation is not retried"
    assert info.value.status == 200


# ----------------------------------------------------------------- final and transient errors


async def test_a_400_is_final_without_retry_and_says_everything_in_one_line() -> None:
    seen = Seen()

    async def handler(request: Request) -> Response:
        await seen.add(request)
        if request.query_params.get("cursor"):
            return error(400, "invalid_cursor", "cursor does not match as_of")
        return json_response({"data": [{"id": "p_1"}], "next_cursor": "secret-cursor-123"})

    with serve(handler) as url:
        async with bullphish(url) as client:
            with pytest.raises(FinalApiError) as info:
                await collect(client.iter_partners(AS_OF))
    exc = info.value
    assert seen.count == 2
    assert not isinstance(exc, ContractViolationError)
    assert (exc.api, exc.method, exc.path, exc.status, exc.code) == (
        "bullphish",
        "GET",
        "/v1/partners",
        400,
        "invalid_cursor",
    )
    assert exc.message == "cursor does not match as_of"
    text = str(exc)
    assert "\n" not in text
    for part in (
        "bullphish",
        "GET",
        "/v1/partners",
        "400",
        "invalid_cursor",
        "cursor does not match as_of",
    ):
        assert part in text
    assert "secret-cursor-123" not in text and "as_of=" not in text


async def test_410_history_expired_is_final() -> None:
    seen = Seen()

    async def handler(request: Request) -> Response:
        await seen.add(request)
        return error(410, "history_expired", "older than 400 days")

    with serve(handler) as url:
        async with bullphish(url) as client:
            with pytest.raises(FinalApiError) as info:
                await collect(client.iter_organizations("p_1", AS_OF))
    assert (seen.count, info.value.status, info.value.code) == (1, 410, "history_expired")


async def test_5xx_is_retried_until_it_succeeds() -> None:
    seen = Seen()

    async def handler(request: Request) -> Response:
        await seen.add(request)
        if seen.count <= 2:
            return error(503, "internal") if seen.count == 1 else Response(b"bad gateway", 502)
        return json_response({"data": [{"id": "p_1"}], "next_cursor": None})

    with serve(handler) as url:
        async with bullphish(url) as client:
            got = await collect(client.iter_partners(AS_OF))
    assert seen.count == 3
    assert got == [Page(records=[{"id": "p_1"}], number=0)]


async def test_persistent_5xx_exhausts_the_attempts() -> None:
    seen = Seen()

    async def handler(request: Request) -> Response:
        await seen.add(request)
        return error(500, "internal", "database on fire")

    with serve(handler) as url:
        async with bullphish(url) as client:
            with pytest.raises(RetriesExhaustedError) as info:
                await collect(client.iter_partners(AS_OF))
    exc = info.value
    assert seen.count == FAST.max_attempts == exc.attempts
    assert (exc.status, exc.code) == (500, "internal")
    assert "database on fire" in str(exc) and "4 attempt(s)" in str(exc)
    assert not isinstance(exc, FinalApiError)


async def test_retry_after_is_honoured_instead_of_the_backoff() -> None:
    seen = Seen()
    stamps: list[float] = []

    async def handler(request: Request) -> Response:
        await seen.add(request)
        stamps.append(time.monotonic())
        if seen.count == 1:
            return error(429, "rate_limited", **{"Retry-After": "1"})
        return json_response({"data": [], "next_cursor": None})

    with serve(handler) as url:
        async with bullphish(url) as client:
            await collect(client.iter_partners(AS_OF))
    assert seen.count == 2
    waited = stamps[1] - stamps[0]
    assert 0.9 <= waited < 3.0, waited  # FAST's backoff alone would wait at most 0.05 s


async def test_a_retry_after_beyond_the_deadline_fails_at_once() -> None:
    seen = Seen()

    async def handler(request: Request) -> Response:
        await seen.add(request)
        return error(429, "rate_limited", **{"Retry-After": "30"})

    policy = RetryPolicy(max_attempts=5, base_delay_s=0.01, request_deadline_s=2.0)
    with serve(handler) as url:
        async with bullphish(url, retry=policy) as client:
            started = time.monotonic()
            with pytest.raises(RetriesExhaustedError, match="deadline") as info:
                await collect(client.iter_partners(AS_OF))
    assert time.monotonic() - started < 1.5
    assert (seen.count, info.value.status, info.value.code) == (1, 429, "rate_limited")


def hanging(seen: Seen, hang_s: float = 5.0) -> Handler:
    """Sends the status line, headers and half a body, then goes silent."""

    async def handler(request: Request) -> Response:
        await seen.add(request)

        async def body() -> Any:
            yield b'{"data": ['
            await asyncio.sleep(hang_s)
            yield b'], "next_cursor": null}'

        return StreamingResponse(body(), media_type="application/json")

    return handler


async def test_a_response_that_hangs_hits_the_read_timeout_and_is_retried() -> None:
    seen = Seen()
    policy = RetryPolicy(
        max_attempts=3,
        base_delay_s=0.01,
        max_delay_s=0.02,
        request_deadline_s=10.0,
        read_timeout_s=0.3,
    )
    with serve(hanging(seen)) as url:
        async with bullphish(url, retry=policy) as client:
            started = time.monotonic()
            with pytest.raises(RetriesExhaustedError, match="ReadTimeout") as info:
                await collect(client.iter_partners(AS_OF))
    elapsed = time.monotonic() - started
    assert seen.count == 3 == info.value.attempts
    assert 0.85 <= elapsed < 3.0, elapsed
    assert info.value.status is None


async def test_the_deadline_bounds_a_request_whatever_the_read_timeout() -> None:
    seen = Seen()
    policy = RetryPolicy(
        max_attempts=8, base_delay_s=0.01, request_deadline_s=1.0, read_timeout_s=30.0
    )
    with serve(hanging(seen)) as url:
        async with bullphish(url, retry=policy) as client:
            started = time.monotonic()
            with pytest.raises(RetriesExhaustedError, match="deadline"):
                await collect(client.iter_partners(AS_OF))
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0, elapsed
    assert seen.count == 1


async def test_connection_errors_are_transient() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    policy = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02)
    async with bullphish(f"http://127.0.0.1:{port}", retry=policy) as client:
        with pytest.raises(RetriesExhaustedError, match="ConnectError") as info:
            await collect(client.iter_partners(AS_OF))
    assert info.value.attempts == 2 and info.value.status is None


async def test_a_bullphish_401_is_final() -> None:
    seen = Seen()

    async def handler(request: Request) -> Response:
        await seen.add(request)
        return error(401, "unauthorized", "bad token")

    with serve(handler) as url:
        async with bullphish(url) as client:
            with pytest.raises(FinalApiError) as info:
                await collect(client.iter_partners(AS_OF))
    assert (seen.count, info.value.status, info.value.code) == (1, 401, "unauthorized")


async def test_concurrency_is_bounded_and_connections_are_reused() -> None:
    in_flight = 0
    peak = 0
    peers: set[int] = set()

    async def handler(request: Request) -> Response:
        nonlocal in_flight, peak
        assert request.client is not None
        peers.add(request.client.port)
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return json_response({"data": [{"id": "t_1"}], "next_cursor": None})

    with serve(handler) as url:
        async with bullphish(url, max_connections=2) as client:
            results = await asyncio.gather(
                *(collect(client.iter_targets(f"p_{i}", AS_OF)) for i in range(12))
            )
    assert all(len(pages) == 1 for pages in results)
    assert peak <= 2
    assert len(peers) <= 2, "requests should share two keep-alive connections"


# ----------------------------------------------------------------------------- secrets


async def test_secrets_never_reach_messages_reprs_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    async def handler(request: Request) -> Response:
        echoed = request.headers.get("authorization", "")
        if request.url.path == "/oauth/token":
            form = await form_of(request)
            return error(401, "invalid_client", f"bad secret {form['client_secret']}")
        return error(503, "internal", f"upstream said {echoed}")

    with serve(handler) as url:
        client = BullPhishClient(
            url,
            SecretStr(TOKEN),
            retry=RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.01),
        )
        k1 = KaseyaOneClient(url, "client-1", CLIENT_SECRET, retry=FAST)
        async with client, k1:
            with pytest.raises(RetriesExhaustedError) as bp_info:
                await collect(client.iter_partners(AS_OF))
            with pytest.raises(FinalApiError) as k1_info:
                await k1.list_billing_types()
    bp_exc, k1_exc = bp_info.value, k1_info.value
    assert "upstream said Bearer **********" in str(bp_exc)
    assert (k1_exc.status, k1_exc.code, k1_exc.path) == (401, "invalid_client", "/oauth/token")
    texts = [
        str(bp_exc),
        repr(bp_exc),
        str(k1_exc),
        repr(k1_exc),
        repr(client),
        repr(k1),
        str(pickle.loads(pickle.dumps(bp_exc))),
        caplog.text,
    ]
    for text in texts:
        assert TOKEN not in text
        assert CLIENT_SECRET not in text
    assert "retrying" in caplog.text  # the retry was logged, without the token


def test_exceptions_survive_pickling() -> None:
    exc = RetriesExhaustedError(
        "boom",
        api="kaseyaone",
        method="POST",
        path="/v1/billing/usage",
        status=503,
        code="internal",
        attempts=8,
    )
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is RetriesExhaustedError
    assert (copy.api, copy.method, copy.path, copy.status, copy.code, copy.attempts) == (
        "kaseyaone",
        "POST",
        "/v1/billing/usage",
        503,
        "internal",
        8,
    )
    assert str(copy) == str(exc)
    final = pickle.loads(pickle.dumps(ContractViolationError("bad", api="bullphish")))
    assert isinstance(final, FinalApiError) and isinstance(final, ApiError)


# ------------------------------------------------------------------------------ KaseyaOne


@dataclass
class FakeKaseyaOne:
    """A KaseyaOne that issues numbered tokens and can be told to refuse them."""

    expires_in: int = 3600
    token_delay_s: float = 0.0
    accepted_tokens: set[str] = field(default_factory=set)
    issued: int = 0
    always_401: bool = False
    usage_failures: list[Response] = field(default_factory=list)
    usage_calls: list[tuple[str | None, bytes]] = field(default_factory=list)
    api_calls: int = 0
    stored: dict[tuple[str, str], list[dict]] = field(default_factory=dict)

    def revoke_all(self) -> None:
        self.accepted_tokens.clear()

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        if path == "/oauth/token":
            form = await form_of(request)
            if (form.get("grant_type"), form.get("client_id"), form.get("client_secret")) != (
                "client_credentials",
                "client-1",
                CLIENT_SECRET,
            ):
                return error(401, "invalid_client")
            await asyncio.sleep(self.token_delay_s)
            self.issued += 1
            token = f"tok-{self.issued}"
            self.accepted_tokens.add(token)
            return json_response(
                {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
            )
        self.api_calls += 1
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.always_401 or token not in self.accepted_tokens:
            return error(401, "invalid_token", "token expired")
        if path == "/v1/billing/usage" and request.method == "POST":
            self.usage_calls.append((request.headers.get("idempotency-key"), await request.body()))
            if self.usage_failures:
                return self.usage_failures.pop(0)
            batch = orjson.loads(self.usage_calls[-1][1])
            return json_response(
                {
                    "accepted": len(batch["metrics"]) - 1,
                    "rejected": [{"index": 0, "reason": "unknown_billing_type"}],
                    "replayed": len(self.usage_calls) > 1,
                }
            )
        if path == "/v1/billing/usage":
            assert request.query_params["module"] == "bullphish-id"
            key = (request.query_params["partner_id"], request.query_params["usage_date"])
            rows = self.stored.get(key, [])
            if request.query_params.get("cursor") == "more":
                return json_response({"data": rows[1:], "next_cursor": None})
            return json_response({"data": rows[:1], "next_cursor": "more"})
        if path == "/v1/billing/billing-types":
            return json_response(
                {"data": [{"code": "bullphish_id.phishing.per_user", "name": "x", "unit": "count"}]}
            )
        if path.endswith("/organization-mappings"):
            return json_response(
                {
                    "data": [
                        {
                            "module_organization_id": "o_1",
                            "psa": "bms",
                            "psa_company_id": "9",
                            "psa_company_name": "Acme",
                        }
                    ],
                    "next_cursor": None,
                }
            )
        return error(404, "not_found")


BATCH = {
    "module": "bullphish-id",
    "partner_id": "p_1",
    "usage_date": date(2024, 5, 1),
    "metrics": [
        {"organization_id": "o_1", "billing_type": "bogus", "units": 1},
        {"organization_id": "o_1", "billing_type": "bullphish_id.phishing.per_user", "units": 7},
    ],
}


def kaseyaone(url: str, **kwargs: Any) -> KaseyaOneClient:
    kwargs.setdefault("retry", FAST)
    return KaseyaOneClient(url, "client-1", SecretStr(CLIENT_SECRET), **kwargs)


async def test_report_usage_returns_the_result_and_caches_the_token() -> None:
    fake = FakeKaseyaOne()
    with serve(fake.handle) as url:
        async with kaseyaone(url) as client:
            first = await client.report_usage(BATCH, "key-1")
            second = await client.report_usage(BATCH, "key-1")
            assert client.token_fetches == 1
    assert first == UsageResult(
        accepted=1, rejected=[(0, "unknown_billing_type")], replayed=False, status=200
    )
    assert second.replayed is True
    key, body = fake.usage_calls[0]
    assert key == "key-1"
    assert orjson.loads(body)["usage_date"] == "2024-05-01"


async def test_transient_usage_failures_are_retried_with_the_same_key_and_body() -> None:
    fake = FakeKaseyaOne(
        usage_failures=[
            error(503, "internal"),
            error(429, "rate_limited", **{"Retry-After": "0"}),
            Response(b"", 502),
        ]
    )
    with serve(fake.handle) as url:
        async with kaseyaone(url) as client:
            result = await client.report_usage(BATCH, "key-7")
    assert result.accepted == 1 and result.replayed is True
    assert len(fake.usage_calls) == 4
    assert len(set(fake.usage_calls)) == 1, "every attempt sends the same key and bytes"


@pytest.mark.parametrize(
    ("status", "code"),
    [(409, "idempotency_key_reused"), (422, "partner_not_linked"), (413, "batch_too_large")],
)
async def test_usage_4xx_is_final_and_carries_status_and_code(status: int, code: str) -> None:
    fake = FakeKaseyaOne(usage_failures=[error(status, code, "refused")])
    with serve(fake.handle) as url:
        async with kaseyaone(url) as client:
            with pytest.raises(FinalApiError) as info:
                await client.report_usage(BATCH, "key-2")
    assert (info.value.status, info.value.code, info.value.api) == (status, code, "kaseyaone")
    assert (info.value.method, info.value.path) == ("POST", "/v1/billing/usage")
    assert len(fake.usage_calls) == 1


async def test_a_usage_result_that_breaks_the_contract_is_final() -> None:
    fake = FakeKaseyaOne(usage_failures=[json_response({"accepted": 2, "rejected": []})])
    with serve(fake.handle) as url:
        async with kaseyaone(url) as client:
            with pytest.raises(ContractViolationError, match="replayed"):
                await client.report_usage(BATCH, "key-3")


@pytest.mark.parametrize(
    "answer",
    [
        {"accepted": 1, "rejected": [], "replayed": False},  # one metric unaccounted for
        {"accepted": 0, "rejected": [], "replayed": False},
        {"accepted": 2, "rejected": [{"index": 0, "reason": "x"}], "replayed": False},
    ],
    ids=["fewer", "none", "more"],
)
async def test_a_usage_result_must_account_for_every_metric_of_the_batch(answer) -> None:
    fake = FakeKaseyaOne(usage_failures=[json_response(answer)])
    with serve(fake.handle) as url:
        async with kaseyaone(url) as client:
            with pytest.raises(ContractViolationError, match="batch of 2"):
                await client.report_usage(BATCH, "key-3")


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "naïve"])
async def test_an_invalid_idempotency_key_is_refused_before_sending(key: str) -> None:
    client = kaseyaone("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="idempotency_key"):
        await client.report_usage(BATCH, key)


async def test_a_401_fetches_a_new_token_and_repeats_once() -> None:
    fake = FakeKaseyaOne()
    with serve(fake.handle) as url:
        async with kaseyaone(url) as client:
            await client.report_usage(BATCH, "key-1")
            fake.revoke_all()
            result = await client.report_usage(BATCH, "key-2")
            assert client.token_fetches == 2
    assert result.accepted == 1
    assert fake.api_calls == 3  # ok, 401, repeated ok


async def test_a_second_401_is_final() -> None:
    fake = FakeKaseyaOne(always_401=True)
    with serve(fake.handle) as url:
        async with kaseyaone(url) as client:
            with pytest.raises(FinalApiError) as info:
                await client.list_billing_types()
            assert client.token_fetches == 2
    assert (info.value.status, info.value.code) == (401, "invalid_token")
    assert fake.api_calls == 2


async def test_many_requests_refused_together_share_one_token_refresh() -> None:
    fake = FakeKaseyaOne(token_delay_s=0.1)
    with serve(fake.handle) as url:
        async with kaseyaone(url, max_connections=4) as client:
            await asyncio.gather(*(client.list_billing_types() for _ in range(10)))
            assert client.token_fetches == 1
            fake.revoke_all()
            await asyncio.gather(*(client.list_billing_types() for _ in range(20)))
            assert client.token_fetches == 2
    assert fake.issued == 2


async def test_an_expiring_token_is_renewed_before_the_server_refuses_it() -> None:
    fake = FakeKaseyaOne(expires_in=1)
    with serve(fake.handle) as url:
        async with kaseyaone(url) as client:
            await client.list_billing_types()
            await asyncio.sleep(1.0)
            await client.list_billing_types()
            assert client.token_fetches == 2
    assert fake.api_calls == 2, "no request was sent with an expired token"


async def test_reads_follow_pagination() -> None:
    fake = FakeKaseyaOne(stored={("p_1", "2024-05-01"): [{"units": 1}, {"units": 2}]})
    with serve(fake.handle) as url:
        async with kaseyaone(url) as client:
            stored = await client.list_stored_usage("p_1", date(2024, 5, 1))
            mappings = await client.list_organization_mappings("p_1")
            types = await client.list_billing_types()
    assert stored == [{"units": 1}, {"units": 2}]
    assert mappings[0]["psa_company_name"] == "Acme"
    assert types[0]["unit"] == "count"


def test_policy_and_constructor_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        BullPhishClient("http://127.0.0.1:1", TOKEN, page_limit=1001)
    with pytest.raises(ValueError):
        BullPhishClient("ftp://127.0.0.1:1", TOKEN)
    assert RetryPolicy().retry_after_s("600") == 60.0
    assert RetryPolicy().retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert all(0 <= RetryPolicy().backoff_s(n) <= 10.0 for n in range(1, 100))
    assert "pw" not in repr(BullPhishClient("http://me:pw@127.0.0.1:1", TOKEN))


def test_a_client_can_be_reopened_on_another_event_loop() -> None:
    fake = FakeKaseyaOne()

    async def use(client: KaseyaOneClient) -> None:
        async with client:  # contended semaphore and lock: both must belong to this loop
            await asyncio.gather(*(client.list_billing_types() for _ in range(3)))

    with serve(fake.handle) as url:
        client = kaseyaone(url, max_connections=1)
        asyncio.run(use(client))
        asyncio.run(use(client))
    assert fake.api_calls == 6 and fake.issued == 2


async def test_using_a_client_outside_async_with_is_an_error() -> None:
    client = bullphish("http://127.0.0.1:1")
    with pytest.raises(RuntimeError, match="async with"):
        await collect(client.iter_partners(AS_OF))


async def test_a_record_that_is_not_an_object_is_passed_on_for_quarantine() -> None:
    body = b'{"data": ["p_1", {"id": "p_2"}], "next_cursor": null}'

    async def handler(request: Request) -> Response:
        return Response(body, media_type="application/json")

    with serve(handler) as url:
        async with bullphish(url) as client:
            pages = await collect(client.iter_partners(AS_OF))
    assert [r for p in pages for r in p.records] == ["p_1", {"id": "p_2"}]


# --------------------------------------------------------- bounds on what a server sends
async def test_a_body_that_inflates_past_the_bound_is_given_up_unread() -> None:
    """A gzip body of 8 KiB that inflates to 8 MiB, against a bound of 1 MiB: final at once
    (no retry), and the client never holds the whole of it."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = deflate.compress(bytes(8 << 20)) + deflate.flush()
    calls = []

    async def handle(request: Request) -> Response:
        calls.append(request.url.path)
        return Response(bomb, headers={"Content-Type": "application/json",
                                       "Content-Encoding": "gzip"})  # fmt: skip

    with serve(handle) as url:
        async with BullPhishClient(url, "token", retry=FAST, max_body_bytes=1 << 20) as client:
            with pytest.raises(LimitExceededError, match="larger than 1 MiB") as info:
                await anext(client.iter_partners(date(2024, 5, 1)))
    assert info.value.status == 200 and len(calls) == 1


def endless(make: Callable[[int], list[Any]], delay_s: float = 0.0):
    async def fetch(cursor: str | None) -> Any:
        n = 0 if cursor is None else int(cursor)
        await asyncio.sleep(delay_s)
        return {"data": make(n), "next_cursor": str(n + 1)}

    return fetch


@pytest.mark.parametrize(
    ("make", "budget", "pages", "reason"),
    [
        (lambda n: [], ListBudget(max_empty_pages=5), 6, "more than 5 empty pages in a row"),
        (lambda n: [{}] * 10, ListBudget(spare_pages=3), 14, "more than 3 pages beyond"),
        (lambda n: [{}] * 1000, ListBudget(max_records=2500), 3, "more than 2500 records"),
        (lambda n: [{}] * 100, ListBudget(spare_pages=0), None, None),  # a tenth full: fine
    ],
    ids=["empty", "sparse", "long", "a-tenth-full"],
)
async def test_a_list_is_given_up_past_its_budget(make, budget, pages, reason) -> None:
    seen = 0
    chain = follow_cursor(endless(make), api="x", method="GET", path="/l", budget=budget)
    with pytest.raises(LimitExceededError) if reason else contextlib.nullcontext() as info:
        async for _ in chain:
            seen += 1
            if seen == 50 and reason is None:
                break
    if reason:
        assert reason in str(info.value) and seen == pages - 1, (str(info.value), seen)


async def test_a_list_is_given_up_at_its_deadline_and_half_the_run_time_left() -> None:
    budget = ListBudget(deadline_s=0.3)
    chain = follow_cursor(endless(lambda n: [{}], 0.05), api="x", method="GET", path="/l",
                          budget=budget)  # fmt: skip
    started = time.monotonic()
    with pytest.raises(LimitExceededError, match="not read to its end within 0.3 s"):
        async for _ in chain:
            pass
    assert time.monotonic() - started < 5
    soon = ListBudget(deadline_s=300, run_deadline=time.monotonic() + 10)
    assert 4 < soon.list_deadline() - time.monotonic() <= 5
