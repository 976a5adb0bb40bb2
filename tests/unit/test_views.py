"""The analyst views, each checked against a hand-built month of billing_metrics.

The month is November 2026 (30 days), then three days of December (the month in progress):

p_0001, per_organization, reported every day:
  o_a  training 1 every day; phishing 0 on Nov 1-14, 1 from Nov 15 (switched on mid-month)
  o_b  training 1, phishing 1 on Nov 1-24; archived from Nov 25 (stopped)
  o_c  training 1, phishing 0 every day (not mapped in the PSA)
p_0002, per_user, NOT reported on Nov 10 (a missing day):
  o_u  training users 10 (Nov 1-5), 12 (6-9), 20 (11-20), 15 (21-30, Dec 1-3): rising, falling
       phishing users 8 (Nov 1-19), 0 from Nov 20 (module switched off)
  o_v  new on Nov 16: training 5, phishing 5 through Dec 2; archived Dec 3
p_0003, per_user, one day (its mappings were never fetched)

Every expected number below is worked out by hand in the comments, not by SQL.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pandas as pd
import pytest

from bullphish_billing import mappings, outcomes
from bullphish_billing.results import MappingStatus, PartnerOutcome, RunSummary

TA_PO, PH_PO = (
    "bullphish_id.training_awareness.per_organization",
    "bullphish_id.phishing.per_organization",
)
TA_PU, PH_PU = "bullphish_id.training_awareness.per_user", "bullphish_id.phishing.per_user"


def nov(day: int) -> dt.date:
    return dt.date(2026, 11, day)


def dec(day: int) -> dt.date:
    return dt.date(2026, 12, day)


NOVEMBER = [nov(d) for d in range(1, 31)]
DECEMBER = [dec(d) for d in range(1, 4)]


def training_users(day: dt.date) -> int:
    if day <= nov(5):
        return 10
    if day <= nov(9):
        return 12
    if day <= nov(20):
        return 20
    return 15


def month_rows() -> list[tuple]:
    rows = []

    def add(day, pid, oid, bt, units):
        sub = "per_user" if bt.endswith("per_user") else "per_organization"
        rows.append((day, pid, oid, bt, units, sub))

    for day in NOVEMBER:
        add(day, "p_0001", "o_a", TA_PO, 1)
        add(day, "p_0001", "o_a", PH_PO, 1 if day >= nov(15) else 0)
        if day <= nov(24):
            add(day, "p_0001", "o_b", TA_PO, 1)
            add(day, "p_0001", "o_b", PH_PO, 1)
        add(day, "p_0001", "o_c", TA_PO, 1)
        add(day, "p_0001", "o_c", PH_PO, 0)
    for day in NOVEMBER + DECEMBER:
        if day == nov(10):
            continue  # the feed did not run for p_0002 that day
        add(day, "p_0002", "o_u", TA_PU, training_users(day))
        add(day, "p_0002", "o_u", PH_PU, 8 if day <= nov(19) else 0)
        if nov(16) <= day <= dec(2):
            add(day, "p_0002", "o_v", TA_PU, 5)
            add(day, "p_0002", "o_v", PH_PU, 5)
    add(nov(30), "p_0003", "o_x", TA_PU, 7)
    return rows


@pytest.fixture
def month(con):
    frame = pd.DataFrame(
        month_rows(),
        columns=["usage_date", "partner_id", "organization_id", "billing_type", "units", "sub"],
    )
    con.register("month_rows", frame)
    con.execute(
        "INSERT INTO billing_metrics SELECT usage_date::DATE, partner_id, organization_id, "
        "billing_type, units, sub, 'test-run', now() FROM month_rows"
    )
    con.unregister("month_rows")
    return con


def change(con, pid, oid, bt, day):
    rows = con.execute(
        "SELECT previous_usage_date, days_since_previous, previous_units, units, change, "
        "direction FROM billing_changes WHERE partner_id = ? AND organization_id = ? "
        "AND billing_type = ? AND usage_date = ?",
        [pid, oid, bt, day],
    ).fetchall()
    assert len(rows) <= 1
    return rows[0] if rows else None


def test_billing_changes_directions_against_the_previous_reported_day(month):
    con = month
    # the partner's first day: everything is new
    assert change(con, "p_0001", "o_a", TA_PO, nov(1)) == (None, None, None, 1, 1, "new")
    assert change(con, "p_0001", "o_a", PH_PO, nov(1)) == (None, None, None, 0, 0, "new")
    # the module switched on mid-month
    assert change(con, "p_0001", "o_a", PH_PO, nov(14)) == (nov(13), 1, 0, 0, 0, "same")
    assert change(con, "p_0001", "o_a", PH_PO, nov(15)) == (nov(14), 1, 0, 1, 1, "up")
    assert change(con, "p_0001", "o_a", PH_PO, nov(16)) == (nov(15), 1, 1, 1, 0, "same")
    # o_b archived from Nov 25: stopped once, then nothing
    assert change(con, "p_0001", "o_b", TA_PO, nov(25)) == (nov(24), 1, 1, None, -1, "stopped")
    assert change(con, "p_0001", "o_b", PH_PO, nov(25)) == (nov(24), 1, 1, None, -1, "stopped")
    assert change(con, "p_0001", "o_b", TA_PO, nov(26)) is None
    # counts rising and falling; the missing Nov 10 compares Nov 11 with Nov 9
    assert change(con, "p_0002", "o_u", TA_PU, nov(6)) == (nov(5), 1, 10, 12, 2, "up")
    assert change(con, "p_0002", "o_u", TA_PU, nov(10)) is None
    assert change(con, "p_0002", "o_u", TA_PU, nov(11)) == (nov(9), 2, 12, 20, 8, "up")
    assert change(con, "p_0002", "o_u", TA_PU, nov(21)) == (nov(20), 1, 20, 15, -5, "down")
    assert change(con, "p_0002", "o_u", PH_PU, nov(20)) == (nov(19), 1, 8, 0, -8, "down")
    # a new organization mid-month; it stops on Dec 3
    assert change(con, "p_0002", "o_v", TA_PU, nov(16)) == (nov(15), 1, None, 5, 5, "new")
    assert change(con, "p_0002", "o_v", PH_PU, dec(3)) == (dec(2), 1, 5, None, -5, "stopped")
    # p_0002 o_u training over Nov 1 - Dec 3 (32 reported days): new once (Nov 1), up twice
    # (Nov 6, Nov 11), down once (Nov 21), the other 28 days the same
    directions = dict(
        con.execute(
            "SELECT direction, count(*) FROM billing_changes WHERE partner_id = 'p_0002' "
            "AND organization_id = 'o_u' AND billing_type = ? GROUP BY ALL",
            [TA_PU],
        ).fetchall()
    )
    assert directions == {"new": 1, "up": 2, "down": 1, "same": 28}
    # one row per reported metric, plus one per stop: p_0001 has 30*4 + 24*2 metrics, 2 stops
    n = con.execute("SELECT count(*) FROM billing_changes WHERE partner_id = 'p_0001'").fetchall()
    assert n[0][0] == 30 * 4 + 24 * 2 + 2


def preview(con, pid, oid, bt, month_start):
    rows = con.execute(
        "SELECT high_water_mark_units, end_of_period_units, prorated_daily_units, "
        "days_in_month, days_reported, days_missing, last_usage_date FROM invoice_preview "
        "WHERE partner_id = ? AND organization_id = ? AND billing_type = ? AND month = ?",
        [pid, oid, bt, month_start],
    ).fetchall()
    assert len(rows) == 1
    return rows[0]


def test_invoice_preview_units_under_each_unit_change_policy(month):
    con = month
    D = Decimal
    # switched on Nov 15: 16 days of 1 -> 16/30 = 0.5333
    assert preview(con, "p_0001", "o_a", PH_PO, nov(1)) == (1, 1, D("0.53"), 30, 30, 0, nov(30))
    assert preview(con, "p_0001", "o_a", TA_PO, nov(1)) == (1, 1, D("1.00"), 30, 30, 0, nov(30))
    # archived from Nov 25: 24 days of 1 -> 0.80; end of period is its last day, Nov 24
    assert preview(con, "p_0001", "o_b", TA_PO, nov(1)) == (1, 1, D("0.80"), 30, 24, 6, nov(24))
    # 5*10 + 4*12 + 10*20 + 10*15 = 448 over 29 reported days (Nov 10 missing);
    # 448/30 = 14.9333; the highest day is 20, the last is 15
    assert preview(con, "p_0002", "o_u", TA_PU, nov(1)) == (20, 15, D("14.93"), 30, 29, 1, nov(30))
    # 8 on Nov 1-19 without Nov 10 (18 days) = 144, then 0: 144/30 = 4.80
    assert preview(con, "p_0002", "o_u", PH_PU, nov(1)) == (8, 0, D("4.80"), 30, 29, 1, nov(30))
    # new on Nov 16: 15 days of 5 = 75 -> 2.50; the 15 days before count as missing
    assert preview(con, "p_0002", "o_v", TA_PU, nov(1)) == (5, 5, D("2.50"), 30, 15, 15, nov(30))
    # December is in progress (latest usage date Dec 3): 3 * 15 = 45, 45/31 = 1.4516
    assert preview(con, "p_0002", "o_u", TA_PU, dec(1)) == (15, 15, D("1.45"), 31, 3, 0, dec(3))
    # o_v stopped after Dec 2: 10/31 = 0.3226; one day of three missing
    assert preview(con, "p_0002", "o_v", TA_PU, dec(1)) == (5, 5, D("0.32"), 31, 2, 1, dec(2))
    # p_0001 was not reported in December: no row
    n = con.execute(
        "SELECT count(*) FROM invoice_preview WHERE partner_id = 'p_0001' AND month = ?",
        [dec(1)],
    ).fetchall()
    assert n[0][0] == 0


def test_unmapped_organizations_lists_billed_organizations_the_psa_does_not_map(month):
    con = month
    mappings.store(
        con,
        [
            mappings.MappingFetch(
                "p_0001",
                MappingStatus.LINKED,
                (
                    ("o_a", "autotask", "10001", "Customer A"),
                    ("o_b", "autotask", "10002", "Customer B"),
                    ("o_zzz", "autotask", "10003", "Not billed by us"),
                ),
            ),
            mappings.MappingFetch("p_0002", MappingStatus.NOT_LINKED),
            mappings.MappingFetch("p_0003", MappingStatus.FAILED, error="down"),  # changes nothing
        ],
        "test-run",
    )
    rows = con.execute(
        "SELECT partner_id, organization_id, billing_type, usage_date, units, reason "
        "FROM unmapped_organizations ORDER BY ALL"
    ).fetchall()
    assert rows == [
        # p_0001's latest day is Nov 30: o_c is billed and not mapped; o_b is mapped (and
        # no longer billed), o_a is mapped
        ("p_0001", "o_c", PH_PO, nov(30), 0, "organization not mapped to a PSA company"),
        ("p_0001", "o_c", TA_PO, nov(30), 1, "organization not mapped to a PSA company"),
        # p_0002 is not linked in KaseyaOne: nothing of it is mapped; its latest day is Dec 3
        ("p_0002", "o_u", PH_PU, dec(3), 0, "partner not linked in KaseyaOne"),
        ("p_0002", "o_u", TA_PU, dec(3), 15, "partner not linked in KaseyaOne"),
        # p_0003's mappings were never fetched: not listed
    ]
    # a later fetch that maps o_c replaces p_0001's mappings
    mappings.store(
        con,
        [mappings.MappingFetch("p_0001", MappingStatus.LINKED, (("o_c", "autotask", "1", "C"),))],
        "test-run-2",
    )
    left = con.execute(
        "SELECT DISTINCT organization_id FROM unmapped_organizations WHERE partner_id = 'p_0001'"
    ).fetchall()
    assert left == [("o_a",)]  # o_a is no longer in the mappings


def test_run_history_lists_every_run_partner_and_date(con):
    def outcome(pid, status, reason=None, **numbers):
        return PartnerOutcome(nov(5), pid, "per_user", status, reason, **numbers)

    outcomes.start_run(con, "run-1", nov(5), False)
    summary = RunSummary(
        run_id="run-1",
        usage_date=nov(5),
        dry_run=False,
        outcomes=[
            outcome("p_0001", "delivered", metrics_computed=4, metrics_sent=4),
            outcome("p_0003", "skipped", "KaseyaOne integration not activated"),
        ],
    )
    outcomes.record(con, summary)
    outcomes.start_run(con, "run-2", nov(6), True)  # started, never finished (crashed)
    outcomes.start_run(con, "run-3", nov(7), False)
    outcomes.record(con, RunSummary("run-3", nov(7), False, []))  # no partner at all
    rows = con.execute(
        "SELECT run_id, usage_date, partner_id, status, reason, metrics_sent, dry_run, "
        "run_exit_code FROM run_history ORDER BY run_id, partner_id"
    ).fetchall()
    assert rows == [
        ("run-1", nov(5), "p_0001", "delivered", None, 4, False, 0),
        ("run-1", nov(5), "p_0003", "skipped", "KaseyaOne integration not activated", 0, False, 0),
        (
            "run-2",
            nov(6),
            None,
            "unfinished",
            "the run has not finished: it is running, or it crashed",
            None,
            True,
            None,
        ),
        ("run-3", nov(7), None, "no partners", None, None, False, 0),
    ]


def test_every_table_view_and_column_has_a_comment(con):
    objects = con.execute(
        "SELECT table_name, comment FROM duckdb_tables() WHERE database_name = current_database() "
        "UNION ALL SELECT view_name, comment FROM duckdb_views() "
        "WHERE database_name = current_database() AND NOT internal"
    ).fetchall()
    names = {name for name, _ in objects}
    assert {"billing_changes", "invoice_preview", "unmapped_organizations", "run_history"} <= names
    assert [name for name, comment in objects if not comment] == []
    uncommented = con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() "
        "WHERE database_name = current_database() AND (comment IS NULL OR comment = '')"
    ).fetchall()
    assert uncommented == []
