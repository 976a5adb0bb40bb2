"""Reconciliation with KaseyaOne (rule 12) end to end: the daily flow under Prefect's test
harness, against the sandbox over loopback, with a real DuckDB file.

What must be found comes from the sandbox's own record of how its store drifted
(`KaseyaOneState.drifts`), never from the pipeline's tables.
"""

from __future__ import annotations

import datetime as dt
import uuid

import duckdb
import orjson
import pytest
from flow_runs import billed
from relay import Relay, Reply
from sandbox_env import stored

from bullphish_billing import lease, stages
from bullphish_billing.cli import main
from bullphish_billing.dates import today_utc, yesterday_utc
from bullphish_billing.run_context import RunContext
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig
from bullphish_billing.sandbox.kaseyaone_api import DriftKind
from bullphish_billing.settings import load_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")

DRIFTING = SandboxConfig(seed=11, partners=8, targets_per_organization=5, drift_rate=0.3)
CLEAN = ["p_0002", "p_0009"]  # partners of SandboxConfig() delivered with nothing held or rejected
EXPECTED_KIND = {
    DriftKind.DROPPED: "missing_at_kaseyaone",
    DriftKind.CHANGED: "differs",
    DriftKind.INJECTED: "unexpected_at_kaseyaone",
}


def differences(warehouse, check_id: str | None = None) -> dict[tuple, tuple]:
    """(partner, date, organization, type) -> (difference, acknowledged, KaseyaOne's units)
    of one check (default: the open differences, main.reconciliation_open)."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        if check_id is None:
            sql, params = "SELECT * FROM main.reconciliation_open", []
        else:
            sql = "SELECT * FROM ops.reconciliation_differences WHERE check_id = ?"
            params = [check_id]
        rows = con.execute(
            "SELECT partner_id, usage_date::VARCHAR, organization_id, billing_type, difference, "
            f"acknowledged_units, kaseyaone_units FROM ({sql})",
            params,
        ).fetchall()
    return {r[:4]: r[4:] for r in rows}


def drifted(sandbox: RunningSandbox) -> dict[tuple, tuple]:
    """What a reconciliation must find, from the sandbox's drift record."""
    return {
        (d.partner_id, d.usage_date, d.organization_id, d.billing_type): (
            EXPECTED_KIND[d.kind],
            d.units_before,
            d.units_after,
        )
        for d in sandbox.kaseyaone.drifts
    }


def next_run_reconciles(day: dt.date) -> stages.reconciliation.ReconcileReport:
    """What the next daily run's reconcile task does (repair, then check), as the plain
    function the task wraps."""
    settings = load_settings()
    run_id = str(uuid.uuid4())
    ctx = RunContext.start(settings, run_id, lease.RunLeases(settings.warehouse, run_id))
    return stages.reconcile(ctx, [day], repair=True)


def test_a_date_the_schedule_does_not_read_is_repaired_and_checked_again(configure, warehouse_path):
    """The daily run reads back the date, the day before and the window's last date
    (stages.reconcile_schedule), but repairs the open differences of the whole window and
    checks the partner-dates it repaired: a drift found on a date three days back is re-sent
    once and seen repaired, and no other date of the window is read."""
    day = yesterday_utc() - dt.timedelta(days=2)
    later = day + dt.timedelta(days=3)  # day is neither later, later - 1 nor later - 7
    assert day not in stages.reconcile_schedule(later, 7)
    assert day in stages.reconcile_dates(later, 7)
    with RunningSandbox(DRIFTING) as sandbox:
        configure(sandbox)
        billed(usage_date=day)
        want = drifted(sandbox)
        ours = {k for k, v in want.items() if v[0] != "unexpected_at_kaseyaone"}
        assert ours
        settings = load_settings()
        run_id = str(uuid.uuid4())
        ctx = RunContext.start(settings, run_id, lease.RunLeases(settings.warehouse, run_id))
        report = stages.reconcile(
            ctx,
            stages.reconcile_dates(later, 7),
            check_dates=stages.reconcile_schedule(later, 7),
            repair=True,
        )
        assert report.repaired == len(ours)
        repaired_partners = {p for p, _d, _o, _t in ours}
        assert {(c.usage_date, c.partner_id) for c in report.checks} == {
            (day, p) for p in repaired_partners
        }  # only what it repaired: nothing else of the window is delivered
        assert sum(c.missing + c.differing for c in report.checks) == 0
        assert set(differences(warehouse_path)) == set(want) - ours


