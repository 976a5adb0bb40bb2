"""Run the backfill flow once, in this (child) process, and write what it cost as JSON.

Usage: python -m bench.backfill_child START END OUT.json  (configuration from the environment)
"""

from __future__ import annotations

import datetime as dt
import json
import resource
import sys
import time

from bench.cpu import own_cpu_seconds


def main() -> None:
    start_day, end_day, out = sys.argv[1], sys.argv[2], sys.argv[3]
    from flows.backfill import backfill

    cpu_before = own_cpu_seconds()
    start = time.perf_counter()
    state = backfill(
        start=dt.date.fromisoformat(start_day),
        end=dt.date.fromisoformat(end_day),
        return_state=True,
    )
    summary = state.result(raise_on_failure=False)  # Failed too when a date had problems
    seconds = time.perf_counter() - start
    with open(out, "w") as handle:
        json.dump(
            {
                "flow_run_id": str(state.state_details.flow_run_id),
                "exit_code": summary.exit_code,
                "dates": len(summary.results),
                "seconds": seconds,
                "cpu_seconds": own_cpu_seconds() - cpu_before,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            },
            handle,
        )


if __name__ == "__main__":
    main()
