"""Crash points: a testing hook that kills this process at a named boundary of delivery (and
of raw retention).

When the environment variable `BILLING_CRASH_AT` names a point, the process SIGKILLs itself
the moment a run reaches that point: no exception, no `finally`, no flush, exactly like a
power cut or the kernel's OOM killer. The crash tests
(`tests/integration/test_crash_safety.py`) use it to prove that a run killed at any boundary
loses nothing and doubles nothing (docs/billing-rules.md rule 9).
`BILLING_CRASH_AT=after-send:2` kills the second time the point is reached.

It is never set in production; unset, a crash point costs one environment lookup.

The points, in the order a run meets them:
- `after-compute`: the metrics of the date are computed and stored, nothing is planned yet;
- `after-plan`: the changed metrics are in the outbox as pending batches, nothing is sent;
- `after-send`: KaseyaOne has answered a batch, the answer is not recorded yet;
- `between-batches`: a batch's answer is recorded, the next batch is not sent yet;
- `in-retention`: at the end of the run, the oldest date's target snapshot is deleted and its
  drop recorded in ops.raw_retention, in one transaction not committed yet (retention.py).
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

ENVIRONMENT_VARIABLE = "BILLING_CRASH_AT"
POINTS = ("after-compute", "after-plan", "after-send", "between-batches", "in-retention")

_reached: Counter[str] = Counter()
_lock = threading.Lock()


def crashpoint(name: str) -> None:
    """Kill this process with SIGKILL if `BILLING_CRASH_AT` names this point (and count)."""
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}")
    wanted = os.environ.get(ENVIRONMENT_VARIABLE)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    with _lock:
        _reached[name] += 1
        due = _reached[name] >= int(nth or 1)
    if due:
        # one line on stderr, written directly (no buffer to lose), so a test can tell this
        # crash from any other death of the process
        os.write(2, f"crashpoint: SIGKILL at {name}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
