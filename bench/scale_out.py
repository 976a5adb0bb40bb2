"""Extract shards measured (README "Scaling out"): the daily run at a scale with BILLING_SHARDS=1
(in-process) and with K shards run by K local process workers of the bullphish-shards pool, on
this host (scale up before out), against one sandbox and one Prefect server.

Usage: python -m bench.scale_out [--scale S] [--shards 2] [--out FILE.json]

For each run: wall time, the extract stage, peak RSS and CPU of the flow's process; for the
sharded run also each shard's own seconds and peak RSS (from its manifest), the staged Parquet
(bytes per million targets), and the time DuckDB takes to check and load it into an empty
warehouse (per million rows), measured again on its own after the run. The shard workers are
started before the runs (a worker host's standing cost); each shard run still pays its own
process start, which the flow's wall time includes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.fetch_floor import fetch_floor
from bench.run import TOKEN, Sandbox, _env, run_flow
from bench.scales import SCALES, Scale
from bullphish_billing import staging
from bullphish_billing.demo import free_port, start_prefect_server, stop, wait_healthy
from bullphish_billing.warehouse.db import open_warehouse

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _prefect(args: list[str], env: dict[str, str]) -> None:
    subprocess.run(
        [str(BIN / "prefect"), *args], env=env, cwd=ROOT, check=True, capture_output=True
    )


def _staged(root: Path) -> list[tuple[staging.ShardLocation, staging.Manifest]]:
    """Every shard the run staged (kept by BILLING_STAGING_KEEP_DAYS), checked."""
    fs, _ = staging.staging_root(str(root))
    shards = []
    for manifest in sorted(root.glob("*/*/shard-*/manifest.json")):
        location = staging.ShardLocation(fs, str(manifest.parent))
        shards.append((location, staging.read_manifest(location)))
    return shards


def _load_alone(shards, day: dt.date, work: Path) -> dict[str, float]:
    """Check the staged files again and load them into an empty warehouse, timed."""
    warehouse = work / "load-alone.duckdb"
    started = time.perf_counter()
    checked = [(loc, staging.read_manifest(loc)) for loc, _ in shards]
    check_s = time.perf_counter() - started
    with open_warehouse(warehouse) as con:
        started = time.perf_counter()
        staging.load(con, day, checked, "bench-load")
        load_s = time.perf_counter() - started
    rows = sum(f.rows for _, m in shards for f in m.files)
    return {"check_seconds": check_s, "load_seconds": load_s, "rows": rows}


def measure(scale: Scale, shards: int, work: Path) -> dict:
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    home = work / "prefect-home"
    port = free_port(0)
    api_url = f"http://127.0.0.1:{port}/api"
    server = start_prefect_server(home, port, work / "prefect-server.log")
    workers: list[subprocess.Popen] = []
    results: dict = {"scale": scale.__dict__ | {"targets": scale.targets}, "shards": shards}
    try:
        wait_healthy(api_url, server, 120)
        sandbox = Sandbox(scale)
        try:
            fetch_floor(sandbox.bullphish_url, TOKEN, day)  # fills the sandbox's cache
            results["fetch_floor_seconds"] = fetch_floor(sandbox.bullphish_url, TOKEN, day)[
                "seconds"
            ]
            staging_root = work / "staging"
            extra = {
                "BILLING_STAGING_URL": str(staging_root),
                "BILLING_STAGING_KEEP_DAYS": "2",
                "BULLPHISH_BILLING_HOME": str(ROOT),
                "PREFECT_WORKER_QUERY_SECONDS": "1",
            }
            env = _env(sandbox, api_url, home, work / "unused.duckdb", extra)
            for pool in ("bullphish-billing", "bullphish-shards"):
                _prefect(["work-pool", "create", pool, "--type", "process"], env)
            _prefect(["--no-prompt", "deploy", "--all"], env)
            for n in range(shards):
                log = (work / f"shard-worker-{n}.log").open("wb")
                workers.append(
                    subprocess.Popen(
                        [str(BIN / "prefect"), "worker", "start", "--pool", "bullphish-shards"]
                        + ["--type", "process", "--limit", "1", "--name", f"shard-worker-{n}"],
                        env=env,
                        cwd=ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            time.sleep(3)  # the workers' first poll
            for k in (1, shards):
                run_dir = work / f"k{k}"
                run_dir.mkdir()
                print(f"bench.scale_out: {scale.name}, BILLING_SHARDS={k}", flush=True)
                run = run_flow(
                    sandbox,
                    api_url,
                    home,
                    run_dir,
                    day,
                    server.pid,
                    extra_env=extra | {"BILLING_SHARDS": str(k)},
                )
                results[f"k{k}"] = run
                if k > 1:
                    staged = _staged(staging_root)
                    run["staged_bytes"] = sum(f.bytes for _, m in staged for f in m.files)
                    run["staged_rows"] = {
                        part: sum(f.rows for _, m in staged for f in m.files if f.part == part)
                        for part in ("organizations", "targets", "quarantine", "extractions")
                    }
                    run["shards"] = [m.stats for _, m in staged]
                    run["load_alone"] = _load_alone(staged, day, run_dir)
        finally:
            sandbox.close()
    finally:
        for worker in workers:
            stop(worker)
        stop(server)
    return results


def report(results: dict) -> str:
    scale = results["scale"]
    k = results["shards"]
    one, many = results["k1"], results[f"k{k}"]
    targets_m = scale["targets"] / 1e6
    lines = [
        f"scale {scale['name']}: {scale['targets']:,} targets; BILLING_SHARDS=1 against {k}; "
        f"fetch floor {results.get('fetch_floor_seconds', 0):.2f} s",
        f"  wall time:        {one['wall_seconds']:.2f} s  against {many['wall_seconds']:.2f} s "
        f"({many['wall_seconds'] / one['wall_seconds']:.2f}x)",
        f"  extract stage:    {one['stages'].get('extract', 0):.2f} s  against "
        f"{many['stages'].get('extract', 0):.2f} s",
        f"  flow process:     peak RSS {one['peak_rss_mb']:.0f} MB, CPU {one['cpu_seconds']:.1f} s"
        f"  against peak RSS {many['peak_rss_mb']:.0f} MB, CPU {many['cpu_seconds']:.1f} s",
    ]
    for n, stats in enumerate(many.get("shards", [])):
        lines.append(
            f"  shard {n}:          {stats.get('seconds', 0):.2f} s extracting, peak RSS "
            f"{stats.get('peak_rss_mb', 0):.0f} MB, CPU {stats.get('cpu_seconds', 0):.1f} s "
            "(its process's, imports included)"
        )
    if "staged_bytes" in many:
        alone = many["load_alone"]
        rows_m = alone["rows"] / 1e6
        lines += [
            f"  staged Parquet:   {many['staged_bytes'] / 1e6:.1f} MB "
            f"({many['staged_bytes'] / 1e6 / targets_m:.1f} MB per million targets), "
            f"{alone['rows']:,} rows",
            f"  check + load:     {alone['check_seconds']:.2f} s + {alone['load_seconds']:.2f} s "
            f"({(alone['check_seconds'] + alone['load_seconds']) / rows_m:.2f} s per million "
            "rows)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_out", description=__doc__)
    parser.add_argument("--scale", choices=sorted(SCALES), default="S")
    parser.add_argument("--shards", type=int, default=2, help="K of the sharded run")
    parser.add_argument("--out", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bpb-bench-scale-out-") as tmp:
        results = measure(SCALES[args.scale], args.shards, Path(tmp))
    print(report(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
