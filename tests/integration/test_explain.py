"""`bullphish-billing explain` and the view metric_explanations, against the oracle.

Two runs of the daily flow on a faulty sandbox (malformed records, the exact duplicate target of
p_0002, the conflicting duplicate and the unknown organization of p_0001, archived
organizations, skipped, held and partly delivered partners), shared by the module. Every
expected number comes from the sandbox's own data (tests/oracle.py), never from the pipeline's
tables.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil

import duckdb
import pytest
from flow_runs import billed
from oracle import expected_billing, expected_exclusions
from sandbox_env import child_env, run_cli, sandbox_env

from bullphish_billing import cli, lease, retention
from bullphish_billing.dates import today_utc
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")

TODAY = today_utc()
CONFIG = SandboxConfig(today=TODAY, malformed_rate=0.01)
DAY = TODAY - dt.timedelta(days=1)  # p_0001's conflicting duplicate is served on this day
EARLIER = DAY - dt.timedelta(days=1)
THRESHOLDS = {EARLIER: 0.01, DAY: 0.05}  # EARLIER: some partners held; DAY: p_0001 billed
TARGET_KINDS = ("active", "inactive", "exact duplicate collapsed", "conflicting duplicate")


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory, prefect_harness):
    path = tmp_path_factory.mktemp("explain") / "warehouse.duckdb"
    with pytest.MonkeyPatch.context() as mp, RunningSandbox(CONFIG) as sandbox:
        for name, value in sandbox_env(sandbox, path).items():
            mp.setenv(name, value)
        expected = {}
        for day in (EARLIER, DAY):
            mp.setenv("BILLING_HOLD_THRESHOLD", str(THRESHOLDS[day]))
            billed(usage_date=day)
            expected[day] = expected_billing(sandbox.world, day, THRESHOLDS[day])
        mp.setenv("BILLING_WAREHOUSE", str(path))
        yield path, sandbox.world, expected, sandbox


def explain(capsys, monkeypatch, path, *args: str) -> tuple[int, str, str]:
    monkeypatch.setenv("BILLING_WAREHOUSE", str(path))
    code = cli.main(["explain", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def doc_of(capsys, monkeypatch, path, day, partner, *more: str) -> dict:
    code, out, err = explain(
        capsys, monkeypatch, path, "--date", str(day), "--partner", partner, "--json", *more
    )
    assert code == 0, err
    return json.loads(out)


def billed_partners(expected) -> list[str]:
    return sorted(expected.billable - expected.held)


def test_counted_and_excluded_numbers_equal_what_the_sandbox_data_implies(
    warehouse, capsys, monkeypatch
):
    """Rules 4, 6, 7: every reason's count per organization, for every billed partner."""
    path, world, expected, _ = warehouse
    seen_kinds: set[str] = set()
    for day in (EARLIER, DAY):
        for pid in billed_partners(expected[day]):
            doc = doc_of(capsys, monkeypatch, path, day, pid)
            oracle = expected_exclusions(world, day, pid)
            want_metrics = expected[day].for_partner(pid)
            got_metrics = {(m["organization_id"], m["billing_type"]): m for m in doc["metrics"]}
            assert {k: m["units"] for k, m in got_metrics.items()} == want_metrics
            for (oid, btype), m in got_metrics.items():
                got = {r["kind"]: r["records"] for r in m["reasons"]}
                want = {k: n for (o, k), n in oracle.by_org.items() if o == oid}
                assert got == want, (day, pid, oid, btype)
                seen_kinds |= set(got)
                left_out = sum(r["records"] for r in m["reasons"] if not r["counted"])
                counted = sum(r["records"] for r in m["reasons"] if r["counted"])
                if btype.endswith("per_user"):
                    # the units and what was left out add up to the records received
                    assert m["units"] == counted
                    assert m["units"] + left_out == oracle.received.get(oid, 0), (pid, oid)
                    assert m["rule"].startswith("rule 4")
                    assert m["module_enabled"] == (counted > 0 or not want.get("active"))
                else:
                    assert counted == 0 and m["rule"].startswith("rule 3")
                    assert m["units"] == (1 if m["module_enabled"] else 0)
            unbilled = {}
            for r in doc["not_billed"]:
                if r["kind"].startswith("partner-date"):  # p_0007: delivery failed
                    assert r["kind"] == "partner-date failed" and pid == "p_0007"
                    continue
                key = (r["organization_id"], r["kind"])
                unbilled[key] = unbilled.get(key, 0) + r["records"]
                seen_kinds.add(r["kind"])
            bad = sum(n for (o, k), n in unbilled.items() if k == "quarantined")
            assert bad == oracle.bad_records, (day, pid)
            want_unbilled = {
                (o, k): n
                for (o, k), n in oracle.by_org.items()
                if k not in TARGET_KINDS or o not in {oid for oid, _ in got_metrics}
            }
            want_unbilled |= {(o, "organization held"): 0 for o in oracle.held_orgs}
            want_unbilled |= {
                (o, "organization archived"): want_unbilled.get((o, "organization archived"), 0)
                for o in oracle.archived_orgs - oracle.held_orgs
            }
            for o, k in list(want_unbilled):
                if (o, k) in oracle.by_org and k in ("organization held", "organization archived"):
                    want_unbilled[(o, k)] = oracle.by_org[(o, k)]
            got_unbilled = {k: n for k, n in unbilled.items() if k[1] != "quarantined"}
            assert got_unbilled == want_unbilled, (day, pid)
    # the faulty sandbox exercised every reason
    assert {
        "active",
        "inactive",
        "exact duplicate collapsed",
        "conflicting duplicate",
    } <= seen_kinds
    assert {"quarantined", "unknown organization", "organization archived"} <= seen_kinds


