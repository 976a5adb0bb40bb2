"""Every failure the user can cause or meet is one line from us with the right exit code, no
traceback, and leaves the warehouse (and any file that is not an analysts' file) as it was.

The CLI runs in a child process against the sandbox on loopback, with real DuckDB files, on
the Prefect server of the session's test harness. Configuration errors end before Prefect
starts; warehouse and partner errors end inside the flow, which must not write the file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest
from fault_tools import (
    our_error_lines,
    prefect_api_url,  # noqa: F401 - fixture
)
from sandbox_env import child_env, output, run_cli
from test_warehouse_faults import small_fs  # noqa: F401 - fixture (a tmpfs; needs root)

from bullphish_billing import publish
from bullphish_billing.dates import yesterday_utc
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig
from bullphish_billing.warehouse.db import open_warehouse
from bullphish_billing.warehouse.migrations import migrate

DAY = yesterday_utc() - dt.timedelta(days=4)
SMALL = SandboxConfig(seed=5, partners=8)
CLEAN = ["--partner", "p_0002"]  # delivered cleanly on this world (exit 0)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    with RunningSandbox(SMALL) as running:
        yield running


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Exit `code`, no traceback anywhere, exactly one error line from us, holding `words`."""
    assert result.returncode == code, output(result)[-3000:]
    assert "Traceback" not in output(result), output(result)[-3000:]
    ours = our_error_lines(result)
    assert len(ours) == 1 and "error:" in ours[0], result.stderr[-3000:]
    for word in words:
        assert word in ours[0], ours[0]
    return ours[0]


