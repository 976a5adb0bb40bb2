"""HTTP plumbing shared by both sandbox apps: errors, JSON, query parsing and pagination."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import itertools
import re
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bullphish_billing.sandbox._hashing import h, text_id

HISTORY_DAYS = 400
MAX_LIMIT = 1000
DEFAULT_LIMIT = 500
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ApiError(Exception):
    """Raised by a handler to answer with the contract's error body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


def build_app(routes: list[Route], not_found_code: str = "not_found") -> Starlette:
    """A Starlette app whose every error (ours, unknown route, wrong method, crash) is the
    contract's JSON error body."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error_response(404, not_found_code, "no such endpoint")
        return error_response(exc.status_code, "bad_request", str(exc.detail))

    async def on_crash(request: Request, exc: Exception) -> Response:
        return error_response(500, "internal", "sandbox internal error")

    return Starlette(
        routes=routes,
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            Exception: on_crash,
        },
    )


# ---------------------------------------------------------------------- query parsing
def parse_date(value: str, name: str) -> datetime.date:
    """A strict ``YYYY-MM-DD`` (``fromisoformat`` alone also takes ``20240101``)."""
    if not _DATE_RE.match(value):
        raise ApiError(400, "bad_request", f"{name} must be a date YYYY-MM-DD")
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name} is not a valid date") from None


def parse_limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "bad_request", f"limit must be an integer 1..{MAX_LIMIT}")
    return int(raw)


def require_query(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if value is None or value == "":
        raise ApiError(400, "bad_request", f"query parameter {name} is required")
    return value


def require_module(request: Request) -> None:
    if require_query(request, "module") != "bullphish-id":
        raise ApiError(400, "bad_request", "module must be bullphish-id")


def history_window(today: datetime.date) -> tuple[datetime.date, datetime.date]:
    """(oldest, newest) dates a client may ask for: today-400 .. yesterday."""
    return today - datetime.timedelta(days=HISTORY_DAYS), today - datetime.timedelta(days=1)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# ---------------------------------------------------------------------- pagination
@dataclass(frozen=True)
class Position:
    """Where a page starts. ``attempt`` counts empty pages served at this offset, so an empty
    short page can hand out a cursor that differs from the one that produced it."""

    offset: int
    attempt: int = 0


class Pager:
    """Opaque signed cursors and page boundaries.

    A cursor is ``base64url(json) + "." + base64url(hmac)``; the json names the endpoint and
    the scope (partner, date) it was issued for, and the signature (keyed by the seed) makes
    any edit, or a cursor from another endpoint/scope, a 400 ``error_code`` (BullPhish ID has
    ``invalid_cursor``; KaseyaOne's contract has no such code, so it uses ``bad_request``).
    Page boundaries are a pure function of (seed, endpoint, scope, position, limit), so a
    reused cursor gives the same page. With ``short_pages`` a page holds 1..limit records, or,
    at most once per offset, none at all while a cursor follows.
    """

    def __init__(
        self, seed: int, secret: str, short_pages: bool, error_code: str = "invalid_cursor"
    ) -> None:
        self._key = hashlib.sha256(f"{secret}:{seed}".encode()).digest()
        self._seed = seed
        self._short = short_pages
        self._error_code = error_code

    def encode(self, endpoint: str, scope: str, position: Position) -> str:
        payload = orjson.dumps(
            {"e": endpoint, "s": scope, "o": position.offset, "n": position.attempt}
        )
        sig = hmac.new(self._key, payload, hashlib.sha256).digest()[:12]
        return _b64(payload) + "." + _b64(sig)

    def decode(self, cursor: str | None, endpoint: str, scope: str) -> Position:
        if cursor is None:
            return Position(0)
        try:
            body, _, sig = cursor.partition(".")
            payload = _unb64(body)
            expected = hmac.new(self._key, payload, hashlib.sha256).digest()[:12]
            if not hmac.compare_digest(expected, _unb64(sig)):
                raise ValueError("bad signature")
            data = orjson.loads(payload)
            if data["e"] != endpoint or data["s"] != scope:
                raise ValueError("cursor issued for another list")
            position = Position(int(data["o"]), int(data["n"]))
            if position.offset < 0 or position.attempt < 0:
                raise ValueError("negative offset")
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            raise ApiError(400, self._error_code, "unknown or mismatched cursor") from None
        return position

    def page(
        self, endpoint: str, scope: str, position: Position, limit: int, total: int
    ) -> tuple[int, int, str | None]:
        """(start, end, next_cursor) of the page at ``position``."""
        start = position.offset
        if start > total:
            raise ApiError(400, self._error_code, "cursor is past the end of the list")
        size = limit
        if self._short:
            draw = h(self._seed, text_id(endpoint), text_id(scope), start, position.attempt, limit)
            empty = position.attempt == 0 and draw % 7 == 0
            size = 0 if empty else 1 + (draw >> 8) % limit
        end = min(total, start + size)
        if end >= total:
            return start, end, None
        if end == start:
            return start, end, self.encode(endpoint, scope, Position(start, position.attempt + 1))
        return start, end, self.encode(endpoint, scope, Position(end))


class SerializedList:
    """A list of records serialized once: their JSON joined by commas in one ``blob``, and
    where each record ends. A page is one slice of the blob, whatever its size, and a list
    costs its JSON plus 8 bytes a record (not a Python object per record)."""

    __slots__ = ("blob", "ends")

    def __init__(self, parts: Sequence[bytes]) -> None:
        """`parts`: each record's JSON."""
        self.blob = b",".join(parts)
        # ends[i]: offset just past record i-1 in the blob plus one (as if each record were
        # followed by a comma), so record i spans ends[i] .. ends[i + 1] - 1
        self.ends = array("q", itertools.accumulate((len(p) + 1 for p in parts), initial=0))

    def __len__(self) -> int:
        return len(self.ends) - 1

    @property
    def nbytes(self) -> int:
        return len(self.blob) + self.ends.itemsize * len(self.ends)

    def json_slice(self, start: int, end: int) -> bytes:
        """Records ``start .. end-1`` as comma-separated JSON (empty when none)."""
        if end <= start:
            return b""
        return self.blob[self.ends[start] : self.ends[end] - 1]


def page_bytes(records: SerializedList, start: int, end: int, next_cursor: str | None) -> bytes:
    """A ``{"data": [...], "next_cursor": ...}`` body from pre-serialized records."""
    return b"".join(
        (
            b'{"data":[',
            records.json_slice(start, end),
            b'],"next_cursor":',
            orjson.dumps(next_cursor),
            b"}",
        )
    )


def paginate(
    request: Request,
    pager: Pager,
    endpoint: str,
    scope: str,
    records: Callable[[], SerializedList],
) -> Response:
    """Answer a list endpoint: validate limit and cursor, then serve one page of ``records``."""
    limit = parse_limit(request)
    position = pager.decode(request.query_params.get("cursor"), endpoint, scope)
    items = records()
    start, end, next_cursor = pager.page(endpoint, scope, position, limit, len(items))
    return Response(page_bytes(items, start, end, next_cursor), media_type="application/json")


def serialize_records(records: Sequence[dict[str, Any]]) -> SerializedList:
    return SerializedList([orjson.dumps(r) for r in records])


DEFAULT_CACHE_MB = 512


class BytesLRU:
    """A least-recently-used cache of serialized record lists, bounded by total bytes.

    The bound should hold the lists clients read side by side (a list that is evicted while
    its cursor chain is still being read is generated again for the next page); the default
    holds twenty lists of 100,000 targets. Give it the whole data set to serve every page
    pre-serialized (the benchmark does).
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_MB * 1024 * 1024) -> None:
        self._max = max_bytes
        self._items: OrderedDict[Any, SerializedList] = OrderedDict()
        self._size = 0

    def get(self, key: Any, build: Callable[[], SerializedList]) -> SerializedList:
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        value = build()
        self._items[key] = value
        self._size += value.nbytes
        while self._size > self._max and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self._size -= dropped.nbytes
        return value


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not ascii")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
