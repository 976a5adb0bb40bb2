"""Stale active users: active targets nobody has updated for a long time.

The feed bills active targets as BullPhish ID reports them (rule 4); a user who left the
customer a year ago and was never switched off is billed all the same. Per partner-date and
billed organization, each run counts the active targets (as billing counts them) whose
`updated_at` is older than `stale_days` (BILLING_STALE_DAYS, default 180) before the usage date
into `ops.stale_targets` (view `stale_active_targets`), and the run's notable-changes artifact
lists the per-user organizations whose stale share passes BILLING_STALE_SHARE. Billing does not
change: this is the warning that lets an MSP clean up before the invoice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from bullphish_billing.results import SubscriptionType
from bullphish_billing.warehouse import sqlfiles
from bullphish_billing.warehouse.db import fetch_all, transaction

ARTIFACT_ROWS = 50  # the artifact lists at most this many organizations; the view has them all


@dataclass(frozen=True)
class StaleOrganization:
    usage_date: dt.date
    partner_id: str
    organization_id: str
    subscription_type: str
    active_targets: int
    stale_targets: int
    undated_targets: int
    oldest_updated_at: dt.datetime | None
    stale_days: int

    @property
    def share(self) -> float:
        return self.stale_targets / self.active_targets if self.active_targets else 0.0


def cutoff(usage_date: dt.date, stale_days: int) -> dt.datetime:
    """A target updated before this is stale on `usage_date`: 00:00 UTC, `stale_days` days
    before it."""
    day = usage_date - dt.timedelta(days=stale_days)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def detect(
    con: duckdb.DuckDBPyConnection,
    usage_date: dt.date,
    partner_ids: list[str],
    *,
    stale_days: int,
    run_id: str,
) -> list[StaleOrganization]:
    """Replace the stale counts of the partner-dates (whose metrics are computed) and return
    them."""
    if not partner_ids:
        return []
    with transaction(con):
        con.execute(
            "DELETE FROM ops.stale_targets WHERE usage_date = ? AND list_contains(?, partner_id)",
            [usage_date, partner_ids],
        )
        con.execute(
            sqlfiles.text("stale/detect"),
            {
                "day": usage_date,
                "partners": partner_ids,
                "cutoff": cutoff(usage_date, stale_days),
                "stale_days": stale_days,
                "run_id": run_id,
            },
        )
    return stored(con, usage_date, partner_ids)


def stored(
    con: duckdb.DuckDBPyConnection, usage_date: dt.date, partner_ids: list[str] | None = None
) -> list[StaleOrganization]:
    """The stale counts recorded for a date (optionally only some partners)."""
    rows = fetch_all(
        con,
        """
        SELECT usage_date, partner_id, organization_id, subscription_type, active_targets,
               stale_targets, undated_targets, oldest_updated_at, stale_days
        FROM ops.stale_targets
        WHERE usage_date = $day AND ($partners IS NULL OR list_contains($partners, partner_id))
        ORDER BY partner_id, organization_id
        """,
        {"day": usage_date, "partners": partner_ids},
    )
    return [StaleOrganization(*row) for row in rows]


def worth_a_look(stale: list[StaleOrganization], min_share: float) -> list[StaleOrganization]:
    """The per-user organizations whose stale share is above `min_share` (they pay for those
    users), largest share first."""
    per_user = str(SubscriptionType.PER_USER)
    found = [s for s in stale if s.subscription_type == per_user and s.share > min_share]
    return sorted(found, key=lambda s: (-s.share, s.partner_id, s.organization_id))


def markdown_lines(
    stale: list[StaleOrganization], *, min_share: float, stale_days: int
) -> list[str]:
    """The notable-changes artifact's lines on stale users (none when no organization passes
    the share)."""
    found = worth_a_look(stale, min_share)
    if not found:
        return []
    lines = [
        "",
        f"## Stale active users: {len(found)} per-user organization(s) with more than "
        f"{min_share:.0%} of their active users not updated in {stale_days} days",
        "",
        "Billing does not change (active users are billed as BullPhish ID reports them); the "
        "MSP may want to deactivate them before the invoice. All counts are in "
        "`stale_active_targets`.",
        "",
        "| partner | organization | stale | active | share | oldest update |",
        "|---|---|---|---|---|---|",
    ]
    for s in found[:ARTIFACT_ROWS]:
        oldest = s.oldest_updated_at.date().isoformat() if s.oldest_updated_at else ""
        lines.append(
            f"| `{s.partner_id}` | `{s.organization_id}` | {s.stale_targets} | "
            f"{s.active_targets} | {s.share:.0%} | {oldest} |"
        )
    if len(found) > ARTIFACT_ROWS:
        lines += ["", f"... and {len(found) - ARTIFACT_ROWS} more: see stale_active_targets."]
    return lines
