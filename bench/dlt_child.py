"""What a data engineer would otherwise pick: dlt's `rest_api` source loading the same three
endpoints into DuckDB, with dlt's defaults. Run in a child process; writes its cost as JSON.

Usage: python -m bench.dlt_child BASE_URL TOKEN DATE DUCKDB_PATH OUT.json
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main() -> None:
    base_url, token, day, path, out = sys.argv[1:6]
    start = time.perf_counter()
    import dlt
    from dlt.sources.rest_api import rest_api_source

    partner = {"type": "resolve", "resource": "partners", "field": "id"}
    source = rest_api_source(
        {
            "client": {
                "base_url": base_url,
                "auth": {"type": "bearer", "token": token},
                "paginator": {
                    "type": "cursor",
                    "cursor_path": "next_cursor",
                    "cursor_param": "cursor",
                },
            },
            "resource_defaults": {
                "endpoint": {"params": {"as_of": day, "limit": 1000}, "data_selector": "data"},
            },
            "resources": [
                {"name": "partners", "endpoint": {"path": "v1/partners"}},
                {
                    "name": "organizations",
                    "endpoint": {
                        "path": "v1/partners/{partner_id}/organizations",
                        "params": {"partner_id": partner},
                    },
                },
                {
                    "name": "targets",
                    "endpoint": {
                        "path": "v1/partners/{partner_id}/targets",
                        "params": {"partner_id": partner},
                    },
                },
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench_dlt",
        destination=dlt.destinations.duckdb(path),
        dataset_name="raw",
        pipelines_dir=path + ".pipelines",
    )
    info = pipeline.run(source)
    end = time.perf_counter()
    rows = pipeline.last_trace.last_normalize_info.row_counts if pipeline.last_trace else {}
    with open(out, "w") as handle:
        json.dump(
            {
                "seconds": end - start,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rows": {k: v for k, v in rows.items() if not k.startswith("_dlt")},
                "loads": len(info.loads_ids),
            },
            handle,
        )


if __name__ == "__main__":
    main()