def test_the_schedule_reads_three_dates_of_the_window():
    day = dt.date(2026, 12, 1)
    assert stages.reconcile_schedule(day, 7) == [
        day,
        day - dt.timedelta(days=1),
        dt.date(2026, 11, 24),
    ]
    assert stages.reconcile_schedule(day, 1) == [day, day - dt.timedelta(days=1)]
    assert stages.reconcile_schedule(day, 0) == [day]
    assert len(stages.reconcile_dates(day, 7)) == 8


def test_reconciliation_finds_every_drift_repairs_ours_and_reports_the_rest(
    configure, warehouse_path
):
    day = yesterday_utc() - dt.timedelta(days=2)
    with RunningSandbox(DRIFTING) as sandbox:
        configure(sandbox)
        summary = billed(usage_date=day)
        want = drifted(sandbox)
        kinds = {kind for kind, _, _ in want.values()}
        assert kinds == set(EXPECTED_KIND.values()), "the seed should drift every way"

        # the run's own check found exactly what drifted, and the run is a problem (Failed)
        assert differences(warehouse_path) == want
        assert summary.reconciliation_differences == len(want)
        assert summary.exit_code == 1
        assert f"; {len(want)} reconciliation difference(s)" in summary.one_line()

        # the next run re-sends what is ours, once, under new keys; its check sees the repair
        keys_before = {r.idempotency_key for r in sandbox.kaseyaone.requests}
        after = next_run_reconciles(day)
        ours = {k: v for k, v in want.items() if v[0] != "unexpected_at_kaseyaone"}
        theirs = {k: v for k, v in want.items() if v[0] == "unexpected_at_kaseyaone"}
        assert after.repaired == len(ours)
        resent = [r for r in sandbox.kaseyaone.sends() if r.idempotency_key not in keys_before]
        assert len({r.idempotency_key for r in resent}) == len(resent)
        resent_metrics = {
            (r.body["partner_id"], r.body["usage_date"], m["organization_id"], m["billing_type"])
            for r in resent
            for m in r.body["metrics"]
        }
        assert resent_metrics == set(ours)
        held = stored(sandbox, day)
        for (partner, _, org, billing_type), (_, acknowledged, _) in ours.items():
            assert held[(partner, org, billing_type)] == acknowledged
        # what KaseyaOne holds that we never sent is reported again, never deleted
        for (partner, _, org, billing_type), (_, _, units) in theirs.items():
            assert held[(partner, org, billing_type)] == units
        assert differences(warehouse_path, after.check_id) == theirs
        assert differences(warehouse_path) == theirs

        # the repair is recorded on the finding, with the key of the batch that re-sent it
        with duckdb.connect(str(warehouse_path), read_only=True) as con:
            repaired = con.execute(
                "SELECT d.difference, d.repaired_by IS NOT NULL, o.status "
                "FROM ops.reconciliation_differences d "
                "LEFT JOIN ops.outbox o ON o.idempotency_key = d.repaired_by "
                "WHERE d.check_id <> ?",
                [after.check_id],
            ).fetchall()
        assert sorted(repaired) == sorted(
            (
                kind,
                kind != "unexpected_at_kaseyaone",
                None if kind.startswith("unexp") else "acknowledged",
            )
            for kind, _, _ in want.values()
        )

        # a second reconciliation: ours clean, nothing re-sent again
        sends = len(sandbox.kaseyaone.sends())
        again = next_run_reconciles(day)
        assert again.repaired == 0
        assert len(sandbox.kaseyaone.sends()) == sends
        assert sum(c.missing + c.differing for c in again.checks) == 0
        assert differences(warehouse_path, again.check_id) == theirs


