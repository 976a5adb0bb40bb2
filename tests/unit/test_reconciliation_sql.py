"""The reconciliation's SQL on hand-built data: the comparison (sql/reconciliation/compare.sql and
the two record_*.sql), the open differences (view reconciliation_open), and the repairs
(sql/reconciliation/repairs.sql). No API, no Prefect: KaseyaOne's side is written straight into
the temporary table a read fills (reconcile_held).

Partner-date p_0001 on D, acknowledged (accepted unless said):
  o_a training 1   held 1          -> match
  o_b training 1   not held        -> missing_at_kaseyaone
  o_c users 10     held 12         -> differs
  o_d users 4      rejected, not held -> nothing (KaseyaOne never stored it)
  o_x              held 3, never acknowledged -> unexpected_at_kaseyaone
Partner-date p_0002 on D: o_a training 1 acknowledged and held -> clean.
Partner-date p_0003 on D: acknowledged, its read failed -> failed, nothing compared.
"""

from __future__ import annotations

import datetime as dt

import pytest

from bullphish_billing import delivery, reconciliation

D = dt.date(2026, 11, 20)
TA, PU = "bullphish_id.training_awareness.per_organization", "bullphish_id.phishing.per_user"
AT = dt.datetime(2026, 11, 21, 6, tzinfo=dt.UTC)


def acknowledge(con, rows) -> None:
    for partner, org, billing_type, units, accepted in rows:
        con.execute(
            "INSERT OR REPLACE INTO ops.acknowledged_metrics VALUES "
            "(?, ?, ?, ?, ?, ?, NULL, 'k-original', now())",
            [D, partner, org, billing_type, units, accepted],
        )


def hold(con, rows) -> None:
    con.execute(
        "CREATE OR REPLACE TEMPORARY TABLE reconcile_held (usage_date DATE, partner_id VARCHAR, "
        "organization_id VARCHAR, billing_type VARCHAR, units BIGINT, received_at TIMESTAMPTZ)"
    )
    for partner, org, billing_type, units in rows:
        con.execute(
            "INSERT INTO reconcile_held VALUES (?, ?, ?, ?, ?, '2026-11-21T01:00:00Z')",
            [D, partner, org, billing_type, units],
        )


@pytest.fixture
def checked(con):
    acknowledge(
        con,
        [
            ("p_0001", "o_a", TA, 1, True),
            ("p_0001", "o_b", TA, 1, True),
            ("p_0001", "o_c", PU, 10, True),
            ("p_0001", "o_d", PU, 4, False),
            ("p_0002", "o_a", TA, 1, True),
            ("p_0003", "o_a", TA, 1, True),
        ],
    )
    hold(
        con,
        [
            ("p_0001", "o_a", TA, 1),
            ("p_0001", "o_c", PU, 12),
            ("p_0001", "o_x", PU, 3),
            ("p_0002", "o_a", TA, 1),
        ],
    )
    checks = reconciliation.record(
        con,
        [(D, "p_0001", AT, None), (D, "p_0002", AT, None), (D, "p_0003", AT, "kaseyaone 503")],
        check_id="chk-1",
        run_id="run-1",
    )
    return con, checks


def differences(con, check_id="chk-1"):
    return con.execute(
        "SELECT partner_id, organization_id, difference, acknowledged_units, kaseyaone_units "
        "FROM ops.reconciliation_differences WHERE check_id = ? ORDER BY ALL",
        [check_id],
    ).fetchall()


def test_each_metric_is_match_missing_differs_or_unexpected(checked):
    con, checks = checked
    assert differences(con) == [
        ("p_0001", "o_b", "missing_at_kaseyaone", 1, None),
        ("p_0001", "o_c", "differs", 10, 12),
        ("p_0001", "o_x", "unexpected_at_kaseyaone", None, 3),
    ]
    by_partner = {c.partner_id: c for c in checks}
    assert by_partner["p_0001"] == reconciliation.Check(
        D, "p_0001", "differences", matched=1, missing=1, differing=1, unexpected=1
    )
    assert by_partner["p_0002"] == reconciliation.Check(D, "p_0002", "clean", matched=1)
    assert by_partner["p_0003"].status == "failed"
    assert by_partner["p_0003"].error == "kaseyaone 503"
    counts = con.execute(
        "SELECT partner_id, metrics_acknowledged, metrics_at_kaseyaone, run_id, checked_at "
        "FROM ops.reconciliation ORDER BY partner_id"
    ).fetchall()
    assert counts == [
        ("p_0001", 3, 3, "run-1", AT),  # the rejected metric is no acknowledgment
        ("p_0002", 1, 1, "run-1", AT),
        ("p_0003", None, None, "run-1", AT),  # nothing compared
    ]


