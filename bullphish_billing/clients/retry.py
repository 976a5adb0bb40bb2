"""The retry policy and the one send-with-retries loop both API clients use.

Rules from the two contracts, kept here and nowhere else:
- 5xx, timeouts and connection errors are transient: exponential backoff with full jitter.
- 429 is transient and carries `Retry-After` (whole seconds): wait that long instead.
- 401 on a bearer request: ask the token source for a fresh token and repeat the request once.
- Any other 4xx is final. A 2xx whose body is not JSON breaks the contract (final).
- The per-request deadline bounds the whole logical request, retries and waits included.
- A body, as inflated, larger than `max_body_bytes` is not read further (final: the same
  request would get the same body).
- Once the command is asked to stop (SIGTERM, Ctrl-C: `bullphish_billing/stopping.py`), no
  request is sent and no retry is waited for: StoppedError. A request on the wire finishes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import httpx
import orjson

from bullphish_billing import stopping

from .errors import (
    ContractViolationError,
    FinalApiError,
    LimitExceededError,
    RetriesExhaustedError,
    StoppedError,
)
from .pages import decode_json
from .redaction import Redactor

logger = logging.getLogger("bullphish_billing.clients")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one logical request tries.

    `max_retry_after_s` caps a server's `Retry-After`; a wait that would overrun the request
    deadline ends the request at once with RetriesExhaustedError instead of sleeping in vain.
    `run_deadline`, a `time.monotonic()` instant, bounds every request of a run as a whole: a
    request ends at the earlier of its own deadline and the run's, and none starts after it.
    """

    max_attempts: int = 8
    base_delay_s: float = 0.2
    max_delay_s: float = 10.0
    request_deadline_s: float = 120.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_retry_after_s: float = 60.0
    run_deadline: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        for name in ("base_delay_s", "max_delay_s", "max_retry_after_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("request_deadline_s", "connect_timeout_s", "read_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    def backoff_s(self, attempt: int) -> float:
        """Full-jitter delay after the `attempt`-th (1-based) failed attempt."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** min(attempt - 1, 62))
        return random.uniform(0.0, ceiling)

    def retry_after_s(self, header: str | None) -> float | None:
        """The wait a 429's `Retry-After` asks for (capped), or None when absent or unusable."""
        if header is None:
            return None
        try:
            seconds = float(header.strip())
        except ValueError:
            return None  # an HTTP-date or garbage: fall back to the backoff
        if seconds != seconds:  # NaN
            return None
        return min(max(seconds, 0.0), self.max_retry_after_s)

    def httpx_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect_timeout_s,
            read=self.read_timeout_s,
            write=self.read_timeout_s,
            pool=self.request_deadline_s,
        )


class BearerAuth(Protocol):
    """Where a client's bearer token comes from."""

    async def token(self) -> str:
        """The token to send now."""
        ...

    async def refresh(self, stale: str) -> bool:
        """The server refused `stale` with 401: make a fresh token current. Return False when
        no fresh token can help (a static token), which makes the 401 final."""
        ...


@dataclass(frozen=True)
class Call:
    """One logical request, relative to the client's base URL. `params` may hold a cursor:
    it is never put into messages or logs, only `path` is."""

    method: str
    path: str
    params: Mapping[str, str | int] | None = None
    content: bytes | None = None
    data: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    raw_body: bool = False
    """Return a success's body as bytes, undecoded (the caller decodes it, maybe off the
    event loop); error bodies are decoded as usual."""


class JsonResponse(NamedTuple):
    status: int
    body: Any


@dataclass
class _Failure:
    """The last transient failure, for the log line and RetriesExhaustedError."""

    description: str
    status: int | None = None
    code: str | None = None
    retry_after_s: float | None = None