def a_warehouse(path: Path) -> Path:
    """A new, migrated, empty warehouse."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_warehouse(path):
        pass
    return path


def run(
    sandbox: RunningSandbox, warehouse: Path, cwd: Path, api: str, *args: str, **env: str
) -> subprocess.CompletedProcess:
    """`bullphish-billing run --date DAY ARGS` in a child process, with `env` settings."""
    return run_cli(
        ["run", "--date", DAY.isoformat(), *args], child_env(sandbox, warehouse, api, **env), cwd
    )


# ------------------------------------------------- configuration, refused before any work
def _with_userinfo(url: str) -> str:
    return url.replace("http://", "http://billing:Pa55-SECRET-word@")


SETTINGS: dict[str, tuple[Callable[[Path, RunningSandbox], dict[str, str]], list[str]]] = {
    "analytics-file-is-the-warehouse": (
        lambda wh, sb: {"BILLING_ANALYTICS_FILE": str(wh)},
        ["BILLING_ANALYTICS_FILE", "is the warehouse"],
    ),
    "analytics-file-is-the-warehouse-by-a-relative-path": (
        lambda wh, sb: {"BILLING_ANALYTICS_FILE": f"wh/../wh/{wh.name}"},
        ["is the warehouse"],
    ),
    "analytics-file-is-a-symlink-to-the-warehouse": (
        lambda wh, sb: {"BILLING_ANALYTICS_FILE": str(_symlink(wh))},
        ["is the warehouse"],
    ),
    "analytics-file-is-a-hard-link-to-the-warehouse": (
        lambda wh, sb: {"BILLING_ANALYTICS_FILE": str(_hard_link(wh))},
        ["is the warehouse"],
    ),
    "analytics-file-is-the-warehouse-wal": (
        lambda wh, sb: {"BILLING_ANALYTICS_FILE": f"{wh}.wal"},
        ["is the warehouse's WAL"],
    ),
    "analytics-file-is-the-lease-directory": (
        lambda wh, sb: {"BILLING_ANALYTICS_FILE": f"{wh}.leases"},
        ["is the warehouse's lease directory"],
    ),
    "warehouse-named-like-the-default-analytics-file": (
        lambda wh, sb: {"BILLING_WAREHOUSE": str(_renamed(wh, "analytics.duckdb"))},
        ["is the warehouse"],
    ),
    "empty-warehouse-path": (
        lambda wh, sb: {"BILLING_WAREHOUSE": ""},
        ["BILLING_WAREHOUSE is empty"],
    ),
    "bullphish-url-with-credentials": (
        lambda wh, sb: {"BULLPHISH_API_URL": _with_userinfo(sb.bullphish_url)},
        ["BULLPHISH_API_URL must not hold credentials"],
    ),
    "kaseyaone-url-with-credentials": (
        lambda wh, sb: {"KASEYAONE_API_URL": _with_userinfo(sb.kaseyaone_url)},
        ["KASEYAONE_API_URL must not hold credentials"],
    ),
}


def _symlink(target: Path) -> Path:
    link = target.parent.parent / "published.duckdb"
    link.symlink_to(target)
    return link


def _hard_link(target: Path) -> Path:
    link = target.parent.parent / "published.duckdb"
    os.link(target, link)
    return link


def _renamed(path: Path, name: str) -> Path:
    return path.rename(path.with_name(name))


@pytest.mark.parametrize("case", list(SETTINGS))
def test_a_configuration_error_is_refused_at_start_in_one_line_and_writes_nothing(
    case,
    tmp_path,
    sandbox,
    prefect_api_url,  # noqa: F811
):
    """Item 6 (the analysts' file may not be the warehouse or one of its files, however the
    path is spelled: publishing would rename a copy over it) and item 7 (an empty warehouse
    path; credentials in an API URL, which the client would send as Basic auth while the
    message blamed the token): exit 2 before any work, the warehouse's bytes unchanged, and
    the password in a URL never shown."""
    make_env, words = SETTINGS[case]
    warehouse = a_warehouse(tmp_path / "wh" / "warehouse.duckdb")
    extra = make_env(warehouse, sandbox)
    files = {p: digest(p) for p in (tmp_path / "wh").iterdir() if p.is_file()}
    sent = len(sandbox.kaseyaone.requests)
    result = run(sandbox, warehouse, tmp_path, prefect_api_url, *CLEAN, **extra)
    one_error_line(result, 2, *words)
    assert "Pa55-SECRET-word" not in output(result)
    assert {p: digest(p) for p in files} == files  # nothing written
    assert not list(tmp_path.glob("wh/*.leases")), "the run started"
    assert len(sandbox.kaseyaone.requests) == sent


# ------------------------------------------------------------ warehouses that cannot be opened
def _truncated(path: Path, bill: Callable[[Path], None]) -> Path:
    """A warehouse as a run leaves it, cut in half (a copy cut short): DuckDB opens it, and
    fails on the first missing block, after having written to it."""
    bill(path)
    os.truncate(path, path.stat().st_size // 2)
    return path


def _foreign(sql: str) -> Callable[..., Path]:
    def make(path: Path, bill: object = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with duckdb.connect(str(path)) as con:
            con.execute(sql)
        return path

    return make


def _analysts_file(path: Path, bill: object = None) -> Path:
    source = a_warehouse(path.with_name("source.duckdb"))
    with open_warehouse(source) as con:
        publish.publish(con, path)
    source.unlink()
    return path


WAREHOUSES: dict[str, tuple[Callable[[Path, Callable[[Path], None]], Path], list[str]]] = {
    "truncated": (_truncated, ["is damaged", "cut short"]),
    "foreign-outbox": (
        _foreign(
            "CREATE SCHEMA ops; CREATE TABLE ops.outbox (id INTEGER, body VARCHAR); "
            "INSERT INTO ops.outbox VALUES (1, 'theirs')"
        ),
        ["not a bullphish-billing warehouse", "ops.outbox", "has no column idempotency_key"],
    ),
    "foreign-billing-metrics": (
        _foreign(
            "CREATE TABLE billing_metrics (usage_date DATE, partner_id VARCHAR, units INTEGER)"
        ),
        ["not a bullphish-billing warehouse", "main.billing_metrics"],
    ),
    "the-analysts-file": (_analysts_file, ["not a bullphish-billing warehouse"]),
}


@pytest.mark.parametrize("case", list(WAREHOUSES))
def test_a_warehouse_that_cannot_be_opened_is_one_line_and_is_not_written(
    case,
    tmp_path,
    sandbox,
    prefect_api_url,  # noqa: F811
):
    """Item 7: a truncated file (DuckDB opened it, the run wrote into it and then failed on a
    missing block with a traceback), another program's DuckDB file in which a table of ours has another shape, and the analysts'
    copy (no keys) given as the warehouse: exit 2, one line naming the problem (the table),
    the file's bytes unchanged although the run's end still publishes, nothing sent."""

    def bill(path: Path) -> None:
        billed = run(sandbox, path, tmp_path, prefect_api_url, *CLEAN)
        assert billed.returncode == 0, output(billed)[-3000:]

    make, words = WAREHOUSES[case]
    warehouse = make(tmp_path / "wh" / "warehouse.duckdb", bill)
    before, sent = digest(warehouse), len(sandbox.kaseyaone.requests)
    result = run(sandbox, warehouse, tmp_path, prefect_api_url, *CLEAN)
    assert digest(warehouse) == before, output(result)[-3000:]
    assert not Path(f"{warehouse}.wal").exists()
    one_error_line(result, 2, *words)
    assert len(sandbox.kaseyaone.requests) == sent


# -------------------------------------------------------- the partner list cannot be read
class Refusing:
    """A BullPhish ID that answers every request 403 forbidden, with the contract's body."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b'{"error": {"code": "forbidden", "message": "not for you"}}'
                self.send_response(403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once closed


# The CLI as is, with the list-partners task's retry delays (10 s, 60 s) cut to 0 so that a
# BullPhish ID that stays down fails the task in seconds.
CLI_WITHOUT_RETRY_DELAYS = (
    "import sys\n"
    "from tasks import billing\n"
    "billing.list_partners = billing.list_partners.with_options(retry_delay_seconds=0)\n"
    "from bullphish_billing.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize("how", ["refusing", "down"])
def test_a_partner_list_that_cannot_be_read_ends_in_one_line_without_a_traceback(
    how,
    tmp_path,
    sandbox,
    prefect_api_url,  # noqa: F811
):
    """Item 7: BullPhish ID refusing (403: the probe fails in the flow) or down (the
    list-partners task fails after its retries): exit 1 and the one line `the run failed`,
    and no Prefect traceback on the terminal before it."""
    refusing = Refusing() if how == "refusing" else None
    url = refusing.url if refusing else closed_port_url()
    env = child_env(
        sandbox,
        tmp_path / "warehouse.duckdb",
        prefect_api_url,
        BULLPHISH_API_URL=url,
        BILLING_HTTP_DEADLINE_S="1",
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", CLI_WITHOUT_RETRY_DELAYS, "run", "--date", DAY.isoformat()],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        if refusing:
            refusing.close()
    one_error_line(result, 1, "the run failed: bullphish GET /v1/partners failed")


# ----------------------------------------------------------- user values in the messages
@pytest.mark.parametrize(
    ("partners", "shown"),
    [
        (["p_0002\nBOGUS"], "unknown partner 'p_0002\\nBOGUS' as of"),
        ([f"p_x{i:05d}" for i in range(10_000)], "p_x00004 and 9,995 more as of"),
    ],
    ids=["newline", "ten-thousand"],
)
def test_unknown_partners_are_shown_escaped_on_one_short_line(
    partners,
    shown,
    tmp_path,
    sandbox,
    prefect_api_url,  # noqa: F811
):
    """Item 7: a `--partner` with a newline is shown escaped on the one line (not split over
    two), and 10,000 unknown ids are the first five and how many more, not a line of 89,000
    characters."""
    args = [arg for partner in partners for arg in ("--partner", partner)]
    result = run(sandbox, tmp_path / "warehouse.duckdb", tmp_path, prefect_api_url, *args)
    line = one_error_line(result, 2, "unknown partner", shown)
    assert len(line) < 300, len(line)
    assert not [s for s in result.stderr.splitlines() if s.startswith("BOGUS")], result.stderr


# ------------------------------------------------------------------- the analysts' file
def test_publishing_replaces_only_an_analysts_file_it_wrote(tmp_path):
    """Item 6: publish never replaces a file that is not an analysts' file: another program's
    DuckDB file, a text file, the warehouse itself are refused with one line and left as they
    were; a missing file, a file it published, and a copy published before the marker
    existed (the keyless copy of our tables) are replaced."""
    warehouse = a_warehouse(tmp_path / "warehouse.duckdb")
    theirs = _foreign("CREATE TABLE notes (x INTEGER); INSERT INTO notes VALUES (42)")(
        tmp_path / "theirs.duckdb"
    )
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    legacy = tmp_path / "legacy.duckdb"
    with duckdb.connect(str(legacy)) as con:
        migrate(con, keys=False)  # what publish wrote before the marker
    with open_warehouse(warehouse) as con:
        for other in (theirs, text, warehouse):
            before = digest(other)
            with pytest.raises(publish.PublishError) as refused:
                publish.publish(con, other)
            assert "\n" not in str(refused.value) and "not replaced" in str(refused.value)
            assert digest(other) == before, other
        for ours in (tmp_path / "new.duckdb", legacy):
            publish.publish(con, ours)
            publish.publish(con, ours)  # and again: the marker makes it ours
            with duckdb.connect(str(ours), read_only=True) as pub:
                assert pub.execute("SELECT count(*) FROM ops.analytics_file").fetchall() == [(1,)]


def test_a_file_at_the_analysts_path_that_is_not_one_is_left_and_the_run_stands(
    tmp_path,
    sandbox,
    prefect_api_url,  # noqa: F811
):
    """Item 6, as the user meets it: BILLING_ANALYTICS_FILE names another program's DuckDB
    file; the run bills as usual (its exit code stands), the file is untouched, and the log
    says in one line why it was not published (no traceback, no error line from us)."""
    theirs = _foreign("CREATE TABLE notes (x INTEGER); INSERT INTO notes VALUES (42)")(
        tmp_path / "theirs.duckdb"
    )
    before = digest(theirs)
    result = run(
        sandbox,
        tmp_path / "warehouse.duckdb",
        tmp_path,
        prefect_api_url,
        *CLEAN,
        "--dry-run",
        BILLING_ANALYTICS_FILE=str(theirs),
    )
    assert result.returncode == 0, output(result)[-3000:]
    assert "Traceback" not in output(result) and our_error_lines(result) == []
    said = [s for s in result.stderr.splitlines() if "was not published" in s]
    assert len(said) == 1 and "is not an analysts' file" in said[0], result.stderr
    assert digest(theirs) == before


def test_a_full_disk_under_the_analysts_file_says_so_and_the_run_stands(
    small_fs,  # noqa: F811
    tmp_path,
    sandbox,
    prefect_api_url,  # noqa: F811
):
    """Item 7: the analysts' file is on a disk that is full (the warehouse is not): the run
    bills as usual (its exit code stands), the previous analysts' file stays as it was, and
    what the user sees names the analysts' file, not the warehouse."""
    warehouse = a_warehouse(tmp_path / "wh" / "warehouse.duckdb")
    analytics = small_fs.path / "analytics.duckdb"
    with open_warehouse(warehouse) as con:
        publish.publish(con, analytics)  # the previous run's
    before = digest(analytics)
    small_fs.fill()
    result = run(
        sandbox, warehouse, tmp_path, prefect_api_url, *CLEAN, BILLING_ANALYTICS_FILE=str(analytics)
    )
    assert result.returncode == 0, output(result)[-3000:]
    assert "(exit 0)" in result.stdout
    assert "Traceback" not in output(result) and our_error_lines(result) == []
    assert "cannot write the warehouse" not in output(result)
    said = [s for s in result.stderr.splitlines() if "was not published" in s]
    assert len(said) == 1, result.stderr
    assert "cannot write the analysts' file" in said[0] and "no space left" in said[0].lower()
    assert digest(analytics) == before


# ---------------------------------------------------------------------------------- .env
def test_a_env_file_others_can_read_is_named_once_and_the_run_goes_on(
    tmp_path,
    sandbox,
    prefect_api_url,  # noqa: F811
):
    """Item 7: the settings come from a `.env` that its group and others may read: one
    warning line on stderr naming it and `chmod 600` (once, although every stage reads the
    settings), and the run goes on; at mode 600 nothing is said."""
    env = child_env(sandbox, tmp_path / "warehouse.duckdb", prefect_api_url)
    settings = {k: env.pop(k) for k in list(env) if k.startswith(("BULLPHISH_", "KASEYAONE_"))}
    settings["BILLING_WAREHOUSE"] = env.pop("BILLING_WAREHOUSE")
    dotenv = tmp_path / ".env"
    dotenv.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    args = ["run", "--date", DAY.isoformat(), *CLEAN, "--dry-run"]

    dotenv.chmod(0o644)
    loose = run_cli(args, env, tmp_path)
    assert loose.returncode == 0, output(loose)[-3000:]
    warnings = [s for s in loose.stderr.splitlines() if "warning" in s and ".env" in s]
    assert len(warnings) == 1, loose.stderr
    assert warnings[0].startswith("bullphish-billing: warning:") and "chmod 600 .env" in warnings[0]
    assert "0644" in warnings[0] and "Traceback" not in output(loose)

    dotenv.chmod(0o600)
    tight = run_cli(args, env, tmp_path)
    assert tight.returncode == 0, output(tight)[-3000:]
    assert ".env" not in tight.stderr
