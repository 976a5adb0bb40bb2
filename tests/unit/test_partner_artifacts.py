"""Which partners get a new version of their artifact (`billing-p-XXXX`) in a run: only those
with something to look at (issue 16: each artifact is one Prefect API call per partner and run).
"""

from __future__ import annotations

import datetime as dt

import pytest

from bullphish_billing import partner_artifacts
from bullphish_billing.notable import NotableChange
from bullphish_billing.reconciliation import FAILED, WITH_DIFFERENCES, Check, ReconcileReport
from bullphish_billing.results import PartnerOutcome, PartnerStatus

DAY = dt.date(2026, 11, 20)


def outcome(status: PartnerStatus, partner_id: str = "p_0001") -> PartnerOutcome:
    return PartnerOutcome(DAY, partner_id, "per_user", status, metrics_computed=4)


def change(partner_id: str) -> NotableChange:
    return NotableChange(
        DAY, partner_id, "o_1", "bullphish_id.phishing.per_user", "users_up", 20, 26, 0.3
    )


WANTED = {
    PartnerStatus.HELD: True,
    PartnerStatus.FAILED: True,
    PartnerStatus.PARTIAL: True,
    PartnerStatus.DELIVERED: False,
    PartnerStatus.SKIPPED: False,
    PartnerStatus.DRY_RUN: False,
}


def test_every_status_is_decided():
    assert set(WANTED) == set(PartnerStatus)


@pytest.mark.parametrize("status", list(PartnerStatus))
def test_a_problem_gets_an_artifact_a_clean_or_skipped_partner_none(status):
    """Held, failed and partial: an artifact; delivered, skipped and dry run with nothing
    notable: none (they stay in the run's table)."""
    assert partner_artifacts.worth_an_artifact(outcome(status), [], frozenset()) is WANTED[status]


@pytest.mark.parametrize("status", [PartnerStatus.DELIVERED, PartnerStatus.DRY_RUN])
def test_a_notable_change_of_the_partner_gets_an_artifact(status):
    assert partner_artifacts.worth_an_artifact(outcome(status), [change("p_0001")], frozenset())


def test_another_partners_notable_change_does_not():
    changes = [change("p_0002"), change("p_00011")]
    assert not partner_artifacts.worth_an_artifact(
        outcome(PartnerStatus.DELIVERED), changes, frozenset()
    )


def test_a_reconciliation_difference_of_the_partner_gets_an_artifact():
    delivered = outcome(PartnerStatus.DELIVERED)
    assert partner_artifacts.worth_an_artifact(delivered, [], frozenset({"p_0001"}))
    assert not partner_artifacts.worth_an_artifact(delivered, [], frozenset({"p_0002"}))


def test_the_partners_the_reconciliation_gives_something_to_look_at():
    """Any difference (missing, differing, unexpected) or a failed read, on any date of the
    pass; a clean check, one with matches only, does not count."""
    earlier = DAY - dt.timedelta(days=7)
    report = ReconcileReport(
        "chk-1",
        checks=[
            Check(DAY, "p_0001", "clean", matched=5),
            Check(DAY, "p_0002", WITH_DIFFERENCES, matched=4, missing=1),
            Check(earlier, "p_0003", WITH_DIFFERENCES, differing=1),
            Check(DAY, "p_0004", WITH_DIFFERENCES, unexpected=2),
            Check(DAY, "p_0005", FAILED, error="403"),
            Check(earlier, "p_0006", "clean", matched=3),
        ],
    )
    assert report.partners_to_look_at() == {"p_0002", "p_0003", "p_0004", "p_0005"}
    assert ReconcileReport("chk-2", error="the warehouse").partners_to_look_at() == set()


def test_the_artifact_says_when_the_reconciliation_found_the_partner():
    delivered = outcome(PartnerStatus.DELIVERED)
    text = partner_artifacts.markdown(delivered, [], reconciled_differently=True)
    assert f"`reconciliation-{DAY}`" in text
    assert "reconciliation" not in partner_artifacts.markdown(delivered, [])
