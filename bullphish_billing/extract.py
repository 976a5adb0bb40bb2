"""Extraction: BullPhish ID pages for one usage date, validated and streamed into DuckDB.

Memory is bounded by the partners in flight, not the day: records are gathered up to
`BATCH_RECORDS`, validated (pandera) into the partner-date's snapshot as compact columns,
and the snapshot is written once both lists are read; a list that would hold more than its
budget allows is given up (the client's `ListBudget`). Each
partner's two lists (organizations, targets) are cursor chains, sequential by nature; the
concurrency comes from running partners (and the two lists of a partner) side by side.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

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
from bullphish_billing.warehouse.raw import Snapshot, replace_partners

log = logging.getLogger(__name__)

BATCH_RECORDS = 20_000

# Target pages (99% of what is read) are decoded by Arrow off the event loop; organizations
# (nested `modules`, a required-but-nullable `parent_id`) and partners go through orjson.
_TARGET_PAGES = ArrowPageDecoder(arrow_record_type(TARGET), required_fields(TARGET))


class SnapshotSink(Protocol):
    """Where complete snapshots go: the warehouse (`warehouse.raw.WarehouseSink`) or a shard's
    staged Parquet files (`staging.StagingSink`). `write` runs in a worker thread, one call at
    a time, and has stored the snapshots when it returns."""

    def write(self, snapshots: list[Snapshot]) -> None: ...


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
    """About BATCH_RECORDS records of one entity, from the lists of several partners: those of
    pages decoded to Arrow (`tables`) and those decoded by orjson (`records`). Each page gets
    a number within the batch, which stands for (its snapshot, its page number) until the
    validated rows are handed back to their snapshots."""

    tables: list[pa.Table] = field(default_factory=list)
    table_positions: list[np.ndarray] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    record_positions: list[np.ndarray] = field(default_factory=list)
    owners: list[Snapshot] = field(default_factory=list)  # per page of the batch
    page_numbers: list[int] = field(default_factory=list)  # per page: its number in its list
    size: int = 0
    validated: asyncio.Future[None] | None = None

    def add(self, page: Page, owner: Snapshot | None = None) -> None:
        n = len(page)
        index = len(self.page_numbers)
        where = np.column_stack((np.full(n, index, np.int64), np.arange(n, dtype=np.int64)))
        if page.table is not None:
            self.tables.append(page.table)
            self.table_positions.append(where)
        else:
            self.records.extend(page.records)
            self.record_positions.append(where)
        if owner is not None:
            self.owners.append(owner)
        self.page_numbers.append(page.number)
        self.size += n

    def expected_partners(self, positions: np.ndarray) -> np.ndarray:
        """Per record, the partner whose list it came from."""
        ids = np.array([o.partner_id for o in self.owners], dtype=object)
        return ids[positions[:, 0]]


def _positions(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty((0, 2), np.int64)


def _validate(entity: Entity, batch: _Batch) -> list[tuple[Snapshot, ValidatedBatch]]:
    """Validate a batch in one go (in a worker thread), and split what comes out by snapshot,
    with each row's page number in its own list again."""
    parts = []
    if batch.tables:
        positions = _positions(batch.table_positions)
        table = pa.concat_tables(batch.tables)
        expected = batch.expected_partners(positions)
        parts.append(validate_table(entity, table, positions, expected_partner_id=expected))
    if batch.record_positions:
        positions = _positions(batch.record_positions)
        expected = batch.expected_partners(positions)
        parts.append(
            validate_records(entity, batch.records, positions, expected_partner_id=expected)
        )
    owner_of_page = np.array([id(o) for o in batch.owners], dtype=np.int64)
    number_of_page = np.array(batch.page_numbers, dtype=np.int64)
    out = []
    for part in parts:
        rows_page = part.rows.column("page_no").to_numpy()
        bad_page = part.bad["page_no"].to_numpy(dtype=np.int64)
        rows = part.rows.set_column(
            part.rows.schema.get_field_index("page_no"),
            "page_no",
            pa.array(number_of_page[rows_page]),
        )
        bad = part.bad.assign(page_no=number_of_page[bad_page])
        fixed_page = part.normalized["page_no"].to_numpy(dtype=np.int64)
        fixed = part.normalized.assign(page_no=number_of_page[fixed_page])
        for owner in {id(o): o for o in batch.owners}.values():
            mine_rows = owner_of_page[rows_page] == id(owner)
            mine_bad = owner_of_page[bad_page] == id(owner)
            if mine_rows.any() or mine_bad.any():
                mine_fixed = owner_of_page[fixed_page] == id(owner)
                out.append(
                    (
                        owner,
                        ValidatedBatch(
                            rows=rows if mine_rows.all() else rows.filter(pa.array(mine_rows)),
                            # pandas' indexing of an empty frame costs a millisecond: shared
                            bad=bad[mine_bad].reset_index(drop=True) if len(bad) else bad,
                            normalized=fixed[mine_fixed].reset_index(drop=True)
                            if len(fixed)
                            else fixed,
                        ),
                    )
                )
    return out