def test_skipped_and_held_partner_dates_say_so_with_their_reason(warehouse, capsys, monkeypatch):
    """Rules 1, 7: a partner-date skipped or held has no metric and says why."""
    path, _, expected, _ = warehouse
    assert expected[EARLIER].held, "the sandbox should hold a partner on EARLIER"
    for day in (EARLIER, DAY):
        for pid, status in [(p, "skipped") for p in expected[day].skipped] + [
            (p, "held") for p in expected[day].held
        ]:
            doc = doc_of(capsys, monkeypatch, path, day, pid)
            assert doc["partner_date"]["status"] == status and doc["partner_date"]["reason"]
            assert doc["metrics"] == []
            kinds = {r["kind"] for r in doc["not_billed"]}
            assert f"partner-date {status}" in kinds
            code, out, _ = explain(capsys, monkeypatch, path, "--date", str(day), "--partner", pid)
            assert code == 0 and f"no metric of this partner-date: it was {status}" in out


def test_previous_day_and_what_was_sent(warehouse, capsys, monkeypatch):
    """Rule 8: the previous reported day's units and the change; the batch and KaseyaOne's
    answer, a rejection with its reason."""
    path, world, expected, sandbox = warehouse
    stored = {
        (m["partner_id"], m["organization_id"], m["billing_type"]): m["units"]
        for m in sandbox.kaseyaone.stored(usage_date=DAY)
    }
    for pid in billed_partners(expected[DAY]):
        doc = doc_of(capsys, monkeypatch, path, DAY, pid)
        before = expected[EARLIER].for_partner(pid)
        for m in doc["metrics"]:
            key = (m["organization_id"], m["billing_type"])
            prev = before.get(key)
            if pid in billed_partners(expected[EARLIER]):
                assert m["previous"]["usage_date"] == EARLIER.isoformat()
                assert m["previous"]["units"] == prev
                assert m["previous"]["change"] == m["units"] - (prev or 0)
            sent, held = m["sent"], m["kaseyaone"]
            if (pid, *key) in stored:
                assert sent["state"] == "acknowledged" and stored[(pid, *key)] == m["units"]
                assert sent["idempotency_key"].startswith(f"bpb1-{DAY}-") and sent["sent_at"]
                # the run's own reconciliation (rule 11) found it held, unchanged
                assert held["state"] == "match" and held["kaseyaone_units"] == m["units"]
                assert held["check_id"] and held["checked_at"]
            elif pid == "p_0008" and key[0] == "o_0008o0002":
                assert sent["state"] == "rejected"
                assert sent["reason"] == "organization_not_linked"
                assert held["state"] == "not held" and held["kaseyaone_units"] is None
            else:
                assert sent["state"] != "acknowledged", (pid, key)
                assert held["state"] in ("never reconciled", "not held"), (pid, key)


