"""The billing rules of docs/billing-rules.md, in DuckDB SQL, in one place.

- Rule 1 (which partners are billed): `decide_partners`.
- Rules 6-7 set-level (duplicates, unknown organizations, held organizations, the hold
  threshold) and rules 2-5 (what is billed, the units): `evaluate`.
Per-record validation (rule 7's missing field / wrong type / out-of-contract value) happens
earlier, in `validation`, as the pages arrive.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from bullphish_billing.results import Decision, Evaluation, PartnerDecision
from bullphish_billing.warehouse.db import fetch_all, transaction

MODULES = ("training_awareness", "phishing")
SUBSCRIPTION_TYPES = ("per_organization", "per_user")
BILLING_TYPES = tuple(
    f"bullphish_id.{module}.{sub}" for sub in SUBSCRIPTION_TYPES for module in MODULES
)

DUPLICATE_CONFLICT = "duplicate id with conflicting content"
UNKNOWN_ORGANIZATION = "unknown organization: the partner has no organization with this id"


def decide_partners(
    con: duckdb.DuckDBPyConnection, usage_date: dt.date, run_id: str
) -> list[PartnerDecision]:
    """Rule 1, on the partners extracted for the date.

    A partner whose own record is bad (or served twice with conflicting content) is held; a
    partner missing a prerequisite is skipped with every unmet prerequisite named.
    """
    with transaction(con):
        con.execute(
            "DELETE FROM ops.quarantine WHERE usage_date = ? AND entity = 'partner' "
            "AND stage = 'set'",
            [usage_date],
        )
        con.execute(
            f"""
            INSERT INTO ops.quarantine
            WITH conflicting AS (
                SELECT id FROM raw.partners WHERE usage_date = $d
                GROUP BY id
                HAVING count(DISTINCT (name, subscription_type, kaseyaone_activated, psa,
                                       unified_login_enabled, updated_at)) > 1
                    OR id IN (SELECT record_id FROM ops.quarantine
                              WHERE usage_date = $d AND entity = 'partner')
            )
            SELECT $d, p.id, 'partner', p.id, p.page_no, p.page_row, 'set',
                   '{DUPLICATE_CONFLICT}', $run, now()
            FROM raw.partners p JOIN conflicting USING (id)
            WHERE p.usage_date = $d
            """,
            {"d": usage_date, "run": run_id},
        )
    rows = fetch_all(
        con,
        """
        WITH bad AS (
            SELECT record_id AS id, string_agg(DISTINCT reason, '; ' ORDER BY reason) AS reason
            FROM ops.quarantine
            WHERE usage_date = $d AND entity = 'partner' AND record_id IS NOT NULL
            GROUP BY record_id
        ),
        listed AS (
            SELECT DISTINCT id, subscription_type, kaseyaone_activated, psa,
                   unified_login_enabled
            FROM raw.partners
            WHERE usage_date = $d AND id NOT IN (SELECT id FROM bad)
        ),
        decided AS (
            SELECT id, subscription_type,
                   concat_ws('; ',
                       CASE WHEN NOT kaseyaone_activated
                            THEN 'KaseyaOne integration not activated' END,
                       CASE WHEN psa IS NULL THEN 'no PSA connected' END,
                       CASE WHEN NOT unified_login_enabled
                            THEN 'unified login not enabled' END) AS unmet
            FROM listed
        )
        SELECT id, subscription_type,
               CASE WHEN unmet = '' THEN 'billable' ELSE 'skipped' END,
               nullif(unmet, '')
        FROM decided
        UNION ALL
        SELECT id, NULL, 'held', 'partner record is bad: ' || reason FROM bad
        ORDER BY 1
        """,
        {"d": usage_date},
    )
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
    params = {"d": usage_date, "p": partner_ids, "run": run_id}
    with transaction(con):
        con.execute(
            "DELETE FROM ops.quarantine WHERE usage_date = $d AND list_contains($p, partner_id) "
            "AND entity <> 'partner' AND stage = 'set'",
            {"d": usage_date, "p": partner_ids},
        )
        # Rule 7: a duplicate id with conflicting content quarantines every copy; a copy
        # that failed record validation conflicts with the good copies of the same id.
        con.execute(
            f"""
            INSERT INTO ops.quarantine
            WITH orgs AS (
                SELECT * FROM raw.organizations
                WHERE usage_date = $d AND list_contains($p, partner_id)
            ),
            conflicting AS (
                SELECT partner_id, id FROM orgs GROUP BY ALL
                HAVING count(DISTINCT (name, parent_id, status, training_awareness, phishing,
                                       created_at)) > 1
                UNION
                SELECT partner_id, record_id FROM ops.quarantine
                WHERE usage_date = $d AND list_contains($p, partner_id)
                  AND entity = 'organization' AND record_id IS NOT NULL
            )
            SELECT $d, partner_id, 'organization', id, page_no, page_row, 'set',
                   '{DUPLICATE_CONFLICT}', $run, now()
            FROM orgs JOIN conflicting USING (partner_id, id)
            """,
            params,
        )
        con.execute(
            f"""
            INSERT INTO ops.quarantine
            WITH targets AS (
                SELECT * FROM raw.targets
                WHERE usage_date = $d AND list_contains($p, partner_id)
            ),
            repeated AS (  -- ids served more than once: few, so the DISTINCT below is cheap
                SELECT partner_id, id FROM targets GROUP BY ALL HAVING count(*) > 1
            ),
            conflicting AS (
                SELECT partner_id, id FROM targets SEMI JOIN repeated USING (partner_id, id)
                GROUP BY ALL
                HAVING count(DISTINCT (organization_id, status, updated_at)) > 1
                UNION
                SELECT partner_id, record_id FROM ops.quarantine
                WHERE usage_date = $d AND list_contains($p, partner_id)
                  AND entity = 'target' AND record_id IS NOT NULL
            )
            SELECT $d, partner_id, 'target', id, page_no, page_row, 'set',
                   '{DUPLICATE_CONFLICT}', $run, now()
            FROM targets JOIN conflicting USING (partner_id, id)
            """,
            params,
        )
        # Rule 6: a target naming an organization the partner does not have (neither served
        # nor held) is quarantined; targets of held organizations are neither counted nor
        # quarantined.
        con.execute(
            f"""
            INSERT INTO ops.quarantine
            WITH known AS (
                SELECT partner_id, id FROM raw.organizations
                WHERE usage_date = $d AND list_contains($p, partner_id)
                UNION
                SELECT partner_id, record_id FROM ops.quarantine
                WHERE usage_date = $d AND list_contains($p, partner_id)
                  AND entity = 'organization' AND record_id IS NOT NULL
            )
            SELECT $d, t.partner_id, 'target', t.id, t.page_no, t.page_row, 'set',
                   '{UNKNOWN_ORGANIZATION}', $run, now()
            FROM raw.targets t
            ANTI JOIN known k ON k.partner_id = t.partner_id AND k.id = t.organization_id
            WHERE t.usage_date = $d AND list_contains($p, t.partner_id)
              AND NOT EXISTS (
                  SELECT 1 FROM ops.quarantine q
                  WHERE q.usage_date = $d AND q.partner_id = t.partner_id
                    AND q.entity = 'target' AND q.record_id = t.id
                    AND q.page_no = t.page_no AND q.page_row = t.page_row)
            """,
            params,
        )
        stats = fetch_all(
            con,
            """
            WITH quarantined AS (
                SELECT partner_id, count(*) AS n,
                       count(DISTINCT record_id) FILTER (entity = 'organization') AS orgs_held
                FROM ops.quarantine
                WHERE usage_date = $d AND list_contains($p, partner_id) AND entity <> 'partner'
                GROUP BY partner_id
            )
            , active AS (
                SELECT partner_id, count(DISTINCT id) AS n FROM raw.organizations
                WHERE usage_date = $d AND list_contains($p, partner_id) AND status = 'active'
                GROUP BY partner_id
            )
            SELECT e.partner_id,
                   e.organizations_received + e.targets_received AS received,
                   coalesce(q.n, 0) AS quarantined,
                   coalesce(q.orgs_held, 0) AS orgs_held,
                   coalesce(a.n, 0) AS active_orgs
            FROM ops.extractions e
            LEFT JOIN quarantined q USING (partner_id)
            LEFT JOIN active a USING (partner_id)
            WHERE e.usage_date = $d AND list_contains($p, e.partner_id)
            """,
            {"d": usage_date, "p": partner_ids},
        )
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
            con,
            """
            SELECT partner_id, any_value(subscription_type), count(DISTINCT organization_id),
                   count(*)
            FROM main.billing_metrics
            WHERE usage_date = $d AND list_contains($p, partner_id)
            GROUP BY partner_id
            """,
            {"d": usage_date, "p": billed or [""]},
        )
        subscriptions = dict(
            fetch_all(
                con,
                "SELECT DISTINCT id, subscription_type FROM raw.partners "
                "WHERE usage_date = ? AND list_contains(?, id)",
                [usage_date, partner_ids],
            )
        )
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
    params = {"d": usage_date, "p": partner_ids, "run": run_id}
    con.execute(
        "DELETE FROM main.billing_metrics WHERE usage_date = $d AND list_contains($p, partner_id)",
        {"d": usage_date, "p": partner_ids},
    )
    con.execute(
        """
        INSERT INTO main.billing_metrics
        WITH partners AS (
            SELECT DISTINCT id AS partner_id, subscription_type
            FROM raw.partners
            WHERE usage_date = $d AND list_contains($p, id)
        ),
        excluded_orgs AS (          -- held: the organization's own record is bad
            SELECT partner_id, record_id AS id FROM ops.quarantine
            WHERE usage_date = $d AND list_contains($p, partner_id)
              AND entity = 'organization' AND record_id IS NOT NULL
        ),
        billed_orgs AS (            -- rule 2: active organizations, sub-organizations alike
            SELECT DISTINCT partner_id, id AS organization_id, training_awareness, phishing
            FROM raw.organizations
            ANTI JOIN excluded_orgs USING (partner_id, id)
            WHERE usage_date = $d AND list_contains($p, partner_id) AND status = 'active'
        ),
        quarantined_targets AS (
            SELECT partner_id, record_id AS id FROM ops.quarantine
            WHERE usage_date = $d AND list_contains($p, partner_id)
              AND entity = 'target' AND record_id IS NOT NULL
        ),
        active_targets AS (         -- rule 4: active targets, each id once (rule 7)
            SELECT partner_id, organization_id, count(DISTINCT id) AS active
            FROM raw.targets
            ANTI JOIN quarantined_targets USING (partner_id, id)
            WHERE usage_date = $d AND list_contains($p, partner_id) AND status = 'active'
            GROUP BY ALL
        ),
        modules AS (
            SELECT o.partner_id, o.organization_id, m.module,
                   CASE m.module WHEN 'training_awareness' THEN o.training_awareness
                                 ELSE o.phishing END AS enabled,
                   coalesce(a.active, 0) AS active
            FROM billed_orgs o
            CROSS JOIN (VALUES ('training_awareness'), ('phishing')) AS m(module)
            LEFT JOIN active_targets a USING (partner_id, organization_id)
        )
        -- rules 3-5: both metrics of the subscription for every billed organization, zeros too
        SELECT $d, partner_id, organization_id,
               'bullphish_id.' || module || '.' || p.subscription_type AS billing_type,
               CASE WHEN NOT enabled THEN 0
                    WHEN p.subscription_type = 'per_organization' THEN 1
                    ELSE active END AS units,
               p.subscription_type, $run, now()
        FROM modules JOIN partners p USING (partner_id)
        """,
        params,
    )
