"""The benchmark at a tiny scale, so that it cannot rot (no figure is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_benchmark_runs_end_to_end_at_a_tiny_scale(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--scale",
            "tiny",
            "--dlt-scale",
            "none",
            "--backfill-days",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    assert figures["flow"]["exit_code"] in (0, 1)
    assert figures["flow"]["records"] == figures["fetch_floor"]["records"] > 0
    assert {"extract", "evaluate", "deliver"} <= set(figures["flow"]["stages"])
    assert set(figures["ratios"]) >= {
        "flow_vs_fetch_floor",
        "flow_vs_fetch_plus_prefect_floors",
        "aggregate_vs_duckdb_floor",
    }
    # the Prefect floor replays the run's own task runs and artifacts: one report task run per
    # partner, an artifact per partner with something to look at, and the run's own
    floor = figures["prefect_floor"]
    assert floor["task_runs"] > figures["scale"]["partners"]
    assert floor["artifacts"] >= 3
    assert figures["flow"]["prefect_server_cpu_seconds"] >= 0
    assert figures["backfill"]["dates"] == 1 and figures["flow_empty"]["exit_code"] in (0, 1)
    assert {"extract", "evaluate", "report"} <= set(figures["backfill"]["date_stages"])
    assert figures["backfill"]["stolen_cpu_seconds"] >= 0 and "hypervisor" in result.stdout
    assert figures["flow_empty_after_backfill"]["exit_code"] in (0, 1)
    assert "empty_warehouse_after_backfill_vs_before" in figures["ratios"]
    assert set(figures["ratios"]) >= {"backfill_vs_one_day", "after_history_vs_empty_warehouse"}
    assert set(figures["per_million_records"]) >= {"flow_process", "fetch_floor_client"}
    assert figures["bytes_per_day"]["warehouse"] > 0
    assert "ratios:" in result.stdout
