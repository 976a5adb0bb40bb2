"""A run with problems is red in Prefect: `daily-billing` ends Completed exactly when the command
would exit 0 and Failed otherwise, with its one-line summary as the state's message; a backfill
follows its dates; each partner's `report-<partner>-<date>` task run shows its outcome (in a
backfill's dates, one `report-partners-<date>` task run writes the partners' artifacts)."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from bullphish_billing.dates import today_utc
from bullphish_billing.results import PROBLEMS, BackfillSummary, RunSummary
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")

DAY = today_utc() - dt.timedelta(days=4)
CONFIG = SandboxConfig(today=today_utc())  # held, skipped and partly delivered partners
CLEAN = ["p_0002", "p_0009"]  # partners that deliver with nothing held or rejected


def flow_run(run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def report_runs(run_id: str, wanted: int, timeout_s: float = 30.0) -> list:
    """The flow run's `report-...` task runs, once the API holds `wanted` of them in a final
    state (their states reach the API a moment after the flow ends)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return _final_reports(FlowRunFilter(id=FlowRunFilterId(any_=[run_id])), wanted, timeout_s)


def _final_reports(runs_filter, wanted: int, timeout_s: float = 30.0) -> list:
    """The `report-...` task runs of the flow runs `runs_filter` selects, once the API holds
    `wanted` of them in a final state."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=runs_filter)
            final = [
                t
                for t in runs
                if t.name.startswith("report-") and t.state is not None and t.state.is_final()
            ]
            if len(final) >= wanted or time.monotonic() > deadline:
                return final


def test_a_run_with_problems_is_failed_with_its_summary_and_points_at_its_partners(configure):
    from flows.daily_billing import daily_billing

    with RunningSandbox(CONFIG) as sandbox:
        configure(sandbox)
        state = daily_billing(usage_date=DAY, return_state=True)
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, RunSummary)  # the summary stays retrievable from the state
    assert summary.exit_code == 1 and any(o.status in PROBLEMS for o in summary.outcomes)
    line = f"{DAY}: {summary.one_line()}"
    assert state.is_failed() and state.message == line

    stored = flow_run(summary.run_id).state
    assert stored.type.value == "FAILED" and stored.name == "Failed"  # Prefect's own Failed
    assert stored.message == line

    reports = {t.name: t.state for t in report_runs(summary.run_id, len(summary.outcomes))}
    assert len(reports) == len(summary.outcomes)
    names = {"delivered": "Delivered", "partial": "Partly delivered", "skipped": "Skipped"}
    names |= {"held": "Held", "failed": "Not delivered"}
    for outcome in summary.outcomes:
        report = reports[f"report-{outcome.partner_id}-{DAY}"]
        assert report.name == names[outcome.status], (outcome, report)
        assert report.message.startswith(f"{outcome.status}"), report.message
        if outcome.reason:
            assert outcome.reason[:40] in report.message


def test_a_clean_run_is_completed(configure):
    from flows.daily_billing import daily_billing

    with RunningSandbox(CONFIG) as sandbox:
        configure(sandbox)
        state = daily_billing(usage_date=DAY, partner_ids=CLEAN, return_state=True)
    summary = state.result()
    assert isinstance(summary, RunSummary) and summary.exit_code == 0
    assert state.is_completed()
    assert flow_run(summary.run_id).state.type.value == "COMPLETED"


def test_a_backfill_is_failed_when_a_date_is_and_names_it(configure):
    from flows.backfill import backfill

    days = [DAY - dt.timedelta(days=1), DAY]
    with RunningSandbox(CONFIG) as sandbox:
        configure(sandbox)
        clean = backfill(start=days[0], end=days[1], partner_ids=CLEAN, return_state=True)
        red = backfill(start=days[0], end=days[1], return_state=True)
    assert clean.is_completed() and clean.result().exit_code == 0

    summary = red.result(raise_on_failure=False)
    assert isinstance(summary, BackfillSummary) and summary.exit_code == 1
    assert red.is_failed()
    for day in days:  # every date had problems: each is named, with how it ended
        assert f"{day} problems" in red.message, red.message
    _one_report_task_run_per_date(red.state_details.flow_run_id, days)


def _one_report_task_run_per_date(backfill_run_id, days) -> None:
    """A backfill's dates report their partners from one `report-partners-<date>` task run each
    (no task run per partner: README "Performance"). It writes the artifacts of the partners
    with something to look at (those with problems at least), as the daily run's per-partner
    tasks do, and every partner stays in the date's table artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    from bullphish_billing import partner_artifacts

    dates = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[backfill_run_id]))
    reports = {t.name: t for t in _final_reports(dates, len(days))}
    assert sorted(reports) == [f"report-partners-{day}" for day in days]
    with get_client(sync_client=True) as client:
        for day in days:
            report = reports[f"report-partners-{day}"]
            assert report.state.is_completed(), report.state
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[report.flow_run_id])
                )
            )
            by_key = {a.key: a for a in artifacts}
            table = by_key[f"billing-{day}"].data
            rows = json.loads(table) if isinstance(table, str) else table
            problems = {r["partner_id"] for r in rows if r["status"] in PROBLEMS}
            written = {k for k in by_key if k.startswith("billing-p-")}
            assert problems and {partner_artifacts.key(p) for p in problems} <= written
            assert all(by_key[k].task_run_id == report.id for k in written)
            assert f"; {len(written)} partner artifact(s)" in report.state.message, report.state
