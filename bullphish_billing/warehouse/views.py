"""The analyst views: what the feed billed, how it changed, what a PSA would invoice.

Each view is a chain of named CTEs that reads top to bottom, declared with its `COMMENT ON` text
and every output column's comment. `schema.migrate` creates them in the same transaction as the
tables, so the warehouse schema (tables and views) is applied in one place; `create_views`
refuses a view whose columns differ from the declared ones, so no column goes uncommented.

- `billing_changes`: per partner, organization, billing type and day, the units against the
  partner's previous reported day: up, down, same, new or stopped.
- `invoice_preview`: per partner, organization, billing type and month, the units under each
  PSA unit-change policy (high-water mark, end of period, prorated daily).
- `unmapped_organizations`: billed organizations the partner's PSA has not mapped.
- `run_history`: every run, partner and date with its status and reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb


@dataclass(frozen=True)
class View:
    name: str
    comment: str
    sql: str
    columns: tuple[tuple[str, str], ...]  # (column, comment), in the view's order


BILLING_CHANGES = View(
    "main.billing_changes",
    "The billing activity log over the whole history: per partner, organization, billing type "
    "and usage date, the units reported against the partner's previous reported day "
    "(previous_usage_date; a day the partner was not reported is skipped, days_since_previous "
    "says so). direction: up, down, same; new (not reported on the previous day, e.g. a new "
    "organization, or the partner's first day); stopped (reported on the previous day, not on "
    "this one, e.g. an archived organization: units is NULL).",
    """
WITH metrics AS (
    SELECT usage_date, partner_id, organization_id, billing_type, units
    FROM main.billing_metrics
),

partner_days AS (
    -- every day the partner was reported, and the day it was reported before that
    SELECT
        partner_id,
        usage_date,
        lag(usage_date) OVER (PARTITION BY partner_id ORDER BY usage_date) AS previous_usage_date
    FROM (SELECT DISTINCT partner_id, usage_date FROM metrics)
),

this_day AS (
    SELECT d.partner_id, d.usage_date, d.previous_usage_date,
           m.organization_id, m.billing_type, m.units
    FROM partner_days AS d
    JOIN metrics AS m USING (partner_id, usage_date)
),

previous_day AS (
    SELECT d.partner_id, d.usage_date, d.previous_usage_date,
           m.organization_id, m.billing_type, m.units AS previous_units
    FROM partner_days AS d
    JOIN metrics AS m
      ON m.partner_id = d.partner_id AND m.usage_date = d.previous_usage_date
),

paired AS (
    SELECT *
    FROM this_day
    FULL JOIN previous_day
      USING (partner_id, usage_date, previous_usage_date, organization_id, billing_type)
),

classified AS (
    SELECT
        *,
        coalesce(units, 0) - coalesce(previous_units, 0) AS change,
        CASE
            WHEN previous_units IS NULL THEN 'new'
            WHEN units IS NULL THEN 'stopped'
            WHEN units > previous_units THEN 'up'
            WHEN units < previous_units THEN 'down'
            ELSE 'same'
        END AS direction
    FROM paired
)

SELECT
    -- ids
    partner_id,
    organization_id,
    billing_type,
    -- dates
    usage_date,
    previous_usage_date,
    (usage_date - previous_usage_date)::INTEGER AS days_since_previous,
    -- numerics
    previous_units,
    units,
    change,
    direction
FROM classified
""",
    (
        ("partner_id", "BullPhish ID partner (MSP) id."),
        ("organization_id", "BullPhish ID organization id."),
        ("billing_type", "bullphish_id.<module>.<per_organization|per_user>."),
        ("usage_date", "The usage date of this row."),
        (
            "previous_usage_date",
            "The partner's previous reported usage date (NULL on its first).",
        ),
        (
            "days_since_previous",
            "Days between previous_usage_date and usage_date: 1, or more when days are missing.",
        ),
        ("previous_units", "Units on previous_usage_date; NULL when direction is new."),
        ("units", "Units on usage_date; NULL when direction is stopped."),
        ("change", "units - previous_units, a missing side counted as 0."),
        ("direction", "up, down, same, new or stopped."),
    ),
)

INVOICE_PREVIEW = View(
    "main.invoice_preview",
    "Per partner, organization, billing type and calendar month, the units a PSA would "
    "invoice under each unit-change policy: high-water mark (the month's highest daily units), "
    "end of period (the units of the month's last reported day), prorated daily (the sum of the "
    "daily units divided by the days in the month, two decimals: a day not reported counts as "
    "0). days_missing counts the days of the month, up to the latest usage date in "
    "billing_metrics, with no metric for the row's organization and billing type.",
    """
