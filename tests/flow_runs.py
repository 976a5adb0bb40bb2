"""The flows run in-process (under Prefect's test harness), giving back what they computed
whether they ended Completed or Failed: a run with problems ends Failed, its summary the data."""

from __future__ import annotations

from typing import Any

from bullphish_billing.results import BackfillSummary, RunSummary


def billed(**parameters: Any) -> RunSummary:
    """Run `daily-billing` and return its summary; a run that did not finish fails the test."""
    from flows.daily_billing import daily_billing

    state = daily_billing(**parameters, return_state=True)
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, RunSummary), f"{state.name}: {state.message}"
    assert state.is_completed() == (summary.exit_code == 0), (state.name, summary.exit_code)
    return summary


def backfilled(**parameters: Any) -> BackfillSummary:
    """Run `backfill` and return its summary; a backfill that did not finish fails the test."""
    from flows.backfill import backfill

    state = backfill(**parameters, return_state=True)
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, BackfillSummary), f"{state.name}: {state.message}"
    assert state.is_completed() == (summary.exit_code == 0), (state.name, summary.exit_code)
    return summary
