"""The whole alert path, with real parts: a `prefect server start` of this module's own (on a
free 127.0.0.1 port, with a temporary home; started as `make demo` starts one), the command
`bullphish-billing alerts install` in a child process, a webhook receiver of the test's own
on 127.0.0.1, and daily runs of the CLI against the sandbox, on that server.

- installed twice, there is one notification block and one of each automation, and the
  webhook URL (its path carries a fake secret token) is in no output, log or automation;
- with a window of 12 s and no daily-billing run completed, the proactive automation
  notifies;
- a clean run (exit 0) notifies nothing; a run with problems (a partner held, failed or
  partly delivered: exit 1), which ends Failed, notifies once, naming the run, its state
  message (the run's summary) and linking to it.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sandbox_env import child_env, output, run_cli, scrubbed_environ

from bullphish_billing.dates import yesterday_utc
from bullphish_billing.demo import free_port, start_prefect_server, stop, wait_healthy
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

TOKEN = "tok-alerts-VERYSECRET-9f3a"  # the secret part of the webhook URL
WINDOW_S = 12
FAILED_SUBJECT = "bullphish-billing: daily-billing-"
PROACTIVE_SUBJECT = "bullphish-billing: no daily-billing run completed in 12 seconds"
WAIT_S = 60


@dataclass
class Receiver:
    """A webhook of the test's own: every POST's path and JSON body, in arrival order."""

    url: str = ""
    posts: list[tuple[str, dict]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def texts(self, prefix: str = "") -> list[str]:
        with self.lock:
            found = [body.get("text", "") for _, body in self.posts]
        return [t for t in found if t.startswith(prefix)]

    def wait_for(self, prefix: str, timeout: float = WAIT_S) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := self.texts(prefix):
                return found
            time.sleep(0.25)
        return []


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    received = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with received.lock:
                received.posts.append((self.path, json.loads(body or b"{}")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    received.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T000/B000/{TOKEN}"
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Server:
    api: str
    log: Path


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("alerts-prefect")
    port = free_port(0)
    process = start_prefect_server(work / "home", port, work / "server.log")
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(api, process, 120)
        yield Server(api, work / "server.log")
    finally:
        stop(process)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    with RunningSandbox(SandboxConfig()) as running:
        yield running


def install(server: Server, receiver: Receiver, cwd: Path):
    env = scrubbed_environ() | {
        "PREFECT_API_URL": server.api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return run_cli(
        ["alerts", "install", "--webhook-url", receiver.url, "--window-seconds", str(WINDOW_S)],
        env,
        cwd,
    )


@pytest.fixture(scope="module")
def installed(prefect_server, receiver, tmp_path_factory):
    """`alerts install` run twice; both results."""
    cwd = tmp_path_factory.mktemp("alerts-install")
    return [install(prefect_server, receiver, cwd) for _ in range(2)]


def api(server: Server, path: str, body: dict | None = None) -> list[dict]:
    answer = httpx.post(f"{server.api}{path}", json=body or {}, timeout=10)
    answer.raise_for_status()
    return answer.json()


def test_installed_twice_there_is_one_block_and_one_of_each_automation_and_no_url_shown(
    installed, prefect_server
):
    for result in installed:
        assert result.returncode == 0, output(result)
        assert "Traceback" not in output(result)
    assert "created" in installed[0].stdout and "updated" in installed[1].stdout
    assert "warning" not in output(installed[0])  # the server runs what the alerts need
    blocks = api(
        prefect_server,
        "/block_documents/filter",
        {"block_types": {"slug": {"any_": ["custom-webhook"]}}},
    )
    assert [b["name"] for b in blocks] == ["bullphish-billing-alerts"]
    automations = api(prefect_server, "/automations/filter")
    assert sorted(a["name"] for a in automations) == [
        "bullphish-billing-no-completed-run",
        "bullphish-billing-run-failed",
    ]
    # the URL is only in the block's secrets: not in the output, the server's log, the
    # automations, or the block as the API shows it
    shown = [output(r) for r in installed]
    shown += [prefect_server.log.read_text(errors="replace"), json.dumps(automations)]
    shown += [json.dumps(blocks)]
    for text in shown:
        assert TOKEN not in text and "/hooks/T000" not in text


def test_no_completed_daily_run_within_the_window_notifies(installed, receiver):
    assert all(r.returncode == 0 for r in installed)
    found = receiver.wait_for(PROACTIVE_SUBJECT)
    assert found, f"no notification in {WAIT_S} s: {receiver.posts}"
    assert "No daily-billing flow run reached Completed in the last 12 seconds" in found[0]
    assert all(path == f"/hooks/T000/B000/{TOKEN}" for path, _ in receiver.posts)


def test_a_failed_run_notifies_once_naming_it_and_a_clean_run_not_at_all(
    installed, prefect_server, receiver, sandbox, tmp_path
):
    assert all(r.returncode == 0 for r in installed)
    clean_day = yesterday_utc() - dt.timedelta(days=1)
    failed_day = yesterday_utc()
    env = child_env(sandbox, tmp_path / "warehouse.duckdb", prefect_server.api)

    clean = run_cli(
        ["run", "--date", str(clean_day), "--partner", "p_0002", "--partner", "p_0009"],
        env,
        tmp_path,
    )
    assert clean.returncode == 0, output(clean)
    failed = run_cli(["run", "--date", str(failed_day)], env, tmp_path)  # every partner
    assert failed.returncode == 1, output(failed)  # problems: it finished, red

    runs = {
        r["name"]: r
        for r in api(
            prefect_server,
            "/flow_runs/filter",
            {
                "flow_runs": {
                    "name": {"any_": [f"daily-billing-{d}" for d in (clean_day, failed_day)]}
                }
            },
        )
    }
    assert runs[f"daily-billing-{clean_day}"]["state"]["type"] == "COMPLETED"
    failed_run = runs[f"daily-billing-{failed_day}"]
    assert failed_run["state"]["type"] == "FAILED"
    message = failed_run["state"]["message"]
    assert message.startswith(f"{failed_day}: ") and "metrics sent" in message, message

    found = receiver.wait_for(FAILED_SUBJECT)
    assert found, f"no notification in {WAIT_S} s: {receiver.posts}"
    time.sleep(5)  # a second notification would come as soon as the first
    found = receiver.texts(FAILED_SUBJECT)
    assert len(found) == 1, found
    text = found[0]
    assert f"daily-billing-{failed_day} ended Failed" in text
    assert f"Message: {message}" in text
    assert f"/runs/flow-run/{failed_run['id']}" in text  # the link to the run in the UI
    assert "Deployment: none" in text  # a CLI run has no deployment
    assert str(runs[f"daily-billing-{clean_day}"]["id"]) not in "".join(receiver.texts())


def test_without_a_prefect_server_install_exits_2_in_one_line(tmp_path, receiver):
    env = scrubbed_environ() | {"PREFECT_HOME": str(tmp_path / "home")}
    result = run_cli(["alerts", "install", "--webhook-url", receiver.url], env, tmp_path)
    assert result.returncode == 2, output(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "alerts need a real Prefect server" in lines[0], output(result)
    assert "PREFECT_API_URL" in lines[0] and TOKEN not in output(result)


@pytest.mark.parametrize("payload", ["slack", "teams"])
def test_each_payload_posts_the_notification_as_json_to_the_secret_url(payload):
    from bullphish_billing.alerts import load_spec, notification_block

    block = notification_block(load_spec(), payload, f"https://hooks.example/{TOKEN}")
    assert TOKEN not in block.model_dump_json() and TOKEN not in repr(block)
    request = block._build_request_args(body='line 1\n"quoted" {{ $HOME }}', subject="Subj")
    assert request["url"] == f"https://hooks.example/{TOKEN}" and request["method"] == "POST"
    sent = json.dumps(request["json"])
    assert "Subj" in sent and json.dumps('line 1\n"quoted" {{ $HOME }}')[1:-1] in sent
    if payload == "slack":
        assert request["json"] == {"text": 'Subj\nline 1\n"quoted" {{ $HOME }}'}
    else:
        card = request["json"]["attachments"][0]
        assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
        assert card["content"]["type"] == "AdaptiveCard"


def test_the_window_is_at_least_prefects_least_and_said_plainly():
    from bullphish_billing.alerts import (
        DEFAULT_WINDOW,
        automations_from,
        check_window,
        load_spec,
        window_text,
    )
    from bullphish_billing.errors import UsageError

    assert window_text(DEFAULT_WINDOW) == "26 hours"
    assert window_text(dt.timedelta(hours=1.5)) == "1.5 hours"
    assert window_text(dt.timedelta(seconds=12)) == "12 seconds"
    made = automations_from(load_spec(), "00000000-0000-0000-0000-000000000001", DEFAULT_WINDOW)
    proactive = [a for a in made if a.trigger.posture == "Proactive"]
    assert [a.trigger.within for a in proactive] == [DEFAULT_WINDOW]
    assert "26 hours" in proactive[0].actions[0].subject
    with pytest.raises(UsageError, match="at least 10 seconds"):
        check_window(dt.timedelta(seconds=9))
