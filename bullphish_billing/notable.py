"""Notable changes of a usage date against the previous day's metrics.

Two kinds, per partner, organization and billing type:
- a per-user count that moved by more than `min_share` of the previous day's count (default
  20%) and by at least `min_users` users (default 5): `users_up` / `users_down`;
- a module switched on or off (the organization's module flag as served by BullPhish ID, on
  the two days): `module_on` / `module_off`, whatever the subscription. A per-user count that
  fell to 0 because its module was switched off is reported once, as `module_off`.

Only organizations billed on both days are compared: a new organization, or a day that was not
processed (or held), has nothing to be compared with. The changes are stored in
`ops.notable_changes` (replaced per partner-date) and shown in a Prefect artifact.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from bullphish_billing.results import MODULES, SubscriptionType
from bullphish_billing.stale_targets import StaleOrganization
from bullphish_billing.warehouse import sqlfiles
from bullphish_billing.warehouse.db import fetch_all, transaction

ARTIFACT_ROWS = 200  # an artifact lists at most this many; the table has them all


@dataclass(frozen=True)
class Findings:
    """What the notable-changes stage found for a date: the changes against the previous day,
    and the organizations with stale active users (`stale_targets`)."""

    changes: list[NotableChange]
    stale: list[StaleOrganization]


@dataclass(frozen=True)
class NotableChange:
    usage_date: dt.date
    partner_id: str
    organization_id: str
    billing_type: str
    change: str  # users_up | users_down | module_on | module_off
    previous_units: int
    units: int
    change_share: float | None  # (units - previous) / previous; None when previous is 0


def detect(
    con: duckdb.DuckDBPyConnection,
    usage_date: dt.date,
    partner_ids: list[str],
    *,
    min_share: float,
    min_users: int,
    run_id: str,
) -> list[NotableChange]:
    """Replace the notable changes of the partner-dates and return them."""
    if not partner_ids:
        return []
    with transaction(con):
        con.execute(
            "DELETE FROM ops.notable_changes WHERE usage_date = ? AND list_contains(?, partner_id)",
            [usage_date, partner_ids],
        )
        con.execute(
            sqlfiles.template("notable/detect", modules=", ".join(MODULES)),
            {
                "day": usage_date,
                "partners": partner_ids,
                "min_share": min_share,
                "min_users": min_users,
                "run_id": run_id,
                "per_user": str(SubscriptionType.PER_USER),
            },
        )
    return stored(con, usage_date, partner_ids)


def stored(
    con: duckdb.DuckDBPyConnection, usage_date: dt.date, partner_ids: list[str] | None = None
) -> list[NotableChange]:
    """The notable changes recorded for a date (optionally only some partners)."""
    rows = fetch_all(
        con,
        """
        SELECT usage_date, partner_id, organization_id, billing_type, change,
               previous_units, units, change_share
        FROM ops.notable_changes
        WHERE usage_date = $day AND ($partners IS NULL OR list_contains($partners, partner_id))
        ORDER BY partner_id, organization_id, billing_type
        """,
        {"day": usage_date, "partners": partner_ids},
    )
    return [NotableChange(*row) for row in rows]


def _share(change: NotableChange) -> str:
    return "" if change.change_share is None else f"{change.change_share:+.0%}"


def markdown_table(changes: list[NotableChange], *, with_partner: bool = True) -> list[str]:
    """Markdown table lines of (at most ARTIFACT_ROWS) changes."""
    head = ["partner"] if with_partner else []
    head += ["organization", "billing type", "change", "before", "after", "share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in changes[:ARTIFACT_ROWS]:
        cells = [f"`{c.partner_id}`"] if with_partner else []
        cells += [
            f"`{c.organization_id}`",
            f"`{c.billing_type}`",
            c.change,
            str(c.previous_units),
            str(c.units),
            _share(c),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if len(changes) > ARTIFACT_ROWS:
        lines += ["", f"... and {len(changes) - ARTIFACT_ROWS} more: see ops.notable_changes."]
    return lines


def markdown(
    changes: list[NotableChange], usage_date: dt.date, *, min_share: float, min_users: int
) -> str:
    """The run's notable-changes artifact."""
    lines = [
        f"# Notable changes on {usage_date} (against {usage_date - dt.timedelta(days=1)})",
        "",
        f"Per-user counts that moved by more than {min_share:.0%} and at least {min_users} "
        "users, and modules switched on or off, for the partners whose metrics this run "
        "computed. All of them are in `ops.notable_changes`.",
        "",
    ]
    if not changes:
        return "\n".join([*lines, "No notable changes."])
    counts: dict[str, int] = {}
    for c in changes:
        counts[c.change] = counts.get(c.change, 0) + 1
    lines += [", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())), ""]
    return "\n".join(lines + markdown_table(changes))
