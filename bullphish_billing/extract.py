"""Extraction: BullPhish ID pages for one usage date, validated and streamed into DuckDB.

Memory is bounded by the batch, not the day: records are gathered up to `BATCH_RECORDS`,
validated (pandera) and appended to the partner-date's raw snapshot, then let go. Each
partner's two lists (organizations, targets) are cursor chains, sequential by nature; the
concurrency comes from running partners (and the two lists of a partner) side by side.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import duckdb

from bullphish_billing.clients import ApiError, BullPhishClient, Page
from bullphish_billing.validation import ORGANIZATION, PARTNER, TARGET, Entity, validate_records
from bullphish_billing.warehouse.raw import RawSnapshot, replace_partners

log = logging.getLogger(__name__)

BATCH_RECORDS = 20_000


@dataclass(frozen=True)
class ExtractResult:
    """The outcome of extracting one partner-date."""

    partner_id: str
    organizations_received: int
    targets_received: int
    pages: int
    error: str | None = None


async def _batches(
    pages: AsyncIterator[Page],
) -> AsyncIterator[tuple[list[Any], list[tuple[int, int]], int]]:
    """Regroup pages into batches of about BATCH_RECORDS: (records, positions, pages)."""
    records: list[Any] = []
    positions: list[tuple[int, int]] = []
    n_pages = 0
    async for page in pages:
        n_pages += 1
        records.extend(page.records)
        positions.extend((page.number, row) for row in range(len(page.records)))
        if len(records) >= BATCH_RECORDS:
            yield records, positions, n_pages
            records, positions, n_pages = [], [], 0
    if records or n_pages:
        yield records, positions, n_pages


async def extract_partner_list(
    client: BullPhishClient, con: duckdb.DuckDBPyConnection, usage_date: dt.date, run_id: str
) -> int:
    """List every partner as of the date and replace raw.partners for it; return the count."""
    records: list[Any] = []
    positions: list[tuple[int, int]] = []
    async for page in client.iter_partners(usage_date):
        records.extend(page.records)
        positions.extend((page.number, row) for row in range(len(page.records)))
    batch = validate_records(PARTNER, records, positions)
    replace_partners(con, usage_date, batch, run_id)
    return len(records)


async def _load_list(
    snapshot: RawSnapshot,
    entity: Entity,
    pages: AsyncIterator[Page],
    lock: asyncio.Lock,
) -> None:
    async for records, positions, n_pages in _batches(pages):
        # validation and the bulk insert run in a worker thread, so that the event loop goes
        # on fetching pages meanwhile (Arrow, pandas and DuckDB release the GIL for the bulk)
        batch = await asyncio.to_thread(
            validate_records, entity, records, positions, expected_partner_id=snapshot.partner_id
        )
        async with lock:  # one writer per partner snapshot (its cursor is not thread-safe)
            await asyncio.to_thread(snapshot.add, entity.name, batch, len(records))
            snapshot.pages += n_pages


async def extract_partner(
    client: BullPhishClient,
    con: duckdb.DuckDBPyConnection,
    usage_date: dt.date,
    partner_id: str,
    run_id: str,
) -> ExtractResult:
    """Extract one partner-date into a new raw snapshot; on failure keep the old one."""
    snapshot = RawSnapshot(con, usage_date, partner_id, run_id)
    lock = asyncio.Lock()
    try:
        await asyncio.gather(
            _load_list(
                snapshot, ORGANIZATION, client.iter_organizations(partner_id, usage_date), lock
            ),
            _load_list(snapshot, TARGET, client.iter_targets(partner_id, usage_date), lock),
        )
    except ApiError as exc:
        snapshot.rollback()
        return ExtractResult(partner_id, 0, 0, snapshot.pages, error=str(exc))
    except BaseException:
        snapshot.rollback()
        raise
    snapshot.commit()
    return ExtractResult(
        partner_id,
        snapshot.received["organization"],
        snapshot.received["target"],
        snapshot.pages,
    )


async def extract_partners(
    client: BullPhishClient,
    con: duckdb.DuckDBPyConnection,
    usage_date: dt.date,
    partner_ids: list[str],
    run_id: str,
    *,
    concurrency: int = 4,
    on_done: Callable[[ExtractResult], None] | None = None,
) -> dict[str, ExtractResult]:
    """Extract several partner-dates, at most `concurrency` partners at a time."""
    gate = asyncio.Semaphore(concurrency)
    results: dict[str, ExtractResult] = {}

    async def one(partner_id: str) -> None:
        async with gate:
            result = await extract_partner(client, con, usage_date, partner_id, run_id)
        results[partner_id] = result
        if result.error:
            log.warning("extract of %s for %s failed: %s", partner_id, usage_date, result.error)
        if on_done is not None:
            on_done(result)

    await asyncio.gather(*(one(p) for p in partner_ids))
    return results
