"""The pooled HTTP session both API clients are built on."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import ssl
from collections.abc import AsyncIterator, Mapping

import httpx

from .arrow_pages import ArrowPageDecoder
from .errors import ContractViolationError
from .pages import ListBudget, Page, follow_cursor
from .redaction import Redactor
from .retry import BearerAuth, Call, JsonResponse, RetryPolicy, send_with_retries

USER_AGENT = "bullphish-billing/0.1"


def _tls_context() -> ssl.SSLContext:
    """httpx's default TLS context (certifi's roots, or SSL_CERT_FILE / SSL_CERT_DIR), made
    once per process and environment: httpx would load the roots again for every client, and a
    run opens a few dozen (1.3% of a backfill's CPU, py-spy, 2026-12-03)."""
    return _tls_context_for(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _tls_context_for(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()


MAX_BODY_BYTES = 32 * 1024 * 1024


class ApiSession:
    """One pooled httpx.AsyncClient (HTTP/1.1 keep-alive, at most `max_connections` sockets)
    plus a semaphore of the same size around every request, the retry policy, the redaction
    of secrets from server-supplied text, and the bounds on what a server may make it hold:
    `max_body_bytes` per response (as inflated) and `list_budget` per list."""

    def __init__(
        self,
        api: str,
        base_url: str,
        *,
        max_connections: int,
        retry: RetryPolicy,
        redact: Redactor,
        max_body_bytes: int = MAX_BODY_BYTES,
        list_budget: ListBudget = ListBudget(),  # noqa: B008 - frozen, safe to share
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"{api} base URL must be an http(s) URL with a host")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.api = api
        self._url = url.copy_with(query=None, fragment=None)
        # For reprs: without any user:password part.
        self.base_url = str(self._url.copy_with(username=None, password=None))
        self.max_connections = max_connections
        self.retry = retry
        self.max_body_bytes = max_body_bytes
        self.list_budget = list_budget
        self.redact = redact
        self._slots = asyncio.Semaphore(max_connections)
        self._http: httpx.AsyncClient | None = None

    async def open(self) -> None:
        if self._http is not None:
            raise RuntimeError(f"the {self.api} client is already open")
        # Created here, not in __init__: asyncio primitives belong to the running loop.
        self._slots = asyncio.Semaphore(self.max_connections)
        self._http = httpx.AsyncClient(
            base_url=self._url,
            limits=httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
            ),
            timeout=self.retry.httpx_timeout(),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            follow_redirects=False,
            verify=_tls_context(),
        )

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError(f"use the {self.api} client inside 'async with'")
        return self._http

    async def send(self, call: Call, auth: BearerAuth | None = None) -> JsonResponse:
        return await send_with_retries(
            self._client(),
            call,
            api=self.api,
            policy=self.retry,
            slots=self._slots,
            auth=auth,
            redact=self.redact,
            max_body_bytes=self.max_body_bytes,
        )

    def pages(
        self,
        path: str,
        params: Mapping[str, str | int],
        auth: BearerAuth | None = None,
        *,
        arrow: ArrowPageDecoder | None = None,
        max_records: int | None = None,
    ) -> AsyncIterator[Page]:
        """The pages of the cursor-paginated list at `path`, followed to a null cursor within
        the session's list budget (`max_records` lowers its record bound for this list); with
        `arrow`, pages it can read come as Arrow columns (`Page.table`)."""

        async def fetch(cursor: str | None) -> object:
            query = dict(params) if cursor is None else {**params, "cursor": cursor}
            call = Call("GET", path, params=query, raw_body=arrow is not None)
            return (await self.send(call, auth)).body

        budget = self.list_budget
        if max_records is not None and max_records < budget.max_records:
            budget = dataclasses.replace(budget, max_records=max_records)
        return follow_cursor(
            fetch,
            api=self.api,
            method="GET",
            path=self._path(path),
            arrow=arrow,
            budget=budget,
            page_limit=int(params.get("limit", 1000)),
        )

    def _path(self, path: str) -> str:
        return self._client().build_request("GET", path).url.path

    def contract_error(
        self, what: str, method: str, path: str, status: int
    ) -> ContractViolationError:
        return ContractViolationError(
            what, api=self.api, method=method, path=self._path(path), status=status
        )
