"""Each billing rule of docs/billing-rules.md (1-7) on hand-built data, through the real validation,
raw snapshots and SQL. Each test breaks if its rule is broken."""

from __future__ import annotations

from warehouse_builder import evaluate, load, metrics, org, partner, quarantine, target

from bullphish_billing import billing_rules
from bullphish_billing.billing_rules import DUPLICATE_CONFLICT, UNKNOWN_ORGANIZATION

DAY = __import__("warehouse_builder").DAY
PU = "bullphish_id.{}.per_user"
PO = "bullphish_id.{}.per_organization"


def decisions(con):
    return {d.partner_id: d for d in billing_rules.decide_partners(con, DAY, "test-run")}


def test_rule1_only_partners_meeting_all_three_prerequisites_are_billed(con):
    load(
        con,
        [
            partner("p_ok"),
            partner("p_off", activated=False),
            partner("p_nopsa", psa=None),
            partner("p_nologin", unified=False),
            partner("p_bms", psa="bms"),
            partner("p_none", activated=False, psa=None, unified=False),
        ],
        {},
        {},
    )
    d = decisions(con)
    assert d["p_ok"].decision == "billable" and d["p_bms"].decision == "billable"
    assert d["p_off"].decision == "skipped" and "not activated" in d["p_off"].reason
    assert d["p_nopsa"].decision == "skipped" and "no PSA" in d["p_nopsa"].reason
    assert d["p_nologin"].decision == "skipped" and "unified login" in d["p_nologin"].reason
    assert d["p_none"].reason.count(";") == 2  # every unmet prerequisite is named


def test_rule1_a_partner_with_a_bad_record_is_held_not_billed(con):
    bad = partner("p_bad", sub="per_everything")
    load(con, [partner("p_ok"), bad, {"id": 7}], {}, {})
    d = decisions(con)
    assert d["p_bad"].decision == "held" and "subscription_type" in d["p_bad"].reason
    assert (
        "partner",
        None,
        "id: not a string; name: missing; subscription_type: missing; "
        "kaseyaone_activated: missing; psa: missing; unified_login_enabled: missing; "
        "updated_at: missing",
    ) in quarantine(con)  # a record without a usable id is kept, with every reason


def test_rule2_only_active_organizations_sub_organizations_on_their_own(con):
    load(
        con,
        [partner("p_1", sub="per_organization")],
        {
            "p_1": [
                org("o_a", "p_1"),
                org("o_arch", "p_1", status="archived"),
                org("o_sub", "p_1", parent="o_a"),
            ]
        },
        {},
    )
    evaluate(con, ["p_1"])
    billed = {o for o, _ in metrics(con, "p_1")}
    assert billed == {"o_a", "o_sub"}


def test_rule3_per_organization_is_a_flat_one_or_zero_per_module(con):
    load(
        con,
        [partner("p_1", sub="per_organization")],
        {"p_1": [org("o_a", "p_1", ta=True, ph=False)]},
        {"p_1": [target(f"t_{i}", "o_a") for i in range(5)]},
    )
    evaluate(con, ["p_1"])
    assert metrics(con, "p_1") == {
        ("o_a", PO.format("training_awareness")): 1,
        ("o_a", PO.format("phishing")): 0,
    }


def test_rule4_per_user_counts_active_targets_of_enabled_modules(con):
    load(
        con,
        [partner("p_1")],
        {"p_1": [org("o_a", "p_1", ta=True, ph=False), org("o_b", "p_1")]},
        {
            "p_1": [
                target("t_1", "o_a"),
                target("t_2", "o_a"),
                target("t_3", "o_a", "inactive"),
                target("t_4", "o_b", "inactive"),
            ]
        },
    )
    evaluate(con, ["p_1"])
    assert metrics(con, "p_1") == {
        ("o_a", PU.format("training_awareness")): 2,
        ("o_a", PU.format("phishing")): 0,
        ("o_b", PU.format("training_awareness")): 0,
        ("o_b", PU.format("phishing")): 0,
    }


