"""A warehouse that is locked by another process, read-only, or on a full disk: the run ends
with exit 1 or 2 and one line saying why, no traceback, and no partner-date is recorded as
delivered that KaseyaOne does not hold. Once the fault is gone, the next run completes the
work exactly once.

The read-only and full-disk file systems are real: small tmpfs mounts (this needs root, as in
CI here; elsewhere, a read-only file is made with chmod and the full-disk tests are skipped).
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from fault_tools import (
    assert_delivered_exactly_once,
    assert_delivered_partner_dates_are_in_kaseyaone,
    our_error_lines,
    prefect_api_url,  # noqa: F401 - fixture
    stored,
)
from flow_runs import billed
from sandbox_env import child_env, output, run_cli, sandbox_env, start_cli

from bullphish_billing.dates import yesterday_utc
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig
from bullphish_billing.warehouse.db import open_warehouse

DAY = yesterday_utc() - dt.timedelta(days=6)
SMALL = SandboxConfig(seed=5, partners=8)


# ------------------------------------------------------------------------ file systems
class SmallFileSystem:
    """A tmpfs of a few MB mounted for one test: it can be filled up or made read-only."""

    def __init__(self, where: Path, size_mb: int) -> None:
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
        self.path = where
        self.filler = where / "filler"

    def fill(self) -> None:
        """Write a file until the device is full (nothing else can grow after this)."""
        with self.filler.open("wb", buffering=0) as out:
            for size in (1 << 20, 4096, 1):
                chunk = bytes(size)
                try:
                    while True:
                        out.write(chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_fs(tmp_path) -> Iterator[SmallFileSystem]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    fs = SmallFileSystem(tmp_path / "fs", size_mb=48)
    yield fs
    fs.unmount()


def assert_one_line(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode in (1, 2), output(result)
    assert "Traceback" not in output(result)
    lines = our_error_lines(result)
    assert len(lines) == 1 and "error:" in lines[0], result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]


def no_usage_posted(sandbox: RunningSandbox) -> bool:
    return sandbox.kaseyaone.requests == []


# -------------------------------------------------------------------------------- locked
def test_a_warehouse_locked_by_another_process_ends_the_run_in_one_line(
    tmp_path,
    prefect_api_url,  # noqa: F811
):
    warehouse = tmp_path / "warehouse.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
            "sys.stdin.read()",
            str(warehouse),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with RunningSandbox(SMALL) as sandbox:
            env = child_env(sandbox, warehouse, prefect_api_url, BILLING_WAREHOUSE_LOCK_WAIT_S="1")
            result = run_cli(["run", "--date", DAY.isoformat()], env, tmp_path)
            assert_one_line(result, "locked")
            assert "waited 1 s" in result.stderr
            assert no_usage_posted(sandbox)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        tables = con.execute("SELECT count(*) FROM duckdb_tables()").fetchall()[0][0]
    assert tables == 0  # the run wrote nothing at all


def test_a_run_waits_for_a_warehouse_another_process_holds_for_a_while(
    tmp_path,
    prefect_api_url,  # noqa: F811
):
    """Another process (another run's stage, a short DuckDB session) holds the file: the run
    waits for it, says so, and then bills as usual. The holder lets go once the run has said
    it waits (not after a fixed time, which a slow start of the run could outlast)."""
    warehouse = tmp_path / "warehouse.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
            "sys.stdin.read(); c.close()",
            str(warehouse),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with RunningSandbox(SMALL) as sandbox:
            env = child_env(sandbox, warehouse, prefect_api_url)
            run = start_cli(
                ["run", "--date", DAY.isoformat()],
                env,
                tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            said = []
            for line in run.stderr:  # until the run says it waits, or ends
                said.append(line)
                if "is locked by another process: waiting up to 120 s" in line:
                    break
            holder.stdin.close()  # let go
            said += run.stderr.readlines()
            assert run.wait(timeout=240) in (0, 1), "".join(said)  # 1: the held partners
            assert any("waiting up to 120 s" in line for line in said), "".join(said)
            assert_delivered_exactly_once(sandbox, warehouse, DAY)
    finally:
        if not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(timeout=30)


# ----------------------------------------------------------------------------- read-only
def test_a_read_only_warehouse_ends_the_run_in_one_line(tmp_path, prefect_api_url):  # noqa: F811
    if os.geteuid() == 0:
        fs = SmallFileSystem(tmp_path / "fs", size_mb=16)
        directory = fs.path
    else:
        fs, directory = None, tmp_path / "ro"
        directory.mkdir()
    warehouse = directory / "warehouse.duckdb"
    with open_warehouse(warehouse):
        pass  # an existing, migrated, empty warehouse
    try:
        if fs is not None:
            fs.remount("ro")
        else:
            warehouse.chmod(0o444)
            directory.chmod(0o555)
        with RunningSandbox(SMALL) as sandbox:
            env = child_env(sandbox, warehouse, prefect_api_url)
            result = run_cli(["run", "--date", DAY.isoformat()], env, tmp_path)
            assert_one_line(result, "warehouse")
            assert no_usage_posted(sandbox)
    finally:
        if fs is not None:
            fs.unmount()
        else:
            directory.chmod(0o755)


# ----------------------------------------------------------------------------- full disk
def test_a_full_disk_ends_the_run_in_one_line_and_the_next_run_completes_it(
    small_fs,
    tmp_path,
    prefect_api_url,  # noqa: F811
):
    warehouse = small_fs.path / "warehouse.duckdb"
    with open_warehouse(warehouse):
        pass  # an existing warehouse, on a disk about to be full
    with RunningSandbox(SMALL) as sandbox:
        env = child_env(sandbox, warehouse, prefect_api_url)
        small_fs.fill()
        full = run_cli(["run", "--date", DAY.isoformat()], env, tmp_path)
        assert_one_line(full, "no space left on device")
        assert no_usage_posted(sandbox)
        assert_delivered_partner_dates_are_in_kaseyaone(sandbox, warehouse)

        small_fs.free()
        again = run_cli(["run", "--date", DAY.isoformat()], env, tmp_path)
        assert again.returncode == 1, output(again)  # p_0007 unlinked, p_0008 rejections
        assert_delivered_exactly_once(sandbox, warehouse, DAY)


@pytest.mark.usefixtures("prefect_harness")
def test_a_disk_that_fills_between_send_and_record_loses_nothing_and_doubles_nothing(
    small_fs, monkeypatch
):
    """KaseyaOne has answered, and the warehouse cannot record the answer: the run fails in
    one line, the batch stays pending (not acknowledged, not delivered), and the next run
    sends it again under the same key, which KaseyaOne answers as a replay."""
    from bullphish_billing.clients import KaseyaOneClient
    from bullphish_billing.errors import UserError
    from flows.daily_billing import daily_billing

    warehouse = small_fs.path / "warehouse.duckdb"
    real_report = KaseyaOneClient.report_usage
    answered: list[str] = []

    async def report_then_fill(self, batch, idempotency_key):
        result = await real_report(self, batch, idempotency_key)
        if not answered:
            small_fs.fill()  # the disk fills the moment the first answer is in
        answered.append(idempotency_key)
        return result

    with RunningSandbox(SMALL) as sandbox:
        for name, value in sandbox_env(sandbox, warehouse).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(KaseyaOneClient, "report_usage", report_then_fill)
        state = daily_billing(usage_date=DAY, return_state=True)
        assert state.is_failed()
        error = state.result(raise_on_failure=False)
        assert isinstance(error, UserError), repr(error)
        assert "\n" not in str(error) and "no space left" in str(error).lower()
        assert sandbox.kaseyaone.sends()  # KaseyaOne holds what it answered

        small_fs.free()
        monkeypatch.setattr(KaseyaOneClient, "report_usage", real_report)
        with duckdb.connect(str(warehouse), read_only=True) as con:
            acknowledged = con.execute(
                "SELECT partner_id, organization_id, billing_type, units "
                "FROM ops.acknowledged_metrics WHERE accepted"
            ).fetchall()
            pending = {
                k
                for (k,) in con.execute(
                    "SELECT idempotency_key FROM ops.outbox WHERE status = 'pending'"
                ).fetchall()
            }
            delivered = con.execute(
                "SELECT count(*) FROM ops.partner_runs WHERE status = 'delivered'"
            ).fetchall()
        # what the warehouse records as acknowledged, KaseyaOne holds; nothing is recorded as
        # delivered; and what KaseyaOne answered but the warehouse could not record is pending
        held = stored(sandbox, DAY)
        assert all(held.get((p, o, t)) == u for p, o, t, u in acknowledged)
        assert delivered == [(0,)]
        unrecorded = pending & set(answered)
        assert unrecorded

        summary = billed(usage_date=DAY)
        assert summary.earlier_batches_sent >= len(unrecorded)
        replayed = {r.idempotency_key for r in sandbox.kaseyaone.requests if r.replayed}
        assert unrecorded <= replayed
        assert_delivered_exactly_once(sandbox, warehouse, DAY)
