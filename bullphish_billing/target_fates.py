"""What happened to each target record of a partner-date, by reason (rules 2, 6, 7).

One classification (`sql/explain/target_records.sql`, first match wins: unknown organization,
conflicting duplicate, quarantined, organization held, organization archived, exact duplicate
collapsed, active, inactive; records quarantined at validation apart) serves two readers: each
run counts it per organization and reason into `ops.target_fates`, which the view
`metric_explanations` reads (so the analysts' file, which holds no `raw.targets`, answers too),
and `explain --targets` lists the ids from the warehouse's snapshot.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from bullphish_billing.warehouse import sqlfiles
from bullphish_billing.warehouse.db import fetch_all, transaction


def record(
    con: duckdb.DuckDBPyConnection, usage_date: dt.date, partner_ids: list[str], run_id: str
) -> None:
    """Replace the partner-dates' counts in ops.target_fates."""
    if not partner_ids:
        return
    with transaction(con):
        con.execute(
            "DELETE FROM ops.target_fates WHERE usage_date = ? AND list_contains(?, partner_id)",
            [usage_date, partner_ids],
        )
        con.execute(
            "INSERT INTO ops.target_fates SELECT usage_date, partner_id, organization_id, kind, "
            f"reason, count(*), $run_id, now() FROM ({sqlfiles.text('explain/target_records')}) "
            "GROUP BY ALL",
            {"d": usage_date, "partners": partner_ids, "run_id": run_id},
        )


def target_ids(
    con: duckdb.DuckDBPyConnection, usage_date: dt.date, partner_id: str
) -> dict[tuple[str | None, str, str], list[str]]:
    """The partner-date's target ids by (organization_id, kind, reason), sorted, each once
    (records whose id is bad have none)."""
    rows = fetch_all(
        con,
        "SELECT organization_id, kind, reason, list_sort(list_distinct(list(id))) FROM "
        f"({sqlfiles.text('explain/target_records')}) WHERE id IS NOT NULL GROUP BY ALL",
        {"d": usage_date, "partners": [partner_id]},
    )
    return {(o, k, r): list(ids) for o, k, r, ids in rows}
