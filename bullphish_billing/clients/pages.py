"""Cursor pagination, as both contracts define it.

A list response is `{"data": [...], "next_cursor": str | null}`. Only a null `next_cursor` ends
a list: a page may hold fewer records than asked for, even none, while more follow. A cursor
that comes back a second time in one chain would loop forever, so it breaks the contract.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .arrow_pages import ArrowPageDecoder
from .errors import ContractViolationError


@dataclass(frozen=True)
class Page:
    """One page of a list: its records as decoded dicts (unvalidated: bad records are
    passed on for validation downstream) and its 0-based number within the list. When the
    list was read with an `ArrowPageDecoder` that could read this page, `table` holds the
    records as Arrow columns instead and `records` is empty."""

    records: list[Any]
    number: int
    table: Any = None  # pyarrow.Table | None

    def __len__(self) -> int:
        return len(self.records) if self.table is None else self.table.num_rows


def decode_json(body: bytes, *, api: str, method: str, path: str, status: int = 200) -> Any:
    """A response body decoded with orjson, or ContractViolationError if it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ContractViolationError(
            f"{status} response body is not valid JSON ({len(body)} bytes)",
            api=api,
            method=method,
            path=path,
            status=status,
        ) from None


def parse_page(body: Any, *, api: str, method: str, path: str) -> tuple[list[dict], str | None]:
    """(records, next_cursor) of a page body, or ContractViolationError."""

    def violation(what: str) -> ContractViolationError:
        return ContractViolationError(what, api=api, method=method, path=path, status=200)

    if not isinstance(body, dict):
        raise violation(f"page body is a JSON {type(body).__name__}, not an object")
    if "data" not in body or "next_cursor" not in body:
        missing = [k for k in ("data", "next_cursor") if k not in body]
        raise violation(f"page body lacks {', '.join(missing)}")
    records, next_cursor = body["data"], body["next_cursor"]
    if not isinstance(records, list):
        raise violation(f"page data is a JSON {type(records).__name__}, not an array")
    if next_cursor is not None and not isinstance(next_cursor, str):
        raise violation(f"next_cursor is a JSON {type(next_cursor).__name__}, not a string")
    # A record that is not an object is passed on like any bad record: validation quarantines
    # it with a reason, and the rest of the list is still billed.
    return records, next_cursor


async def follow_cursor(
    fetch: Callable[[str | None], Awaitable[Any]],
    *,
    api: str,
    method: str,
    path: str,
    arrow: ArrowPageDecoder | None = None,
) -> AsyncIterator[Page]:
    """Yield the pages of one list: `fetch(cursor)` returns a decoded page body (cursor None
    for the first page), or with `arrow` the raw body bytes, which `arrow` decodes in a
    worker thread (orjson decides the pages it cannot read). Stops after the page whose
    next_cursor is null."""
    seen: set[str] = set()
    cursor: str | None = None
    number = 0
    while True:
        body = await fetch(cursor)
        table = None
        if arrow is None:
            records, next_cursor = parse_page(body, api=api, method=method, path=path)
        else:
            fast = await asyncio.to_thread(arrow, body)
            if fast is not None and fast.next_cursor is not None:
                records, next_cursor, table = [], fast.next_cursor, fast.table
            else:  # orjson decides: a page Arrow could not read, or the list's end
                decoded = decode_json(body, api=api, method=method, path=path)
                records, next_cursor = parse_page(decoded, api=api, method=method, path=path)
                if fast is not None and next_cursor is None:
                    records, table = [], fast.table
        if next_cursor is not None:
            if next_cursor in seen:
                raise ContractViolationError(
                    f"next_cursor of page {number} repeats an earlier cursor of this list "
                    "(the list would never end)",
                    api=api,
                    method=method,
                    path=path,
                    status=200,
                )
            seen.add(next_cursor)
        yield Page(records, number, table)
        if next_cursor is None:
            return
        cursor = next_cursor
        number += 1
