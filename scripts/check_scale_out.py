"""Check extract shards on Prefect workers end to end, offline: `make check-scale-out`.

1. starts `prefect server start` on a free port (temporary PREFECT_HOME), creates the two
   process work pools, runs `prefect deploy --all`, and starts two process workers on the
   bullphish-shards pool (`--limit 1` each, polling every second);
2. serves two faulty sandboxes holding the same data (short pages, 5xx, 429, slow answers);
3. bills a date with BILLING_SHARDS=2 against the first and with BILLING_SHARDS=1 against the
   second: KaseyaOne ends with exactly the same metrics in both, and exactly what the sandbox's
   data implies (tests/oracle.py); every batch applied once; each worker ran a shard;
4. bills another date with BILLING_SHARDS=2 and kills one shard worker with SIGKILL (it and
   the shard run it executes: its host died) while its shard extracts: that shard's partners
   are failed with the shard run named, the others delivered; a worker is started again, and
   a backfill of the date (sharded too) delivers the failed partners, once;
5. prints a verdict, stops everything it started, and deletes its temporary files.

Exit code 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
from prefect_stack import (
    BIN,
    ROOT,
    Checks,
    deploy_all,
    free_port,
    prefect_env,
    say,
    start,
    start_server,
    stop,
    tail,
    verdict,
)
from sandbox_env import sandbox_env, sends_per_key, stored

SHARD_POOL = "bullphish-shards"
RUN_TIMEOUT_S = 150


def sandbox_config(today: dt.date):
    from bullphish_billing.sandbox import SandboxConfig

    return SandboxConfig(
        seed=31,
        partners=10,
        targets_per_organization=40,
        short_pages=True,
        rate_429=0.05,
        rate_5xx=0.05,
        latency_ms=60,
        malformed_rate=0.004,
        today=today,
    )


def pipeline_env(env: dict[str, str], sandbox, work: Path, name: str, **extra: object) -> dict:
    return (
        env
        | sandbox_env(sandbox, work / name / "warehouse.duckdb")
        | {
            "BILLING_STAGING_URL": str(work / "staging"),
            "BILLING_HTTP_DEADLINE_S": "30",
            "BULLPHISH_BILLING_HOME": str(ROOT),
        }
        | {k: str(v) for k, v in extra.items()}
    )


def bill(env: dict[str, str], day: dt.date, work: Path, label: str) -> subprocess.Popen:
    """`bullphish-billing run --date day` in the background (its output in work/label.log)."""
    return start(
        [str(BIN / "bullphish-billing"), "run", "--date", day.isoformat()], env, work / label
    )


def finished(proc: subprocess.Popen, work: Path, label: str, checks: Checks) -> int | None:
    try:
        code = proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop(proc)
        checks.expect(False, f"{label} ended within {RUN_TIMEOUT_S} s")
        print(tail(work / label, 40))
        return None
    return code


def applied_once(sandbox) -> bool:
    counts = sends_per_key(sandbox)
    return bool(counts) and max(counts.values()) == 1


def shard_runs(day: dt.date) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(like_=f"extract-shard-{day.isoformat()}")
            )
        )
    return runs


def read_flow_run(flow_run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def ran_by(work: Path, n: int, flow_run) -> bool:
    """Whether shard worker `n` runs the flow run: the run's own first lines, in the worker's
    log ("View at .../flow-run/<id>"; both workers may try to submit a run, one is refused)."""
    log = (work / f"worker-{n}.log").read_text(errors="replace")
    return f"/runs/flow-run/{flow_run.id}" in log


def partner_runs(warehouse: Path, day: dt.date) -> dict[str, tuple[str, str | None]]:
    """The latest run's status and reason per partner for the date (ops.partner_runs)."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute(
            "SELECT partner_id, arg_max(status, finished_at), arg_max(reason, finished_at) "
            "FROM ops.partner_runs WHERE usage_date = ? GROUP BY partner_id",
            [day],
        ).fetchall()
    return {p: (s, r) for p, s, r in rows}


