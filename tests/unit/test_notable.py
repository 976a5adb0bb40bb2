"""Notable changes against the previous day, on two hand-built days loaded through the real
validation, raw snapshots and billing rules (tests/warehouse_builder.py)."""

from __future__ import annotations

import datetime as dt

from warehouse_builder import evaluate, load, org, partner, target

from bullphish_billing import notable, partner_artifacts
from bullphish_billing.results import PartnerOutcome

DAY = dt.date(2026, 11, 20)
BEFORE = DAY - dt.timedelta(days=1)
TA_PU, PH_PU = "bullphish_id.training_awareness.per_user", "bullphish_id.phishing.per_user"
TA_PO, PH_PO = (
    "bullphish_id.training_awareness.per_organization",
    "bullphish_id.phishing.per_organization",
)

# per_user p_0001: active users per organization on (the day before, the day)
USERS = {
    "o_1": (10, 13),  # +3 (+30%): fewer than 5 users, not notable
    "o_2": (20, 26),  # +6 (+30%): users_up
    "o_3": (40, 34),  # -6 (-15%): not more than 20%, not notable
    "o_4": (30, 24),  # -6 (-20%): exactly 20% is not MORE than 20%, not notable
    "o_5": (25, 19),  # -6 (-24%): users_down
    "o_6": (8, 8),  # phishing switched off on the day: module_off (8 -> 0)
    "o_7": (0, 50),  # new on the day: nothing to compare with
}


def build_day(con, day: dt.date, index: int) -> None:
    orgs, targets = [], []
    for oid, counts in USERS.items():
        n = counts[index]
        if oid == "o_7" and index == 0:
            continue
        orgs.append(org(oid, "p_0001", ph=not (oid == "o_6" and index == 1)))
        targets += [target(f"t_{oid[2:]}u{i:04d}", oid) for i in range(n)]
        targets.append(target(f"t_{oid[2:]}inactive", oid, status="inactive"))
    po_orgs = [
        org("o_8", "p_0002", ta=index == 1, ph=True),  # training switched on: module_on
        org("o_9", "p_0002", ta=True, ph=index == 0),  # phishing switched off: module_off
    ]
    orgs_of = {"p_0001": orgs, "p_0002": po_orgs}
    targets_of = {"p_0001": targets}
    if index:  # p_0003 is billed on the day only
        orgs_of["p_0003"] = [org("o_x", "p_0003")]
        targets_of["p_0003"] = [target("t_x1", "o_x")]
    partners = [partner("p_0001"), partner("p_0002", sub="per_organization"), partner("p_0003")]
    load(con, partners, orgs_of, targets_of, day=day)
    pids = sorted(orgs_of)
    evaluate(con, pids, day=day)


def two_days(con):
    build_day(con, BEFORE, 0)
    build_day(con, DAY, 1)


def detect(con, share=0.2, users=5):
    return notable.detect(
        con,
        DAY,
        ["p_0001", "p_0002", "p_0003"],
        min_share=share,
        min_users=users,
        run_id="test-run",
    )


def as_rows(changes):
    return sorted(
        (c.partner_id, c.organization_id, c.billing_type, c.change, c.previous_units, c.units)
        for c in changes
    )


def test_counts_beyond_both_thresholds_and_module_switches_are_notable(con):
    two_days(con)
    changes = detect(con)
    assert as_rows(changes) == [
        ("p_0001", "o_2", PH_PU, "users_up", 20, 26),
        ("p_0001", "o_2", TA_PU, "users_up", 20, 26),
        ("p_0001", "o_5", PH_PU, "users_down", 25, 19),
        ("p_0001", "o_5", TA_PU, "users_down", 25, 19),
        ("p_0001", "o_6", PH_PU, "module_off", 8, 0),  # once, as a switch, not also users_down
        ("p_0002", "o_8", TA_PO, "module_on", 0, 1),
        ("p_0002", "o_9", PH_PO, "module_off", 1, 0),
        # p_0003 has no previous day; o_7 is new: nothing compared
    ]
    shares = {(c.organization_id, c.billing_type): c.change_share for c in changes}
    assert shares[("o_2", TA_PU)] == 0.3 and shares[("o_5", TA_PU)] == -0.24
    assert shares[("o_9", PH_PO)] == -1.0 and shares[("o_8", TA_PO)] is None  # from 0
    # stored, and the same as returned
    assert as_rows(notable.stored(con, DAY)) == as_rows(changes)


def test_the_thresholds_are_configurable(con):
    two_days(con)
    moved = {
        (c.organization_id, c.change)
        for c in detect(con, share=0.1, users=3)
        if "users" in c.change
    }
    # o_1 (+3, 30%), o_3 (-6, 15%) and o_4 (-6, 20%) now count as well
    assert moved == {
        ("o_1", "users_up"),
        ("o_2", "users_up"),
        ("o_3", "users_down"),
        ("o_4", "users_down"),
        ("o_5", "users_down"),
    }


def test_detecting_again_replaces_the_partner_dates_changes(con):
    two_days(con)
    detect(con, share=0.1, users=3)
    detect(con)
    n = con.execute("SELECT count(*) FROM ops.notable_changes").fetchall()[0][0]
    assert n == 7
    # a partner left out of a detection keeps its rows; the ones asked for are replaced
    notable.detect(con, DAY, ["p_0002"], min_share=0.2, min_users=5, run_id="again")
    runs = dict(
        con.execute(
            "SELECT partner_id, any_value(run_id) FROM ops.notable_changes GROUP BY 1"
        ).fetchall()
    )
    assert runs == {"p_0001": "test-run", "p_0002": "again"}


def test_the_artifacts_show_the_changes(con):
    two_days(con)
    changes = detect(con)
    text = notable.markdown(changes, DAY, min_share=0.2, min_users=5)
    assert "more than 20% and at least 5 users" in text
    assert (
        "| `p_0001` | `o_5` | `bullphish_id.phishing.per_user` | users_down | 25 | 19 | -24% |"
        in text
    )
    assert "2 module_off, 1 module_on, 2 users_down, 2 users_up" in text
    assert "No notable changes." in notable.markdown([], DAY, min_share=0.2, min_users=5)

    outcome = PartnerOutcome(DAY, "p_0002", "per_organization", "delivered", metrics_computed=4)
    mine = partner_artifacts.markdown(outcome, changes)
    assert "`o_8`" in mine and "module_on" in mine and "`o_5`" not in mine
    assert partner_artifacts.key("p_0002") == "billing-p-0002"
    assert partner_artifacts.key("p_AbC") != partner_artifacts.key("p_abc")
    import re

    assert re.fullmatch(r"[a-z0-9-]+", partner_artifacts.key("p_AbC"))
