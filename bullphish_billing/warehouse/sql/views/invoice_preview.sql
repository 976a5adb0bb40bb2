-- invoice_preview: what a PSA would invoice. One row per partner, organization, billing type
-- and calendar month: the units under each unit-change policy (high-water mark, end of period,
-- prorated daily) and how many days of the month were reported or missing.

CREATE OR REPLACE VIEW main.invoice_preview AS
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
FROM calendar;

-- The view's documentation (`COMMENT ON`), one line per column.
COMMENT ON VIEW main.invoice_preview IS 'Per partner, organization, billing type and calendar month, the units a PSA would invoice under each unit-change policy: high-water mark (the month''s highest daily units), end of period (the units of the month''s last reported day), prorated daily (the sum of the daily units divided by the days in the month, two decimals: a day not reported counts as 0). days_missing counts the days of the month, up to the latest usage date in billing_metrics, with no metric for the row''s organization and billing type.';
COMMENT ON COLUMN main.invoice_preview.partner_id IS 'BullPhish ID partner (MSP) id.';
COMMENT ON COLUMN main.invoice_preview.organization_id IS 'BullPhish ID organization id.';
COMMENT ON COLUMN main.invoice_preview.billing_type IS 'bullphish_id.<module>.<per_organization|per_user>.';
COMMENT ON COLUMN main.invoice_preview.month IS 'First day of the calendar month.';
COMMENT ON COLUMN main.invoice_preview.high_water_mark_units IS 'High-water mark policy: the month''s highest daily units.';
COMMENT ON COLUMN main.invoice_preview.end_of_period_units IS 'End-of-period policy: the units of the month''s last reported day (last_usage_date).';
COMMENT ON COLUMN main.invoice_preview.prorated_daily_units IS 'Prorated daily policy: sum of the daily units / days_in_month, rounded to 2 decimals.';
COMMENT ON COLUMN main.invoice_preview.days_in_month IS 'Days in the calendar month.';
COMMENT ON COLUMN main.invoice_preview.days_reported IS 'Days of the month with a metric for this row.';
COMMENT ON COLUMN main.invoice_preview.days_missing IS 'Days of the month up to the latest usage date in billing_metrics without a metric for this row (the feed did not run, the partner-date or organization was held, or the organization did not exist or was archived).';
COMMENT ON COLUMN main.invoice_preview.last_usage_date IS 'The month''s last reported day for this row.';