def error_fields(
    response: httpx.Response,
    redact: Redactor,
    content: bytes | None = None,
    *also: str | None,
) -> tuple[str | None, str]:
    """(code, message) from a contract error body `{"error": {"code", "message"}}` (`content`,
    or else the response's), tolerating bodies that do not keep it. Both are server text:
    `redact` blanks its secrets and `also` (the request's own credential) out of them and
    bounds them."""
    code: str | None = None
    message: str | None = None
    try:
        error = orjson.loads(response.content if content is None else content)["error"]
        if isinstance(error.get("code"), str):
            code = error["code"]
        if isinstance(error.get("message"), str):
            message = error["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        pass
    if message is None:
        message = response.reason_phrase or "no error message"
    return (None if code is None else redact(code, *also)), redact(message, *also)


async def _read_body(response: httpx.Response, limit: int | None) -> bytes | None:
    """The response's body, inflated as its Content-Encoding says; None as soon as it passes
    `limit` bytes (the rest is left unread). httpx inflates one network read at a time, so
    at most that read's inflation (about 1,000 times it, for gzip) comes on top of `limit`."""
    if limit is None:
        return await response.aread()
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def send_with_retries(
    http: httpx.AsyncClient,
    call: Call,
    *,
    api: str,
    policy: RetryPolicy,
    slots: asyncio.Semaphore,
    auth: BearerAuth | None = None,
    redact: Redactor = Redactor(),  # noqa: B008 - stateless without secrets
    max_body_bytes: int | None = None,
) -> JsonResponse:
    """Send `call` until it succeeds, fails finally, or attempts/deadline run out.

    Every attempt sends the same method, path, query, body and headers (a POST keeps its
    Idempotency-Key), except the bearer token, which is read afresh for each attempt. A slot
    of `slots` is held only while a request is on the wire, never while waiting; the deadline
    starts when the first attempt gets its slot, so queueing behind other requests does not
    eat it. Returns the status and the body decoded with orjson (bytes with `call.raw_body`).
    Server and transport text reaches messages and logs only through `redact`, given the
    bearer token the attempt carried as well (it may no longer be the current one).
    """
    loop = asyncio.get_running_loop()
    method = call.method.upper()
    path = http.build_request(method, call.path).url.path
    deadline: float | None = None
    limit = "request deadline"
    started = 0.0
    attempt = 0
    refreshed = False
    last: _Failure | None = None

    def exhausted(reason: str) -> RetriesExhaustedError:
        failure = last or _Failure("none recorded")
        return RetriesExhaustedError(
            f"gave up after {attempt} attempt(s) in {loop.time() - started:.1f}s ({reason}); "
            f"last failure: {failure.description}",
            api=api,
            method=method,
            path=path,
            status=failure.status,
            code=failure.code,
            attempts=attempt,
        )

    def stopped() -> StoppedError:
        what = "not sent again" if attempt else "not sent"
        return StoppedError(
            f"{stopping.reason()}: the request was {what}",
            api=api,
            method=method,
            path=path,
            status=last.status if last else None,
            code=last.code if last else None,
        )

    while True:
        if stopping.stopping():
            raise stopped()
        headers = dict(call.headers)
        token: str | None = None
        if auth is not None:
            # Outside the slot: a token fetch needs a slot of its own.
            token = await auth.token()
            headers["Authorization"] = f"Bearer {token}"
        try:
            request = http.build_request(
                method,
                call.path,
                params=call.params,
                content=call.content,
                data=call.data,
                headers=headers,
            )
        except httpx.InvalidURL as exc:  # e.g. a cursor from the server too long for a URL
            raise FinalApiError(
                f"request cannot be built: InvalidURL: {redact(str(exc), token)}",
                api=api,
                method=method,
                path=path,
            ) from None
        response: httpx.Response | None = None
        content = b""
        async with slots:
            if stopping.stopping():  # it may have waited for its slot a while
                raise stopped()
            now = loop.time()
            if deadline is None:
                started, deadline = now, now + policy.request_deadline_s
                if policy.run_deadline is not None:
                    run_end = now + (policy.run_deadline - time.monotonic())
                    if run_end < deadline:
                        deadline, limit = run_end, "run deadline"
            remaining = deadline - now
            if remaining <= 0:
                raise exhausted(f"{limit} reached")
            attempt += 1
            try:
                async with asyncio.timeout(remaining):
                    streamed = await http.send(request, stream=True)
                    try:
                        body = await _read_body(streamed, max_body_bytes)
                    finally:
                        await streamed.aclose()
                if body is None:
                    raise LimitExceededError(
                        f"{streamed.status_code} response body larger than "
                        f"{(max_body_bytes or 0) / 2**20:g} MiB (as inflated): not read further",
                        api=api,
                        method=method,
                        path=path,
                        status=streamed.status_code,
                    )
                response, content = streamed, body
            except TimeoutError:
                last = _Failure(f"no complete response before the {limit}")
            except httpx.DecodingError as exc:
                raise ContractViolationError(
                    f"response body cannot be decoded as its Content-Encoding says: "
                    f"{redact(str(exc), token)}",
                    api=api,
                    method=method,
                    path=path,
                ) from None
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
                raise FinalApiError(
                    f"request cannot be sent: {type(exc).__name__}: {redact(str(exc), token)}",
                    api=api,
                    method=method,
                    path=path,
                ) from None
            except httpx.TransportError as exc:
                detail = redact(str(exc), token) or "no detail"
                last = _Failure(f"{type(exc).__name__}: {detail}")

        if response is not None:
            status = response.status_code
            if 200 <= status < 300:
                if call.raw_body:
                    return JsonResponse(status, content)
                decoded = decode_json(content, api=api, method=method, path=path, status=status)
                return JsonResponse(status, decoded)
            code, message = error_fields(response, redact, content, token)
            if (
                status == 401
                and auth is not None
                and token is not None
                and not refreshed
                and await auth.refresh(token)
            ):
                refreshed = True
                logger.info(
                    "%s %s %s: 401 %s; fetched a new token, repeating once",
                    api,
                    method,
                    path,
                    code or "-",
                )
                continue
            if status == 429 or status >= 500:
                last = _Failure(f"status {status} {code or '-'}: {message}", status, code)
                if status == 429:
                    last.retry_after_s = policy.retry_after_s(response.headers.get("Retry-After"))
            elif 400 <= status < 500:
                raise FinalApiError(
                    message, api=api, method=method, path=path, status=status, code=code
                )
            else:
                raise ContractViolationError(
                    f"unexpected status {status}: {message}",
                    api=api,
                    method=method,
                    path=path,
                    status=status,
                    code=code,
                )

        assert last is not None and deadline is not None
        if attempt >= policy.max_attempts:
            raise exhausted(f"max_attempts={policy.max_attempts}")
        delay = policy.backoff_s(attempt) if last.retry_after_s is None else last.retry_after_s
        if loop.time() + delay >= deadline:
            raise exhausted(f"a {delay:.2f}s wait would pass the {limit}")
        logger.info(
            "%s %s %s: attempt %d/%d failed (%s); retrying in %.2fs",
            api,
            method,
            path,
            attempt,
            policy.max_attempts,
            last.description,
            delay,
        )
        if await _stop_aware_sleep(delay):
            raise stopped()


async def _stop_aware_sleep(delay: float) -> bool:
    """Sleep `delay` seconds, in short steps; True as soon as the command is asked to stop."""
    end = time.monotonic() + delay
    while not stopping.stopping():
        left = end - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(left, 0.1))
    return True
