"""Backfills against the sandbox, whose data changes from day to day: each date billed as of
that day, nothing sent twice, a killed backfill finished by the next, errors before any work.

Expectations come from the sandbox's own data (tests/oracle.py), one date at a time.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
from flow_runs import backfilled
from oracle import expected_billing, expected_in_kaseyaone
from sandbox_env import (
    child_env,
    run_cli,
    sends_per_key,
    sends_per_partner_date,
    stored,
)

from bullphish_billing.backfill_runner import run_dates
from bullphish_billing.dates import today_utc
from bullphish_billing.results import BackfillSummary, DateResult
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

TODAY = today_utc()
YESTERDAY = TODAY - dt.timedelta(days=1)
WEEK = [YESTERDAY - dt.timedelta(days=6 - i) for i in range(7)]
# every partner role of sandbox/world.py; "today" pinned, so every run of a test sees one world
CONFIG = SandboxConfig(today=TODAY)
CLEAN = ["p_0002", "p_0009"]  # partners that deliver with nothing held or rejected


def computed(warehouse: Path, day: dt.date) -> dict[tuple[str, str, str], int]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute(
            "SELECT partner_id, organization_id, billing_type, units FROM billing_metrics "
            "WHERE usage_date = ?",
            [day],
        ).fetchall()
    return {(p, o, t): u for p, o, t, u in rows}


def assert_each_day_as_of_that_day(sandbox: RunningSandbox, warehouse: Path, days) -> None:
    for day in days:
        expected = expected_billing(sandbox.world, day)
        assert computed(warehouse, day) == expected.metrics, day
        assert stored(sandbox, day) == expected_in_kaseyaone(sandbox.world, expected), day


def housekeeping_task_runs(start: dt.date, end: dt.date) -> tuple[object, list[tuple[object, str]]]:
    """The latest backfill of start..end as Prefect recorded it: its flow run id, and the
    housekeeping task runs (publish, mappings, raw retention) of it and of its dates' runs, as
    (flow run id, task run name)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterName,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    name = f"backfill-{start.isoformat()}-{end.isoformat()}"
    with get_client(sync_client=True) as client:
        (parent,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        dates = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])
            )
        )
        runs = [parent.id, *(d.id for d in dates)]
        # the API records task runs from events, a moment after the flow returns
        deadline = time.monotonic() + 30
        while True:
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs))
            )
            found = [
                (t.flow_run_id, t.name)
                for t in task_runs
                if t.name.startswith(("publish-", "mappings-", "raw-retention-"))
            ]
            if len(found) >= 3 or time.monotonic() > deadline:
                return parent.id, found
            time.sleep(0.5)


def test_dates_start_oldest_first_at_most_n_at_a_time_and_a_failure_stops_nothing():
    days = [dt.date(2026, 3, d) for d in range(1, 8)]
    started: list[dt.date] = []
    running = peak = 0
    lock = threading.Lock()
    both_running = threading.Barrier(2, timeout=30)  # the first two dates run side by side

    def run_one(day: dt.date) -> DateResult:
        nonlocal running, peak
        with lock:
            started.append(day)
            running += 1
            peak = max(peak, running)
        if day in days[:2]:
            both_running.wait()
        with lock:
            running -= 1
        if day == days[3]:
            raise RuntimeError("BullPhish ID answered 503\nfor the third time")
        return DateResult(day, "delivered", 0, "ok")

    finished: list[int] = []
    results = run_dates(list(reversed(days)), run_one, 2, lambda r, n: finished.append(n))
    assert [r.usage_date for r in results] == days
    assert peak == 2
    # a free worker always takes the oldest date not started yet
    assert all(set(started[:k]) <= set(days[: k + 1]) for k in range(len(days)))
    failed = results[3]
    assert failed.status == "failed" and failed.exit_code == 1
    assert failed.detail == "BullPhish ID answered 503 for the third time"
    assert all(r.status == "delivered" for r in results if r is not failed)
    assert finished == list(range(1, 8))
    summary = BackfillSummary(days[0], days[-1], False, False, results)
    assert summary.exit_code == 1 and summary.failed == [days[3]]