WITH metrics AS (
    SELECT
        partner_id,
        organization_id,
        billing_type,
        usage_date,
        units,
        date_trunc('month', usage_date)::DATE AS month
    FROM main.billing_metrics
),

as_of AS (
    -- the month in progress is counted up to the latest day processed
    SELECT max(usage_date) AS latest_usage_date FROM main.billing_metrics
),

monthly AS (
    SELECT
        partner_id,
        organization_id,
        billing_type,
        month,
        max(units) AS high_water_mark_units,
        arg_max(units, usage_date) AS end_of_period_units,
        sum(units) AS unit_days,
        count(*) AS days_reported,
        max(usage_date) AS last_usage_date
    FROM metrics
    GROUP BY ALL
),

calendar AS (
    SELECT
        monthly.*,
        day(last_day(month)) AS days_in_month,
        (least(last_day(month), as_of.latest_usage_date) - month + 1)::INTEGER AS days_elapsed
    FROM monthly, as_of
)

SELECT
    -- ids
    partner_id,
    organization_id,
    billing_type,
    month,
    -- units per unit-change policy
    high_water_mark_units,
    end_of_period_units,
    round(unit_days / days_in_month, 2)::DECIMAL(18, 2) AS prorated_daily_units,
    -- coverage
    days_in_month::INTEGER AS days_in_month,
    days_reported::INTEGER AS days_reported,
    (days_elapsed - days_reported)::INTEGER AS days_missing,
    last_usage_date
FROM calendar
""",
    (
        ("partner_id", "BullPhish ID partner (MSP) id."),
        ("organization_id", "BullPhish ID organization id."),
        ("billing_type", "bullphish_id.<module>.<per_organization|per_user>."),
        ("month", "First day of the calendar month."),
        ("high_water_mark_units", "High-water mark policy: the month's highest daily units."),
        (
            "end_of_period_units",
            "End-of-period policy: the units of the month's last reported day (last_usage_date).",
        ),
        (
            "prorated_daily_units",
            "Prorated daily policy: sum of the daily units / days_in_month, rounded to 2 decimals.",
        ),
        ("days_in_month", "Days in the calendar month."),
        ("days_reported", "Days of the month with a metric for this row."),
        (
            "days_missing",
            "Days of the month up to the latest usage date in billing_metrics without a metric "
            "for this row (the feed did not run, the partner-date or organization was held, or "
            "the organization did not exist or was archived).",
        ),
        ("last_usage_date", "The month's last reported day for this row."),
    ),
)

UNMAPPED_ORGANIZATIONS = View(
    "main.unmapped_organizations",
    "Billed organizations that the partner's PSA has not mapped to a company, with their "
    "units on the partner's latest usage date: KaseyaOne stores these metrics but the PSA "
    "invoices nobody for them, revenue the MSP is not invoicing. From KaseyaOne's organization "
    "mappings, fetched by each run for the partners it delivered (ops.organization_mappings); "
    "partners whose mappings were never fetched are not listed. A partner that KaseyaOne does "
    "not link is listed with every organization (reason says so).",
    """
WITH latest_day AS (
    SELECT partner_id, max(usage_date) AS usage_date
    FROM main.billing_metrics
    GROUP BY partner_id
),

billed AS (
    SELECT m.partner_id, m.organization_id, m.billing_type, m.units, m.usage_date
    FROM main.billing_metrics AS m
    JOIN latest_day USING (partner_id, usage_date)
),

fetched AS (
    SELECT partner_id, status, fetched_at FROM ops.mapping_fetches
),

mapped AS (
    SELECT partner_id, organization_id FROM ops.organization_mappings
),

unmapped AS (
    SELECT billed.*, fetched.status, fetched.fetched_at
    FROM billed
    JOIN fetched USING (partner_id)
    ANTI JOIN mapped USING (partner_id, organization_id)
),

names AS (
    SELECT usage_date, partner_id, id AS organization_id, any_value(name) AS organization_name
    FROM raw.organizations
    GROUP BY ALL
),

psas AS (
    SELECT usage_date, id AS partner_id, any_value(psa) AS psa
    FROM raw.partners
    GROUP BY ALL
)

SELECT
    -- ids
    unmapped.partner_id,
    psas.psa,
    unmapped.organization_id,
    names.organization_name,
    unmapped.billing_type,
    -- numerics
    unmapped.usage_date,
    unmapped.units,
    -- why
    CASE unmapped.status
        WHEN 'not_linked' THEN 'partner not linked in KaseyaOne'
        ELSE 'organization not mapped to a PSA company'
    END AS reason,
    unmapped.fetched_at AS mappings_fetched_at
