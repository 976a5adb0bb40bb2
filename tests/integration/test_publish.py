"""The analysts' file: published atomically after each run, never blocking or breaking an
analyst who holds it open. The analyst is a separate process (tests/analyst.py)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from flow_runs import billed
from oracle import expected_billing

from bullphish_billing import publish
from bullphish_billing.dates import yesterday_utc
from bullphish_billing.outcomes import record, start_run
from bullphish_billing.results import RunSummary
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig
from bullphish_billing.warehouse.db import open_warehouse

VIEWS = ("billing_changes", "invoice_preview", "unmapped_organizations", "run_history")
ANALYST = Path(__file__).resolve().parents[1] / "analyst.py"


class Analyst:
    """A read-only DuckDB session in another process (mode held or fresh), until `stop`."""

    def __init__(self, path: Path, mode: str = "held") -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ANALYST), str(path), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = self.process.stdout.readline()
        assert json.loads(ready) == {"ready": True}, ready + self.process.stderr.read()

    def stop(self) -> list[dict]:
        out, err = self.process.communicate(timeout=60)
        assert self.process.returncode == 0, err
        return [json.loads(line) for line in out.splitlines()]


def state_of(path: Path) -> list[int]:
    """What an analyst who opens the file now sees."""
    out = subprocess.run(
        [sys.executable, str(ANALYST), str(path), "once"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def states(observations: list[dict]) -> set[tuple[int, ...]]:
    """The states seen; every look must have succeeded."""
    assert observations and not [o for o in observations if "error" in o], observations[:3]
    return {tuple(o["state"]) for o in observations}


def finished_run(con, run_id: str, day: dt.date) -> None:
    start_run(con, run_id, day, False)
    record(con, RunSummary(run_id, day, False, []))


def test_the_published_file_holds_the_tables_views_and_comments(tmp_path, warehouse_path):
    target = tmp_path / "analytics.duckdb"
    with open_warehouse(warehouse_path) as con:
        finished_run(con, "run-1", dt.date(2026, 11, 20))
        con.execute(
            "INSERT INTO raw.targets VALUES (DATE '2026-11-20', 'p_1', 't_1', 'o_1', 'active', "
            "now(), 0, 0, 'run-1')"
        )
        result = publish.publish(con, target)
    assert result.path == target and result.rows == 1
    with duckdb.connect(str(target), read_only=True) as pub:
        tables = {
            f"{s}.{t}"
            for s, t in pub.execute(
                "SELECT schema_name, table_name FROM duckdb_tables() "
                "WHERE database_name = current_database()"
            ).fetchall()
        }
        assert set(publish.PUBLISHED_TABLES) <= tables
        assert pub.execute("SELECT count(*) FROM raw.targets").fetchall() == [(0,)]  # not copied
        for view in VIEWS:
            pub.execute(f"FROM {view}").fetchall()
        uncommented = pub.execute(
            "SELECT table_name, column_name FROM duckdb_columns() "
            "WHERE database_name = current_database() AND comment IS NULL"
        ).fetchall()
        assert uncommented == []
        assert pub.execute("SELECT run_id, status FROM run_history").fetchall() == [
            ("run-1", "no partners")
        ]
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["analytics.duckdb", "warehouse.duckdb"]  # no temp file, no WAL


def test_a_replaced_file_does_not_disturb_a_session_holding_it(tmp_path, warehouse_path):
    target = tmp_path / "analytics.duckdb"
    day = dt.date(2026, 11, 20)
    with open_warehouse(warehouse_path) as con:
        finished_run(con, "run-1", day)
        publish.publish(con, target)
        old = state_of(target)
        analyst = Analyst(target)
        try:
            # writing the analysts' file in place is what the analyst's lock forbids ...
            with pytest.raises(duckdb.IOException, match="lock"):
                duckdb.connect(str(target)).close()
            # ... and replacing it is not
            finished_run(con, "run-2", day)
            publish.publish(con, target)
        finally:
            observations = analyst.stop()
    new = state_of(target)
    assert old[0] == 1 and new[0] == 2
    assert states(observations) == {tuple(old)}  # the held session: the old file, complete


def test_a_stray_wal_of_a_crashed_read_write_session_is_removed(tmp_path, warehouse_path):
    target = tmp_path / "analytics.duckdb"
    with open_warehouse(warehouse_path) as con:
        finished_run(con, "run-1", dt.date(2026, 11, 20))
        publish.publish(con, target)
        crash = (
            "import duckdb, os, sys\n"
            "c = duckdb.connect(sys.argv[1])\n"
            "c.execute('CREATE TABLE scratch AS SELECT 42 AS x')\n"
            "os._exit(0)\n"
        )
        subprocess.run([sys.executable, "-c", crash, str(target)], check=True)
        assert Path(f"{target}.wal").exists()  # it would break every later open of the file
        publish.publish(con, target)
    assert state_of(target)[0] == 1


def metric(con, day: dt.date, units: int, partner: str = "p_1") -> None:
    con.execute(
        "INSERT OR REPLACE INTO billing_metrics VALUES (?, ?, 'o_1', "
        "'bullphish_id.phishing.per_user', ?, 'per_user', 'run-x', TIMESTAMPTZ '2026-11-30')",
        [day, partner, units],
    )


def contents(path: Path) -> dict[str, list[tuple]]:
    """Every published table's rows, sorted (the marker's publish time left out)."""
    with duckdb.connect(str(path), read_only=True) as pub:
        return {
            t: pub.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
            for t in publish.PUBLISHED_TABLES
        }


def test_a_publish_copies_only_the_dates_that_changed_and_ends_equal_to_a_full_copy(
    tmp_path, warehouse_path
):
    target, whole = tmp_path / "analytics.duckdb", tmp_path / "whole" / "analytics.duckdb"
    days = [dt.date(2026, 11, 20) + dt.timedelta(days=i) for i in range(4)]
    with open_warehouse(warehouse_path) as con:
        for i, day in enumerate(days[:3]):
            finished_run(con, f"run-{i}", day)
            metric(con, day, 10 + i)
        con.execute("INSERT INTO ops.mapping_fetches VALUES ('p_1', 'linked', 1, now(), 'run-0')")
        first = publish.publish(con, target)
        assert not first.incremental and first.rows == 3 + 3 + 1

        again = publish.publish(con, target)  # nothing changed: nothing written
        assert again.incremental and again.rows == 0
        assert contents(target) == contents(publish.publish(con, whole).path)

        metric(con, days[1], 99)  # a date billed again: its one row replaced
        metric(con, days[1], 5, partner="p_2")  # and a row added to it
        finished_run(con, "run-3", days[3])  # a new date
        con.execute("DELETE FROM billing_metrics WHERE usage_date = ?", [days[2]])  # one gone
        con.execute("UPDATE ops.mapping_fetches SET mappings = 2")  # an undated table changed
        update = publish.publish(con, target)
        assert update.incremental
        # billing_metrics: the 2 rows of days[1]; ops.runs: run-3; the mapping fetch, whole
        assert update.rows == 2 + 1 + 1
        assert contents(target) == contents(publish.publish(con, whole).path)
    with duckdb.connect(str(target), read_only=True) as pub:
        assert pub.execute(
            "SELECT usage_date, partner_id, units FROM billing_metrics ORDER BY ALL"
        ).fetchall() == [(days[0], "p_1", 10), (days[1], "p_1", 99), (days[1], "p_2", 5)]


def test_a_previous_file_that_cannot_be_updated_is_replaced_by_a_full_copy(
    tmp_path, warehouse_path
):
    target = tmp_path / "analytics.duckdb"
    with open_warehouse(warehouse_path) as con:
        finished_run(con, "run-1", dt.date(2026, 11, 20))
        publish.publish(con, target)
        with duckdb.connect(str(target)) as pub:  # a file published before the marker existed
            pub.execute("DROP TABLE ops.analytics_file")
        rebuilt = publish.publish(con, target)
        assert not rebuilt.incremental and rebuilt.rows == 1
        assert publish.publish(con, target).incremental  # and the next one updates it
    assert state_of(target)[0] == 1


def test_a_previous_file_left_mostly_free_blocks_is_built_compact_again(tmp_path, warehouse_path):
    target = tmp_path / "analytics.duckdb"
    with open_warehouse(warehouse_path) as con:
        finished_run(con, "run-1", dt.date(2026, 11, 20))
        publish.publish(con, target)
        with duckdb.connect(str(target)) as pub:  # as updates that removed many rows leave it
            pub.execute(
                "INSERT INTO billing_metrics SELECT DATE '2026-11-19', 'p_' || i, 'o_1', "
                "'bullphish_id.phishing.per_user', i, 'per_user', 'run-x', now() "
                "FROM range(1000000) r(i)"
            )
            pub.execute("CHECKPOINT")
            pub.execute("DELETE FROM billing_metrics WHERE units % 100 <> 0")
            pub.execute("CHECKPOINT")
            used, free = pub.execute(
                "SELECT used_blocks, free_blocks FROM pragma_database_size()"
            ).fetchall()[0]
        assert free > used
        rebuilt = publish.publish(con, target)
        assert not rebuilt.incremental and rebuilt.rows == 1
        with duckdb.connect(str(target), read_only=True) as pub:
            used, free = pub.execute(
                "SELECT used_blocks, free_blocks FROM pragma_database_size()"
            ).fetchall()[0]
        assert free == 0
        assert publish.publish(con, target).incremental  # compact again: updated from now on


def test_temporary_files_of_dead_publishes_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "analytics.duckdb"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    orphan = tmp_path / f".analytics.duckdb.{int(dead.stdout)}.abcd1234.tmp"
    live = tmp_path / f".analytics.duckdb.{os.getpid()}.abcd1234.tmp"
    for path in (orphan, Path(f"{orphan}.wal"), live):
        path.write_bytes(b"x")
    assert sorted(publish.remove_orphans(target)) == sorted([orphan, Path(f"{orphan}.wal")])
    assert live.exists()


# ------------------------------------------------------------------ the whole run


@pytest.mark.usefixtures("prefect_harness")
def test_an_analyst_holding_the_file_across_a_whole_run(configure, warehouse_path, tmp_path):
    """The lock test: a read-only session is open on the published file for the whole run;
    the run finishes (and publishes), the analyst's queries all succeed, and every state the
    analyst sees is the old one or the new one, complete."""

    day = yesterday_utc() - dt.timedelta(days=1)
    target = tmp_path / "analytics.duckdb"  # the default: next to the warehouse
    with open_warehouse(warehouse_path) as con:
        finished_run(con, "an-earlier-run", day - dt.timedelta(days=1))
        publish.publish(con, target)
    old = state_of(target)
    with RunningSandbox(SandboxConfig(seed=5, partners=9, short_pages=True)) as sandbox:
        configure(sandbox)
        held, fresh = Analyst(target, "held"), Analyst(target, "fresh")
        try:
            summary = billed(usage_date=day)
        finally:
            held_seen, fresh_seen = held.stop(), fresh.stop()
        world = sandbox.world
    assert summary.exit_code == 1  # the sandbox's problems: a run ending with exit 1 publishes
    new = state_of(target)
    assert new != old
    assert states(held_seen) == {tuple(old)}  # the held session keeps its complete, old state
    assert states(fresh_seen) <= {tuple(old), tuple(new)}  # never anything half-written
    assert fresh_seen[-1]["state"] == new  # its last look came after the run: the new state

    # the published file is the warehouse after the run (what the analysts read)
    expected = expected_billing(world, day)
    with duckdb.connect(str(target), read_only=True) as pub:
        metrics = {
            (p, o, t): u
            for p, o, t, u in pub.execute(
                "SELECT partner_id, organization_id, billing_type, units FROM billing_metrics "
                "WHERE usage_date = ?",
                [day],
            ).fetchall()
        }
        assert metrics == expected.metrics
        history = pub.execute(
            "SELECT partner_id, status FROM run_history WHERE run_id = ?", [summary.run_id]
        ).fetchall()
        assert dict(history) == {o.partner_id: o.status for o in summary.outcomes}
        # the organization mappings, fetched during the run for each partner it delivered
        fetches = dict(pub.execute("SELECT partner_id, status FROM ops.mapping_fetches").fetchall())
        delivered = {p for p, _, _ in expected.metrics}
        assert set(fetches) == delivered
        assert fetches["p_0007"] == "not_linked"  # its 404 is normal
        unmapped = pub.execute(
            "SELECT DISTINCT partner_id, organization_id, reason FROM unmapped_organizations"
        ).fetchall()
    billed_orgs = {(p, o) for p, o, _ in expected.metrics}
    want = set()
    for pid in delivered:
        mapped = {m["module_organization_id"] for m in world.organization_mappings(pid)}
        reason = (
            "partner not linked in KaseyaOne"
            if fetches[pid] == "not_linked"
            else "organization not mapped to a PSA company"
        )
        want |= {(p, o, reason) for p, o in billed_orgs if p == pid and o not in mapped}
    assert set(unmapped) == want
    assert ("p_0001", "o_0001o0003", "organization not mapped to a PSA company") in want


def test_two_runs_publishing_at_once_both_succeed(tmp_path, warehouse_path):
    """Parallel runs (a backfill's dates) publish from one process at the same time."""
    from concurrent.futures import ThreadPoolExecutor

    target = tmp_path / "analytics.duckdb"
    with open_warehouse(warehouse_path) as con:
        finished_run(con, "run-1", dt.date(2026, 11, 20))

    def one(_: int) -> int:
        with open_warehouse(warehouse_path) as con:
            return publish.publish(con, target).rows

    with ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(one, range(8)))
    assert (
        all(n in (0, 1) for n in rows) and 1 in rows
    )  # the first copies the run, later ones may not
    assert state_of(target)[0] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analytics.duckdb", "warehouse.duckdb"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_publish_that_fails_is_logged_and_does_not_fail_the_run(
    monkeypatch, warehouse_path, tmp_path
):
    import logging

    from prefect import flow

    from bullphish_billing.lease import RunLeases
    from bullphish_billing.run_context import RunContext
    from bullphish_billing.settings import load_settings
    from tasks import billing

    with open_warehouse(warehouse_path) as con:
        finished_run(con, "run-1", dt.date(2026, 11, 20))
    (tmp_path / "a-file").write_text("not a directory")
    monkeypatch.setenv("BILLING_WAREHOUSE", str(warehouse_path))
    monkeypatch.setenv("BILLING_ANALYTICS_FILE", str(tmp_path / "a-file" / "analytics.duckdb"))

    @flow
    def a_run(run_id: str):
        settings = load_settings()
        ctx = RunContext.start(settings, run_id, RunLeases(settings.warehouse, run_id))
        return billing.publish(ctx, dt.date(2026, 11, 20))

    class Remember(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    said = Remember()
    task_logger = logging.getLogger("prefect.task_runs")
    task_logger.addHandler(said)
    try:
        assert a_run("run-1") is None
        assert any("was not published" in line for line in said.lines), said.lines
        said.lines.clear()
        assert a_run("a-run-that-never-started") is None  # nothing to publish, nothing said
        assert not any("published" in line for line in said.lines), said.lines
    finally:
        task_logger.removeHandler(said)