def test_rule5_every_billed_organization_gets_both_metrics_zeros_included(con):
    load(
        con,
        [partner("p_1"), partner("p_2", sub="per_organization")],
        {
            "p_1": [org("o_off", "p_1", ta=False, ph=False)],
            "p_2": [org("o_off2", "p_2", ta=False, ph=False)],
        },
        {},
    )
    evaluate(con, ["p_1", "p_2"])
    assert metrics(con, "p_1") == {
        ("o_off", PU.format(m)): 0 for m in ("training_awareness", "phishing")
    }
    assert metrics(con, "p_2") == {
        ("o_off2", PO.format(m)): 0 for m in ("training_awareness", "phishing")
    }


def test_rule6_archived_targets_not_counted_unknown_organization_quarantined(con):
    load(
        con,
        [partner("p_1")],
        {"p_1": [org("o_a", "p_1"), org("o_arch", "p_1", status="archived")]},
        {"p_1": [target("t_1", "o_a"), target("t_2", "o_arch"), target("t_3", "o_nowhere")]},
    )
    ev = evaluate(con, ["p_1"])["p_1"]
    assert metrics(con, "p_1")[("o_a", PU.format("phishing"))] == 1
    assert quarantine(con, "p_1") == [("target", "t_3", UNKNOWN_ORGANIZATION)]
    assert ev.records_quarantined == 1


def test_rule7_bad_records_quarantined_with_reason_and_not_counted(con):
    load(
        con,
        [partner("p_1")],
        {"p_1": [org("o_a", "p_1")]},
        {
            "p_1": [
                target("t_1", "o_a"),
                target("t_2", "o_a", status="deleted"),
                target("t_3", "o_a", updated_at=12),
                "not a record",
                {k: v for k, v in target("t_4", "o_a").items() if k != "email"},
            ]
        },
    )
    evaluate(con, ["p_1"])
    assert metrics(con, "p_1")[("o_a", PU.format("phishing"))] == 1
    reasons = {rid: reason for _, rid, reason in quarantine(con, "p_1")}
    assert "status: not one of" in reasons["t_2"]
    assert "updated_at" in reasons["t_3"]
    assert "email: missing" in reasons["t_4"]
    assert reasons[None] == "record is not a JSON object"


def test_rule7_exact_duplicates_collapse_conflicting_duplicates_quarantine_every_copy(con):
    load(
        con,
        [partner("p_1")],
        {"p_1": [org("o_a", "p_1")]},
        {
            "p_1": [
                target("t_1", "o_a"),
                target("t_1", "o_a"),  # exact: counts once
                target("t_2", "o_a"),
                target("t_2", "o_a", "inactive"),  # conflict
                target("t_3", "o_a"),
                target("t_3", "o_a", status=5),
            ]
        },
    )  # conflict (one bad)
    evaluate(con, ["p_1"])
    assert metrics(con, "p_1")[("o_a", PU.format("phishing"))] == 1
    q = quarantine(con, "p_1")
    assert [r for r in q if r[1] == "t_2"] == [("target", "t_2", DUPLICATE_CONFLICT)] * 2
    assert len([r for r in q if r[1] == "t_3"]) == 2
    assert not [r for r in q if r[1] == "t_1"]


def test_rule7_an_organization_with_a_bad_record_is_held_its_targets_untouched(con):
    load(
        con,
        [partner("p_1")],
        {"p_1": [org("o_a", "p_1"), org("o_bad", "p_1", status="frozen")]},
        {"p_1": [target("t_1", "o_a"), target("t_2", "o_bad"), target("t_3", "o_bad")]},
    )
    ev = evaluate(con, ["p_1"])["p_1"]
    assert {o for o, _ in metrics(con, "p_1")} == {"o_a"}
    q = quarantine(con, "p_1")
    assert [r[:2] for r in q] == [("organization", "o_bad")]  # the targets are not quarantined
    assert ev.organizations_held == 1 and not ev.held
    assert ev.metrics_held == 2 and ev.metrics_computed == 2


