"""Prefect's temporary server for `run` and `backfill` when no Prefect API is configured.

Prefect would start its own ephemeral server for such a run, as a child in the command's
process group, stopped by an `atexit` hook. So a SIGTERM or Ctrl-C sent to the group
(systemd, `docker stop`, Kubernetes, a terminal) killed the server under the run, which then
retried its logs against it for minutes; and a SIGTERM or SIGKILL sent to the command alone
left the server running, holding its port and its database.

So the command line starts the server itself, before Prefect is used: `prefect server start`
on a free port of 127.0.0.1 (no UI, no scheduler: like Prefect's ephemeral server, it serves
this run only), under a small guard (`_server_guard.py`) in a session of its own, which the
group's signals do not reach, and which stops the server when the command's end of its stdin
pipe closes, as it does however the command ends (SIGKILL included). The command points
PREFECT_API_URL at it for the run and stops it at the end. Its output goes to
`$PREFECT_HOME/temporary-server.log`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bullphish_billing import stopping
from bullphish_billing.errors import UserError

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
LOG_NAME = "temporary-server.log"


class PrefectServerError(UserError):
    """The temporary Prefect server did not start (one line)."""


@dataclass
class TemporaryServer:
    process: subprocess.Popen
    api_url: str
    log_path: Path

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the server and its guard; idempotent."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # the guard stops the server's group
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(self.process.pid, signal.SIGKILL)
            self.process.wait()


_lock = threading.RLock()  # re-entrant: a second signal may stop it from a handler
_current: TemporaryServer | None = None


def server_command(port: int, *flags: str) -> list[str]:
    """The command line of `prefect server start` on 127.0.0.1:`port`, with this Python's
    Prefect and `flags`: the temporary server's and the demo's."""
    return [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *flags,
    ]


def current() -> TemporaryServer | None:
    return _current


def _kill_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_api() -> TemporaryServer | None:
    """Start the temporary server unless a Prefect API is configured (PREFECT_API_URL, in the
    environment or a Prefect profile), and point this process's Prefect at it. None if one is
    configured. PrefectServerError, one line, if it does not answer within START_TIMEOUT_S;
    Stopped if the command is asked to stop meanwhile."""
    global _current
    from prefect.settings import get_current_settings

    settings = get_current_settings()  # a test harness's too, not only the environment's
    if settings.api.url:
        return None
    home = Path(settings.home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / LOG_NAME
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    # the server needs none of the pipeline's settings (its API credentials least of all)
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PREFECT_API_URL" and not k.startswith(("BULLPHISH_", "KASEYAONE_", "BILLING_"))
    }
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with log_path.open("ab") as log, _lock:
        stopping.check()
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} pid {os.getpid()}\n".encode())
        log.flush()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bullphish_billing._server_guard",
                *server_command(
                    port, "--no-ui", "--no-scheduler", "--no-late-runs", "--analytics-off"
                ),
            ],
            env=env,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _current = TemporaryServer(process, api_url, log_path)
    try:
        _wait_healthy(_current)
    except BaseException:
        stop()
        raise
    os.environ["PREFECT_API_URL"] = api_url
    import prefect.context

    prefect.context.refresh_global_settings_context()
    return _current


def _wait_healthy(server: TemporaryServer) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(timeout=2) as client:
        while True:
            stopping.check()
            if server.process.poll() is not None:
                raise PrefectServerError(
                    f"Prefect's temporary server exited during start-up "
                    f"(exit {server.process.returncode}; its log: {server.log_path})"
                )
            try:
                if client.get(f"{server.api_url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() >= deadline:
                raise PrefectServerError(
                    f"Prefect's temporary server did not answer within {START_TIMEOUT_S:.0f} s "
                    f"(its log: {server.log_path}); or set PREFECT_API_URL to a running server"
                )
            stopping.sleep(0.2)


def flush_prefect(timeout_s: float = 5.0) -> None:
    """Send what Prefect still holds for the server (logs, events), waiting at most
    `timeout_s` for each: before the server stops, so that nothing is sent to it after."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
    except ImportError:  # pragma: no cover - Prefect moved them: exit hooks do it, later
        return
    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # best effort, on the way out
            worker.drain_all(timeout=timeout_s)


def stop(timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop the temporary server, if this process started one; idempotent."""
    global _current
    with _lock:
        server, _current = _current, None
    if server is not None:
        server.stop(timeout_s)
