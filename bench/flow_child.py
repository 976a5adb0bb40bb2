"""Run the daily flow once, in this (child) process, and write what it cost as JSON.

Usage: python -m bench.flow_child DATE OUT.json  (configuration from the environment)
"""

from __future__ import annotations

import json
import resource
import sys
import time

from bench.cpu import own_cpu_seconds
from bench.threads import ThreadCpu


def main() -> None:
    day, out = sys.argv[1], sys.argv[2]
    start = time.perf_counter()
    import datetime as dt

    from flows.daily_billing import daily_billing

    imported = time.perf_counter()
    cpu_before = own_cpu_seconds()
    threads = ThreadCpu()
    state = daily_billing(usage_date=dt.date.fromisoformat(day), return_state=True)
    threads.stop()
    summary = state.result(raise_on_failure=False)  # Failed too when it had problems
    end = time.perf_counter()
    cpu = own_cpu_seconds() - cpu_before
    with open(out, "w") as handle:
        json.dump(
            {
                "flow_run_id": summary.run_id,
                "exit_code": summary.exit_code,
                "import_seconds": imported - start,
                "flow_seconds": end - imported,
                "cpu_seconds": cpu,
                "cpu_by_thread": threads.by_group(),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "metrics": sum(o.metrics_computed for o in summary.outcomes),
                "records": sum(o.records_received for o in summary.outcomes),
            },
            handle,
        )


if __name__ == "__main__":
    main()
