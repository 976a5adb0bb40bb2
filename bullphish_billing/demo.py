"""`bullphish-billing demo`: the whole feed against the sandbox, with nothing configured.

Starts the sandbox APIs (in this process) and a local Prefect server (a child process, so the
run shows in its UI), runs `bullphish-billing run` against them as a child process with the
sandbox's settings, prints where to look, and stops what it started. Everything it writes
stays under `data/demo/`.

Both children run in sessions of their own, so a signal to the demo's process group reaches
the demo alone: SIGINT or SIGTERM is passed on to the run once (which stops as
`bullphish-billing run` does, stopping.py), the demo stops its Prefect server and exits with
the run's exit code (130, 143).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bullphish_billing import stopping
from bullphish_billing.dates import yesterday_utc
from bullphish_billing.prefect_server import server_command

DEMO_DIR = Path("data/demo")
PREFECT_STARTUP_S = 90.0


def free_port(preferred: int) -> int:
    """`preferred` if nothing listens there, else any free port on 127.0.0.1."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


def start_prefect_server(home: Path, port: int, log_path: Path) -> subprocess.Popen:
    env = os.environ | {
        "PREFECT_HOME": str(home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # the UI asks the API at PREFECT_UI_API_URL, which `--port` does not change
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        # and the links of its notifications (`ui_url`) need its UI's address
        "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
    }
    env.pop("PREFECT_API_URL", None)
    log = log_path.open("wb")
    return subprocess.Popen(
        server_command(port),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stopping.check()
        if process.poll() is not None:
            raise RuntimeError("the Prefect server exited during start-up")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        stopping.sleep(0.5)
    raise RuntimeError(f"the Prefect server did not answer within {timeout_s:.0f} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_child(args: list[str], env: dict[str, str]) -> int:
    """`args` in a session of its own; a SIGINT or SIGTERM to this process is passed on to it
    once, and its exit code returned when it ends."""
    child = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, start_new_session=True)

    def forward(signum: int, frame: object) -> None:
        if stopping.request_stop(signum) and child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_demo(usage_date: dt.date | None = None) -> int:
    from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

    def stop_now(signum: int, frame: object) -> None:
        stopping.request_stop(signum)  # the start-up waits see it (Stopped)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop_now)

    day = usage_date or yesterday_utc()
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    warehouse = DEMO_DIR / "warehouse.duckdb"
    analytics = DEMO_DIR / "analytics.duckdb"
    for stale in (warehouse, warehouse.with_suffix(".duckdb.wal")):
        stale.unlink(missing_ok=True)  # the sandbox's KaseyaOne starts empty: so does this
    prefect_home = DEMO_DIR / "prefect"
    prefect_port = free_port(4200)
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    config = SandboxConfig(short_pages=True, rate_429=0.02, rate_5xx=0.02)

    print(f"demo: starting the Prefect server on http://127.0.0.1:{prefect_port} ...", flush=True)
    server = start_prefect_server(prefect_home, prefect_port, DEMO_DIR / "prefect-server.log")
    try:
        with RunningSandbox(
            config, bullphish_port=free_port(8701), kaseyaone_port=free_port(8702)
        ) as sandbox:
            print(
                f"demo: sandbox APIs: BullPhish ID {sandbox.bullphish_url}, "
                f"KaseyaOne {sandbox.kaseyaone_url}",
                flush=True,
            )
            wait_healthy(api_url, server, PREFECT_STARTUP_S)
            env = os.environ | {
                "PREFECT_API_URL": api_url,
                "PREFECT_HOME": str(prefect_home.resolve()),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "BULLPHISH_API_URL": sandbox.bullphish_url,
                "BULLPHISH_API_TOKEN": config.bullphish_token,
                "KASEYAONE_API_URL": sandbox.kaseyaone_url,
                "KASEYAONE_CLIENT_ID": config.kaseyaone_client_id,
                "KASEYAONE_CLIENT_SECRET": config.kaseyaone_client_secret,
                "BILLING_WAREHOUSE": str(warehouse),
                "BILLING_ANALYTICS_FILE": str(analytics),
            }
            print(f"demo: running the daily flow for {day} ...", flush=True)
            stopping.check()
            code = run_child(
                [sys.executable, "-m", "bullphish_billing", "run", "--date", day.isoformat()],
                env,
            )
            stored = len(sandbox.kaseyaone.stored())
    finally:
        stop(server)
    if stopping.stopping():
        signum = stopping.stop_signal() or 0
        name = stopping.signal_name(signum)
        print(f"demo: stopped by {name} (the run's exit code: {code})", file=sys.stderr)
        return 128 + signum
    if code not in (0, 1):
        print(f"demo: the run failed (exit {code})", file=sys.stderr)
        return code
    print(
        f"""
demo: done. KaseyaOne's sandbox now holds {stored} metrics for the sandbox's partners.
The sandbox's data includes, on purpose, partners that are not eligible (skipped), a partner
held for review, quarantined records and metrics KaseyaOne rejects; the run's exit code
({code}) says so: 1 means something was held, rejected or failed.

Look at the run:
  Prefect UI:  PREFECT_HOME={prefect_home} .venv/bin/prefect server start --port {prefect_port}
               then open http://127.0.0.1:{prefect_port}/runs (flow 'daily-billing',
               its task runs and its artifacts)
  Analysts:    {analytics}, the warehouse as of the last run, replaced after
               each run; open it read-only, at any time (no run waits for it):
               .venv/bin/python -c "import duckdb; duckdb.connect('{analytics}',
               read_only=True).sql('FROM invoice_preview LIMIT 10').show()"
               or the DuckDB CLI (2.0 or newer): duckdb -readonly {analytics}
               views: billing_changes, invoice_preview, unmapped_organizations, run_history,
               metric_explanations, reconciliation_open, stale_active_targets
               tables: billing_metrics, ops.partner_runs, ops.quarantine, ops.outbox,
               ops.reconciliation
               (the pipeline's own warehouse is {warehouse})"""
    )
    explain_one(warehouse, day)
    return 0


def explain_one(warehouse: Path, day: dt.date) -> None:
    """End with `bullphish-billing explain` of one per-user metric: the one counting the most
    targets (a few lines; nothing printed if there is none)."""
    from bullphish_billing import explain
    from bullphish_billing.errors import BillingError
    from bullphish_billing.warehouse.db import fetch_all, open_read_only

    try:
        with open_read_only(warehouse) as con:
            rows = fetch_all(
                con,
                "SELECT partner_id, organization_id, billing_type FROM main.metric_explanations "
                "WHERE usage_date = ? AND counted AND kind = 'active' "
                "ORDER BY records DESC, partner_id, organization_id, billing_type LIMIT 1",
                [day],
            )
            if not rows:
                return
            partner, organization, billing_type = rows[0]
            doc = explain.explain(con, explain.Query(day, partner, organization, billing_type))
    except BillingError:
        return
    print(
        f"\nWhy is a number what it is? bullphish-billing explain --date {day} "
        f"--partner {partner} --organization {organization} --billing-type {billing_type}"
        f" (with BILLING_WAREHOUSE={warehouse}):\n"
    )
    print(explain.render(doc))