def _refusing(partner_id: str, secret: str):
    """A KaseyaOne relay that refuses to list the stored usage of one partner (403, quoting
    the client secret, which must not reach the warehouse)."""

    def respond(exchange):
        usage = exchange.method == "GET" and exchange.path == "/v1/billing/usage"
        if usage and exchange.query.get("partner_id") == partner_id:
            body = {"code": "forbidden", "message": f"no reading for you {secret}"}
            return Reply(403, orjson.dumps(body))
        return None

    return respond


def test_a_clean_run_stays_clean_and_the_command_reports_failed_reads(
    configure, warehouse_path, capsys
):
    day = yesterday_utc() - dt.timedelta(days=3)
    config = SandboxConfig(today=today_utc())  # no drift
    with RunningSandbox(config) as sandbox:
        configure(sandbox)
        summary = billed(usage_date=day, partner_ids=CLEAN)
        assert summary.exit_code == 0
        assert summary.reconciliation_differences == summary.reconciliation_failed == 0
        delivered = {o.partner_id for o in summary.outcomes if o.metrics_sent}
        assert len(delivered) >= 2
        with duckdb.connect(str(warehouse_path), read_only=True) as con:
            checks = con.execute(
                "SELECT partner_id, status FROM ops.reconciliation WHERE usage_date = ?", [day]
            ).fetchall()
        assert dict(checks) == dict.fromkeys(delivered, "clean")
        assert differences(warehouse_path) == {}

        # on demand: clean is exit 0
        assert main(["reconcile", "--start", str(day), "--end", str(day)]) == 0
        assert "0 difference(s)" in capsys.readouterr().out

        # a partner-date KaseyaOne cannot be read for is recorded failed, the others go on
        victim = sorted(delivered)[0]
        secret = config.kaseyaone_client_secret
        with Relay(sandbox.kaseyaone_url, _refusing(victim, secret)) as relay:
            configure(sandbox, kaseyaone_url=relay.url)
            code = main(["reconcile", "--start", str(day), "--end", str(day)])
        out = capsys.readouterr().out
        assert code == 1
        assert victim in out and "1 failed" in out
        with duckdb.connect(str(warehouse_path), read_only=True) as con:
            latest = con.execute(
                "SELECT partner_id, status, error, run_id FROM ops.reconciliation "
                "WHERE check_id = (SELECT arg_max(check_id, checked_at) FROM ops.reconciliation)"
            ).fetchall()
        statuses = {p: s for p, s, _, _ in latest}
        assert statuses == {p: ("failed" if p == victim else "clean") for p in delivered}
        error = next(e for p, _, e, _ in latest if p == victim)
        assert "403" in error and secret not in error
        assert all(run_id is None for *_, run_id in latest)  # the command is no run


def test_reconcile_command_refuses_bad_input_in_one_line(configure, warehouse_path, capsys):
    with RunningSandbox(SandboxConfig(partners=1)) as sandbox:
        configure(sandbox)
        day = str(yesterday_utc())
        cases = {
            ("--start", day, "--end", "2020-01-01"): "is before --start",
            ("--start", day, "--end", str(today_utc())): "after yesterday",
            ("--start", day, "--end", day): "no warehouse at",
        }
        for args, said in cases.items():
            assert main(["reconcile", *args]) == 2
            err = capsys.readouterr().err.strip()
            assert said in err and len(err.splitlines()) == 1, err
        with pytest.raises(SystemExit) as exited:
            main(["reconcile", "--start", "yesterday", "--end", day])
        assert exited.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "not a date" in err and len(err.splitlines()) == 1, err

        from bullphish_billing.warehouse.db import open_warehouse

        with open_warehouse(warehouse_path):  # a warehouse that delivered nothing
            pass
        assert main(["reconcile", "--start", day, "--end", day, "--partner", "p_nope"]) == 2
        err = capsys.readouterr().err.strip()
        assert "never delivered" in err and len(err.splitlines()) == 1, err
        assert main(["reconcile", "--start", day, "--end", day]) == 0  # nothing to check
        assert "0 partner-date(s) checked" in capsys.readouterr().out
