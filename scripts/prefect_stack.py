"""What the Prefect checks share (check_deployments.py, check_scale_out.py): a `prefect server
start` on a free port, background processes in their own sessions, their logs, a verdict."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVER_TIMEOUT_S = 150
POOLS = ("bullphish-billing", "bullphish-shards")

sys.path.insert(0, str(ROOT / "tests"))  # the sandbox helpers and the oracle of the tests


_STARTED = time.monotonic()


def say(text: str) -> None:
    """One line of progress, with the seconds since the check started."""
    name = Path(sys.argv[0]).stem.replace("_", "-")
    print(f"{name}: [{time.monotonic() - _STARTED:5.1f} s] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Checks:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def expect(self, ok: bool, what: str) -> bool:
        say(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failures.append(what)
        return ok


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A background process in its own session (so that its children stop with it)."""
    out = log.open("wb")
    return subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the process and its children
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def prefect_env(work: Path, port: int) -> dict[str, str]:
    """This environment without Prefect's, the APIs' or the pipeline's settings, pointed at a
    server on `port` with its home in `work`; this process is pointed there too."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "BULLPHISH_", "KASEYAONE_", "BILLING_"))
    }
    env |= {
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    os.environ.update(
        {k: env[k] for k in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    )
    return env


def start_server(checks: Checks, env: dict[str, str], work: Path, port: int) -> subprocess.Popen:
    """`prefect server start` on 127.0.0.1:`port`; its health is a check."""
    say(f"starting `prefect server start` on 127.0.0.1:{port} (PREFECT_HOME in {work})")
    server = start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        work / "server.log",
    )
    if not checks.expect(
        wait_healthy(env["PREFECT_API_URL"], server, SERVER_TIMEOUT_S), "the server answers"
    ):
        print(tail(work / "server.log"))
    return server


def deploy_all(checks: Checks, env: dict[str, str]) -> bool:
    """Both process work pools, then `prefect deploy --all` from the checkout (checks)."""
    prefect = str(BIN / "prefect")
    for pool in POOLS:
        made = run([prefect, "work-pool", "create", pool, "--type", "process"], env)
        checks.expect(made.returncode == 0, f"work pool {pool} (process) created")
    deployed = run([prefect, "--no-prompt", "deploy", "--all"], env, timeout=180)
    if not checks.expect(deployed.returncode == 0, "`prefect deploy --all` succeeded"):
        print(deployed.stdout[-3000:], deployed.stderr[-3000:])
        return False
    return True


def verdict(checks: Checks, work: Path) -> int:
    """Remove `work` if every check passed (else say where its logs are); print the verdict
    and return the exit code."""
    if not checks.failures:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    else:
        say(f"logs kept in {work}")
    say(f"verdict: {'PASS' if not checks.failures else f'FAIL ({len(checks.failures)} check(s))'}")
    return 0 if not checks.failures else 1