FROM unmapped
LEFT JOIN names USING (usage_date, partner_id, organization_id)
LEFT JOIN psas USING (usage_date, partner_id)
""",
    (
        ("partner_id", "BullPhish ID partner (MSP) id."),
        ("psa", "The partner's PSA (autotask, bms) as of usage_date, if extracted."),
        ("organization_id", "BullPhish ID organization id, billed but not mapped."),
        ("organization_name", "The organization's name as of usage_date, if extracted."),
        ("billing_type", "bullphish_id.<module>.<per_organization|per_user>."),
        ("usage_date", "The partner's latest usage date in billing_metrics."),
        ("units", "Units billed on usage_date that the PSA invoices nobody for."),
        (
            "reason",
            "organization not mapped to a PSA company, or partner not linked in KaseyaOne.",
        ),
        ("mappings_fetched_at", "When the partner's mappings were last fetched from KaseyaOne."),
    ),
)

RUN_HISTORY = View(
    "main.run_history",
    "Every run of the daily flow, per partner-date, with its status and reason (the run log, "
    "ops.partner_runs, with its run from ops.runs). A run that recorded no partner is one row "
    "with partner_id NULL: status unfinished (still running, or it crashed) or no partners.",
    """
WITH runs AS (
    SELECT run_id, usage_date, dry_run, started_at, finished_at, exit_code
    FROM ops.runs
),

outcomes AS (
    SELECT
        run_id, usage_date, partner_id, subscription_type, status, reason,
        organizations_billed, metrics_computed, metrics_sent, metrics_rejected,
        records_quarantined
    FROM ops.partner_runs
),

joined AS (
    SELECT
        runs.*,
        outcomes.* EXCLUDE (run_id, usage_date),
        outcomes.run_id IS NOT NULL AS has_outcome
    FROM runs
    LEFT JOIN outcomes USING (run_id, usage_date)
)

SELECT
    -- ids
    run_id,
    usage_date,
    partner_id,
    -- outcome
    CASE
        WHEN has_outcome THEN status
        WHEN finished_at IS NULL THEN 'unfinished'
        ELSE 'no partners'
    END AS status,
    CASE
        WHEN has_outcome THEN reason
        WHEN finished_at IS NULL THEN 'the run has not finished: it is running, or it crashed'
    END AS reason,
    subscription_type,
    -- numerics
    organizations_billed,
    metrics_computed,
    metrics_sent,
    metrics_rejected,
    records_quarantined,
    -- the run
    dry_run,
    started_at,
    finished_at,
    exit_code AS run_exit_code
FROM joined
""",
    (
        ("run_id", "The run (the Prefect flow run id when run by Prefect)."),
        ("usage_date", "The usage date the run billed."),
        ("partner_id", "The partner; NULL for a run that recorded no partner."),
        (
            "status",
            "delivered, partial, skipped, held, failed, dry_run; unfinished or no partners for "
            "a run without partner rows.",
        ),
        ("reason", "Why skipped, held, failed, partial or unfinished; NULL when delivered."),
        ("subscription_type", "per_organization or per_user (NULL if unknown)."),
        ("organizations_billed", "Organizations with metrics computed."),
        ("metrics_computed", "Metrics computed for the partner-date."),
        ("metrics_sent", "Metrics sent to KaseyaOne by this run."),
        ("metrics_rejected", "Current metrics KaseyaOne rejected."),
        ("records_quarantined", "Organization and target records quarantined."),
        ("dry_run", "True if the run was to send nothing."),
        ("started_at", "When the run started."),
        ("finished_at", "When the run finished; NULL while running or if it crashed."),
        (
            "run_exit_code",
            "The run's exit code: 0 all delivered, 1 something held/rejected/failed.",
        ),
    ),
)

VIEWS: tuple[View, ...] = (BILLING_CHANGES, INVOICE_PREVIEW, UNMAPPED_ORGANIZATIONS, RUN_HISTORY)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """Create (or replace) every view with its comments, in the caller's transaction."""
    for view in VIEWS:
        con.execute(f"CREATE OR REPLACE VIEW {view.name} AS {view.sql}")
        schema, name = view.name.split(".")
        actual = [
            row[0]
            for row in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = "
                "current_database() AND schema_name = ? AND table_name = ? "
                "ORDER BY column_index",
                [schema, name],
            ).fetchall()
        ]
        declared = [column for column, _ in view.columns]
        if actual != declared:
            raise RuntimeError(f"view {view.name} has columns {actual}, declared {declared}")
        con.execute(f"COMMENT ON VIEW {view.name} IS {_quote(view.comment)}")
        for column, comment in view.columns:
            con.execute(f"COMMENT ON COLUMN {view.name}.{column} IS {_quote(comment)}")