class _Validator:
    """One entity's pages from every partner's list, validated together in batches of about
    BATCH_RECORDS records: one pandera call per batch, not one per partner (a day of small
    partners would otherwise pay pandera's fixed cost per partner). Validation runs in a worker
    thread while the lists go on fetching.

    A batch is validated when full, or when no list is being fetched any more, so a list that
    has been read waits until the batch holding its last pages is validated (`close`): at most
    one batch of other partners' records. A snapshot gets its validated rows before `close`
    returns."""

    def __init__(self, entity: Entity) -> None:
        self.entity = entity
        self._batch = self._new_batch()
        self._fetching = 0
        self._mine: dict[int, set[asyncio.Future[None]]] = {}

    def _new_batch(self) -> _Batch:
        return _Batch(validated=asyncio.get_running_loop().create_future())

    def open(self, snapshot: Snapshot) -> None:
        self._fetching += 1
        self._mine.setdefault(id(snapshot), set())

    async def add(self, snapshot: Snapshot, page: Page) -> None:
        self._batch.add(page, snapshot)
        assert self._batch.validated is not None
        self._mine[id(snapshot)].add(self._batch.validated)
        snapshot.received[self.entity.name] += len(page)  # the records, bad ones included
        snapshot.pages += 1
        if self._batch.size >= BATCH_RECORDS:
            # the list that filled the batch waits for it: fetching cannot run far ahead
            await asyncio.shield(self._flush())

    async def close(self, snapshot: Snapshot) -> None:
        """The snapshot's list is read (or abandoned): wait until its pages are validated."""
        self._fetching -= 1
        mine = self._mine.pop(id(snapshot), set())
        if self._fetching == 0:
            self._flush()
        await asyncio.gather(*(asyncio.shield(f) for f in mine))

    def _flush(self) -> asyncio.Future[None]:
        batch, self._batch = self._batch, self._new_batch()
        assert batch.validated is not None
        if not batch.page_numbers:
            batch.validated.set_result(None)
            return batch.validated

        async def validate() -> None:
            try:
                parts = await asyncio.to_thread(_validate, self.entity, batch)
            except asyncio.CancelledError:
                batch.validated.cancel()
                raise
            except BaseException as exc:
                batch.validated.set_exception(exc)
                raise
            for snapshot, part in parts:
                snapshot.add(self.entity.name, part)
            batch.validated.set_result(None)

        task = asyncio.create_task(validate())
        task.add_done_callback(_retrieve)
        return batch.validated


def _retrieve(task: asyncio.Task[None]) -> None:
    """The exception, if any, is the batch's future's to raise; do not log it twice."""
    if not task.cancelled():
        task.exception()


async def extract_partner_list(
    client: BullPhishClient, con: duckdb.DuckDBPyConnection, usage_date: dt.date, run_id: str
) -> int:
    """List every partner as of the date and replace raw.partners for it; return the count."""
    batch = _Batch()
    async for page in client.iter_partners(usage_date):
        batch.add(page)  # one list: a page's number in the batch is its number in the list
    positions = _positions(batch.record_positions)
    replace_partners(con, usage_date, validate_records(PARTNER, batch.records, positions), run_id)
    return len(batch.records)


