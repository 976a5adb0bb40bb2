"""Cursor pagination, as both contracts define it.

A list response is `{"data": [...], "next_cursor": str | null}`. Only a null `next_cursor` ends
a list: a page may hold fewer records than asked for, even none, while more follow. A cursor
that comes back a second time in one chain would loop forever, so it breaks the contract. A
chain of fresh cursors could go on forever too: a `ListBudget` ends every list.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .arrow_pages import ArrowPageDecoder
from .errors import ContractViolationError, LimitExceededError


@dataclass(frozen=True)
class ListBudget:
    """What one list may cost before it is given up (LimitExceededError): the contract lets a
    page hold few records, even none, while more follow, but not forever.

    - `max_records`: records received (bad ones included), which the caller holds until the
      list ends, so this bounds its memory;
    - `max_empty_pages`: empty pages in a row;
    - `spare_pages`: pages beyond those the records justify, one per tenth of a full page of
      records received (a list of pages a tenth full or fuller never spends any);
    - `deadline_s`: time to read the whole list, and never more than half of what is left of
      the run deadline (`run_deadline`, a time.monotonic() instant), so that a list that never
      ends leaves the run time to deliver the others.
    """

    max_records: int = 500_000
    max_empty_pages: int = 20
    spare_pages: int = 200
    deadline_s: float = 300.0
    run_deadline: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_records", "max_empty_pages", "spare_pages"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.deadline_s <= 0:
            raise ValueError("deadline_s must be positive")

    def list_deadline(self) -> float:
        """The time.monotonic() instant by which a list started now must be read."""
        now = time.monotonic()
        deadline = now + self.deadline_s
        if self.run_deadline is not None:
            deadline = min(deadline, now + max(0.0, self.run_deadline - now) / 2)
        return deadline


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
    budget: ListBudget = ListBudget(),  # noqa: B008 - frozen, safe to share
    page_limit: int = 1000,
) -> AsyncIterator[Page]:
    """Yield the pages of one list: `fetch(cursor)` returns a decoded page body (cursor None
    for the first page), or with `arrow` the raw body bytes, which `arrow` decodes in a
    worker thread (orjson decides the pages it cannot read). Stops after the page whose
    next_cursor is null; `budget` (with `page_limit`, the records a full page holds) ends a
    list that would not."""
    seen: set[str] = set()
    cursor: str | None = None
    number = received = empty_in_a_row = 0
    loop = asyncio.get_running_loop()
    allowed_s = max(0.0, budget.list_deadline() - time.monotonic())
    deadline = loop.time() + allowed_s

    def spent(what: str) -> LimitExceededError:
        return LimitExceededError(
            f"list given up after {number + 1} pages and {received} records: {what}",
            api=api,
            method=method,
            path=path,
            status=200,
        )

    while True:
        try:
            async with asyncio.timeout_at(deadline):
                body = await fetch(cursor)
        except TimeoutError:
            raise spent(f"not read to its end within {allowed_s:.3g} s") from None
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
        page = Page(records, number, table)
        del body
        received += len(page)
        empty_in_a_row = 0 if len(page) else empty_in_a_row + 1
        if received > budget.max_records:
            raise spent(f"more than {budget.max_records} records")
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
            if empty_in_a_row > budget.max_empty_pages:
                raise spent(f"more than {budget.max_empty_pages} empty pages in a row")
            justified = 10 * math.ceil(received / max(1, page_limit))
            if number + 1 > justified + budget.spare_pages:
                raise spent(f"more than {budget.spare_pages} pages beyond what its records fill")
        yield page
        if next_cursor is None:
            return
        cursor = next_cursor
        number += 1
