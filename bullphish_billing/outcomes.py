"""What a run did, per partner-date, from what each stage reported; and the run log that
records it (ops.runs, ops.partner_runs). The words and the summary: results.py."""

from __future__ import annotations

import datetime as dt

import duckdb

from bullphish_billing.delivery import DeliveryReport
from bullphish_billing.extract import ExtractResult
from bullphish_billing.results import (
    Decision,
    Evaluation,
    PartnerDecision,
    PartnerOutcome,
    PartnerStatus,
    RunSummary,
)
from bullphish_billing.warehouse.db import transaction


def combine(
    usage_date: dt.date,
    decisions: list[PartnerDecision],
    extracts: dict[str, ExtractResult],
    evaluations: dict[str, Evaluation],
    report: DeliveryReport | None,
    dry_run: bool,
) -> list[PartnerOutcome]:
    """One outcome per partner decided on, from what each stage reported."""
    outcomes = []
    for decision in decisions:
        pid = decision.partner_id
        base = {
            "usage_date": usage_date,
            "partner_id": pid,
            "subscription_type": decision.subscription_type,
        }
        if decision.decision != Decision.BILLABLE:
            outcomes.append(
                PartnerOutcome(
                    **base, status=PartnerStatus(decision.decision), reason=decision.reason
                )
            )
            continue
        extract = extracts.get(pid)
        if extract is None or extract.error:
            reason = extract.error if extract else "not extracted"
            outcomes.append(PartnerOutcome(**base, status=PartnerStatus.FAILED, reason=reason))
            continue
        ev = evaluations[pid]
        numbers = {
            "organizations_billed": ev.organizations_billed,
            "organizations_held": ev.organizations_held,
            "records_received": ev.records_received,
            "records_quarantined": ev.records_quarantined,
            "metrics_computed": ev.metrics_computed,
            "metrics_held": ev.metrics_held,
        }
        if ev.held:
            outcomes.append(
                PartnerOutcome(**base, status=PartnerStatus.HELD, reason=ev.reason, **numbers)
            )
            continue
        if dry_run or report is None:
            outcomes.append(PartnerOutcome(**base, status=PartnerStatus.DRY_RUN, **numbers))
            continue
        key = (usage_date, pid)
        sent, rejected = report.sent.get(key, 0), report.rejected.get(key, 0)
        numbers |= {"metrics_sent": sent, "metrics_rejected": rejected}
        if key in report.errors:
            status, reason = PartnerStatus.FAILED, report.errors[key]
        elif rejected or ev.organizations_held:
            problems = []
            if ev.organizations_held:
                problems.append(f"{ev.organizations_held} organization(s) held: own record bad")
            if rejected:
                problems.append(f"KaseyaOne rejected {rejected} metric(s)")
            status, reason = PartnerStatus.PARTIAL, "; ".join(problems)
        else:
            status = PartnerStatus.DELIVERED
            reason = None if sent else "unchanged since last acknowledged: nothing sent"
        outcomes.append(PartnerOutcome(**base, status=status, reason=reason, **numbers))
    return outcomes


def start_run(
    con: duckdb.DuckDBPyConnection, run_id: str, usage_date: dt.date, dry_run: bool
) -> None:
    con.execute(
        "INSERT OR REPLACE INTO ops.runs VALUES (?, ?, ?, now(), NULL, NULL)",
        [run_id, usage_date, dry_run],
    )


def finish_stopped(con: duckdb.DuckDBPyConnection, run_id: str, exit_code: int) -> None:
    """Close the ops.runs row of a run stopped before it decided on any partner."""
    con.execute(
        "UPDATE ops.runs SET finished_at = now(), exit_code = ? "
        "WHERE run_id = ? AND finished_at IS NULL",
        [exit_code, run_id],
    )


def record(con: duckdb.DuckDBPyConnection, summary: RunSummary) -> None:
    """Write the run log rows of a run and close its ops.runs row."""
    frame = summary.to_frame()
    with transaction(con):
        con.execute("DELETE FROM ops.partner_runs WHERE run_id = ?", [summary.run_id])
        if len(frame):
            con.register("outcomes", frame)
            con.execute(
                """
                INSERT INTO ops.partner_runs
                SELECT ?, usage_date, partner_id, subscription_type, status, reason,
                       organizations_billed, organizations_held, records_received,
                       records_quarantined, metrics_computed, metrics_held, metrics_sent,
                       metrics_rejected,
                       now()
                FROM outcomes
                """,
                [summary.run_id],
            )
            con.unregister("outcomes")
        con.execute(
            "UPDATE ops.runs SET finished_at = now(), exit_code = ? WHERE run_id = ?",
            [summary.exit_code, summary.run_id],
        )
