"""Check the Prefect deployments end to end, offline: `make check-deployments`.

1. starts `prefect server start` on a free port, with a temporary PREFECT_HOME;
2. creates the process work pools and runs `prefect deploy --all` from the checkout;
3. checks that the deployments are registered as prefect.yaml says (daily-billing on
   cron `0 2 * * *` in UTC with its default parameters, backfill with no schedule, both
   with the explicit pull step; extract-shard on its own pool, scripts/check_scale_out.py
   runs it);
4. starts the sandbox APIs and a process worker, runs the backfill deployment for two dates
   with `prefect deployment run`, waits for it, and checks that it completed, that each date
   ran as a daily-billing subflow, and that KaseyaOne's sandbox holds what was billed;
5. prints a verdict, stops everything it started, and deletes its temporary files.

Exit code 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

from prefect_stack import (
    BIN,
    ROOT,
    Checks,
    deploy_all,
    free_port,
    prefect_env,
    run,
    say,
    start,
    start_server,
    stop,
    tail,
    verdict,
)
from sandbox_env import sandbox_env

POOL = "bullphish-billing"
SHARD_POOL = "bullphish-shards"  # extract-shard's: check_scale_out.py runs it
RUN_TIMEOUT_S = 240


def main() -> int:
    checks = Checks()
    work = Path(tempfile.mkdtemp(prefix="bpb-check-deployments-"))
    port = free_port()
    env = prefect_env(work, port)

    server = worker = None
    sandbox = None
    prefect = str(BIN / "prefect")
    try:
        server = start_server(checks, env, work, port)
        if checks.failures:
            return 1

        if not deploy_all(checks, env):
            return 1
        check_registered(checks)

        from bullphish_billing.dates import today_utc, yesterday_utc
        from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

        sandbox = RunningSandbox(SandboxConfig(today=today_utc()))
        sandbox.start()
        run_env = (
            env
            | sandbox_env(sandbox, work / "data" / "warehouse.duckdb")
            | {"BULLPHISH_BILLING_HOME": str(ROOT)}
        )
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
    return verdict(checks, work)


def check_registered(checks: Checks) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        daily = client.read_deployment_by_name("daily-billing/daily-billing")
        backfill = client.read_deployment_by_name("backfill/backfill")
        shard = client.read_deployment_by_name("extract-shard/extract-shard")
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
    checks.expect(
        shard.work_pool_name == SHARD_POOL and not shard.schedules,
        f"extract-shard on pool {SHARD_POOL}, no schedule",
    )


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
