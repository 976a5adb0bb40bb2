-- billing_changes: the billing activity log over the whole history. One row per partner,
-- organization, billing type and usage date: the units against the partner's previous reported
-- day, and the direction they moved (up, down, same, new, stopped).

CREATE OR REPLACE VIEW main.billing_changes AS
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
FROM classified;

-- The view's documentation (`COMMENT ON`), one line per column.
COMMENT ON VIEW main.billing_changes IS 'The billing activity log over the whole history: per partner, organization, billing type and usage date, the units reported against the partner''s previous reported day (previous_usage_date; a day the partner was not reported is skipped, days_since_previous says so). direction: up, down, same; new (not reported on the previous day, e.g. a new organization, or the partner''s first day); stopped (reported on the previous day, not on this one, e.g. an archived organization: units is NULL).';
COMMENT ON COLUMN main.billing_changes.partner_id IS 'BullPhish ID partner (MSP) id.';
COMMENT ON COLUMN main.billing_changes.organization_id IS 'BullPhish ID organization id.';
COMMENT ON COLUMN main.billing_changes.billing_type IS 'bullphish_id.<module>.<per_organization|per_user>.';
COMMENT ON COLUMN main.billing_changes.usage_date IS 'The usage date of this row.';
COMMENT ON COLUMN main.billing_changes.previous_usage_date IS 'The partner''s previous reported usage date (NULL on its first).';
COMMENT ON COLUMN main.billing_changes.days_since_previous IS 'Days between previous_usage_date and usage_date: 1, or more when days are missing.';
COMMENT ON COLUMN main.billing_changes.previous_units IS 'Units on previous_usage_date; NULL when direction is new.';
COMMENT ON COLUMN main.billing_changes.units IS 'Units on usage_date; NULL when direction is stopped.';
COMMENT ON COLUMN main.billing_changes.change IS 'units - previous_units, a missing side counted as 0.';
COMMENT ON COLUMN main.billing_changes.direction IS 'up, down, same, new or stopped.';
