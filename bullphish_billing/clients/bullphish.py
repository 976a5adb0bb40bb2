"""The BullPhish ID partner API (billing subset): three cursor-paginated lists as of a date."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime
from types import TracebackType
from urllib.parse import quote

from pydantic import SecretStr

from .arrow_pages import ArrowPageDecoder
from .pages import ListBudget, Page
from .redaction import redactor
from .retry import RetryPolicy
from .session import MAX_BODY_BYTES, ApiSession

API = "bullphish"
MAX_PAGE_LIMIT = 1000
MAX_PARTNERS = 100_000
"""The partner list is held as decoded objects until it ends (a partner's organizations and
targets are validated into compact columns page by page): a bound of its own."""


class _StaticBearer:
    """The partner API token: fixed, so a 401 is final."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token.get_secret_value()

    async def refresh(self, stale: str) -> bool:
        return False


class BullPhishClient:
    """Reads partners, organizations and targets as of a usage date.

    Use inside `async with`; each `iter_*` yields one Page at a time, following `next_cursor`
    until it is null, so memory is bounded by a page.
    """

    def __init__(
        self,
        base_url: str,
        token: str | SecretStr,
        *,
        page_limit: int = MAX_PAGE_LIMIT,
        max_connections: int = 8,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, safe to share
        max_body_bytes: int = MAX_BODY_BYTES,
        list_budget: ListBudget = ListBudget(),  # noqa: B008 - frozen, safe to share
    ) -> None:
        if not 1 <= page_limit <= MAX_PAGE_LIMIT:
            raise ValueError(f"page_limit must be 1..{MAX_PAGE_LIMIT}")
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        if not self._token.get_secret_value():
            raise ValueError("the BullPhish ID token is empty")
        self.page_limit = page_limit
        self._auth = _StaticBearer(self._token)
        self._session = ApiSession(
            API,
            base_url,
            max_connections=max_connections,
            retry=retry,
            redact=redactor(self._token.get_secret_value),
            max_body_bytes=max_body_bytes,
            list_budget=list_budget,
        )

    def __repr__(self) -> str:
        return (
            f"BullPhishClient(base_url={self._session.base_url!r}, "
            f"page_limit={self.page_limit}, "
            f"max_connections={self._session.max_connections})"
        )

    async def __aenter__(self) -> BullPhishClient:
        await self._session.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._session.close()

    def iter_partners(self, as_of: date) -> AsyncIterator[Page]:
        """GET /v1/partners, every page."""
        return self._list("/v1/partners", as_of, max_records=MAX_PARTNERS)

    def iter_organizations(self, partner_id: str, as_of: date) -> AsyncIterator[Page]:
        """GET /v1/partners/{partner_id}/organizations (sub-organizations included)."""
        return self._list(f"/v1/partners/{_segment(partner_id)}/organizations", as_of)

    def iter_targets(
        self, partner_id: str, as_of: date, *, arrow: ArrowPageDecoder | None = None
    ) -> AsyncIterator[Page]:
        """GET /v1/partners/{partner_id}/targets (of all the partner's organizations); with
        `arrow`, the pages it can read come as Arrow columns (`Page.table`)."""
        return self._list(f"/v1/partners/{_segment(partner_id)}/targets", as_of, arrow)

    def _list(
        self,
        path: str,
        as_of: date,
        arrow: ArrowPageDecoder | None = None,
        max_records: int | None = None,
    ) -> AsyncIterator[Page]:
        if not isinstance(as_of, date) or isinstance(as_of, datetime):
            raise TypeError("as_of must be a datetime.date (a UTC day)")
        params = {"as_of": as_of.isoformat(), "limit": self.page_limit}
        return self._session.pages(path, params, self._auth, arrow=arrow, max_records=max_records)


def _segment(value: str) -> str:
    if not value:
        raise ValueError("partner_id is empty")
    return quote(value, safe="")
