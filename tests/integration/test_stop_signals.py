"""A run stopped by SIGTERM or SIGINT (Ctrl-C), sent to the command alone or to its whole
process group (systemd, `docker stop`, Kubernetes): it stops starting new work, records what
it has, publishes the analysts' file, stops the temporary Prefect server it started, and exits
within seconds with 128 + the signal's number (143 SIGTERM, 130 SIGINT) and one line of its own
on stderr, no traceback. The next run bills exactly what is still pending, once.

Real parts only: the sandbox APIs on loopback (slowed down by their latency knob, so the
signal lands mid-run), `python -m bullphish_billing run` in a child process in a session of
its own (so the test can signal its process group), Prefect's temporary server started by the
command itself (a temporary PREFECT_HOME, no PREFECT_API_URL). The next run uses the test
session's Prefect server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from fault_tools import (
    assert_delivered_partner_dates_are_in_kaseyaone,
    assert_no_double_sends,
    differences,
    expected_stored,
    our_error_lines,
    prefect_api_url,  # noqa: F401 - fixture
)
from sandbox_env import run_cli, sandbox_env, scrubbed_environ, stored

from bullphish_billing.dates import yesterday_utc
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

# three batches per partner-date (1600 organizations), every request slowed down: the signal
# is sent once a first batch is stored, while the second is on the wire and the third waits
SLOW = SandboxConfig(seed=21, partners=10, organizations_per_partner=1600,
                     targets_per_organization=2, latency_ms=300)  # fmt: skip
UNLINKED = "p_0007"  # KaseyaOne refuses its batches (422): they never leave the outbox
EXIT_WITHIN_S = 30.0


def our_processes(prefect_home: Path) -> dict[int, str]:
    """Every live process started for this test's Prefect home (the command, and whatever
    it started: the temporary Prefect server), by pid, with its command line."""
    marker = f"PREFECT_HOME={prefect_home}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(
                line for line in (entry / "status").read_text().splitlines()
                if line.startswith("State:")
            )  # fmt: skip
        except (OSError, StopIteration):
            continue
        if marker in environ and "zombie" not in state:
            found[int(entry.name)] = cmdline
    return found


def listening_ports(pids: set[int]) -> set[int]:
    """The TCP ports these processes listen on (IPv4), from /proc."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
            ports.add(int(fields[1].split(":")[1], 16))
    return ports


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def assert_billed_exactly_once(sandbox: RunningSandbox, warehouse: Path, day: dt.date) -> None:
    """KaseyaOne holds exactly the metrics the sandbox's data implies for the date, nothing was
    applied twice, the warehouse records nothing as delivered that KaseyaOne does not hold, and
    nothing is pending but the unlinked partner's batches. (fault_tools'
    assert_delivered_exactly_once wants nothing pending at all: with three batches per
    partner-date, the unlinked partner's second and third stay pending after its first is
    refused, by design: delivery.py keeps a partner-date's batches in order.)"""
    got, want = stored(sandbox, day), expected_stored(sandbox, day)
    assert want, "the sandbox should bill something on this date"
    assert got == want, f"KaseyaOne on {day}: {differences(got, want)}"
    assert_no_double_sends(sandbox)
    assert_delivered_partner_dates_are_in_kaseyaone(sandbox, warehouse)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        pending = con.execute(
            "SELECT DISTINCT partner_id FROM ops.outbox WHERE status = 'pending' AND usage_date = ?",
            [day],
        ).fetchall()
    assert {p for (p,) in pending} <= {UNLINKED}, pending


