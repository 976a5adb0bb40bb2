"""What a run needs, built once when it starts and passed to every stage: `RunContext`.

The settings (read once), the run's id, its clock and deadline, its partner-date leases, the
warehouse opener with its lock wait, both API clients, and the crash-point hook. A stage takes
the context instead of re-reading settings or reaching into module globals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import duckdb

from bullphish_billing.clients import BullPhishClient, KaseyaOneClient, ListBudget, RetryPolicy
from bullphish_billing.crashpoints import crashpoint
from bullphish_billing.lease import RunLeases
from bullphish_billing.settings import Settings
from bullphish_billing.warehouse.db import open_warehouse


@dataclass(frozen=True)
class RunClock:
    """When the run started and when it must stop sending requests (time.monotonic())."""

    started: float
    deadline: float

    @classmethod
    def start(cls, budget_s: float) -> RunClock:
        now = time.monotonic()
        return cls(now, now + budget_s)

    def left(self) -> float:
        """Seconds until the deadline (negative once past it)."""
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class RunContext:
    """One run's settings, identity, clock, leases and hooks (see the module docstring)."""

    settings: Settings
    run_id: str
    clock: RunClock
    leases: RunLeases
    crashpoint: Callable[[str], None] = field(default=crashpoint, repr=False)

    @classmethod
    def start(cls, settings: Settings, run_id: str, leases: RunLeases) -> RunContext:
        """The context of a run starting now: its deadline is BILLING_RUN_DEADLINE_S away."""
        return cls(settings, run_id, RunClock.start(settings.run_deadline_s), leases)

    def warehouse(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A short connection to the warehouse, waiting BILLING_WAREHOUSE_LOCK_WAIT_S for a
        lock another process holds."""
        s = self.settings
        return open_warehouse(s.warehouse, lock_wait_s=s.warehouse_lock_wait_s)

    def bullphish(self) -> BullPhishClient:
        """A BullPhish ID client within the run's bounds (use it with `async with`)."""
        s = self.settings
        s.require_apis()
        return BullPhishClient(
            str(s.bullphish_api_url),
            s.bullphish_api_token,  # type: ignore[arg-type]
            page_limit=s.page_limit,
            max_connections=s.max_connections,
            retry=self._retry(),
            **self._bounds(),
        )

    def kaseyaone(self) -> KaseyaOneClient:
        """A KaseyaOne client within the run's bounds (use it with `async with`)."""
        s = self.settings
        s.require_apis()
        return KaseyaOneClient(
            str(s.kaseyaone_api_url),
            str(s.kaseyaone_client_id),
            s.kaseyaone_client_secret,  # type: ignore[arg-type]
            retry=self._retry(),
            **self._bounds(),
        )

    def _retry(self) -> RetryPolicy:
        deadline = self.settings.http_deadline_s
        return RetryPolicy(
            request_deadline_s=deadline,
            connect_timeout_s=min(5.0, deadline),
            read_timeout_s=min(30.0, deadline),
            run_deadline=self.clock.deadline,
        )

    def _bounds(self) -> dict:
        """What a server may make a client hold or spend: per response, per list."""
        s = self.settings
        return {
            "max_body_bytes": int(s.max_response_mb * 1024 * 1024),
            "list_budget": ListBudget(
                max_records=s.max_list_records,
                max_empty_pages=s.list_empty_pages,
                spare_pages=s.list_spare_pages,
                deadline_s=s.list_deadline_s,
                run_deadline=self.clock.deadline,
            ),
        }
