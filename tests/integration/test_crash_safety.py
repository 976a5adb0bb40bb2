"""A run killed with SIGKILL at each boundary of delivery, then run again: KaseyaOne ends with
exactly the metrics the sandbox's data implies, nothing applied twice, no 409, and the
warehouse agrees with KaseyaOne (docs/billing-rules.md rule 9).

The kill is real: `bullphish-billing run` runs in a child process with `BILLING_CRASH_AT`
naming a crash point (`bullphish_billing/crashpoints.py`), and kills itself there with
SIGKILL: no exception handler, no `finally`, no flush. The sandbox's partners have 520
organizations each, so every partner-date is sent in two batches and "between batches" is a
real boundary.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest
from fault_tools import (
    assert_delivered_exactly_once,
    prefect_api_url,  # noqa: F401 - fixture
)
from sandbox_env import child_env, output, run_cli

from bullphish_billing.dates import yesterday_utc
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

TWO_BATCHES = SandboxConfig(seed=21, partners=10, organizations_per_partner=520,
                            targets_per_organization=2)  # fmt: skip


def usage_posts(sandbox: RunningSandbox) -> list:
    return list(sandbox.kaseyaone.requests)


@pytest.mark.parametrize(
    ("point", "next_run"),
    [
        ("after-compute", "later date"),
        ("after-plan", "same date"),
        ("after-send", "same date"),
        ("between-batches", "same date"),
    ],
)
def test_a_run_killed_at_a_delivery_boundary_is_completed_once_by_the_next_run(
    point,
    next_run,
    tmp_path,
    prefect_api_url,  # noqa: F811
):
    day = yesterday_utc() - dt.timedelta(days=5)
    again = day if next_run == "same date" else day + dt.timedelta(days=1)
    warehouse = tmp_path / "warehouse.duckdb"
    with RunningSandbox(TWO_BATCHES) as sandbox:
        env = child_env(sandbox, warehouse, prefect_api_url)
        crashed = run_cli(
            ["run", "--date", day.isoformat()], env | {"BILLING_CRASH_AT": point}, tmp_path
        )
        assert crashed.returncode == -9, output(crashed)
        assert f"crashpoint: SIGKILL at {point}" in crashed.stderr

        # what the kill left behind
        posted = usage_posts(sandbox)
        with duckdb.connect(str(warehouse), read_only=True) as con:
            pending = {
                k for (k,) in con.execute(
                    "SELECT idempotency_key FROM ops.outbox WHERE status = 'pending'"
                ).fetchall()
            }  # fmt: skip
            unfinished = con.execute(
                "SELECT count(*) FROM ops.runs WHERE finished_at IS NULL"
            ).fetchall()[0][0]
            assert con.execute("SELECT count(*) FROM billing_metrics").fetchall()[0][0] > 0
        assert unfinished == 1  # the killed run never recorded an end
        if point in ("after-compute", "after-plan"):
            assert posted == []
            assert (point == "after-plan") == bool(pending)
        else:
            assert sandbox.kaseyaone.sends()
        lost_answers = {r.idempotency_key for r in sandbox.kaseyaone.sends()} & pending
        if point == "after-send":  # KaseyaOne stored it, the warehouse never heard back
            assert lost_answers

        rerun = run_cli(["run", "--date", again.isoformat()], env, tmp_path)
        assert rerun.returncode == 1, output(rerun)  # p_0007 unlinked, p_0008 rejections
        assert "Traceback" not in output(rerun)

        # the batches whose answers were lost went again under the same key: replays
        replayed = {r.idempotency_key for r in sandbox.kaseyaone.requests if r.replayed}
        assert lost_answers <= replayed
        for each in {day, again}:
            assert_delivered_exactly_once(sandbox, warehouse, each)
        with duckdb.connect(str(warehouse), read_only=True) as con:
            killed_run_rows = con.execute(
                "SELECT count(*) FROM ops.partner_runs WHERE run_id IN "
                "(SELECT run_id FROM ops.runs WHERE finished_at IS NULL)"
            ).fetchall()[0][0]
        assert killed_run_rows == 0  # the killed run claims no outcome, delivered or other


def test_a_run_killed_inside_the_raw_retention_loses_nothing_and_the_next_run_drops_it(
    tmp_path,
    prefect_api_url,  # noqa: F811
):
    """Crash point `in-retention`: the oldest date's target rows deleted and its drop recorded
    in ops.raw_retention, not committed. The kill leaves both as they were (the snapshot whole,
    no record), the run's billing stands, and the next run drops the snapshot and records it,
    the counts behind metric_explanations untouched."""
    old, day = yesterday_utc() - dt.timedelta(days=5), yesterday_utc() - dt.timedelta(days=4)
    keep = "5"  # the 5 dates ending yesterday: `day` is the oldest kept, `old` is dropped
    warehouse = tmp_path / "warehouse.duckdb"

    def facts() -> dict:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            return {
                name: con.execute(sql, [old]).fetchall()
                for name, sql in (
                    (
                        "targets",
                        "SELECT partner_id, count(*) FROM raw.targets WHERE usage_date = ? "
                        "GROUP BY ALL ORDER BY ALL",
                    ),
                    (
                        "dropped",
                        "SELECT partner_id, targets_dropped, retention_days FROM "
                        "ops.raw_retention WHERE usage_date = ? ORDER BY ALL",
                    ),
                    (
                        "fates",
                        "SELECT partner_id, organization_id, kind, reason, records FROM "
                        "ops.target_fates WHERE usage_date = ? ORDER BY ALL",
                    ),
                    (
                        "snapshot",
                        "SELECT DISTINCT target_snapshot FROM metric_explanations "
                        "WHERE usage_date = ? AND target_snapshot IS NOT NULL",
                    ),
                )
            }

    with RunningSandbox(TWO_BATCHES) as sandbox:
        env = child_env(sandbox, warehouse, prefect_api_url)
        first = run_cli(["run", "--date", old.isoformat()], env, tmp_path)
        assert first.returncode == 1, output(first)  # p_0007 unlinked, p_0008 rejections
        before = facts()
        assert before["targets"] and before["fates"] and before["dropped"] == []
        assert before["snapshot"] == [("kept",)]

        crashed = run_cli(
            ["run", "--date", day.isoformat()],
            env | {"BILLING_RAW_RETENTION_DAYS": keep, "BILLING_CRASH_AT": "in-retention"},
            tmp_path,
        )
        assert crashed.returncode == -9, output(crashed)
        assert "crashpoint: SIGKILL at in-retention" in crashed.stderr
        assert facts() == before  # neither the delete nor its record
        for each in (old, day):
            assert_delivered_exactly_once(sandbox, warehouse, each)

        rerun = run_cli(
            ["run", "--date", day.isoformat()], env | {"BILLING_RAW_RETENTION_DAYS": keep}, tmp_path
        )
        assert rerun.returncode == 1, output(rerun)
        assert "Traceback" not in output(rerun)
        after = facts()
        assert after["targets"] == []
        assert after["dropped"] == [(p, n, int(keep)) for p, n in before["targets"]]
        assert after["fates"] == before["fates"] and after["snapshot"] == [("dropped",)]
        for each in (old, day):
            assert_delivered_exactly_once(sandbox, warehouse, each)
        with duckdb.connect(str(warehouse), read_only=True) as con:
            kept = con.execute(
                "SELECT count(*) FROM raw.targets WHERE usage_date = ?", [day]
            ).fetchall()[0][0]
        assert kept > 0  # the date at the cutoff is kept
