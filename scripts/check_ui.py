"""Check that a run shows in the Prefect UI: `make check-ui`.

1. installs Debian's `chromium` (apt-get) if it is missing: the only step that needs the
   network, once;
2. starts `prefect server start` on a free port with a temporary PREFECT_HOME;
3. runs the daily flow against the sandbox with PREFECT_API_URL pointing at that server (the
   demo's set-up: `bullphish-billing run` in a child process);
4. loads the flow-run page, its Details, Task Runs and Artifacts tabs, the failed partner's
   task-run page and the Artifacts page in headless Chromium (`--dump-dom` after the page's
   scripts ran), and checks that they render the run: the sandbox's run has problems (a held
   partner, a partner KaseyaOne answers 422, metrics rejected), so it is red (`Failed`) with
   its one-line summary as the state message; task runs carry partner and date in their names
   and the partners' outcomes (`Not Delivered`, `Held`) as their state names; the artifacts
   (the per-partner keys `billing-p-0008`, ..., written only for a partner with something to
   look at: none for a skipped partner) render, and the Artifacts page shows a partner's history;
   saves screenshots of the pages (the Task Runs tab tall enough to show every partner);
5. prints a verdict and the screenshots' paths, stops everything it started and deletes its
   temporary files (the screenshots stay, under data/ui-check/ unless --out says otherwise).

Exit code 0 when every check passed, 1 otherwise. Offline once chromium is installed: the UI is
served by the local Prefect server, Chromium's background networking is off.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bullphish_billing import partner_artifacts  # noqa: E402
from bullphish_billing.dates import yesterday_utc  # noqa: E402
from bullphish_billing.demo import free_port, start_prefect_server, stop, wait_healthy  # noqa: E402
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig  # noqa: E402

FAILED_PARTNER = "p_0007"  # the sandbox's partner KaseyaOne answers 422 (not linked)
PARTIAL_PARTNER = "p_0008"  # KaseyaOne rejects its o_0008o0002 metrics: partial every day
SKIPPED_PARTNER = "p_0003"  # KaseyaOne integration not activated: skipped every day
SERVER_TIMEOUT_S = 150
RUN_TIMEOUT_S = 300
PAGE_BUDGET_MS = 15000  # virtual time Chromium gives the page's scripts before dumping
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
WINDOW = "1400,1000"
TALL_WINDOW = "1400,2600"  # the Task Runs tab with every partner's task run


def say(text: str) -> None:
    print(f"check-ui: {text}", flush=True)


def ensure_chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    say("installing Debian's chromium (apt-get) ...")
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*apt, "update", "-qq"], check=True, env=env)
    subprocess.run([*apt, "install", "-y", "-qq", "chromium"], check=True, env=env)
    found = shutil.which("chromium")
    if not found:
        raise RuntimeError("chromium is still not on PATH after apt-get install")
    return found


def api(url: str, path: str, body: dict) -> list | dict:
    request = urllib.request.Request(
        f"{url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


class Browser:
    def __init__(self, chromium: str, profile: Path) -> None:
        self.chromium = chromium
        self.profile = profile

    def _run(self, url: str, *extra: str, window: str = WINDOW) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                self.chromium,
                *CHROMIUM_FLAGS,
                f"--window-size={window}",
                f"--user-data-dir={self.profile}",
                f"--virtual-time-budget={PAGE_BUDGET_MS}",
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )

    def dom(self, url: str) -> str:
        return self._run(url, "--dump-dom").stdout

    def screenshot(self, url: str, path: Path, window: str = WINDOW) -> bool:
        path.unlink(missing_ok=True)
        self._run(url, f"--screenshot={path}", window=window)
        return path.exists() and path.stat().st_size > 10_000


class Checks:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> None:
        say(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failures.append(what)


SANDBOX = SandboxConfig(short_pages=True)


def run_flow(box: RunningSandbox, api_url: str, home: Path, work: Path, day: dt.date) -> int:
    """The demo's run: the sandbox in this process (one for every run: KaseyaOne keeps what it
    stored, so the runs' reconciliations find it), `bullphish-billing run` as a child."""
    config = SANDBOX
    env = os.environ | {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "BULLPHISH_API_URL": box.bullphish_url,
        "BULLPHISH_API_TOKEN": config.bullphish_token,
        "KASEYAONE_API_URL": box.kaseyaone_url,
        "KASEYAONE_CLIENT_ID": config.kaseyaone_client_id,
        "KASEYAONE_CLIENT_SECRET": config.kaseyaone_client_secret,
        "BILLING_WAREHOUSE": str(work / "warehouse.duckdb"),
    }
    return subprocess.call(
        [sys.executable, "-m", "bullphish_billing", "run", "--date", day.isoformat()],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        timeout=RUN_TIMEOUT_S,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "ui-check")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    checks = Checks()
    chromium = ensure_chromium()
    say(f"using {chromium}")
    work = Path(tempfile.mkdtemp(prefix="bpb-check-ui-"))
    home = work / "prefect-home"
    port = free_port(0)
    url = f"http://127.0.0.1:{port}"
    api_url = f"{url}/api"
    server = start_prefect_server(home, port, work / "prefect-server.log")
    day = yesterday_utc()
    try:
        say(f"starting the Prefect server on {url} ...")
        wait_healthy(api_url, server, SERVER_TIMEOUT_S)
        with RunningSandbox(
            SANDBOX, bullphish_port=free_port(0), kaseyaone_port=free_port(0)
        ) as box:
            for each in (day - dt.timedelta(days=1), day):  # two runs: history per partner
                say(f"running the daily flow for {each} against the sandbox ...")
                code = run_flow(box, api_url, home, work, each)
                checks.check(code in (0, 1), f"the run finished (exit {code}; the sandbox => 1)")

        runs = api(api_url, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 1})
        checks.check(bool(runs), "the server holds the flow run")
        if not runs:
            return 1
        run = runs[0]
        name = run["name"]
        wanted = "COMPLETED" if code == 0 else "FAILED"  # red exactly when the exit is not 0
        checks.check(
            run["state_type"] == wanted and str(day) in (run["state"]["message"] or str(day)),
            f"flow run {name} (exit {code}) is {wanted}, its summary the state's message",
        )
        checks.check(
            "reconciliation difference" not in (run["state"]["message"] or ""),
            "KaseyaOne holds what it acknowledged: the run's reconciliation found no difference",
        )
        task_runs = api(api_url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
        partner_tasks = sorted(t["name"] for t in task_runs if t["name"].startswith("report-p_"))
        checks.check(
            bool(partner_tasks) and all(t.endswith(f"-{day}") for t in partner_tasks),
            f"per-partner task runs are named with partner and date ({partner_tasks[:2]} ...)",
        )
        failed_task = next(
            (t for t in task_runs if t["name"] == f"report-{FAILED_PARTNER}-{day}"), {}
        )
        checks.check(
            failed_task.get("state_name") == "Not delivered",
            f"report-{FAILED_PARTNER}-{day}'s state names its outcome "
            f"({failed_task.get('state_name')!r})",
        )
        artifacts = api(
            api_url, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
        )
        ids = {a["key"]: a["id"] for a in artifacts}
        partial_key = partner_artifacts.key(PARTIAL_PARTNER)
        skipped_key = partner_artifacts.key(SKIPPED_PARTNER)
        want = {f"billing-{day}", f"notable-changes-{day}", partial_key}
        checks.check(want <= set(ids), f"artifacts {sorted(want)} were created")
        checks.check(
            skipped_key not in ids,
            f"no {skipped_key}: a skipped partner has nothing to look at (it stays in the "
            f"run's table billing-{day})",
        )

        # Prefect 3.9 serves two UIs; V2 (under /v2) is the default one
        browser = Browser(chromium, work / "chromium-profile")
        page = f"{url}/v2/runs/flow-run/{run['id']}"
        artifact = f"{url}/v2/artifacts/artifact"
        pages = {
            "flow-run.png": page,
            "flow-run-details.png": f"{page}?tab=Details",
            "flow-run-task-runs.png": f"{page}?tab=TaskRuns",
            "task-run-failed-partner.png": f"{url}/v2/runs/task-run/{failed_task.get('id')}",
            "flow-run-artifacts.png": f"{page}?tab=Artifacts",
            f"artifact-history-{partial_key}.png": f"{url}/v2/artifacts/key/{partial_key}",
            f"artifact-{partial_key}.png": f"{artifact}/{ids.get(partial_key)}",
            "artifact-notable-changes.png": f"{artifact}/{ids.get(f'notable-changes-{day}')}",
        }
        dom = {file: browser.dom(address) for file, address in pages.items()}
        badge = "Completed" if code == 0 else "Failed"
        checks.check(
            name in dom["flow-run.png"] and f">{badge}<" in dom["flow-run.png"],
            f"the flow-run page renders the run ({name}) with a {badge} badge",
        )
        message = run["state"]["message"] or ""
        checks.check(
            "State Message" in dom["flow-run-details.png"]
            and html.escape(message, quote=False) in dom["flow-run-details.png"],
            f"the Details tab shows the state message ({message!r})",
        )
        tasks_dom = dom["flow-run-task-runs.png"]
        checks.check(
            f"publish-{day}" in tasks_dom
            and f"report-p_0002-{day}" in tasks_dom
            and f"report-{FAILED_PARTNER}-{day}" in tasks_dom
            and "not delivered" in tasks_dom.lower()
            and ">held<" in tasks_dom.lower(),
            "the Task Runs tab lists them, named with partner and date, the failed partner "
            "'Not Delivered' and the held one 'Held'",
        )
        failed_dom = dom["task-run-failed-partner.png"]
        checks.check(
            f"report-{FAILED_PARTNER}-{day}" in failed_dom and "partner_not_linked" in failed_dom,
            "the failed partner's task-run page names it and KaseyaOne's reason",
        )
        checks.check(
            partial_key in dom["flow-run-artifacts.png"]
            and f"notable-changes-{day}" in dom["flow-run-artifacts.png"],
            "the flow-run page's Artifacts tab lists the per-partner and notable-changes artifacts",
        )
        history = dom[f"artifact-history-{partial_key}.png"]
        checks.check(
            f"{PARTIAL_PARTNER} on {day}" in history and history.count("daily-billing-") >= 2,
            f"the Artifacts page shows {partial_key}'s history (both runs)",
        )
        checks.check(
            "metrics rejected" in dom[f"artifact-{partial_key}.png"]
            and "partial" in dom[f"artifact-{partial_key}.png"],
            f"{partial_key} renders as markdown (its outcome table)",
        )
        checks.check(
            "Notable changes on" in dom["artifact-notable-changes.png"],
            "the notable-changes artifact renders",
        )
        for file, address in pages.items():
            window = TALL_WINDOW if file == "flow-run-task-runs.png" else WINDOW
            ok = browser.screenshot(address, out / file, window)
            checks.check(ok, f"screenshot {out / file}")
    except Exception as exc:  # noqa: BLE001 - a verdict, not a traceback
        checks.check(False, f"{type(exc).__name__}: {exc}")
    finally:
        stop(server)
        log = work / "prefect-server.log"
        if checks.failures and log.exists():
            say("the Prefect server's log ends with:")
            print(log.read_text(errors="replace")[-2000:], file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    if checks.failures:
        say(f"FAILED: {len(checks.failures)} check(s)")
        return 1
    say(f"passed; screenshots in {out}")
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    say(f"took {time.monotonic() - started:.0f} s")
    sys.exit(code)
