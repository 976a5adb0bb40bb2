"""The backfill's runner: a function for every date of a range, oldest first, a few at a time.

Dates run in threads of one process: DuckDB lets one process open the warehouse read-write,
and a second connection in the same process joins the same database, so each date's stages
open their own short connections; each date writes its own rows, and the partner-date leases
(lease.py) keep two runs off the same ones (docs/decisions/2026-11-25-backfill-dates-in-threads.md).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Protocol

from bullphish_billing import stopping
from bullphish_billing.results import DateResult


class Observer(Protocol):
    """Someone watching a backfill in this process (the terminal's progress bar)."""

    def started(self, total: int, done_before: int) -> None: ...

    def finished(self, result: DateResult, done: int, total: int) -> None: ...


_OBSERVER: contextvars.ContextVar[Observer | None] = contextvars.ContextVar(
    "bullphish_billing_backfill_observer", default=None
)


@contextmanager
def observing(observer: Observer) -> Iterator[None]:
    """Let `observer` watch the backfills run in this context (the flow runs in-process)."""
    token = _OBSERVER.set(observer)
    try:
        yield
    finally:
        _OBSERVER.reset(token)


def observer() -> Observer | None:
    return _OBSERVER.get()


def run_dates(
    days: list[dt.date],
    run_one: Callable[[dt.date], DateResult],
    concurrency: int,
    on_result: Callable[[DateResult, int], None] | None = None,
) -> list[DateResult]:
    """Run `run_one` for every date, oldest first, at most `concurrency` at a time, each in a
    thread with a copy of the caller's context (so Prefect sees each flow as a subflow of
    the caller's). A date that raises is a failed result; it never stops the others.
    `on_result(result, done)` is called as each date ends. Results come back in date order.
    """
    ordered = sorted(days)
    results: dict[dt.date, DateResult] = {}
    lock = threading.Lock()

    def one(day: dt.date) -> None:
        try:
            if stopping.stopping():  # SIGTERM or Ctrl-C: no further date (stopping.py)
                result = DateResult.failure(day, stopping.reason())
            else:
                result = run_one(day)
        except Exception as exc:  # noqa: BLE001 - a failed date is reported, the rest go on
            result = DateResult.failure(day, exc)
        with lock:
            results[day] = result
            if on_result is not None:
                on_result(result, len(results))

    if ordered:
        workers = max(1, min(concurrency, len(ordered)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backfill")
        try:
            # the queue is first in, first out: a free worker takes the oldest date left
            futures = [pool.submit(contextvars.copy_context().run, one, d) for d in ordered]
            for future in futures:
                future.result()
        finally:
            # on an exception, start no further date; the dates in progress finish
            pool.shutdown(wait=True, cancel_futures=True)
    return [results[d] for d in ordered if d in results]
