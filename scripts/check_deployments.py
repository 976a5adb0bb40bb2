"""Check the Prefect deployments end to end, offline: `make check-deployments`.

1. starts `prefect server start` on a free port, with a temporary PREFECT_HOME;
2. creates the process work pool and runs `prefect deploy --all` from the checkout;
3. checks that both deployments are registered as prefect.yaml says (daily-billing on
   cron `0 2 * * *` in UTC with its default parameters, backfill with no schedule, both
   with the explicit pull step);
4. starts the sandbox APIs and a process worker, runs the backfill deployment for two dates
   with `prefect deployment run`, waits for it, and checks that it completed, that each date
   ran as a daily-billing subflow, and that KaseyaOne's sandbox holds what was billed;
5. prints a verdict, stops everything it started, and deletes its temporary files.

Exit code 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "bullphish-billing"
SERVER_TIMEOUT_S = 150
RUN_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def say(text: str) -> None:
    print(f"check-deployments: {text}", flush=True)


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


def main() -> int:
    checks = Checks()
    work = Path(tempfile.mkdtemp(prefix="bpb-check-deployments-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "BULLPHISH_", "KASEYAONE_", "BILLING_"))
    }
    env |= {
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # this process talks to the same server (deployment and flow-run checks)
    os.environ.update({k: env[k] for k in ("PREFECT_HOME", "PREFECT_API_URL")})
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

    server = worker = None
    sandbox = None
    prefect = str(BIN / "prefect")
    try:
        say(f"starting `prefect server start` on 127.0.0.1:{port} (PREFECT_HOME in {work})")
        server = start(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env,
            work / "server.log",
        )
        if not checks.expect(wait_healthy(api, server, SERVER_TIMEOUT_S), "the server answers"):
            print(tail(work / "server.log"))
            return 1

        made = run([prefect, "work-pool", "create", POOL, "--type", "process"], env)
        checks.expect(made.returncode == 0, f"work pool {POOL} (process) created")
        deployed = run([prefect, "--no-prompt", "deploy", "--all"], env, timeout=180)
        if not checks.expect(deployed.returncode == 0, "`prefect deploy --all` succeeded"):
            print(deployed.stdout[-3000:], deployed.stderr[-3000:])
            return 1
        check_registered(checks)

        from bullphish_billing.dates import today_utc, yesterday_utc
        from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

        sandbox = RunningSandbox(SandboxConfig(today=today_utc()))
        sandbox.start()
        c = sandbox.config
        run_env = env | {
            "BULLPHISH_API_URL": sandbox.bullphish_url,
            "BULLPHISH_API_TOKEN": c.bullphish_token,
            "KASEYAONE_API_URL": sandbox.kaseyaone_url,
            "KASEYAONE_CLIENT_ID": c.kaseyaone_client_id,
            "KASEYAONE_CLIENT_SECRET": c.kaseyaone_client_secret,
            "BILLING_WAREHOUSE": str(work / "data" / "warehouse.duckdb"),
            "BULLPHISH_BILLING_HOME": str(ROOT),
        }
        say("starting a process worker")
        worker = start(
            [prefect, "worker", "start", "--pool", POOL, "--type", "process", "--limit", "1"],
            run_env,
            work / "worker.log",
        )
        end = yesterday_utc() - dt.timedelta(days=1)
        begin = end - dt.timedelta(days=1)
        params = {
            "start": begin.isoformat(),
            "end": end.isoformat(),
            "partner_ids": ["p_0002", "p_0009"],
        }
        started = run(
            [prefect, "deployment", "run", "backfill/backfill", "--params", json.dumps(params)],
            env,
        )
        if not checks.expect(started.returncode == 0, "`prefect deployment run backfill/backfill`"):
            print(started.stdout[-3000:], started.stderr[-3000:])
            return 1
        check_run(checks, begin, end, sandbox, worker, work)
    finally:
        stop(worker)
        stop(server)
        if sandbox is not None:
            sandbox.stop()
        if not checks.failures:
            subprocess.run(["rm", "-rf", str(work)], check=False)
        else:
            say(f"logs kept in {work}")
    verdict = "PASS" if not checks.failures else f"FAIL ({len(checks.failures)} check(s))"
    say(f"verdict: {verdict}")
    return 0 if not checks.failures else 1


def check_registered(checks: Checks) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        daily = client.read_deployment_by_name("daily-billing/daily-billing")
        backfill = client.read_deployment_by_name("backfill/backfill")
    crons = [
        (getattr(s.schedule, "cron", None), getattr(s.schedule, "timezone", None), s.active)
        for s in daily.schedules
    ]
    checks.expect(crons == [("0 2 * * *", "UTC", True)], f"daily-billing schedule {crons}")
    checks.expect(
        daily.parameters.get("dry_run") is False and daily.parameters.get("usage_date") is None,
        f"daily-billing default parameters {daily.parameters}",
    )
    checks.expect(not backfill.schedules, "backfill has no schedule")
    required = set(backfill.parameter_openapi_schema.get("required", []))
    checks.expect({"start", "end"} <= required, f"backfill requires start and end ({required})")
    for deployment in (daily, backfill):
        pull = deployment.pull_steps or []
        step = pull[0].get("prefect.deployments.steps.set_working_directory", {}) if pull else {}
        checks.expect(bool(step.get("directory")), f"{deployment.name}: explicit pull step {pull}")
        checks.expect(deployment.work_pool_name == POOL, f"{deployment.name} on pool {POOL}")


def check_run(checks, begin, end, sandbox, worker, work: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    deadline = time.monotonic() + RUN_TIMEOUT_S
    state = None
    with get_client(sync_client=True) as client:
        runs = []
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["backfill"]))
            )
            state = runs[0].state if runs else None
            if state is not None and state.is_final():
                break
            if worker.poll() is not None:
                break
            time.sleep(1)
        ok = state is not None and state.is_completed()
        checks.expect(ok, f"the backfill run, executed by the worker, ended {state and state.name}")
        if not ok:
            print(tail(work / "worker.log", 40))
            return
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[runs[0].id])
            )
        )
    names = sorted(r.name for r in children)
    wanted = [f"daily-billing-{begin}", f"daily-billing-{end}"]
    checks.expect(names == wanted, f"one daily-billing subflow per date: {names}")
    for day in (begin, end):
        held = {m["partner_id"] for m in sandbox.kaseyaone.stored(usage_date=day)}
        checks.expect(held == {"p_0002", "p_0009"}, f"KaseyaOne holds {day} of {sorted(held)}")


if __name__ == "__main__":
    sys.exit(main())
