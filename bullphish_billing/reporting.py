"""How a run is shown: the terminal summary, the Prefect artifacts, the one-line log."""

from __future__ import annotations

import datetime as dt

import duckdb

from bullphish_billing.results import PartnerStatus, RunSummary
from bullphish_billing.warehouse.db import fetch_all

ARTIFACT_COLUMNS = (
    "partner_id",
    "subscription_type",
    "status",
    "organizations_billed",
    "organizations_held",
    "metrics_computed",
    "metrics_held",
    "metrics_sent",
    "metrics_rejected",
    "records_quarantined",
)


def artifact_rows(summary: RunSummary) -> list[dict]:
    """The per-partner table of a run, ids and numbers only."""
    rows = []
    for o in summary.outcomes:
        row = {c: getattr(o, c) for c in ARTIFACT_COLUMNS}
        row["subscription_type"] = row["subscription_type"] or ""
        rows.append(row)
    return rows


def issues_markdown(summary: RunSummary) -> str:
    """A markdown note of everything skipped, held, failed or rejected."""
    lines = [f"# Billing {summary.usage_date}: {summary.one_line()}", ""]
    groups = {
        PartnerStatus.HELD: "Held for review",
        PartnerStatus.FAILED: "Failed",
        PartnerStatus.PARTIAL: "Delivered in part",
        PartnerStatus.SKIPPED: "Skipped (prerequisite not met)",
    }
    for status, title in groups.items():
        chosen = [o for o in summary.outcomes if o.status == status]
        if not chosen:
            continue
        lines += [f"## {title} ({len(chosen)})", ""]
        lines += [f"- `{o.partner_id}`: {o.reason}" for o in chosen]
        lines.append("")
    if summary.still_pending:
        lines += [
            f"## Pending delivery\n\n{summary.still_pending} batch(es) wait in the "
            "outbox; the next run sends them first.",
            "",
        ]
    if summary.reconciliation_differences or summary.reconciliation_failed:
        lines += [
            "## Reconciliation with KaseyaOne",
            "",
            f"{summary.reconciliation_differences} metric(s) not as KaseyaOne acknowledged "
            f"them, {summary.reconciliation_failed} check(s) failed: see the "
            f"`reconciliation-{summary.usage_date.isoformat()}` artifact and the view "
            "`reconciliation_open`. The next run re-sends what is missing or differs at "
            "KaseyaOne; what KaseyaOne holds that we never sent is only reported.",
            "",
        ]
    lines += [f"- {note}" for note in summary.notes]
    if len(lines) == 2:
        lines.append("Nothing skipped, held, failed or rejected.")
    return "\n".join(lines)


def unattributed_quarantine(con: duckdb.DuckDBPyConnection, usage_date: dt.date) -> list[str]:
    """Quarantined partner records that name no partner: nobody's run log shows them."""
    rows = fetch_all(
        con,
        "SELECT count(*) FROM ops.quarantine WHERE usage_date = ? AND entity = 'partner' "
        "AND partner_id IS NULL",
        [usage_date],
    )
    n = rows[0][0]
    if not n:
        return []
    return [f"{n} partner record(s) without a valid id quarantined (see ops.quarantine)"]


def terminal_table(summary: RunSummary) -> str:
    """A plain-text table of the outcomes for the terminal."""
    header = ("partner", "subscription", "status", "orgs", "held", "sent", "rej", "quar", "reason")
    # held: organizations held for a bad record of their own
    rows = [
        (
            o.partner_id,
            o.subscription_type or "-",
            o.status,
            str(o.organizations_billed),
            str(o.organizations_held),
            str(o.metrics_sent),
            str(o.metrics_rejected),
            str(o.records_quarantined),
            (o.reason or "")[:70],
        )
        for o in summary.outcomes
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [header, *rows])


def text_table(rows: list[dict]) -> str:
    """A plain-text table of dicts with the same keys, for the terminal."""
    header = tuple(rows[0])
    cells = [tuple(str(v) for v in row.values()) for row in rows]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [header, *cells])
