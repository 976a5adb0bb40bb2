"""Stopping a run on SIGTERM or SIGINT (Ctrl-C): one flag for the whole process.

The command line (`cli.py`) installs the signal handlers, in the main thread, while the flow
runs in a worker thread. A signal sets the flag; from then on the run starts no new work:
the clients send no new request and sleep no retry wait (`clients/retry.py`), Prefect tasks
do not retry, a lease is waited for a few seconds at most (`lease.py`), a backfill starts no
further date (`backfill.py`). What was started finishes or fails with a "stopped" reason, the
run records it and publishes the analysts' file, and the command exits with 128 + the
signal's number (130 SIGINT, 143 SIGTERM). What was not sent stays pending in the outbox, and
the next run sends it under the same Idempotency-Keys: billed once.

Nothing here installs anything by itself: a flow run by a Prefect worker, or a test, sees the
flag down and runs as before.
"""

from __future__ import annotations

import signal
import threading
import time

STOP_WAIT_S = 3.0
"""The longest a stopping run waits for something another run holds (a lease)."""

_flag = threading.Event()
_signum: int | None = None
_asked_at = 0.0


class Stopped(KeyboardInterrupt):
    """The run was stopped by a signal; `exit_code` is 128 + its number. A KeyboardInterrupt,
    so that nothing on the way out takes it for an error of the run."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal_name(signum)}")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def request_stop(signum: int = signal.SIGTERM) -> bool:
    """Raise the flag (the first signal's number is kept). True if it was down before."""
    global _signum, _asked_at
    first = not _flag.is_set()
    if first:
        _signum, _asked_at = signum, time.monotonic()
        _flag.set()
    return first


def stopping() -> bool:
    """Whether the run has been asked to stop."""
    return _flag.is_set()


def stop_signal() -> int | None:
    """The number of the signal that asked for the stop, or None."""
    return _signum if _flag.is_set() else None


def reason() -> str:
    """The one-line reason recorded for work the stop left undone."""
    signum = stop_signal()
    return f"stopped by {signal_name(signum) if signum else 'request'}: not finished by this run"


def check() -> None:
    """Raise Stopped if the run has been asked to stop."""
    signum = stop_signal()
    if signum is not None:
        raise Stopped(signum)


def sleep(seconds: float) -> bool:
    """Sleep up to `seconds`, waking at once when the stop is asked for; True if it was."""
    return _flag.wait(max(0.0, seconds))


def wait_until(deadline: float) -> float:
    """A wait's `deadline` (a time.monotonic() instant), brought forward to STOP_WAIT_S after
    the stop was asked for, once it is."""
    return min(deadline, _asked_at + STOP_WAIT_S) if stopping() else deadline


def reset() -> None:
    """Lower the flag (for tests in one process)."""
    global _signum
    _flag.clear()
    _signum = None
