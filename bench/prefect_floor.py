"""The Prefect floor: what the daily flow's Prefect bookkeeping costs with no work in it.

`shape(api_url, flow_run_id)` reads, from the Prefect API, the task runs and artifacts one
measured run of the daily flow created; `python -m bench.prefect_floor SHAPE.json OUT.json`
then replays that shape in a child process against the same server: a flow with the same task
runner, the same task runs (the stages one after another, the per-partner ones mapped side by
side as the flow maps them) and the same artifacts (same keys, same content), and no work in
between. Its wall time is the part of the flow's end-to-end time that belongs to Prefect on
this machine (flow-run start and end, task-run and artifact API calls), whatever the flow does.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx

from bench.cpu import own_cpu_seconds

MAPPED = "report-"  # the per-partner tasks the flow maps side by side
MAX_WORKERS = 8  # the daily flow's ThreadPoolTaskRunner


def shape(api_url: str, flow_run_id: str) -> dict:
    """The task runs and artifacts of a flow run, in the order they started."""

    def filtered(path: str, key: str) -> list[dict]:
        rows, offset = [], 0
        while True:
            response = httpx.post(
                f"{api_url}/{path}/filter",
                json={key: {"id": {"any_": [flow_run_id]}}, "limit": 200, "offset": offset},
                timeout=30,
            )
            response.raise_for_status()
            page = response.json()
            rows += page
            if len(page) < 200:
                return rows
            offset += 200

    runs = sorted(filtered("task_runs", "flow_runs"), key=lambda r: r["start_time"] or "")
    artifacts = filtered("artifacts", "flow_runs")

    def made_by(task_run_id: str | None) -> list[dict]:
        return [
            {k: a[k] for k in ("type", "key", "description", "data")}
            for a in artifacts
            if a.get("task_run_id") == task_run_id
        ]

    return {
        "tasks": [
            {
                "name": r["name"],
                "mapped": r["name"].startswith(MAPPED),
                "artifacts": made_by(r["id"]),
            }
            for r in runs
        ],
        "flow_artifacts": made_by(None),
    }


def replay(spec: dict) -> dict:
    """Run a flow of the given shape and no work; its wall time and this process's CPU."""
    from prefect import flow, task
    from prefect.artifacts import Artifact
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    def create(artifacts: list[dict]) -> None:
        for a in artifacts:
            data = a["data"] if isinstance(a["data"], str) else json.dumps(a["data"])
            Artifact(type=a["type"], key=a["key"], description=a["description"], data=data).create()

    @task(name="stage", task_run_name="{name}", cache_policy=NO_CACHE)
    def stage(name: str, artifacts: list[dict]) -> None:
        create(artifacts)

    @flow(name="prefect-floor", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS))
    def bookkeeping() -> None:
        for t in spec["tasks"]:
            if not t["mapped"]:
                stage(t["name"], t["artifacts"])
        create(spec["flow_artifacts"])
        mapped = [t for t in spec["tasks"] if t["mapped"]]
        if mapped:
            stage.map([t["name"] for t in mapped], [t["artifacts"] for t in mapped]).wait()

    cpu_before, start = own_cpu_seconds(), time.perf_counter()
    bookkeeping()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "cpu_seconds": own_cpu_seconds() - cpu_before,
        "task_runs": len(spec["tasks"]),
        "artifacts": len(spec["flow_artifacts"]) + sum(len(t["artifacts"]) for t in spec["tasks"]),
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(replay(spec)))


if __name__ == "__main__":
    main()