def test_the_last_reconciliation_shows_what_kaseyaone_held(warehouse, capsys, monkeypatch):
    """What KaseyaOne held at the partner-date's latest check (checks inserted by hand, later
    than the run's own): a difference's units, else the acknowledged units; 'never
    reconciled' without a check."""
    path, _, _, _ = warehouse
    doc = doc_of(capsys, monkeypatch, path, DAY, "p_0002")
    first, second = doc["metrics"][0], doc["metrics"][1]
    with duckdb.connect(str(path)) as con:
        for check, status, at in (("c-old", "differences", 1), ("c-new", "differences", 2)):
            con.execute(
                "INSERT INTO ops.reconciliation (check_id, usage_date, partner_id, status, "
                "checked_at) VALUES (?, ?, 'p_0002', ?, now() + to_hours(?))",
                [check, DAY, status, at],
            )
        for check, units in (("c-old", 99), ("c-new", first["units"] + 5)):
            con.execute(
                "INSERT INTO ops.reconciliation_differences (check_id, usage_date, partner_id, "
                "organization_id, billing_type, difference, acknowledged_units, "
                "kaseyaone_units, checked_at) VALUES (?, ?, 'p_0002', ?, ?, 'differs', ?, ?, "
                "now())",
                [
                    check,
                    DAY,
                    first["organization_id"],
                    first["billing_type"],
                    first["units"],
                    units,
                ],
            )
    try:
        doc = doc_of(capsys, monkeypatch, path, DAY, "p_0002")
        got = {(m["organization_id"], m["billing_type"]): m["kaseyaone"] for m in doc["metrics"]}
        k1 = got[(first["organization_id"], first["billing_type"])]
        assert k1["state"] == "differs" and k1["kaseyaone_units"] == first["units"] + 5
        assert k1["check_id"] == "c-new"
        k2 = got[(second["organization_id"], second["billing_type"])]
        assert k2["state"] == "match" and k2["kaseyaone_units"] == second["units"]
        with duckdb.connect(str(path)) as con:  # p_0009's checks, set aside a moment
            con.execute(
                "UPDATE ops.reconciliation SET partner_id = 'p_0009-aside' "
                "WHERE partner_id = 'p_0009'"
            )
        try:
            other = doc_of(capsys, monkeypatch, path, DAY, "p_0009")
        finally:
            with duckdb.connect(str(path)) as con:
                con.execute(
                    "UPDATE ops.reconciliation SET partner_id = 'p_0009' "
                    "WHERE partner_id = 'p_0009-aside'"
                )
        assert other["metrics"]
        assert all(m["kaseyaone"]["state"] == "never reconciled" for m in other["metrics"])
    finally:
        with duckdb.connect(str(path)) as con:
            for table in ("ops.reconciliation_differences", "ops.reconciliation"):
                con.execute(f"DELETE FROM {table} WHERE check_id IN ('c-old', 'c-new')")


def test_never_processed_is_exit_2_in_one_line(warehouse, tmp_path):
    path, _, _, sandbox = warehouse
    env = child_env(sandbox, path)
    for args, words in (
        (["--date", str(DAY), "--partner", "p_9999"], "p_9999 was never processed"),
        (["--date", str(DAY - dt.timedelta(days=30)), "--partner", "p_0002"], "never processed"),
        (["--date", "2026-02-30", "--partner", "p_0002"], "not a date"),
    ):
        result = run_cli(["explain", *args], env, tmp_path)
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.stderr
        assert result.stdout == ""


