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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from bullphish_billing.clients import ApiError, BullPhishClient, Page
from bullphish_billing.clients.arrow_pages import ArrowPageDecoder
from bullphish_billing.validation import (
    ORGANIZATION,
    PARTNER,
    TARGET,
    Entity,
    ValidatedBatch,
    arrow_record_type,
    required_fields,
    validate_records,
    validate_table,
)
from bullphish_billing.warehouse.raw import (
    Snapshot,
    extracted_partners,
    replace_partners,
    write_snapshots,
)

log = logging.getLogger(__name__)

BATCH_RECORDS = 20_000

# Target pages (99% of what is read) are decoded by Arrow off the event loop; organizations
# (nested `modules`, a required-but-nullable `parent_id`) and partners go through orjson.
_TARGET_PAGES = ArrowPageDecoder(arrow_record_type(TARGET), required_fields(TARGET))


@dataclass(frozen=True)
class ExtractResult:
    """The outcome of extracting one partner-date."""

    partner_id: str
    organizations_received: int
    targets_received: int
    pages: int
    error: str | None = None


@dataclass
class _Batch:
    """About BATCH_RECORDS records of one list: those of pages decoded to Arrow (`tables`)
    and those decoded by orjson (`records`), each with its (page_no, page_row)."""

    tables: list[pa.Table] = field(default_factory=list)
    table_positions: list[np.ndarray] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    record_positions: list[np.ndarray] = field(default_factory=list)
    size: int = 0
    pages: int = 0

    def add(self, page: Page) -> None:
        n = len(page)
        where = np.column_stack((np.full(n, page.number, np.int64), np.arange(n, dtype=np.int64)))
        if page.table is not None:
            self.tables.append(page.table)
            self.table_positions.append(where)
        else:
            self.records.extend(page.records)
            self.record_positions.append(where)
        self.size += n
        self.pages += 1