def main() -> int:
    checks = Checks()
    work = Path(tempfile.mkdtemp(prefix="bpb-check-scale-out-"))
    port = free_port()
    env = prefect_env(work, port)
    prefect = str(BIN / "prefect")
    server = None
    workers: list[subprocess.Popen | None] = [None, None]
    sandboxes = []
    try:
        server = start_server(checks, env, work, port)
        if checks.failures:
            return 1
        if not deploy_all(checks, env):
            return 1

        from oracle import expected_billing, expected_in_kaseyaone

        from bullphish_billing.dates import today_utc, yesterday_utc
        from bullphish_billing.sandbox import RunningSandbox

        for _ in range(2):
            sandbox = RunningSandbox(sandbox_config(today_utc()))
            sandbox.start()
            sandboxes.append(sandbox)
        sharded, single = sandboxes
        shard_env = pipeline_env(env, sharded, work, "sharded", BILLING_SHARDS=2)

        def start_worker(n: int, log: str = "") -> subprocess.Popen:
            return start(
                [prefect, "worker", "start", "--pool", SHARD_POOL, "--type", "process"]
                + ["--limit", "1", "--name", f"shard-worker-{n}"],
                shard_env,
                work / (log or f"worker-{n}.log"),
            )

        workers = [start_worker(0), start_worker(1)]
        day = yesterday_utc() - dt.timedelta(days=1)
        say(f"billing {day} with BILLING_SHARDS=2 and with BILLING_SHARDS=1")
        runs = {
            "sharded.log": bill(shard_env, day, work, "sharded.log"),
            "single.log": bill(
                pipeline_env(env, single, work, "single", BILLING_SHARDS=1), day, work, "single.log"
            ),
        }
        codes = {label: finished(proc, work, label, checks) for label, proc in runs.items()}
        expected = expected_in_kaseyaone(sharded.world, expected_billing(sharded.world, day))
        checks.expect(bool(expected), f"the sandbox bills something on {day}")
        ok = stored(sharded, day) == stored(single, day) == expected
        if not checks.expect(ok, "KaseyaOne holds the same metrics with 2 shards, 1, the oracle"):
            for label in runs:
                print(tail(work / label, 30))
        checks.expect(applied_once(sharded), "every batch of the sharded run applied once")
        say(f"exit codes {codes} (1 is expected: the faulty sandbox holds partners back)")
        names = sorted(r.name for r in shard_runs(day))
        completed = [r for r in shard_runs(day) if r.state and r.state.is_completed()]
        checks.expect(len(completed) == 2, f"two extract-shard runs completed: {names}")
        for n in range(2):
            ran = [r.name for r in completed if ran_by(work, n, r)]
            checks.expect(len(ran) == 1, f"shard-worker-{n} ran a shard: {ran}")

        check_worker_killed(checks, work, shard_env, sharded, workers, start_worker, day)
    finally:
        for worker in workers:
            stop(worker)
        stop(server)
        for sandbox in sandboxes:
            sandbox.stop()
    return verdict(checks, work)


def check_worker_killed(checks, work, shard_env, sandbox, workers, start_worker, first_day):
    from oracle import expected_billing, expected_in_kaseyaone

    day = first_day - dt.timedelta(days=1)
    env = shard_env | {"BILLING_SHARD_SILENCE_S": "6"}
    say(f"billing {day} with BILLING_SHARDS=2, and killing a shard worker mid-extract")
    proc = bill(env, day, work, "killed.log")
    victim = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and victim is None:
        for shard_run in shard_runs(day):
            if shard_run.state and shard_run.state.is_running():
                for n in range(len(workers)):
                    number = shard_run.name.rsplit("-", 1)[-1]
                    alive = list(work.glob(f"staging/{day}/*/shard-{number}/alive"))
                    if ran_by(work, n, shard_run) and alive:
                        victim = (n, shard_run)
        time.sleep(0.2)
    if not checks.expect(victim is not None, "a shard run is running on a worker"):
        stop(proc)
        return
    n, shard_run = victim
    # the host dies: the worker, then the shard run's process (a session of its own), SIGKILL,
    # so that nobody tells Prefect: the daily run must notice the shard's silence itself
    with contextlib.suppress(ProcessLookupError):
        os.killpg(workers[n].pid, signal.SIGKILL)
    workers[n].wait(timeout=10)
    child = int(str(read_flow_run(shard_run.id).infrastructure_pid).rsplit(":", 1)[-1])
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child, signal.SIGKILL)
    say(f"killed shard-worker-{n} and its shard run's process {child} (SIGKILL): {shard_run.name}")
    code = finished(proc, work, "killed.log", checks)
    outcomes = partner_runs(Path(env["BILLING_WAREHOUSE"]), day)
    named = f"(flow run {shard_run.name})"
    lost = {p for p, (s, r) in outcomes.items() if r and named in r}
    reasons = {outcomes[p][1] for p in lost}
    checks.expect(
        bool(lost) and all(outcomes[p][0] == "failed" for p in lost),
        f"the killed shard's partners are failed, naming {shard_run.name}: {sorted(lost)} "
        f"{reasons}",
    )
    checks.expect(code == 1, f"that run exits 1 (got {code})")
    expected = expected_in_kaseyaone(sandbox.world, expected_billing(sandbox.world, day))
    held = stored(sandbox, day)
    others = {k: v for k, v in expected.items() if k[0] not in lost}
    checks.expect(
        {k: v for k, v in held.items() if k[0] not in lost} == others
        and not any(k[0] in lost for k in held),
        "the other partners are delivered, the killed shard's not",
    )
    workers[n] = start_worker(n, f"worker-{n}-again.log")
    # the next run is a backfill of the date (its run sharded as the daily run's are)
    say(f"backfilling {day} with BILLING_SHARDS=2")
    again = start(
        [str(BIN / "bullphish-billing"), "backfill", "--start", day.isoformat()]
        + ["--end", day.isoformat()],
        env,
        work / "again.log",
    )
    finished(again, work, "again.log", checks)
    first = expected_in_kaseyaone(sandbox.world, expected_billing(sandbox.world, first_day))
    checks.expect(
        stored(sandbox, day) == expected and stored(sandbox, first_day) == first,
        f"after the backfill KaseyaOne holds {day}, and still {first_day}",
    )
    checks.expect(applied_once(sandbox), "every batch applied once, across all the runs")
    done = {
        d: sum(bool(r.state and r.state.is_completed()) for r in shard_runs(d))
        for d in (day, first_day)
    }
    # day: the killed run's other shard + the backfill's two; first_day: the first run's two
    checks.expect(done == {day: 3, first_day: 2}, f"the backfill's date ran in shards: {done}")
    say(json.dumps({"lost_partners": sorted(lost)}))


if __name__ == "__main__":
    sys.exit(main())