def test_output_is_ids_and_counts_only(warehouse, capsys, monkeypatch):
    """Rule 10: with every target id listed, no email or name of a target appears."""
    path, world, _, _ = warehouse
    for pid in ("p_0001", "p_0002"):
        records = [r for r in world.targets(pid, DAY) if isinstance(r, dict)]
        names = {r.get(k) for r in records for k in ("first_name", "last_name")} - {None}
        for more in ((), ("--json",)):
            code, out, _ = explain(
                capsys, monkeypatch, path, "--date", str(DAY), "--partner", pid, "--targets", *more
            )
            assert code == 0 and "t_" in out
            assert not re.search(r"[^@\s]+@[^@\s]+\.[a-z]+", out)
            words = set(re.findall(r"[A-Za-z]+", out))
            assert not names & words, names & words


def test_filters_and_target_ids(warehouse, capsys, monkeypatch):
    path, world, _, _ = warehouse
    doc = doc_of(
        capsys,
        monkeypatch,
        path,
        DAY,
        "p_0002",
        "--organization",
        "o_0002o0001",
        "--billing-type",
        "bullphish_id.phishing.per_organization",
        "--targets",
    )
    assert [(m["organization_id"], m["billing_type"]) for m in doc["metrics"]] == [
        ("o_0002o0001", "bullphish_id.phishing.per_organization")
    ]
    dup = [r for r in doc["metrics"][0]["reasons"] if r["kind"] == "exact duplicate collapsed"]
    assert dup and dup[0]["target_ids"] == ["t_0002u000001"]  # the sandbox's exact duplicate
    code, _, err = explain(
        capsys,
        monkeypatch,
        path,
        "--date",
        str(DAY),
        "--partner",
        "p_0002",
        "--organization",
        "o_0002o9999",
    )
    assert code == 2 and "o_0002o9999" in err and len(err.strip().splitlines()) == 1


def test_target_ids_agree_with_the_counts_and_the_sandbox(warehouse, capsys, monkeypatch):
    """`--targets` lists, per reason, the ids of the records the view counts (the ids from the
    warehouse's snapshot, the counts from ops.target_fates: one classification)."""
    path, world, expected, _ = warehouse
    for pid in billed_partners(expected[DAY]):
        doc = doc_of(capsys, monkeypatch, path, DAY, pid, "--targets")
        served = {
            r["id"]: r.get("organization_id")
            for r in world.targets(pid, DAY)
            if isinstance(r, dict) and isinstance(r.get("id"), str)
        }
        for m in doc["metrics"]:
            for r in m["reasons"]:
                ids = r["target_ids"]
                assert ids == sorted(set(ids)), (pid, r["kind"])
                if r["kind"] in ("active", "inactive", "organization archived"):
                    assert len(ids) == r["records"], (pid, m["organization_id"], r["kind"])
                else:  # copies: each id once
                    assert 0 < len(ids) <= r["records"], (pid, r["kind"])
                assert all(served[t] == m["organization_id"] for t in ids), (pid, r["kind"])


