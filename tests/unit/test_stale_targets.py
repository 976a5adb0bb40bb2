"""Stale active users (issue 14 item 3) on hand-built partner-dates loaded through the real
validation, raw snapshots and billing rules, at the edges of BILLING_STALE_DAYS; and a
date-time that names no real day (year 0000), kept and counted with its value made null."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest
from warehouse_builder import DAY, evaluate, load, metrics, org, partner, target

from bullphish_billing import stale_targets
from bullphish_billing.validation import TARGET, validate_records, validate_table
from bullphish_billing.warehouse import migrations
from bullphish_billing.warehouse.db import open_warehouse

DAYS = 180
CUTOFF = stale_targets.cutoff(DAY, DAYS)  # 00:00 UTC, 180 days before DAY
JUST_BEFORE = (CUTOFF - dt.timedelta(microseconds=1)).isoformat().replace("+00:00", "Z")
AT = CUTOFF.isoformat().replace("+00:00", "Z")
LONG_AGO = "2019-03-04T05:06:07Z"
YEAR_ZERO = "0000-01-01T00:00:00Z"


def test_the_cutoff_is_midnight_utc_stale_days_before_the_usage_date():
    assert dt.datetime(2026, 5, 24, tzinfo=dt.UTC) == CUTOFF
    assert (DAY - CUTOFF.date()).days == DAYS


def build(con) -> None:
    targets = [
        target("t_a1", "o_a", updated_at=JUST_BEFORE),  # stale: a microsecond before
        target("t_a2", "o_a", updated_at=AT),  # at the cutoff: not stale
        target("t_a3", "o_a", updated_at=LONG_AGO),  # stale, the oldest
        target("t_a3", "o_a", updated_at=LONG_AGO),  # its exact duplicate: once
        target("t_a4", "o_a", status="inactive", updated_at=LONG_AGO),  # inactive: not counted
        target("t_a5", "o_a", updated_at=YEAR_ZERO),  # no real day: undated, never stale
        target("t_a6", "o_a"),  # recent
        target("t_a7", "o_a", updated_at=LONG_AGO, status="deleted"),  # quarantined
        target("t_b1", "o_b"),  # nothing stale: no row for o_b
        target("t_c1", "o_c", updated_at=LONG_AGO),  # archived organization: not billed
        target("t_d1", "o_d", updated_at=LONG_AGO),  # its organization is held (bad record)
        target("t_x1", "o_unknown", updated_at=LONG_AGO),  # unknown organization: quarantined
    ]
    orgs = [
        org("o_a", "p_0001"),
        org("o_b", "p_0001"),
        org("o_c", "p_0001", status="archived"),
        org("o_d", "p_0001", status="gone"),
    ]
    po_orgs = [org("o_e", "p_0002")]
    po_targets = [target("t_e1", "o_e", updated_at=LONG_AGO)]
    load(
        con,
        [partner("p_0001"), partner("p_0002", sub="per_organization")],
        {"p_0001": orgs, "p_0002": po_orgs},
        {"p_0001": targets, "p_0002": po_targets},
    )
    evaluate(con, ["p_0001", "p_0002"])


def test_stale_counts_at_the_edges(con):
    build(con)
    found = stale_targets.detect(con, DAY, ["p_0001", "p_0002"], stale_days=DAYS, run_id="test-run")
    by_org = {s.organization_id: s for s in found}
    assert set(by_org) == {"o_a", "o_e"}
    a = by_org["o_a"]
    # active and counted: t_a1, t_a2, t_a3 (once), t_a5, t_a6 = 5; the per-user units agree
    assert a.active_targets == 5
    assert metrics(con, "p_0001")[("o_a", "bullphish_id.phishing.per_user")] == 5
    assert a.stale_targets == 2  # t_a1 (a microsecond before), t_a3; not t_a2 (at the cutoff)
    assert a.undated_targets == 1  # t_a5
    assert a.oldest_updated_at == dt.datetime(2019, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    assert a.share == pytest.approx(2 / 5)
    e = by_org["o_e"]
    assert (e.subscription_type, e.active_targets, e.stale_targets) == ("per_organization", 1, 1)


def test_one_day_more_or_less_moves_the_edge(con):
    build(con)
    fewer = stale_targets.detect(con, DAY, ["p_0001"], stale_days=DAYS - 1, run_id="r")
    assert {s.organization_id: s.stale_targets for s in fewer} == {"o_a": 3}  # t_a2 too
    more = stale_targets.detect(con, DAY, ["p_0001"], stale_days=DAYS + 1, run_id="r")
    assert {s.organization_id: s.stale_targets for s in more} == {"o_a": 1}  # t_a3 only
    # replaced, not added to
    assert con.execute("SELECT count(*) FROM ops.stale_targets").fetchall() == [(1,)]


def test_the_view_lists_them_and_reads_in_python(con):
    build(con)
    stale_targets.detect(con, DAY, ["p_0001", "p_0002"], stale_days=DAYS, run_id="test-run")
    rows = con.execute(
        "SELECT partner_id, organization_id, active_targets, stale_targets, stale_share, "
        "undated_targets, oldest_updated_at, stale_days, latest FROM stale_active_targets "
        "ORDER BY ALL"
    ).fetchall()
    assert [r[:6] for r in rows] == [
        ("p_0001", "o_a", 5, 2, 0.4, 1),
        ("p_0002", "o_e", 1, 1, 1.0, 0),
    ]
    assert all(r[7] == DAYS and r[8] for r in rows)
    # every date-time the warehouse holds reads in Python: none before year 1
    assert con.execute("SELECT min(updated_at) FROM raw.targets").fetchall()[0][0].year >= 1


def test_the_artifact_lists_per_user_organizations_above_the_share(con):
    build(con)
    found = stale_targets.detect(con, DAY, ["p_0001", "p_0002"], stale_days=DAYS, run_id="r")
    lines = "\n".join(stale_targets.markdown_lines(found, min_share=0.25, stale_days=DAYS))
    assert "`p_0001` | `o_a` | 2 | 5 | 40% | 2019-03-04" in lines
    assert "o_e" not in lines  # per_organization: stale users are not billed
    assert stale_targets.markdown_lines(found, min_share=0.4, stale_days=DAYS) == []  # not MORE


def test_year_zero_is_kept_counted_and_stored_as_null_with_its_reason(con):
    build(con)
    assert con.execute("SELECT updated_at FROM raw.targets WHERE id = 't_a5'").fetchall() == [
        (None,)
    ]
    assert con.execute(
        "SELECT partner_id, entity, record_id, page_no, page_row, reason FROM ops.normalized_values"
    ).fetchall() == [
        (
            "p_0001",
            "target",
            "t_a5",
            0,
            5,
            "updated_at: before year 1, not a real date-time; stored as null",
        )
    ]
    assert not con.execute("SELECT * FROM ops.quarantine WHERE record_id = 't_a5'").fetchall()


@pytest.mark.parametrize("path", ["fast", "exact", "arrow"])
def test_every_validation_path_normalizes_alike(path):
    import pyarrow as pa

    from bullphish_billing.validation import arrow_record_type

    records = [
        target("t_1", "o_1", updated_at=YEAR_ZERO),
        target("t_2", "o_1", updated_at="0001-01-01T00:00:00Z"),  # year 1 is real: kept
        target("t_3", "o_1", updated_at=LONG_AGO),
    ]
    positions = [(3, 7), (3, 8), (4, 0)]
    if path == "arrow":
        table = pa.Table.from_pylist(records, schema=pa.schema(arrow_record_type(TARGET)))
        batch = validate_table(TARGET, table, positions)
    else:
        batch = validate_records(TARGET, records, positions, exact=path == "exact")
    rows = batch.rows.to_pylist()
    assert [r["id"] for r in rows] == ["t_1", "t_2", "t_3"] and not len(batch.bad)
    assert [r["updated_at"] and r["updated_at"].year for r in rows] == [None, 1, 2019]
    assert batch.normalized.to_dict("records") == [
        {
            "record_id": "t_1",
            "page_no": 3,
            "page_row": 7,
            "reason": "updated_at: before year 1, not a real date-time; stored as null",
        }
    ]


def test_migration_3_makes_null_the_year_zero_an_older_warehouse_stored(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        migrations._apply(con, True, 0, 2)  # a version-2 warehouse, as stored before
        migrations.create_views(con, ())
        con.execute(
            "INSERT INTO raw.targets VALUES (DATE '2026-11-20', 'p_0001', 't_1', 'o_1', "
            "'active', TIMESTAMPTZ '0000-01-01 00:00:00+00', 0, 4, 'old-run'), "
            "(DATE '2026-11-20', 'p_0001', 't_2', 'o_1', 'active', "
            "TIMESTAMPTZ '2025-01-01 00:00:00+00', 0, 5, 'old-run')"
        )
    with open_warehouse(path) as con:
        assert con.execute("SELECT max(version) FROM ops.schema_version").fetchall() == [
            (migrations.LATEST,)
        ]
        assert con.execute(
            "SELECT id, updated_at IS NULL FROM raw.targets ORDER BY id"
        ).fetchall() == [
            ("t_1", True),
            ("t_2", False),
        ]
        assert con.execute(
            "SELECT partner_id, entity, record_id, page_row, run_id FROM ops.normalized_values"
        ).fetchall() == [("p_0001", "target", "t_1", 4, "migration-3")]
