"""The run's one-line summary and exit code (README: exit codes; rule 11's reconciliation)."""

from __future__ import annotations

import datetime as dt

from bullphish_billing.results import RunSummary


def summary(**kwargs) -> RunSummary:
    return RunSummary(
        run_id="r", usage_date=dt.date(2026, 12, 1), dry_run=False, outcomes=[], **kwargs
    )


def test_a_repair_is_said_and_is_no_problem_by_itself():
    repaired = summary(reconciliation_repaired=23)
    assert "; 23 metric(s) re-sent to repair KaseyaOne" in repaired.one_line()
    assert repaired.exit_code == 0


def test_a_difference_or_a_failed_check_is_a_problem():
    assert summary().exit_code == 0
    different = summary(reconciliation_differences=4)
    assert different.exit_code == 1
    assert "; 4 reconciliation difference(s)" in different.one_line()
    assert summary(reconciliation_failed=1).exit_code == 1