def start_run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """The command in a child process, in a session (and process group) of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "bullphish_billing", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=(cwd / "stdout.txt").open("w"),
        stderr=(cwd / "stderr.txt").open("w"),
        start_new_session=True,
    )


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [
        (signal.SIGTERM, False),  # `kill PID`
        (signal.SIGTERM, True),  # systemd, docker stop, Kubernetes
        (signal.SIGINT, True),  # Ctrl-C in a terminal
    ],
    ids=["sigterm-to-the-command", "sigterm-to-its-group", "sigint-to-its-group"],
)
def test_a_signal_mid_run_stops_it_cleanly_and_the_next_run_bills_once(
    signum,
    to_group,
    tmp_path,
    prefect_api_url,  # noqa: F811
):
    day = yesterday_utc() - dt.timedelta(days=3)
    warehouse = tmp_path / "warehouse.duckdb"
    home = tmp_path / "prefect-home"
    with RunningSandbox(SLOW) as sandbox:
        env = scrubbed_environ() | sandbox_env(sandbox, warehouse) | {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }  # fmt: skip
        run = start_run(["run", "--date", day.isoformat()], env, tmp_path)
        try:
            wait_for(lambda: sandbox.kaseyaone.sends(), 150, "the first batch stored")
            started = our_processes(home)
            ports = listening_ports(set(started) - {run.pid})
            assert ports, f"the run's Prefect server listens nowhere: {started}"

            if to_group:
                os.killpg(run.pid, signum)
            else:
                os.kill(run.pid, signum)
            try:
                code = run.wait(timeout=EXIT_WITHIN_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {EXIT_WITHIN_S:.0f} s after {signum.name}")
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
            leftovers = our_processes(home)  # never leave a server behind, even on failure
            for pid in leftovers:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        stderr = (tmp_path / "stderr.txt").read_text()
        assert code == 128 + signum, f"exit {code}\n{stderr[-3000:]}"
        assert "Traceback" not in stderr, stderr[-3000:]
        ours = our_error_lines(subprocess.CompletedProcess([], code, "", stderr))
        assert len(ours) == 1, stderr[-3000:]
        assert signum.name in ours[0], ours

        # nothing left behind: the temporary Prefect server is gone and its port free
        wait_for(lambda: not our_processes(home), 10, f"these to end: {our_processes(home)}")
        assert all(port_is_free(p) for p in ports), ports

        # what the stopped run recorded is in the analysts' file, published after the signal
        with duckdb.connect(str(tmp_path / "analytics.duckdb"), read_only=True) as con:
            stopped_runs = con.execute(
                "SELECT count(*) FROM ops.runs WHERE exit_code = ? AND finished_at IS NOT NULL",
                [128 + signum],
            ).fetchall()[0][0]
            stopped_partners = con.execute(
                "SELECT count(*) FROM ops.partner_runs WHERE status = 'failed' AND reason LIKE ?",
                [f"%stopped by {signum.name}%"],
            ).fetchall()[0][0]
            pending = con.execute(
                "SELECT count(*) FROM ops.outbox WHERE status = 'pending'"
            ).fetchall()[0][0]
        assert stopped_runs == 1
        # it was stopped mid-delivery: what it did not send is pending, its partners failed
        assert pending and stopped_partners, (pending, stopped_partners)

        # the next run sends what is still pending, and every metric is billed once (on the
        # test session's Prefect server: no second temporary server to wait for)
        rerun_env = env | {"PREFECT_API_URL": prefect_api_url}
        rerun = run_cli(["run", "--date", day.isoformat()], rerun_env, tmp_path)
        assert rerun.returncode == 1, rerun.stderr[-3000:]  # p_0007 unlinked, p_0008 rejected
        assert "Traceback" not in rerun.stdout + rerun.stderr
        assert_billed_exactly_once(sandbox, warehouse, day)


# A command whose work ignores the stop flag (a stage stuck on something): the main thread
# still ends it, after the grace period (cut here to 1 s) or at once on a second signal.
STUCK = (
    "import sys, time\n"
    "from bullphish_billing import cli\n"
    "cli.STOP_GRACE_S = float(sys.argv[1])\n"
    "def work():\n"
    "    print('working', flush=True)  # the handlers are in place\n"
    "    time.sleep(120)\n"
    "sys.exit(cli.run_stoppable('run', work))\n"
)


@pytest.mark.parametrize("second_signal", [False, True], ids=["grace-ends", "second-signal"])
def test_a_run_that_does_not_stop_is_ended_after_the_grace_period_or_a_second_signal(
    second_signal, tmp_path
):
    grace_s = 60.0 if second_signal else 1.0
    child = subprocess.Popen(
        [sys.executable, "-c", STUCK, str(grace_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert child.stdout.readline().strip() == "working"
        os.killpg(child.pid, signal.SIGTERM)
        if second_signal:
            time.sleep(0.5)
            assert child.poll() is None  # the first signal waits for the run
            os.killpg(child.pid, signal.SIGINT)
        _, stderr = child.communicate(timeout=EXIT_WITHIN_S)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == (130 if second_signal else 143), stderr
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith("bullphish-billing run: stopped by "), stderr
