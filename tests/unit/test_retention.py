"""Raw retention (bullphish_billing/retention.py) on hand-built partner-dates loaded through the
real validation, raw-snapshot and billing-rule code (tests/warehouse_builder.py): which dates
are dropped (the cutoff's edges, 0 = keep all), what is recorded, what survives, and the
partner-dates another run holds."""

from __future__ import annotations

import datetime as dt

import pytest
from warehouse_builder import evaluate, load, org, partner, target

from bullphish_billing import lease, retention, target_fates

YESTERDAY = dt.date(2026, 11, 30)
DAYS = [YESTERDAY - dt.timedelta(days=n) for n in range(5)]  # Nov 26..30
PARTNERS = ["p_0001", "p_0002"]


def _load_day(con, day: dt.date) -> None:
    load(
        con,
        [partner(p) for p in PARTNERS],
        {p: [org(f"o_{p[2:]}a", p)] for p in PARTNERS},
        {
            p: [
                target(f"t_{p[2:]}u{i}", f"o_{p[2:]}a", "active" if i % 3 else "inactive")
                for i in range(6)
            ]
            for p in PARTNERS
        },
        day=day,
    )
    evaluate(con, PARTNERS, day=day)
    target_fates.record(con, day, PARTNERS, "test-run")


@pytest.fixture
def five_days(con):
    for day in DAYS:
        _load_day(con, day)
    return con


@pytest.fixture
def leases(warehouse_path):
    with lease.run_leases(warehouse_path, "retention-run") as held:
        yield held


def targets_per_date(con) -> dict[dt.date, int]:
    return dict(con.execute("SELECT usage_date, count(*) FROM raw.targets GROUP BY 1").fetchall())


def apply(con, leases, days: int):
    return retention.apply(
        con, yesterday=YESTERDAY, retention_days=days, run_id="retention-run", leases=leases
    )


def test_kept_from_is_the_oldest_of_the_n_dates_ending_yesterday():
    assert retention.kept_from(YESTERDAY, 1) == YESTERDAY
    assert retention.kept_from(YESTERDAY, 2) == YESTERDAY - dt.timedelta(days=1)
    assert retention.kept_from(YESTERDAY, 90) == YESTERDAY - dt.timedelta(days=89)
    assert retention.kept_from(YESTERDAY, 0) is None  # keep every snapshot


def test_the_date_at_the_cutoff_is_kept_and_the_one_before_is_dropped(five_days, leases):
    con = five_days
    report = apply(con, leases, 2)  # keeps Nov 29 and 30
    at_cutoff, before = YESTERDAY - dt.timedelta(days=1), YESTERDAY - dt.timedelta(days=2)
    assert report.kept_from == at_cutoff
    assert sorted(targets_per_date(con)) == [at_cutoff, YESTERDAY]
    assert before not in targets_per_date(con)
    assert sorted(report.dropped) == DAYS[:1:-1]  # Nov 26, 27, 28
    assert report.rows == 3 * 2 * 6 and report.partner_dates == 3 * 2
    # raw.organizations, raw.partners, the counts and the metrics of every date stay
    for table in ("raw.organizations", "raw.partners", "ops.target_fates", "billing_metrics"):
        dates = {d for (d,) in con.execute(f"SELECT DISTINCT usage_date FROM {table}").fetchall()}
        assert dates == set(DAYS), table


def test_zero_keeps_every_snapshot(five_days, leases):
    report = apply(five_days, leases, 0)
    assert report.kept_from is None and report.rows == 0
    assert sorted(targets_per_date(five_days)) == sorted(DAYS)
    assert five_days.execute("SELECT count(*) FROM ops.raw_retention").fetchall() == [(0,)]


def test_each_drop_is_recorded_per_partner_date_and_not_twice(five_days, leases):
    con = five_days
    apply(con, leases, 4)  # keeps Nov 27..30: drops Nov 26
    rows = con.execute(
        "SELECT usage_date, partner_id, targets_dropped, retention_days, kept_from, run_id "
        "FROM ops.raw_retention ORDER BY ALL"
    ).fetchall()
    assert rows == [(DAYS[4], p, 6, 4, DAYS[3], "retention-run") for p in PARTNERS]
    again = apply(con, leases, 4)  # nothing left to drop: nothing written
    assert again.rows == 0 and again.partner_dates == 0
    assert con.execute("SELECT count(*) FROM ops.raw_retention").fetchall() == [(len(rows),)]


def test_the_counts_survive_and_the_view_says_which_snapshots_were_dropped(five_days, leases):
    con = five_days
    view = (
        "SELECT * EXCLUDE (target_snapshot, targets_dropped_at) FROM metric_explanations "
        "ORDER BY ALL"
    )
    before = con.execute(view).fetchall()
    fates = con.execute("SELECT * EXCLUDE (computed_at) FROM ops.target_fates ORDER BY ALL")
    fates_before = fates.fetchall()
    apply(con, leases, 3)  # keeps Nov 28..30
    assert con.execute(view).fetchall() == before
    assert (
        con.execute("SELECT * EXCLUDE (computed_at) FROM ops.target_fates ORDER BY ALL").fetchall()
        == fates_before
    )
    states = dict(
        con.execute(
            "SELECT DISTINCT usage_date, target_snapshot FROM metric_explanations"
        ).fetchall()
    )
    assert states == {d: "dropped" if d < DAYS[2] else "kept" for d in DAYS}
    assert con.execute(
        "SELECT count(*) FROM metric_explanations WHERE (target_snapshot = 'dropped') <> "
        "(targets_dropped_at IS NOT NULL)"
    ).fetchall() == [(0,)]


def test_a_snapshot_extracted_again_after_its_drop_is_kept_until_the_next_drop(five_days, leases):
    con = five_days
    oldest = DAYS[4]
    apply(con, leases, 4)
    assert retention.snapshot_dropped(con, oldest, "p_0001") is not None
    _load_day(con, oldest)  # a backfill extracts the date again
    assert retention.snapshot_dropped(con, oldest, "p_0001") is None
    assert targets_per_date(con)[oldest] == 12
    assert {
        s for (s,) in con.execute(
            "SELECT DISTINCT target_snapshot FROM metric_explanations WHERE usage_date = ?",
            [oldest],
        ).fetchall()
    } == {"kept"}  # fmt: skip
    apply(con, leases, 4)
    assert oldest not in targets_per_date(con)
    assert retention.snapshot_dropped(con, oldest, "p_0001")["targets_dropped"] == 6


def test_a_partner_date_another_run_holds_is_left_for_a_later_run(
    five_days, leases, warehouse_path
):
    con = five_days
    oldest = DAYS[4]
    with lease.run_leases(warehouse_path, "another-run") as other:
        assert other.try_acquire(lease.partner_date(oldest, "p_0002"))
        report = apply(con, leases, 4)
        assert report.left_to_others == 1
        left = con.execute(
            "SELECT partner_id, count(*) FROM raw.targets WHERE usage_date = ? GROUP BY 1",
            [oldest],
        ).fetchall()
        assert left == [("p_0002", 6)]
        assert retention.snapshot_dropped(con, oldest, "p_0002") is None
    report = apply(con, leases, 4)  # the other run is done: the next run drops it
    assert report.left_to_others == 0 and report.dropped == {oldest: 6}
    assert oldest not in targets_per_date(con)
    # the leases this run took for the drop were given back
    assert not leases.holds(lease.partner_date(oldest, "p_0002"))
