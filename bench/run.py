"""`make bench`: how fast the daily flow runs against the sandbox, against the floors measured
in the same run. Prints ratios and writes every figure to a JSON file.

Measured, in one run, on one machine:
- the fetch floor: the same pages pulled and decoded by a bare httpx client with the flow's
  access pattern (bench/fetch_floor.py);
- the daily flow, in a child process against a local `prefect server start`: end-to-end wall
  time, each stage (from Prefect's task runs), peak RSS;
- the Prefect floor: the flow's own task runs and artifacts replayed with no work in between
  (bench/prefect_floor.py): the part of the flow's time that is Prefect's on this machine;
- the DuckDB floor: the one GROUP BY that computes the per-user counts over the raw table;
- the command's cold start (`bullphish-billing --help`, importing the flow);
- optionally dlt's rest_api source on the same sandbox, at a smaller scale, against the flow
  at that same scale (the `bench` extra: pip install -e '.[bench]').
The sandbox and the Prefect server run in their own processes; the CPU time of each (and of
the flow's) is reported, so that it can be seen which one the run waited for.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import httpx

from bench.cpu import cpu_seconds, own_cpu_seconds, stolen_seconds
from bench.fetch_floor import fetch_floor
from bench.prefect_floor import shape
from bench.scales import SCALES, Scale
from bullphish_billing.demo import free_port, start_prefect_server, stop, wait_healthy

TOKEN = "sandbox-bullphish-token"
CLIENT_ID, CLIENT_SECRET = "sandbox-client", "sandbox-secret"
STAGES = (
    "list-partners",
    "deliver-pending",
    "extract",
    "evaluate",
    "notable-changes",
    "deliver",
    "reconcile",
    "mappings",
    "store-mappings",
    "report",
    "publish",
)


class Sandbox:
    """The sandbox in a child process, at a scale."""

    def __init__(self, scale: Scale) -> None:
        self.bullphish_port, self.kaseyaone_port = free_port(0), free_port(0)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bullphish_billing",
                "sandbox",
                "--partners",
                str(scale.partners),
                "--organizations-per-partner",
                str(scale.organizations_per_partner),
                "--targets-per-organization",
                str(scale.targets_per_organization),
                "--bullphish-port",
                str(self.bullphish_port),
                "--kaseyaone-port",
                str(self.kaseyaone_port),
                # every list pre-serialized in memory (about 210 bytes a target): after the
                # warm-up pass the sandbox only slices pages
                "--cache-mb",
                str(max(512, scale.targets * 300 // 1_000_000 + 64)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        self.bullphish_url = f"http://127.0.0.1:{self.bullphish_port}"
        self.kaseyaone_url = f"http://127.0.0.1:{self.kaseyaone_port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(
                    f"{self.bullphish_url}/v1/partners",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=2,
                )
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the sandbox did not start")

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def close(self) -> None:
        stop(self.process)


def _env(
    sandbox: Sandbox,
    api_url: str,
    prefect_home: Path,
    warehouse: Path,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    return (
        os.environ
        | {
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "BULLPHISH_API_URL": sandbox.bullphish_url,
            "BULLPHISH_API_TOKEN": TOKEN,
            "KASEYAONE_API_URL": sandbox.kaseyaone_url,
            "KASEYAONE_CLIENT_ID": CLIENT_ID,
            "KASEYAONE_CLIENT_SECRET": CLIENT_SECRET,
            "BILLING_WAREHOUSE": str(warehouse),
        }
        | (extra or {})
    )


def _stage_spans(api_url: str, flow_run_id: str) -> dict[str, tuple[dt.datetime, dt.datetime]]:
    """Per stage, from its first task run's start to its last one's end (the per-partner
    report tasks run side by side, so the sum of their run times would overstate it)."""
    deadline = time.monotonic() + 30
    while True:  # the server records task-run states from events, a moment after the run
        response = httpx.post(
            f"{api_url}/task_runs/filter",
            json={"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200},
            timeout=30,
        )
        response.raise_for_status()
        runs = response.json()
        if all(r.get("end_time") for r in runs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    spans: dict[str, tuple[dt.datetime, dt.datetime]] = {}
    for run in runs:
        if not run.get("start_time") or not run.get("end_time"):
            continue
        stage = next(
            (s for s in sorted(STAGES, key=len, reverse=True) if run["name"].startswith(s)),
            run["name"],
        )
        start = dt.datetime.fromisoformat(run["start_time"])
        end = dt.datetime.fromisoformat(run["end_time"])
        first, last = spans.get(stage, (start, end))
        spans[stage] = (min(first, start), max(last, end))
    return spans


def _seconds_in_any(spans: list[tuple[dt.datetime, dt.datetime]]) -> float:
    """Seconds covered by at least one of the spans (stages may overlap)."""
    covered, reach = 0.0, None
    for start, end in sorted(spans):
        if reach is not None and start < reach:
            start = reach
        if end > start:
            covered += (end - start).total_seconds()
        reach = max(reach, end) if reach is not None else end
    return covered


def _flow_run_seconds(api_url: str, flow_run_id: str) -> float:
    """The flow run's own span as Prefect recorded it: it ends when the final state is set,
    before the engine joins its heartbeat thread (which sleeps in 1-second steps, so the
    caller's wall time is this rounded up to about the next whole second)."""
    response = httpx.get(f"{api_url}/flow_runs/{flow_run_id}", timeout=30)
    response.raise_for_status()
    return _recorded_seconds(response.json())


def _run_child(
    sandbox: Sandbox,
    api_url: str,
    home: Path,
    warehouse: Path,
    server_pid: int,
    command: list[str],
    out: Path,
    extra_env: dict[str, str] | None = None,
) -> dict:
    """A flow in a child process that writes its own figures to `out`, with the wall time and
    the CPU the sandbox and the Prefect server spent meanwhile."""
    cpu_before = sandbox.cpu()
    server_before = cpu_seconds(server_pid)
    stolen_before = stolen_seconds()
    start = time.perf_counter()
    subprocess.run(
        command,
        env=_env(sandbox, api_url, home, warehouse, extra_env),
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    result = json.loads(out.read_text())
    result["wall_seconds"] = wall
    result["sandbox_cpu_seconds"] = sandbox.cpu() - cpu_before
    result["prefect_server_cpu_seconds"] = cpu_seconds(server_pid) - server_before
    result["stolen_cpu_seconds"] = stolen_seconds() - stolen_before
    return result


def run_flow(
    sandbox: Sandbox,
    api_url: str,
    home: Path,
    work: Path,
    day: dt.date,
    server_pid: int,
    prefix: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict:
    """The flow in a child process (`prefix`: a command that runs it, e.g. a profiler;
    `extra_env`: settings of that run, such as BILLING_SHARDS)."""
    warehouse = work / f"warehouse-{sandbox.bullphish_port}.duckdb"
    out = work / f"flow-{sandbox.bullphish_port}.json"
    command = [*(prefix or []), sys.executable, "-m", "bench.flow_child", day.isoformat(), str(out)]
    result = _run_child(sandbox, api_url, home, warehouse, server_pid, command, out, extra_env)
    spans = _stage_spans(api_url, result["flow_run_id"])
    result["stages"] = {
        stage: (end - start).total_seconds() for stage, (start, end) in spans.items()
    }
    result["in_tasks_seconds"] = _seconds_in_any(list(spans.values()))
    result["flow_run_seconds"] = _flow_run_seconds(api_url, result["flow_run_id"])
    result["artifacts"] = _artifact_count(api_url, result["flow_run_id"])
    result["warehouse"] = str(warehouse)
    return result


def _artifact_count(api_url: str, flow_run_id: str) -> int:
    """Artifacts the flow run created (its own and the per-partner ones worth a look)."""
    response = httpx.post(
        f"{api_url}/artifacts/count",
        json={"flow_runs": {"id": {"any_": [flow_run_id]}}},
        timeout=30,
    )
    response.raise_for_status()
    return int(response.json())


def prefect_floor(api_url: str, home: Path, work: Path, flow_run_id: str, server_pid: int) -> dict:
    """The measured run's task runs and artifacts, replayed with no work (prefect_floor.py)."""
    spec, out = work / "prefect-shape.json", work / "prefect-floor.json"
    spec.write_text(json.dumps(shape(api_url, flow_run_id)))
    server_before = cpu_seconds(server_pid)
    subprocess.run(
        [sys.executable, "-m", "bench.prefect_floor", str(spec), str(out)],
        env=os.environ
        | {
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(home),
            "PREFECT_LOGGING_LEVEL": "WARNING",
        },
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    result = json.loads(out.read_text())
    result["prefect_server_cpu_seconds"] = cpu_seconds(server_pid) - server_before
    return result


def duckdb_floor(warehouse: str, day: dt.date, repeat: int = 3) -> float:
    """The one GROUP BY that yields the per-user counts, over the raw table."""
    best = float("inf")
    with duckdb.connect(warehouse, read_only=True) as con:
        for _ in range(repeat):
            start = time.perf_counter()
            con.execute(
                "SELECT partner_id, organization_id, count(DISTINCT id) FILTER (status = 'active') "
                "FROM raw.targets WHERE usage_date = ? GROUP BY ALL",
                [day],
            ).fetchall()
            best = min(best, time.perf_counter() - start)
    return best


def cold_start(repeat: int = 3) -> dict[str, float]:
    def best(cmd: list[str]) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
        return min(times)

    return {
        "cli_help_seconds": best([sys.executable, "-m", "bullphish_billing", "--help"]),
        "import_flow_seconds": best([sys.executable, "-c", "import flows.daily_billing"]),
    }


def run_dlt(sandbox: Sandbox, work: Path, day: dt.date) -> dict | None:
    try:
        import dlt  # noqa: F401
    except ImportError:
        return None
    out = work / "dlt.json"
    cpu_before = sandbox.cpu()
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.dlt_child",
            sandbox.bullphish_url,
            TOKEN,
            day.isoformat(),
            str(work / "dlt.duckdb"),
            str(out),
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"RUNTIME__LOG_LEVEL": "WARNING"},
    )
    result = json.loads(out.read_text())
    result["wall_seconds"] = time.perf_counter() - start
    result["sandbox_cpu_seconds"] = sandbox.cpu() - cpu_before
    return result


def run_backfill(
    sandbox: Sandbox,
    api_url: str,
    home: Path,
    warehouse: Path,
    start_day: dt.date,
    end_day: dt.date,
    server_pid: int,
) -> dict:
    """The backfill flow over a range, in a child process, into `warehouse`."""
    out = warehouse.with_suffix(".backfill.json")
    command = [sys.executable, "-m", "bench.backfill_child"]
    command += [start_day.isoformat(), end_day.isoformat(), str(out)]
    result = _run_child(sandbox, api_url, home, warehouse, server_pid, command, out)
    result["date_seconds"], result["date_stages"] = _subflow_figures(api_url, result["flow_run_id"])
    return result


def _subflow_figures(api_url: str, flow_run_id: str) -> tuple[list[float], dict[str, float]]:
    """Each date's daily-billing run within a backfill, as Prefect recorded it, oldest first,
    and each stage's span in a date's run, averaged over the dates."""
    response = httpx.post(
        f"{api_url}/flow_runs/filter",
        json={"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}, "limit": 200},
        timeout=30,
    )
    response.raise_for_status()
    runs = sorted(response.json(), key=lambda r: r["name"])
    ended = [run for run in runs if run.get("start_time") and run.get("end_time")]
    stages: dict[str, float] = {}
    for run in ended:
        for stage, (start, end) in _stage_spans(api_url, run["id"]).items():
            stages[stage] = stages.get(stage, 0.0) + (end - start).total_seconds()
    mean = {stage: seconds / len(ended) for stage, seconds in stages.items()}
    return [_recorded_seconds(run) for run in ended], mean


def _recorded_seconds(run: dict) -> float:
    """A flow run's span as Prefect recorded it (its JSON from the API)."""
    start = dt.datetime.fromisoformat(run["start_time"])
    return (dt.datetime.fromisoformat(run["end_time"]) - start).total_seconds()


def _bytes(path: Path) -> int:
    """A DuckDB file's size with its write-ahead log, if any (0 when missing)."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}.wal")) if p.exists())


def benchmark(scale: Scale, dlt_scale: Scale | None, work: Path, backfill_days: int = 0) -> dict:
    """Every figure of one `make bench` run (see the module's docstring and bench/README.md).

    The measured daily run is the date D billed on a warehouse holding the `backfill_days`
    dates before it (billed first, as one backfill, itself measured); the same date billed on
    an empty warehouse beforehand gives the one-day figure both are compared with."""
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    home = work / "prefect-home"
    port = free_port(0)
    api_url = f"http://127.0.0.1:{port}/api"
    server = start_prefect_server(home, port, work / "prefect-server.log")
    results: dict = {
        "scale": scale.__dict__ | {"targets": scale.targets},
        "usage_date": day.isoformat(),
        "backfill_days": backfill_days,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    try:
        wait_healthy(api_url, server, 120)
        sandbox = Sandbox(scale)
        try:
            warm = fetch_floor(sandbox.bullphish_url, TOKEN, day)  # fills the sandbox's cache
            cpu_before, own_before = sandbox.cpu(), own_cpu_seconds()
            floor = fetch_floor(sandbox.bullphish_url, TOKEN, day)
            floor["cpu_seconds"] = own_cpu_seconds() - own_before
            floor["sandbox_cpu_seconds"] = sandbox.cpu() - cpu_before
            floor["first_pass_seconds"] = warm["seconds"]
            results["fetch_floor"] = floor
            empty = work / "empty"
            empty.mkdir()
            results["flow_empty"] = run_flow(sandbox, api_url, home, empty, day, server.pid)
            history = work / "history"
            history.mkdir()
            if backfill_days:
                warehouse = history / f"warehouse-{sandbox.bullphish_port}.duckdb"
                results["backfill"] = run_backfill(
                    sandbox,
                    api_url,
                    home,
                    warehouse,
                    day - dt.timedelta(days=backfill_days),
                    day - dt.timedelta(days=1),
                    server.pid,
                )
                results["backfill"]["warehouse_bytes"] = _bytes(warehouse)
                results["backfill"]["analytics_bytes"] = _bytes(
                    warehouse.with_name("analytics.duckdb")
                )
                # the backfill's dates may have pushed the measured date's pages out of the
                # sandbox's cache: warm them again, so both runs of the date read warm pages
                fetch_floor(sandbox.bullphish_url, TOKEN, day)
                results["flow"] = run_flow(sandbox, api_url, home, history, day, server.pid)
                # the date once more on an empty warehouse, now that the Prefect server and the
                # sandbox hold the backfill's history: what grew with the warehouse, and what
                # with the server
                after = work / "empty-after-backfill"
                after.mkdir()
                results["flow_empty_after_backfill"] = run_flow(
                    sandbox, api_url, home, after, day, server.pid
                )
            else:
                results["flow"] = results["flow_empty"]
        finally:
            sandbox.close()
        for run in (results["flow"], results["flow_empty"]):
            warehouse = Path(run["warehouse"])
            run["warehouse_bytes"] = _bytes(warehouse)
            run["analytics_bytes"] = _bytes(warehouse.with_name("analytics.duckdb"))
        results["prefect_floor"] = prefect_floor(
            api_url, home, work, results["flow"]["flow_run_id"], server.pid
        )
        results["duckdb_floor_seconds"] = duckdb_floor(results["flow"]["warehouse"], day)
        results["cold_start"] = cold_start()
        if dlt_scale is not None:
            small = Sandbox(dlt_scale)
            try:
                fetch_floor(small.bullphish_url, TOKEN, day)
                dlt_work = work / "dlt"
                dlt_work.mkdir()
                flow_small = run_flow(small, api_url, home, dlt_work, day, server.pid)
                dlt_result = run_dlt(small, dlt_work, day)
            finally:
                small.close()
            results["dlt"] = {
                "scale": dlt_scale.__dict__ | {"targets": dlt_scale.targets},
                "flow": flow_small,
                "dlt": dlt_result,
            }
    finally:
        stop(server)
    results["ratios"] = ratios(results)
    results["per_million_records"] = per_million_records(results)
    if backfill_days:
        results["bytes_per_day"] = bytes_per_day(results)
    return results


def ratios(results: dict) -> dict[str, float]:
    """The figures issue 16 sets targets for, each against a floor of the same run."""
    flow, floor, empty = results["flow"], results["fetch_floor"], results["flow_empty"]
    found = {
        "flow_vs_fetch_floor": flow["flow_seconds"] / floor["seconds"],
        "flow_vs_fetch_plus_prefect_floors": flow["flow_seconds"]
        / (floor["seconds"] + results["prefect_floor"]["seconds"]),
        "flow_cpu_vs_fetch_floor_cpu": flow["cpu_seconds"] / max(floor["cpu_seconds"], 1e-9),
        "aggregate_vs_duckdb_floor": flow["stages"].get("evaluate", 0.0)
        / max(results["duckdb_floor_seconds"], 1e-9),
    }
    backfill = results.get("backfill")
    if backfill:
        found["backfill_vs_one_day"] = backfill["wall_seconds"] / empty["wall_seconds"]
        found["after_history_vs_empty_warehouse"] = flow["flow_seconds"] / empty["flow_seconds"]
        again = results.get("flow_empty_after_backfill")
        if again:  # the same, split: the warehouse's history, and the Prefect server's
            found["after_history_vs_empty_warehouse_same_server"] = (
                flow["flow_seconds"] / again["flow_seconds"]
            )
            found["empty_warehouse_after_backfill_vs_before"] = (
                again["flow_seconds"] / empty["flow_seconds"]
            )
    dlt_part = results.get("dlt")
    if dlt_part and dlt_part["dlt"]:
        found["dlt_vs_flow"] = dlt_part["dlt"]["wall_seconds"] / dlt_part["flow"]["wall_seconds"]
    return found


def bytes_per_day(results: dict) -> dict[str, float]:
    """What each day of history adds to the warehouse and to the analysts' file: the files
    after the backfill's days and the measured date, less the files of that date alone."""
    empty, flow = results["flow_empty"], results["flow"]
    days = max(results.get("backfill_days", 0), 1)
    return {
        "warehouse": (flow["warehouse_bytes"] - empty["warehouse_bytes"]) / days,
        "analytics": (flow["analytics_bytes"] - empty["analytics_bytes"]) / days,
    }


def per_million_records(results: dict) -> dict[str, float]:
    """CPU seconds per million records read, per process, for the measured daily run and for
    the fetch floor's client (the records are the same pages)."""
    flow, floor = results["flow"], results["fetch_floor"]
    millions = max(floor["records"], 1) / 1_000_000
    return {
        "flow_process": flow["cpu_seconds"] / millions,
        "prefect_server": flow["prefect_server_cpu_seconds"] / millions,
        "sandbox": flow["sandbox_cpu_seconds"] / millions,
        "fetch_floor_client": floor["cpu_seconds"] / millions,
    }


def _history_lines(results: dict) -> list[str]:
    """The backfill against one day, the same date on an empty warehouse and after the
    backfill's history (each stage), and the files' bytes per day."""
    empty, flow = results["flow_empty"], results["flow"]
    backfill = results.get("backfill")
    if not backfill:
        return [
            f"one day on an empty warehouse: warehouse {empty['warehouse_bytes'] / 1e6:.1f} MB, "
            f"analysts' file {empty['analytics_bytes'] / 1e6:.1f} MB (no backfill asked)"
        ]
    days = backfill["dates"]
    per_date = backfill["date_seconds"]
    lines = [
        f"backfill {days} days   {backfill['wall_seconds']:8.2f} s  "
        f"({backfill['wall_seconds'] / empty['wall_seconds']:.1f}x one day's "
        f"{empty['wall_seconds']:.2f} s; {backfill['wall_seconds'] / days:.2f} s a date; "
        f"each date's run {min(per_date, default=0):.1f}-{max(per_date, default=0):.1f} s, "
        f"2 at a time; CPU {backfill['cpu_seconds']:.1f} s, Prefect server CPU "
        f"{backfill['prefect_server_cpu_seconds']:.1f} s, sandbox CPU "
        f"{backfill['sandbox_cpu_seconds']:.1f} s; CPU stolen by the hypervisor "
        f"{backfill.get('stolen_cpu_seconds', 0):.1f} s; "
        f"peak RSS {backfill['peak_rss_mb']:.0f} MB)",
        f"the same date, empty warehouse / after {days} days: "
        f"{empty['flow_seconds']:.2f} s / {flow['flow_seconds']:.2f} s "
        f"({flow['flow_seconds'] / empty['flow_seconds']:.2f}x)",
    ]
    stages = sorted(backfill.get("date_stages", {}).items(), key=lambda item: -item[1])
    lines.insert(
        1,
        "  a date's stages in the backfill (mean span; the dates' runs overlap): "
        + ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in stages),
    )
    again = results.get("flow_empty_after_backfill", {"flow_seconds": 0.0, "stages": {}})
    lines.append(
        f"  and on an empty warehouse again after the backfill (the Prefect server's history "
        f"alone): {again['flow_seconds']:.2f} s; artifacts created "
        f"{empty.get('artifacts')} / {flow.get('artifacts')} / {again.get('artifacts')}; "
        f"stages: empty / after {days} days / empty again after"
    )
    for stage in sorted(set(empty["stages"]) | set(flow["stages"])):
        before, after = empty["stages"].get(stage, 0.0), flow["stages"].get(stage, 0.0)
        later = again["stages"].get(stage)
        shown_later = "-" if later is None else f"{later:.2f}"  # not recorded by that run
        lines.append(f"  {stage:<15}{before:8.2f} s  {after:8.2f} s  {shown_later:>8} s")
    per_day = bytes_per_day(results)
    lines.append(
        f"bytes per day of history: warehouse {per_day['warehouse'] / 1e6:.1f} MB "
        f"({flow['warehouse_bytes'] / 1e6:.0f} MB for {days + 1} days, "
        f"{empty['warehouse_bytes'] / 1e6:.0f} MB for one), analysts' file "
        f"{per_day['analytics'] / 1e6:.2f} MB ({flow['analytics_bytes'] / 1e6:.1f} MB, "
        f"{empty['analytics_bytes'] / 1e6:.1f} MB)"
    )
    return lines


def report(results: dict) -> str:
    scale, flow, floor = results["scale"], results["flow"], results["fetch_floor"]
    bookkeeping = results["prefect_floor"]
    organizations = scale["partners"] * scale["organizations_per_partner"]
    lines = [
        f"scale {scale['name']}: {scale['partners']} partners, {organizations} organizations, "
        f"{scale['targets']} targets",
        f"fetch floor      {floor['seconds']:8.2f} s  ({floor['records']} records; "
        f"CPU {floor['cpu_seconds']:.2f} s, sandbox CPU {floor['sandbox_cpu_seconds']:.2f} s)",
        f"Prefect floor    {bookkeeping['seconds']:8.2f} s  ({bookkeeping['task_runs']} task runs, "
        f"{bookkeeping['artifacts']} artifacts, no work; CPU {bookkeeping['cpu_seconds']:.2f} s, "
        f"Prefect server CPU {bookkeeping['prefect_server_cpu_seconds']:.2f} s)",
        f"flow end to end  {flow['flow_seconds']:8.2f} s  "
        f"(child wall {flow['wall_seconds']:.2f} s, peak RSS {flow['peak_rss_mb']:.0f} MB; "
        f"CPU {flow['cpu_seconds']:.2f} s, sandbox CPU {flow['sandbox_cpu_seconds']:.2f} s, "
        f"Prefect server CPU {flow['prefect_server_cpu_seconds']:.2f} s; "
        f"CPU stolen by the hypervisor {flow.get('stolen_cpu_seconds', 0):.2f} s)",
        f"  flow run as Prefect recorded it: {flow['flow_run_seconds']:.2f} s "
        "(the rest: the engine's start, and its heartbeat thread joined at the end)",
    ]
    for stage, seconds in sorted(flow["stages"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {stage:<15}{seconds:8.2f} s")
    outside = flow["flow_seconds"] - flow["in_tasks_seconds"]
    lines.append(f"  {'(in no task)':<15}{outside:8.2f} s  (stages overlap: not the sum above)")
    reconcile = flow["stages"].get("reconcile")
    if reconcile is not None:
        rest = flow["flow_seconds"] - reconcile
        lines.append(
            f"  reconciliation: {reconcile:.2f} s, {reconcile / rest:.1%} on top of the rest of "
            f"the run ({rest:.2f} s), with {results.get('backfill_days', 0)} day(s) of history "
            "before the measured date (it reads the date, the day before and the date "
            "BILLING_RECONCILE_DAYS before, when delivered)"
        )
    lines += _history_lines(results)
    cpu = results["per_million_records"]
    lines.append(
        "CPU s per million records: "
        + ", ".join(f"{name.replace('_', ' ')} {seconds:.2f}" for name, seconds in cpu.items())
    )
    cold = results["cold_start"]
    lines += [
        f"DuckDB floor     {results['duckdb_floor_seconds']:8.3f} s",
        f"cold start       {cold['cli_help_seconds']:8.2f} s (--help), "
        f"{cold['import_flow_seconds']:.2f} s (import the flow)",
    ]
    part = results.get("dlt")
    if part and part["dlt"]:
        dlt_run, flow_run = part["dlt"], part["flow"]
        lines.append(
            f"dlt at {part['scale']['targets']} targets: {dlt_run['wall_seconds']:.2f} s, "
            f"peak RSS {dlt_run['peak_rss_mb']:.0f} MB; the flow at that scale: "
            f"{flow_run['wall_seconds']:.2f} s, peak RSS {flow_run['peak_rss_mb']:.0f} MB"
        )
    elif part:
        lines.append("dlt: not installed (pip install -e '.[bench]')")
    lines.append("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in results["ratios"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="S")
    parser.add_argument(
        "--dlt-scale",
        choices=[*sorted(SCALES), "none"],
        default="dlt",
        help="scale at which dlt is compared with the flow (default 100,000 "
        "targets); 'none' skips it",
    )
    parser.add_argument(
        "--backfill-days",
        type=int,
        default=30,
        help="backfill this many days before the measured date first (measured against one "
        "day), into the warehouse the measured run then bills: its figures are those of a "
        "warehouse with that much history, compared with the same date on an empty one; "
        "0 skips the backfill (default 30)",
    )
    parser.add_argument(
        "--out", type=Path, help="JSON file (default bench/results/<scale>-<time>.json)"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (warehouses, analysts' files, logs) to look into after",
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bpb-bench-"))
    started = time.monotonic()
    try:
        if args.backfill_days < 0:
            parser.error("--backfill-days must be 0 or more")
        results = benchmark(
            SCALES[args.scale],
            None if args.dlt_scale == "none" else SCALES[args.dlt_scale],
            work,
            args.backfill_days,
        )
    finally:
        if args.keep:
            print(f"work directory kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = args.out or Path("bench/results") / (
        f"{args.scale}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    )
    results["bench_seconds"] = time.monotonic() - started  # the whole benchmark, every part
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(report(results))
    print(f"the benchmark took {results['bench_seconds'] / 60:.1f} min")
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