async def _read_list(snapshot: Snapshot, validator: _Validator, pages: AsyncIterator[Page]) -> None:
    """Read one list to its end, handing its pages to the entity's validator."""
    validator.open(snapshot)
    try:
        async for page in pages:
            await validator.add(snapshot, page)
    finally:
        await validator.close(snapshot)


async def extract_partner(
    client: BullPhishClient,
    usage_date: dt.date,
    partner_id: str,
    validators: dict[str, _Validator],
) -> Snapshot | ExtractResult:
    """Read and validate one partner-date: its complete snapshot, not yet written, or the
    ExtractResult of its failure (then nothing is written: its previous snapshot stays)."""
    snapshot = Snapshot(partner_id)
    lists = [
        asyncio.create_task(
            _read_list(
                snapshot,
                validators[ORGANIZATION.name],
                client.iter_organizations(partner_id, usage_date),
            )
        ),
        asyncio.create_task(
            _read_list(
                snapshot,
                validators[TARGET.name],
                client.iter_targets(partner_id, usage_date, arrow=_TARGET_PAGES),
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
    sink: SnapshotSink,
    usage_date: dt.date,
    partner_ids: list[str],
    *,
    concurrency: int = 4,
    max_unwritten_records: int = 500_000,
) -> dict[str, ExtractResult]:
    """Extract several partner-dates, at most `concurrency` partners read at a time.

    One writer stores the complete snapshots in `sink`: each time it is free it takes every
    snapshot completed meanwhile and writes them in one go (one transaction in the warehouse,
    one set of Parquet files when staged), so a day of small partners costs a few commits, not
    one per partner. Memory is bounded by the
    partners being read (each list bounded by the client's list budget) and the complete
    snapshots not yet written: at most `max_unwritten_records` records, or one snapshot; a
    reader whose snapshot does not fit waits, and keeps its place among the `concurrency`.
    """
    gate = asyncio.Semaphore(concurrency)
    results: dict[str, ExtractResult] = {}
    complete: asyncio.Queue[Snapshot | None] = asyncio.Queue()
    unwritten = 0  # records of the snapshots handed to the writer and not yet written
    written = asyncio.Condition()

    def finish(result: ExtractResult) -> None:
        results[result.partner_id] = result
        if result.error:
            log.warning(
                "extract of %s for %s failed: %s", result.partner_id, usage_date, result.error
            )

    async def write() -> None:
        nonlocal unwritten
        done = False
        while not done:
            group = [await complete.get()]
            while not complete.empty():
                group.append(complete.get_nowait())
            done = group[-1] is None
            snapshots = [s for s in group if s is not None]
            if snapshots:
                await _finished(asyncio.to_thread(sink.write, snapshots))
                for snapshot in snapshots:
                    finish(_result(snapshot))
                async with written:
                    unwritten -= sum(s.size for s in snapshots)
                    written.notify_all()

    validators = {e.name: _Validator(e) for e in (ORGANIZATION, TARGET)}

    async def one(partner_id: str) -> None:
        nonlocal unwritten
        async with gate:
            outcome = await extract_partner(client, usage_date, partner_id, validators)
            if isinstance(outcome, ExtractResult):
                finish(outcome)
                return
            async with written:
                await written.wait_for(
                    lambda: unwritten == 0 or unwritten + outcome.size <= max_unwritten_records
                )
                unwritten += outcome.size
            complete.put_nowait(outcome)

    writer = asyncio.create_task(write())
    readers = asyncio.ensure_future(asyncio.gather(*(one(p) for p in partner_ids)))
    try:
        # a writer that fails (the warehouse refused) must stop the readers waiting for it
        await asyncio.wait({writer, readers}, return_when=asyncio.FIRST_COMPLETED)
        if writer.done():  # before the end of the readers: only by failing
            writer.result()
        await readers
        complete.put_nowait(None)
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