def _positions(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty((0, 2), np.int64)


def _validate(entity: Entity, batch: _Batch, partner_id: str) -> list[ValidatedBatch]:
    """Validate a batch (in a worker thread): its Arrow part and its orjson part."""
    out = []
    if batch.tables:
        table = pa.concat_tables(batch.tables)
        positions = _positions(batch.table_positions)
        out.append(validate_table(entity, table, positions, expected_partner_id=partner_id))
    if batch.record_positions:
        positions = _positions(batch.record_positions)
        out.append(
            validate_records(entity, batch.records, positions, expected_partner_id=partner_id)
        )
    return out


async def _batches(pages: AsyncIterator[Page]) -> AsyncIterator[_Batch]:
    """Regroup pages into batches of about BATCH_RECORDS records."""
    batch = _Batch()
    async for page in pages:
        batch.add(page)
        if batch.size >= BATCH_RECORDS:
            yield batch
            batch = _Batch()
    if batch.size or batch.pages:
        yield batch


async def extract_partner_list(
    client: BullPhishClient, con: duckdb.DuckDBPyConnection, usage_date: dt.date, run_id: str
) -> int:
    """List every partner as of the date and replace raw.partners for it; return the count."""
    batch = _Batch()
    async for page in client.iter_partners(usage_date):
        batch.add(page)
    positions = _positions(batch.record_positions)
    replace_partners(con, usage_date, validate_records(PARTNER, batch.records, positions), run_id)
    return len(batch.records)


async def _load_list(snapshot: Snapshot, entity: Entity, pages: AsyncIterator[Page]) -> None:
    """Fetch the list's pages and validate them, the two side by side: while one batch is
    validated (in a worker thread: Arrow and pandas release the GIL for the bulk), the next is
    being fetched. At most one finished batch waits."""
    ready: asyncio.Queue[_Batch | Exception | None] = asyncio.Queue(maxsize=1)

    async def fetch() -> None:
        try:
            async for batch in _batches(pages):
                await ready.put(batch)
        except Exception as exc:  # handed to the validating side, which raises it
            await ready.put(exc)
            return
        await ready.put(None)

    fetching = asyncio.create_task(fetch())
    try:
        while (batch := await ready.get()) is not None:
            if isinstance(batch, Exception):
                raise batch
            validated = await asyncio.to_thread(_validate, entity, batch, snapshot.partner_id)
            for part in validated:
                snapshot.add(entity.name, part, 0)
            snapshot.received[entity.name] += batch.size  # the records, bad ones included
            snapshot.pages += batch.pages
    finally:
        if not fetching.done():
            fetching.cancel()
        await asyncio.gather(fetching, return_exceptions=True)


async def extract_partner(
    client: BullPhishClient, usage_date: dt.date, partner_id: str
) -> Snapshot | ExtractResult:
    """Read and validate one partner-date: its complete snapshot, not yet written, or the
    ExtractResult of its failure (then nothing is written: its previous snapshot stays)."""
    snapshot = Snapshot(partner_id)
    lists = [
        asyncio.create_task(
            _load_list(snapshot, ORGANIZATION, client.iter_organizations(partner_id, usage_date))
        ),
        asyncio.create_task(
            _load_list(
                snapshot, TARGET, client.iter_targets(partner_id, usage_date, arrow=_TARGET_PAGES)
            )
        ),
    ]
    try:
        await asyncio.gather(*lists)
    except BaseException as exc:
        for task in lists:  # the other list stops too
            task.cancel()
        await asyncio.gather(*lists, return_exceptions=True)
        if isinstance(exc, ApiError):
            return ExtractResult(partner_id, 0, 0, snapshot.pages, error=str(exc))
        raise
    return snapshot


def _result(snapshot: Snapshot) -> ExtractResult:
    return ExtractResult(
        snapshot.partner_id,
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
    """Extract several partner-dates, at most `concurrency` partners read at a time.

    One writer stores the complete snapshots: each time it is free it takes every snapshot
    completed meanwhile and writes them in one transaction (`write_snapshots`), so a day of
    small partners costs a few commits, not one per partner. At most `concurrency` complete
    snapshots wait for it (readers wait beyond that), which bounds memory.
    """
    gate = asyncio.Semaphore(concurrency)
    results: dict[str, ExtractResult] = {}
    existing = extracted_partners(con, usage_date)
    complete: asyncio.Queue[Snapshot | None] = asyncio.Queue(maxsize=max(1, concurrency))

    def finish(result: ExtractResult) -> None:
        results[result.partner_id] = result
        if result.error:
            log.warning(
                "extract of %s for %s failed: %s", result.partner_id, usage_date, result.error
            )
        if on_done is not None:
            on_done(result)

    async def write() -> None:
        done = False
        while not done:
            group = [await complete.get()]
            while not complete.empty():
                group.append(complete.get_nowait())
            done = group[-1] is None
            snapshots = [s for s in group if s is not None]
            if snapshots:
                await _finished(
                    asyncio.to_thread(
                        write_snapshots, con, usage_date, snapshots, run_id, replacing=existing
                    )
                )
                for snapshot in snapshots:
                    finish(_result(snapshot))

    async def one(partner_id: str) -> None:
        async with gate:
            outcome = await extract_partner(client, usage_date, partner_id)
        if isinstance(outcome, ExtractResult):
            finish(outcome)
        else:
            await complete.put(outcome)

    writer = asyncio.create_task(write())
    readers = asyncio.ensure_future(asyncio.gather(*(one(p) for p in partner_ids)))
    try:
        # a writer that fails (the warehouse refused) must stop the readers waiting for it
        await asyncio.wait({writer, readers}, return_when=asyncio.FIRST_COMPLETED)
        if writer.done():  # before the end of the readers: only by failing
            writer.result()
        await readers
        await complete.put(None)
        await writer
    finally:
        for task in (readers, writer):
            if not task.done():
                task.cancel()
        await asyncio.gather(readers, writer, return_exceptions=True)
    return results


async def _finished(write: Awaitable[None]) -> None:
    """Await a warehouse write even when cancelled: its thread cannot be stopped, and the
    connection must not be closed while it still writes."""
    running = asyncio.ensure_future(write)
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.gather(running, return_exceptions=True)
        raise