@pytest.mark.usefixtures("prefect_harness")
def test_a_week_is_billed_day_by_day_as_of_each_day_and_a_rerun_sends_nothing(
    configure, warehouse_path
):

    with RunningSandbox(CONFIG) as sandbox:
        configure(sandbox)
        # the days differ (targets switch, p_0006 joins, p_0001 is held on yesterday only):
        # numbers taken from any other day's state would be caught
        per_day = [frozenset(expected_billing(sandbox.world, d).metrics.items()) for d in WEEK]
        assert len(set(per_day)) == len(WEEK)

        summary = backfilled(start=WEEK[0], end=WEEK[-1])
        assert [r.usage_date for r in summary.results] == WEEK
        assert not summary.failed, summary.results
        # the unlinked partner p_0007 and the rejected organization of p_0008: exit 1 per date
        assert {r.status for r in summary.results} == {"problems"}
        assert_each_day_as_of_that_day(sandbox, warehouse_path, WEEK)
        assert set(sends_per_key(sandbox).values()) == {1}
        assert set(sends_per_partner_date(sandbox).values()) == {1}

        posts = len(sandbox.kaseyaone.sends())
        again = backfilled(start=WEEK[0], end=WEEK[-1])
        assert len(sandbox.kaseyaone.sends()) == posts  # nothing new
        assert [r.usage_date for r in again.results] == WEEK
        assert all(r.metrics_sent == 0 for r in again.results)
        assert_each_day_as_of_that_day(sandbox, warehouse_path, WEEK)


@pytest.mark.usefixtures("prefect_harness")
def test_a_date_delivered_before_is_not_billed_again_unless_forced(configure, warehouse_path):

    days = WEEK[2:4]
    with RunningSandbox(CONFIG) as sandbox:
        configure(sandbox)
        first = backfilled(start=days[0], end=days[-1], partner_ids=CLEAN)
        assert [r.status for r in first.results] == ["delivered", "delivered"]
        assert first.exit_code == 0
        # the dates' runs skip mappings, raw retention and publishing; the backfill does each
        # once, after its last date, so the analysts' file holds every date it billed
        parent, housekeeping = housekeeping_task_runs(days[0], days[-1])
        end = days[-1].isoformat()
        assert sorted(housekeeping) == sorted(
            (parent, f"{step}-{end}") for step in ("publish", "mappings", "raw-retention")
        )
        analytics = warehouse_path.with_name("analytics.duckdb")
        with duckdb.connect(str(analytics), read_only=True) as con:
            published = con.execute("SELECT DISTINCT usage_date FROM ops.runs ORDER BY 1")
            assert [d for (d,) in published.fetchall()] == days
            mapped = con.execute("SELECT DISTINCT partner_id FROM ops.organization_mappings")
            assert sorted(p for (p,) in mapped.fetchall()) == CLEAN
        keys = set(sends_per_key(sandbox))
        assert len(keys) == len(days) * len(CLEAN)  # one batch per partner-date

        def runs() -> int:
            with duckdb.connect(str(warehouse_path), read_only=True) as con:
                return con.execute("SELECT count(*) FROM ops.runs").fetchall()[0][0]

        before = runs()
        second = backfilled(start=days[0], end=days[-1], partner_ids=CLEAN)
        assert [r.status for r in second.results] == ["done", "done"]
        assert runs() == before  # no daily run at all: nothing extracted again
        assert set(sends_per_key(sandbox)) == keys

        # a wider backfill bills the partners not delivered yet
        wider = backfilled(start=days[0], end=days[0], partner_ids=[*CLEAN, "p_0010"])
        assert wider.results[0].status != "done"
        keys = set(sends_per_key(sandbox))

        forced = backfilled(start=days[0], end=days[-1], partner_ids=CLEAN, force=True)
        assert [r.status for r in forced.results] == ["delivered", "delivered"]
        new_keys = set(sends_per_key(sandbox)) - keys
        # every partner-date sent again, under new keys: applied, not answered as replays
        resent = {
            (r.body["partner_id"], r.body["usage_date"])
            for r in sandbox.kaseyaone.sends()
            if r.idempotency_key in new_keys
        }
        assert resent == {(p, d.isoformat()) for p in CLEAN for d in days}
        assert set(sends_per_key(sandbox).values()) == {1}
        for day in days:
            expected = expected_in_kaseyaone(sandbox.world, expected_billing(sandbox.world, day))
            assert {k: v for k, v in stored(sandbox, day).items() if k[0] in CLEAN} == {
                k: v for k, v in expected.items() if k[0] in CLEAN
            }


