"""An analyst with the published file open, as a separate process (like the DuckDB CLI).

    python tests/analyst.py PATH once    print the state an analyst opening the file now sees
    python tests/analyst.py PATH held    one read-only connection for the process's whole life
    python tests/analyst.py PATH fresh   a new read-only connection for every look

`held` and `fresh` print {"ready": true}, then look every 50 ms until stdin closes, then look
once more; each look is one JSON line: {"state": [...]} or {"error": "..."}.

A separate process, because within one process DuckDB hands a new connection to a path that
is still open the database already open: not what an analyst in another process sees.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import duckdb

STATE = """
    SELECT (SELECT count(*) FROM run_history),
           (SELECT count(*) FROM ops.runs WHERE finished_at IS NOT NULL),
           (SELECT count(*) FROM billing_metrics),
           (SELECT coalesce(sum(units), 0) FROM billing_metrics),
           (SELECT count(*) FROM billing_changes),
           (SELECT count(*) FROM invoice_preview),
           (SELECT count(*) FROM unmapped_organizations),
           (SELECT count(*) FROM ops.organization_mappings)
"""


def look(con: duckdb.DuckDBPyConnection) -> dict:
    try:
        return {"state": [int(v) for v in con.execute(STATE).fetchall()[0]]}
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return {"error": f"{type(exc).__name__}: {exc}"}


def look_fresh(path: str) -> dict:
    try:
        with duckdb.connect(path, read_only=True) as con:
            return look(con)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(path: str, mode: str) -> None:
    if mode == "once":
        print(json.dumps(look_fresh(path)["state"]))
        return
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    held = duckdb.connect(path, read_only=True) if mode == "held" else None
    print(json.dumps({"ready": True}), flush=True)
    while True:
        last = stop.is_set()
        print(json.dumps(look(held) if held is not None else look_fresh(path)), flush=True)
        if last:
            break
        time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
