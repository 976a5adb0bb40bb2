"""The KaseyaOne integrated customer billing API (module side): report usage, read it back."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import orjson
from pydantic import SecretStr

from .errors import ApiError, ContractViolationError
from .pages import ListBudget, Page
from .redaction import redactor
from .retry import Call, RetryPolicy
from .session import MAX_BODY_BYTES, ApiSession

API = "kaseyaone"
MODULE = "bullphish-id"
PAGE_LIMIT = 1000
MAX_LIST_RECORDS = 100_000
"""KaseyaOne's lists (a partner's organization mappings, its usage of a date: one or a few
records per organization) are held as decoded objects until they end: a bound of their own."""
USAGE_PATH = "/v1/billing/usage"
TOKEN_PATH = "/oauth/token"

logger = logging.getLogger("bullphish_billing.clients")


@dataclass(frozen=True)
class UsageResult:
    """KaseyaOne's answer to one usage batch. `rejected` lists (metric index, reason), the
    reason redacted and bounded like any server text; `replayed` is True when the server
    answered a repeat of an earlier request with the same Idempotency-Key and body; `status`
    is the HTTP status."""

    accepted: int
    rejected: list[tuple[int, str]]
    replayed: bool
    status: int


class _ClientCredentials:
    """OAuth2 client-credentials token source: one cached token, at most one fetch at a time
    however many requests wait for it. When a fetch fails, the requests that were waiting for
    it fail with it at once, instead of each spending a full retry budget of its own in turn
    (with KaseyaOne down, that queue would make a run last requests x deadline)."""

    def __init__(self, session: ApiSession, client_id: str, client_secret: SecretStr) -> None:
        self._session = session
        self._client_id = client_id
        self._client_secret = client_secret
        self.fetches = 0
        self.reset()

    def reset(self) -> None:
        """Forget the token; a new lock for the event loop about to use the client."""
        self._lock = asyncio.Lock()
        self._token: SecretStr | None = None
        self._fresh_until = 0.0
        self._fetches_done = 0
        self._failure: ApiError | None = None  # how the last fetch failed, if it did

    def current(self) -> str | None:
        return self._token.get_secret_value() if self._token is not None else None

    def _usable(self) -> bool:
        return self._token is not None and asyncio.get_running_loop().time() < self._fresh_until

    async def token(self) -> str:
        if not self._usable():
            seen = self._fetches_done
            async with self._lock:
                if not self._usable():
                    if self._fetches_done != seen and self._failure is not None:
                        raise copy.copy(self._failure)  # the fetch this request waited for
                    await self._fetch()
        assert self._token is not None
        return self._token.get_secret_value()

    async def refresh(self, stale: str) -> bool:
        async with self._lock:
            # Another request may have replaced the stale token while this one waited.
            if not (self._usable() and self.current() != stale):
                await self._fetch()
        return True

    async def _fetch(self) -> None:
        self._failure = None
        try:
            await self._fetch_once()
        except ApiError as exc:
            self._failure = exc
            raise
        finally:
            self._fetches_done += 1

    async def _fetch_once(self) -> None:
        self._token = None
        asked_at = asyncio.get_running_loop().time()
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret.get_secret_value(),
        }
        response = await self._session.send(Call("POST", TOKEN_PATH, data=form))
        body = response.body
        token = body.get("access_token") if isinstance(body, dict) else None
        expires_in = body.get("expires_in") if isinstance(body, dict) else None
        token_type = body.get("token_type") if isinstance(body, dict) else None
        if (
            not isinstance(token, str)
            or not token
            or not isinstance(expires_in, int)
            or isinstance(expires_in, bool)
            or expires_in < 1
            or not isinstance(token_type, str)
            or token_type.lower() != "bearer"
        ):
            raise self._session.contract_error(
                "token response lacks a bearer access_token with a positive integer expires_in",
                "POST",
                TOKEN_PATH,
                response.status,
            )
        self.fetches += 1
        self._token = SecretStr(token)
        # Renew a little before the server would refuse it (10%, at most 30 s).
        self._fresh_until = asked_at + expires_in - min(30.0, expires_in / 10)
        logger.debug("%s: fetched an access token valid for %ds", API, expires_in)


class KaseyaOneClient:
    """Reports usage batches and reads back what KaseyaOne holds. Use inside `async with`."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str | SecretStr,
        *,
        max_connections: int = 4,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, safe to share
        max_body_bytes: int = MAX_BODY_BYTES,
        list_budget: ListBudget = ListBudget(),  # noqa: B008 - frozen, safe to share
    ) -> None:
        secret = client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret)
        if not client_id or not secret.get_secret_value():
            raise ValueError("the KaseyaOne client id and client secret must not be empty")
        self.client_id = client_id
        self._session = ApiSession(
            API,
            base_url,
            max_connections=max_connections,
            retry=retry,
            redact=redactor(secret.get_secret_value, lambda: self._auth.current()),
            max_body_bytes=max_body_bytes,
            list_budget=list_budget,
        )
        self._auth = _ClientCredentials(self._session, client_id, secret)

    def __repr__(self) -> str:
        return (
            f"KaseyaOneClient(base_url={self._session.base_url!r}, "
            f"client_id={self.client_id!r}, "
            f"max_connections={self._session.max_connections})"
        )

    async def __aenter__(self) -> KaseyaOneClient:
        await self._session.open()
        self._auth.reset()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._session.close()

    @property
    def token_fetches(self) -> int:
        """How many access tokens this client has fetched (for tests and metrics)."""
        return self._auth.fetches

    async def report_usage(self, batch: dict[str, Any], idempotency_key: str) -> UsageResult:
        """POST /v1/billing/usage. Transient failures are retried with the same key and the
        same bytes, which the server answers as a replay. Final 4xx (409
        idempotency_key_reused, 422 partner_not_linked, ...) raise FinalApiError."""
        if not (
            1 <= len(idempotency_key) <= 255 and all("!" <= ch <= "~" for ch in idempotency_key)
        ):
            raise ValueError("idempotency_key must be 1..255 visible ASCII characters")
        call = Call(
            "POST",
            USAGE_PATH,
            content=orjson.dumps(batch),
            headers={"Content-Type": "application/json", "Idempotency-Key": idempotency_key},
        )
        response = await self._session.send(call, self._auth)
        metrics = batch.get("metrics")
        size = len(metrics) if isinstance(metrics, list) else None
        return self._usage_result(response.status, response.body, size)

    def _usage_result(self, status: int, body: Any, size: int | None = None) -> UsageResult:
        """The answer, checked: a rejection that names no metric of the batch (an index out of
        range, or one index twice) cannot be recorded against a metric, and an answer whose
        accepted + rejected is not the batch size cannot say what KaseyaOne holds; both break
        the contract rather than being taken as delivered."""

        def violation(what: str) -> ContractViolationError:
            return self._session.contract_error(what, "POST", USAGE_PATH, status)

        if not isinstance(body, dict):
            raise violation("usage result is not a JSON object")
        accepted, rejected, replayed = (body.get(k) for k in ("accepted", "rejected", "replayed"))
        if not _is_count(accepted):
            raise violation("usage result lacks a non-negative integer 'accepted'")
        if not isinstance(replayed, bool):
            raise violation("usage result lacks a boolean 'replayed'")
        if not isinstance(rejected, list):
            raise violation("usage result lacks a 'rejected' array")
        pairs: list[tuple[int, str]] = []
        for item in rejected:
            index = item.get("index") if isinstance(item, dict) else None
            reason = item.get("reason") if isinstance(item, dict) else None
            if not _is_count(index) or not isinstance(reason, str):
                raise violation("a 'rejected' item lacks an integer index and a string reason")
            pairs.append((index, self._session.redact(reason)))  # server text, stored
        indices = [index for index, _ in pairs]
        if size is not None and any(index >= size for index in indices):
            raise violation(f"usage result rejects a metric index beyond the batch of {size}")
        if len(set(indices)) != len(indices):
            raise violation("usage result rejects the same metric index twice")
        if size is not None and accepted + len(pairs) != size:
            # an answer that does not account for every metric cannot say which ones
            # KaseyaOne holds: taking it as delivered would leave usage unbilled
            raise violation(
                f"usage result accounts for {accepted} accepted + {len(pairs)} rejected "
                f"metric(s) of a batch of {size}"
            )
        return UsageResult(accepted=accepted, rejected=pairs, replayed=replayed, status=status)

    async def list_stored_usage(self, partner_id: str, usage_date: date) -> list[dict[str, Any]]:
        """GET /v1/billing/usage: every metric KaseyaOne holds for the partner and date."""
        return await self._collect(USAGE_PATH, _usage_query(partner_id, usage_date))

    def stored_usage_pages(self, partner_id: str, usage_date: date) -> AsyncIterator[Page]:
        """GET /v1/billing/usage page by page (unvalidated records), for a reader that writes
        each page as it comes instead of holding the list (reconciliation.py)."""
        return self._session.pages(
            USAGE_PATH,
            _usage_query(partner_id, usage_date),
            self._auth,
            max_records=MAX_LIST_RECORDS,
        )

    async def list_organization_mappings(
        self, partner_id: str, *, max_records: int = MAX_LIST_RECORDS
    ) -> list[dict[str, Any]]:
        """GET /v1/partners/{partner_id}/organization-mappings: the partner's PSA mappings
        (LimitExceededError past `max_records`)."""
        if not partner_id:
            raise ValueError("partner_id is empty")
        path = f"/v1/partners/{quote(partner_id, safe='')}/organization-mappings"
        return await self._collect(path, {"module": MODULE, "limit": PAGE_LIMIT}, max_records)

    async def list_billing_types(self) -> list[dict[str, Any]]:
        """GET /v1/billing/billing-types: the module's billing types (not paginated)."""
        path = "/v1/billing/billing-types"
        response = await self._session.send(
            Call("GET", path, params={"module": MODULE}), self._auth
        )
        data = response.body.get("data") if isinstance(response.body, dict) else None
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise self._session.contract_error(
                "billing types body lacks a 'data' array of objects",
                "GET",
                path,
                response.status,
            )
        return data

    async def _collect(
        self, path: str, params: dict[str, str | int], max_records: int = MAX_LIST_RECORDS
    ) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        pages = self._session.pages(
            path, params, self._auth, max_records=min(max_records, MAX_LIST_RECORDS)
        )
        async for page in pages:
            records.extend(page.records)
        return records


def _usage_query(partner_id: str, usage_date: date) -> dict[str, Any]:
    """The query of GET /v1/billing/usage for a partner-date, a page as large as allowed."""
    if not isinstance(usage_date, date) or isinstance(usage_date, datetime):
        raise TypeError("usage_date must be a datetime.date")
    return {
        "module": MODULE,
        "partner_id": partner_id,
        "usage_date": usage_date.isoformat(),
        "limit": PAGE_LIMIT,
    }


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