def test_the_analysts_file_answers_the_same(warehouse):
    """The view reads counts the run stored (ops.target_fates), not raw.targets, so the
    analysts' file (which holds no raw.targets) explains every metric as the warehouse does."""
    path, _, _, _ = warehouse
    query = "SELECT * FROM metric_explanations ORDER BY ALL"
    with duckdb.connect(str(path), read_only=True) as con:
        ours = con.execute(query).fetchall()
    with duckdb.connect(str(path.with_name("analytics.duckdb")), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw.targets").fetchall() == [(0,)]
        theirs = con.execute(query).fetchall()
    assert ours and theirs == ours
    assert any(row[11] for row in ours)  # target records are counted in it


def test_stale_users_are_shown_and_billed_all_the_same(warehouse, capsys, monkeypatch):
    """Issue 14 item 3 in explain: a per-user metric's stale active users, as counted in
    stale_active_targets (the sandbox's dormant users of o_XXXXo0002); the units unchanged."""
    path, _, expected, _ = warehouse
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute(
            "SELECT partner_id, organization_id, stale_targets FROM stale_active_targets "
            "WHERE usage_date = ? AND subscription_type = 'per_user' AND stale_targets > 0",
            [DAY],
        ).fetchall()
    assert rows
    pid, oid, n = rows[0]
    doc = doc_of(capsys, monkeypatch, path, DAY, pid, "--organization", oid)
    assert doc["stale_days"] == 180
    for m in doc["metrics"]:
        assert m["stale"]["stale_targets"] == n and m["stale"]["oldest_updated_at"]
        assert m["units"] == expected[DAY].for_partner(pid)[(oid, m["billing_type"])]
    code, out, _ = explain(capsys, monkeypatch, path, "--date", str(DAY), "--partner", pid)
    assert code == 0 and "active users not updated in 180 days" in out


def test_a_dropped_target_snapshot_is_said_and_its_counts_stay(warehouse, tmp_path):
    """Raw retention (issue 16 item 3) on a copy of the module's warehouse, keeping DAY alone:
    EARLIER's target snapshot is dropped, `explain --targets` says so in one line (when, by
    which setting) instead of listing no ids, and every count of EARLIER stays as it was; the
    view and the JSON say which snapshot is kept and which dropped."""
    path, _, expected, sandbox = warehouse
    copy = tmp_path / "warehouse.duckdb"
    shutil.copyfile(path, copy)
    env = child_env(sandbox, copy)
    pid = billed_partners(expected[EARLIER])[0]

    def explained(day: dt.date, *more: str) -> tuple[str, dict]:
        args = ["explain", "--date", str(day), "--partner", pid, "--targets", *more]
        text, doc = run_cli(args, env, tmp_path), run_cli([*args, "--json"], env, tmp_path)
        assert text.returncode == 0 and doc.returncode == 0, text.stderr + doc.stderr
        return text.stdout, json.loads(doc.stdout)

    def counts(doc: dict) -> list:
        return [
            (m["organization_id"], m["billing_type"], m["units"], r["kind"], r["records"])
            for m in doc["metrics"]
            for r in m["reasons"]
        ] + [(r["organization_id"], r["kind"], r["records"]) for r in doc["not_billed"]]

    before_text, before = explained(EARLIER)
    assert before["target_snapshot"]["state"] == "kept"
    assert any(r.get("target_ids") for m in before["metrics"] for r in m["reasons"])
    assert "dropped" not in before_text
    with duckdb.connect(str(copy)) as con, lease.run_leases(copy, "retention-test") as leases:
        report = retention.apply(
            con, yesterday=DAY, retention_days=1, run_id="retention-test", leases=leases
        )
        assert report.kept_from == DAY and set(report.dropped) == {EARLIER} and report.rows > 0

    text, doc = explained(EARLIER)
    snapshot = doc["target_snapshot"]
    assert snapshot["state"] == "dropped" and snapshot["retention_days"] == 1
    dropped_on = snapshot["dropped_at"][:10]
    said = [line for line in text.splitlines() if "dropped" in line]
    assert said == [
        f"targets: no ids to list: the target snapshot of {EARLIER} was dropped on {dropped_on} "
        "by BILLING_RAW_RETENTION_DAYS=1 (the counts below stay)"
    ]
    # no list of ids, not even an empty one
    assert not [line for line in text.splitlines() if line.startswith("  targets, ")]
    assert not any("target_ids" in r for m in doc["metrics"] for r in m["reasons"])
    assert counts(doc) == counts(before) and counts(doc)
    # DAY, at the cutoff, keeps its snapshot and lists its ids
    day_text, day_doc = explained(DAY)
    assert day_doc["target_snapshot"]["state"] == "kept"
    assert [line for line in day_text.splitlines() if line.startswith("  targets, ")]
    with duckdb.connect(str(copy), read_only=True) as con:
        states = con.execute(
            "SELECT usage_date, target_snapshot, count(*) FROM metric_explanations "
            "WHERE partner_id = ? GROUP BY ALL ORDER BY ALL",
            [pid],
        ).fetchall()
    assert [(d, s) for d, s, _ in states] == [(EARLIER, "dropped"), (DAY, "kept")]
