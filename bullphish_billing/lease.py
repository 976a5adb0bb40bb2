"""Partner-date leases: two runs never work on the same partner-date at the same time.

A run takes the lease of each partner-date it bills (and, for a moment each, those of the date's
partner list and of the organization mappings) before it touches it, and gives it back when
done. A second run waits for it, or after `wait_s` leaves that partner-date alone and reports it
failed, naming the holder. A lease is an advisory lock (`flock`) on a file in
`<warehouse>.leases/`, released by the kernel when its holder dies; why, and what was weighed:
docs/decisions/2026-11-25-partner-date-leases-by-flock.md.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bullphish_billing import stopping
from bullphish_billing.warehouse.db import WarehouseError

DEFAULT_WAIT_S = 3600.0
"""How long a run waits for a partner-date another run is billing (a whole date's run of a
large partner list can take a while; a scheduled run would rather wait than fail)."""
POLL_S = 0.2
PARTNER_LIST = "partner-list"
"""The scope of a date's partner list (raw.partners and the partner quarantine of the date)."""
MAPPINGS = "organization-mappings"
"""The scope of KaseyaOne's organization mappings (ops.organization_mappings, kept per
partner for every date): runs of different dates replace the same rows."""

_SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class LeaseBusyError(WarehouseError):
    """Another run holds a lease this run needed and waited for in vain (one line)."""


@dataclass(frozen=True)
class Key:
    """What a lease guards: one usage date and a scope (a partner id, or PARTNER_LIST), or
    with no date, something every date shares (MAPPINGS)."""

    usage_date: dt.date | None
    scope: str

    def __str__(self) -> str:
        what = {PARTNER_LIST: "partner list", MAPPINGS: "organization mappings"}.get(
            self.scope, self.scope
        )
        return what if self.usage_date is None else f"{what} of {self.usage_date}"

    def filename(self) -> str:
        scope = self.scope
        if not _SAFE.fullmatch(scope):  # ids are safe by contract; anything else is hashed
            scope = "h" + hashlib.sha256(scope.encode()).hexdigest()[:32]
        day = "all" if self.usage_date is None else self.usage_date.isoformat()
        return f"{day}.{scope}.lock"


def lease_dir(warehouse: Path | str) -> Path:
    """The directory of the warehouse's lease files (beside the warehouse file)."""
    path = Path(warehouse)
    return path.with_name(path.name + ".leases")


def _lock_fd(path: Path) -> int | None:
    """Lock `path` without waiting: the open, locked descriptor, or None if it is held."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        # the previous holder may have deleted the file between our open and our lock: then
        # we hold a lock on a file nobody else will ever look at, so start again
        try:
            current = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        mine = os.fstat(fd)
        if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)


def read_holder(path: Path) -> str:
    """Who holds a lease file, as the holder wrote it, in words (best effort)."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another run"
    return (
        f"run {info.get('run_id')} (pid {info.get('pid')} on {info.get('host')}, "
        f"since {info.get('since')})"
    )


class RunLeases:
    """The leases of one run. Thread-safe: a run's tasks may use it from other threads.

    Re-entrant for the run itself: asking again for a lease the run holds succeeds at once.
    Two `RunLeases` (two runs) exclude each other, in one process or in two.
    """

    def __init__(self, warehouse: Path | str, run_id: str) -> None:
        self.directory = lease_dir(warehouse)
        self.run_id = run_id
        self._held: dict[Key, int] = {}
        self._lock = threading.Lock()

    # -- taking and giving back -------------------------------------------------------------
    def try_acquire(self, key: Key) -> bool:
        """Take the lease if it is free (or already ours); never waits."""
        with self._lock:
            if key in self._held:
                return True
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / key.filename()
            fd = _lock_fd(path)
            if fd is None:
                return False
            stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            holder = {"run_id": self.run_id, "pid": os.getpid(), "host": socket.gethostname()}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(holder | {"since": stamp}).encode())
            self._held[key] = fd
            return True

    def acquire(
        self,
        keys: Iterable[Key],
        *,
        wait_s: float,
        on_wait: Callable[[Key, str], None] | None = None,
    ) -> dict[Key, str]:
        """Take every lease, waiting up to `wait_s` in all for those another run holds.

        Keys are taken in sorted order, so two runs that want overlapping sets never wait on
        each other in a circle. Returns the keys NOT taken, each with the holder's
        description; `on_wait(key, holder)` is called once per key the run has to wait for.
        """
        deadline = time.monotonic() + max(0.0, wait_s)
        missed: dict[Key, str] = {}
        for key in sorted(set(keys), key=lambda k: (str(k.usage_date), k.scope)):
            told = False
            while not self.try_acquire(key):
                # a run asked to stop waits a few seconds at most (stopping.STOP_WAIT_S)
                if time.monotonic() >= stopping.wait_until(deadline):
                    missed[key] = read_holder(self.directory / key.filename())
                    break
                if not told and on_wait is not None:
                    on_wait(key, read_holder(self.directory / key.filename()))
                    told = True
                time.sleep(POLL_S)
        return missed

    def release(self, key: Key) -> None:
        with self._lock:
            fd = self._held.pop(key, None)
            if fd is None:
                return
            # delete while still locked: a waiter that opened this file notices and retries
            (self.directory / key.filename()).unlink(missing_ok=True)
            os.close(fd)

    def release_all(self) -> None:
        for key in list(self._held):
            self.release(key)

    def holds(self, key: Key) -> bool:
        with self._lock:
            return key in self._held

    # -- helpers for the flow and for delivery ---------------------------------------------
    @contextmanager
    def holding(self, key: Key, *, wait_s: float, on_wait=None) -> Iterator[None]:
        """Hold one lease for a block; LeaseBusyError if another run kept it `wait_s`."""
        already = self.holds(key)
        missed = self.acquire([key], wait_s=wait_s, on_wait=on_wait)
        if missed:
            raise LeaseBusyError(
                f"the {key} is being billed by {missed[key]}; waited {wait_s:g} s, "
                "try again when it has finished"
            )
        try:
            yield
        finally:
            if not already:
                self.release(key)

    @contextmanager
    def borrowed(self, key: Key) -> Iterator[bool]:
        """For a block, the lease if it is ours or free (True), without waiting; False if
        another run holds it. A lease taken here is given back at the end of the block."""
        if self.holds(key):
            yield True
            return
        if not self.try_acquire(key):
            yield False
            return
        try:
            yield True
        finally:
            self.release(key)

    def free_or_ours(self, key: Key) -> bool:
        """Whether no other run holds the lease right now."""
        with self.borrowed(key) as ok:
            return ok


@contextmanager
def run_leases(warehouse: Path | str, run_id: str) -> Iterator[RunLeases]:
    """The leases of a run, for its whole length; every lease is given back at the end, and
    the kernel gives them back if the process dies."""
    leases = RunLeases(warehouse, run_id)
    try:
        yield leases
    finally:
        leases.release_all()


def partner_date(usage_date: dt.date, partner_id: str) -> Key:
    return Key(usage_date, partner_id)


def partner_list(usage_date: dt.date) -> Key:
    return Key(usage_date, PARTNER_LIST)


def organization_mappings() -> Key:
    return Key(None, MAPPINGS)
