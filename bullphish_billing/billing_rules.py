"""The billing rules of docs/billing-rules.md, in DuckDB SQL, in one place.

- Rule 1 (which partners are billed): `decide_partners`.
- Rules 6-7 set-level (duplicates, unknown organizations, held organizations, the hold
  threshold) and rules 2-5 (what is billed, the units): `evaluate`.
Per-record validation (rule 7's missing field / wrong type / out-of-contract value) happens
earlier, in `validation`, as the pages arrive.

Each statement is a file of `warehouse/sql/rules/` (named where it runs below); values are
query parameters. Rule 7's conflicting duplicates of organizations and targets are one template
filled per entity (`CONFLICTING_CONTENT`).
"""

from __future__ import annotations

import datetime as dt

import duckdb

from bullphish_billing.results import (
    MODULES,
    Decision,
    Evaluation,
    PartnerDecision,
    SubscriptionType,
)
from bullphish_billing.warehouse import sqlfiles
from bullphish_billing.warehouse.db import fetch_all, transaction

DUPLICATE_CONFLICT = "duplicate id with conflicting content"
UNKNOWN_ORGANIZATION = "unknown organization: the partner has no organization with this id"

CONFLICTING_CONTENT = (
    (
        "organization",
        "raw.organizations",
        ", ".join(("name", "parent_id", "status", *MODULES, "created_at")),
    ),
    ("target", "raw.targets", "organization_id, status, updated_at"),
)
"""Rule 7's conflicting duplicates, per entity: its raw table and the content two copies of an
id must share (sql/rules/records_quarantine_conflicting.sql)."""


def _sql(name: str) -> str:
    """The statement of `sql/rules/<name>.sql`."""
    return sqlfiles.text(f"rules/{name}")


def decide_partners(
    con: duckdb.DuckDBPyConnection, usage_date: dt.date, run_id: str
) -> list[PartnerDecision]:
    """Rule 1, on the partners extracted for the date.

    A partner whose own record is bad (or served twice with conflicting content) is held; a
    partner missing a prerequisite is skipped with every unmet prerequisite named.
    """
    with transaction(con):
        con.execute(_sql("partners_clear_set_quarantine"), {"d": usage_date})
        con.execute(
            _sql("partners_quarantine_conflicting"),
            {"d": usage_date, "run": run_id, "reason": DUPLICATE_CONFLICT},
        )
    rows = fetch_all(con, _sql("partners_decide"), {"d": usage_date})
    return [PartnerDecision(pid, sub, Decision(decision), why) for pid, sub, decision, why in rows]


def evaluate(
    con: duckdb.DuckDBPyConnection,
    usage_date: dt.date,
    partner_ids: list[str],
    *,
    hold_threshold: float,
    run_id: str,
) -> dict[str, Evaluation]:
    """Apply rules 2-7 to extracted partner-dates and store their metrics.

    Quarantines conflicting duplicates and targets of unknown organizations, holds a
    partner-date whose quarantined share exceeds `hold_threshold`, and replaces the
    `billing_metrics` of every partner-date that is not held (a held one keeps its earlier
    metrics, if any).
    """
    if not partner_ids:
        return {}
    scope = {"d": usage_date, "p": partner_ids}
    with transaction(con):
        con.execute(_sql("records_clear_set_quarantine"), scope)
        # Rule 7: a duplicate id with conflicting content quarantines every copy; a copy
        # that failed record validation conflicts with the good copies of the same id.
        for entity, table, content in CONFLICTING_CONTENT:
            con.execute(
                sqlfiles.template(
                    "rules/records_quarantine_conflicting", table=table, content=content
                ),
                scope | {"entity": entity, "run": run_id, "reason": DUPLICATE_CONFLICT},
            )
        # Rule 6: a target naming an organization the partner does not have (neither served
        # nor held) is quarantined; targets of held organizations are neither counted nor
        # quarantined.
        con.execute(
            _sql("targets_quarantine_unknown_organization"),
            scope | {"run": run_id, "reason": UNKNOWN_ORGANIZATION},
        )
        stats = fetch_all(con, _sql("partner_dates_quarantined"), scope)
        held: dict[str, str] = {}
        counts: dict[str, tuple[int, int, int, int]] = {}
        for partner_id, received, quarantined, orgs_held, active_orgs in stats:
            counts[partner_id] = (received, quarantined, orgs_held, active_orgs)
            if quarantined > hold_threshold * received:
                share = quarantined / received if received else 1.0
                held[partner_id] = (
                    f"{quarantined} of {received} records quarantined ({share:.2%}), above "
                    f"the {hold_threshold:.2%} threshold: held for review"
                )
        billed = [p for p in partner_ids if p in counts and p not in held]
        _store_metrics(con, usage_date, billed, run_id)
        metric_rows = fetch_all(
            con, _sql("metrics_per_partner"), {"d": usage_date, "p": billed or [""]}
        )
        subscriptions = dict(fetch_all(con, _sql("partners_subscription"), scope))
    computed = {row[0]: row for row in metric_rows}
    result = {}
    for partner_id in partner_ids:
        if partner_id not in counts:
            continue
        received, quarantined, orgs_held, active_orgs = counts[partner_id]
        _, _, orgs_billed, metrics = computed.get(partner_id, (None, None, 0, 0))
        per_org = len(MODULES)
        if partner_id in held:  # nothing computed: every organization's metrics are held
            metrics_held = per_org * (active_orgs + orgs_held)
        else:
            metrics_held = per_org * orgs_held
        result[partner_id] = Evaluation(
            partner_id=partner_id,
            subscription_type=subscriptions.get(partner_id),
            held=partner_id in held,
            reason=held.get(partner_id),
            organizations_billed=orgs_billed,
            organizations_held=orgs_held,
            records_received=received,
            records_quarantined=quarantined,
            metrics_computed=metrics,
            metrics_held=metrics_held,
        )
    return result


def _store_metrics(
    con: duckdb.DuckDBPyConnection, usage_date: dt.date, partner_ids: list[str], run_id: str
) -> None:
    """Rules 2-5: replace the metrics of the given (not held) partner-dates."""
    if not partner_ids:
        return
    scope = {"d": usage_date, "p": partner_ids}
    con.execute(_sql("metrics_clear"), scope)
    con.execute(
        sqlfiles.template("rules/metrics_compute", module_columns=", ".join(MODULES)),
        scope | {"run": run_id, "per_organization": str(SubscriptionType.PER_ORGANIZATION)},
    )