def test_rule7_more_than_the_threshold_quarantined_holds_the_partner_date(con):
    orgs = [org("o_a", "p_1")]
    good = [target(f"t_{i}", "o_a") for i in range(98)]
    load(con, [partner("p_1")], {"p_1": orgs}, {"p_1": [*good, target("t_x", "o_a", status=0)]})
    ev = evaluate(con, ["p_1"], threshold=0.01)["p_1"]  # 1 of 100 records: not above 1%
    assert not ev.held and ev.records_received == 100
    load(
        con,
        [partner("p_1")],
        {"p_1": orgs},
        {"p_1": [*good, target("t_x", "o_a", status=0), target("t_y", "o_a", status=0)]},
    )
    ev = evaluate(con, ["p_1"], threshold=0.01)["p_1"]  # 2 of 101: above
    assert ev.held and "threshold" in ev.reason
    assert ev.metrics_held == 2 and ev.metrics_computed == 0
    ev = evaluate(con, ["p_1"], threshold=0.05)["p_1"]  # configurable
    assert not ev.held


def test_rule7_a_held_partner_date_keeps_no_new_metrics(con):
    load(con, [partner("p_1")], {"p_1": [org("o_a", "p_1")]}, {"p_1": [target("t_1", "o_a")]})
    evaluate(con, ["p_1"])
    before = metrics(con, "p_1")
    load(
        con,
        [partner("p_1")],
        {"p_1": [org("o_a", "p_1")]},
        {"p_1": [target("t_1", "o_a"), target("t_2", "o_a"), target("t_3", "o_a", status=0)]},
    )
    assert evaluate(con, ["p_1"], threshold=0.01)["p_1"].held
    assert metrics(con, "p_1") == before


def test_re_evaluating_is_idempotent(con):
    load(
        con,
        [partner("p_1")],
        {"p_1": [org("o_a", "p_1")]},
        {"p_1": [target("t_1", "o_a"), target("t_2", "o_zz"), target("t_2", "o_zz")]},
    )
    first = evaluate(con, ["p_1"])
    q1 = quarantine(con)
    assert evaluate(con, ["p_1"]) == first and quarantine(con) == q1


def test_no_personal_data_reaches_the_warehouse(con):
    load(
        con,
        [partner("p_1")],
        {"p_1": [org("o_a", "p_1")]},
        {"p_1": [target("t_1", "o_a"), target("t_2", "o_a", status="x")]},
    )
    evaluate(con, ["p_1"])
    for (table,) in con.execute(
        "SELECT schema_name || '.' || table_name FROM duckdb_tables() "
        "WHERE database_name = current_database()"
    ).fetchall():
        text = con.execute(f"SELECT * FROM {table}").fetchall()
        assert "@example.test" not in repr(text) and "Ann" not in repr(text), table


def test_every_table_and_column_is_commented(con):
    missing = con.execute(
        "SELECT schema_name, table_name, column_name FROM duckdb_columns() "
        "WHERE database_name = current_database() AND (comment IS NULL OR comment = '')"
    ).fetchall()
    assert missing == []
    tables = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND (comment IS NULL OR comment = '')"
    ).fetchall()
    assert tables == []


def test_rule7_an_organization_served_twice_with_conflicting_content_is_held(con):
    load(
        con,
        [partner("p_1")],
        {"p_1": [org("o_a", "p_1"), org("o_dup", "p_1", ph=True), org("o_dup", "p_1", ph=False)]},
        {"p_1": [target("t_1", "o_dup"), target("t_2", "o_a")]},
    )
    ev = evaluate(con, ["p_1"])["p_1"]
    assert {o for o, _ in metrics(con, "p_1")} == {"o_a"}
    assert [r[:3] for r in quarantine(con, "p_1")] == [
        ("organization", "o_dup", DUPLICATE_CONFLICT)
    ] * 2  # t_1 is neither counted nor quarantined
    assert ev.organizations_held == 1