def test_the_open_view_shows_the_latest_successful_check(checked):
    con, _ = checked
    open_now = con.execute(
        "SELECT partner_id, organization_id, difference FROM main.reconciliation_open ORDER BY ALL"
    ).fetchall()
    assert [r[2] for r in open_now] == [
        "missing_at_kaseyaone",
        "differs",
        "unexpected_at_kaseyaone",
    ]
    # a later check that fails tells nothing: the open differences stand
    reconciliation.record(con, [(D, "p_0001", AT + dt.timedelta(hours=1), "down")], check_id="c2")
    assert con.execute("SELECT count(*) FROM main.reconciliation_open").fetchone()[0] == len(
        open_now
    )
    # a later clean check closes them
    hold(con, [("p_0001", "o_a", TA, 1), ("p_0001", "o_b", TA, 1), ("p_0001", "o_c", PU, 10)])
    reconciliation.record(con, [(D, "p_0001", AT + dt.timedelta(hours=2), None)], check_id="c3")
    assert con.execute("SELECT count(*) FROM main.reconciliation_open").fetchone()[0] == 0


def test_repairs_resend_ours_once_under_a_new_key_and_never_theirs(checked):
    con, _ = checked
    assert reconciliation.plan_repairs(con, [D], "run-2") == 2  # o_b and o_c, not o_x
    batches = con.execute(
        "SELECT idempotency_key, partner_id, payload::VARCHAR, status FROM ops.outbox"
    ).fetchall()
    assert len(batches) == 1
    key, partner, payload, status = batches[0]
    assert (partner, status) == ("p_0001", "pending")
    # the acknowledged units, under a key no plain plan would give the same content
    metrics = {
        (m["organization_id"], m["units"]) for m in delivery.orjson.loads(payload)["metrics"]
    }
    assert metrics == {("o_b", 1), ("o_c", 10)}
    plain = delivery.batches(D, "p_0001", [
        {"organization_id": "o_b", "billing_type": TA, "units": 1},
        {"organization_id": "o_c", "billing_type": PU, "units": 10},
    ], "k-original")[0].idempotency_key  # fmt: skip
    assert key != plain
    repaired = con.execute(
        "SELECT organization_id, repaired_by, repaired_at IS NOT NULL "
        "FROM ops.reconciliation_differences ORDER BY organization_id"
    ).fetchall()
    assert repaired == [("o_b", key, True), ("o_c", key, True), ("o_x", None, False)]
    # once per finding: planning again re-sends nothing
    con.execute("UPDATE ops.outbox SET status = 'acknowledged'")
    assert reconciliation.plan_repairs(con, [D], "run-3") == 0


def test_no_repair_while_a_batch_is_pending_or_after_a_newer_acknowledgment(checked):
    con, _ = checked
    con.execute(
        "INSERT INTO ops.outbox VALUES ('k-pending', ?, 'p_0001', 0, '{}', 1, 'pending', 1, "
        "NULL, NULL, NULL, NULL, NULL, now(), NULL, 'run-x')",
        [D],
    )
    assert reconciliation.plan_repairs(con, [D], "run-2") == 0
    con.execute("DELETE FROM ops.outbox")
    acknowledge(con, [("p_0001", "o_c", PU, 11, True)])  # a later delivery changed o_c
    assert reconciliation.plan_repairs(con, [D], "run-2") == 1  # o_b only
    assert reconciliation.plan_repairs(con, [D + dt.timedelta(days=1)], "run-2") == 0


def test_partner_dates_checked_are_those_acknowledged_or_sent_and_not_in_flight(con):
    acknowledge(con, [("p_0001", "o_a", TA, 1, True), ("p_0002", "o_a", TA, 1, False)])
    for key, partner, status, attempts in [
        ("k3", "p_0003", "failed", 1),  # refused whole: KaseyaOne may hold something all the same
        ("k4", "p_0004", "pending", 0),  # never sent: nothing to check
        ("k5", "p_0001", "pending", 1),  # in flight
    ]:
        con.execute(
            "INSERT INTO ops.outbox VALUES (?, ?, ?, 0, '{}', 1, ?, ?, NULL, NULL, NULL, NULL, "
            "NULL, now(), NULL, 'run-x')",
            [key, D, partner, status, attempts],
        )
    todo, in_flight = reconciliation.partner_dates(con, [D])
    assert todo == [(D, "p_0002"), (D, "p_0003")]
    assert in_flight == [(D, "p_0001")]
    assert reconciliation.partner_dates(con, [D], ["p_0003"]) == ([(D, "p_0003")], [])
    assert reconciliation.partner_dates(con, [D - dt.timedelta(days=1)]) == ([], [])