@pytest.mark.usefixtures("prefect_harness")
def test_a_backfill_killed_halfway_and_started_again_delivers_each_partner_date_once(tmp_path):
    warehouse = tmp_path / "data" / "warehouse.duckdb"
    args = ["backfill", "--start", str(WEEK[0]), "--end", str(WEEK[-1]), "--concurrency", "2"]
    with RunningSandbox(CONFIG) as sandbox:
        env = child_env(sandbox, warehouse, prefect_home=tmp_path / "prefect-home")
        child = subprocess.Popen(
            [sys.executable, "-m", "bullphish_billing", *args],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 180
        try:
            while child.poll() is None and time.monotonic() < deadline:
                if len({r.body["usage_date"] for r in sandbox.kaseyaone.sends()}) >= 3:
                    break
                time.sleep(0.01)
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL, "the backfill ended before it was killed"
        delivered_dates = {r.body["usage_date"] for r in sandbox.kaseyaone.sends()}
        assert 3 <= len(delivered_dates) < len(WEEK)

        result = run_cli(args, env, tmp_path)
        out = result.stdout + result.stderr
        assert result.returncode == 1, out  # p_0007 and p_0008, as on every date
        assert "Traceback" not in out
        for day in WEEK:
            assert f"{day}  problems" in result.stdout

        assert_each_day_as_of_that_day(sandbox, warehouse, WEEK)
        assert set(sends_per_key(sandbox).values()) == {1}
        # nothing acknowledged before the kill was sent again, under any key
        assert set(sends_per_partner_date(sandbox).values()) == {1}
        assert all(r.status != 409 for r in sandbox.kaseyaone.requests)
        with duckdb.connect(str(warehouse), read_only=True) as con:
            assert con.execute(
                "SELECT count(*) FROM ops.outbox WHERE status = 'pending'"
            ).fetchall() == [(0,)]
            per_partner_date = con.execute(
                "SELECT DISTINCT count(*) FROM ops.outbox WHERE status = 'acknowledged' "
                "GROUP BY usage_date, partner_id"
            ).fetchall()
        assert per_partner_date == [(1,)]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--start", str(YESTERDAY), "--end", str(TODAY)], ["after yesterday"]),
        (["--start", "2001-01-01", "--end", str(YESTERDAY)], ["400-day history"]),
        (["--start", str(WEEK[0]), "--end", str(WEEK[1]), "--concurrency", "0"], ["at least 1"]),
    ],
)
def test_a_range_that_cannot_be_backfilled_exits_2_with_one_line(tmp_path, args, words):
    env = {"PATH": "/usr/bin:/bin", "PREFECT_HOME": str(tmp_path / "prefect-home")}
    result = run_cli(["backfill", *args], env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], result.stderr
    assert all(word in lines[0] for word in words)


@pytest.mark.usefixtures("prefect_harness")
def test_an_unknown_partner_exits_2_before_any_date_is_billed(tmp_path):
    warehouse = tmp_path / "data" / "warehouse.duckdb"
    with RunningSandbox(CONFIG) as sandbox:
        env = child_env(sandbox, warehouse, prefect_home=tmp_path / "prefect-home")
        args = ["--start", str(WEEK[0]), "--end", str(WEEK[-1]), "--partner", "p_0002"]
        result = run_cli(["backfill", *args, "--partner", "p_9999"], env, tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        ours = [x for x in result.stderr.splitlines() if x.startswith("bullphish-billing")]
        assert len(ours) == 1 and "unknown partner p_9999" in ours[0], result.stderr
        assert not sandbox.kaseyaone.requests  # nothing sent
        assert not warehouse.exists()  # nothing extracted or stored


@pytest.mark.usefixtures("prefect_harness")
def test_a_date_that_fails_stops_no_other_and_the_backfill_ends_with_exit_1(
    monkeypatch, configure, capsys
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    import flows.backfill
    from bullphish_billing.commands import run_backfill

    days = WEEK[:3]
    real = flows.backfill.daily_billing

    def daily_billing(usage_date, **kwargs):
        if usage_date == days[1]:
            raise RuntimeError("BullPhish ID went away")
        return real(usage_date=usage_date, **kwargs)

    monkeypatch.setattr(flows.backfill, "daily_billing", daily_billing)
    with RunningSandbox(CONFIG) as sandbox:
        configure(sandbox)
        code = run_backfill(days[0], days[-1], CLEAN, False, concurrency=2)
        out = capsys.readouterr().out
        assert code == 1
        assert f"{days[1]}  failed    BullPhish ID went away" in out
        assert f"{days[0]}  delivered" in out and f"{days[2]}  delivered" in out
        assert "3 date(s): 2 delivered, 1 failed" in out
        for day in (days[0], days[2]):
            assert {m["partner_id"] for m in sandbox.kaseyaone.stored(usage_date=day)} == set(CLEAN)
    key = f"backfill-{days[0]}-{days[-1]}-progress"
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert [a.data for a in progress] == [100.0]
