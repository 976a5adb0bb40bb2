-- Compare, per metric, what KaseyaOne holds (reconcile_held: its GET /v1/billing/usage, read
-- into the connection's temporary table) with what it acknowledged (ops.acknowledged_metrics,
-- accepted rows), for the partner-dates read (reconcile_checked rows without an error):
-- match, missing_at_kaseyaone, differs or unexpected_at_kaseyaone. The result is the temporary
-- table reconcile_compared, which record_checks.sql and record_differences.sql write out.
CREATE OR REPLACE TEMPORARY TABLE reconcile_compared AS
WITH read_ok AS (
    SELECT usage_date, partner_id, checked_at FROM reconcile_checked WHERE error IS NULL
),

acknowledged AS (
    SELECT a.usage_date, a.partner_id, a.organization_id, a.billing_type, a.units
    FROM ops.acknowledged_metrics AS a
    JOIN read_ok USING (usage_date, partner_id)
    WHERE a.accepted
),

held AS (
    SELECT h.usage_date, h.partner_id, h.organization_id, h.billing_type, h.units, h.received_at
    FROM reconcile_held AS h
    JOIN read_ok USING (usage_date, partner_id)
),

joined AS (
    SELECT
        usage_date,
        partner_id,
        organization_id,
        billing_type,
        acknowledged.units AS acknowledged_units,
        held.units AS kaseyaone_units,
        held.received_at AS kaseyaone_received_at,
        acknowledged.usage_date IS NOT NULL AS was_acknowledged,
        held.usage_date IS NOT NULL AS is_held
    FROM acknowledged
    FULL JOIN held USING (usage_date, partner_id, organization_id, billing_type)
)

SELECT
    usage_date,
    partner_id,
    organization_id,
    billing_type,
    CASE
        WHEN NOT is_held THEN 'missing_at_kaseyaone'
        WHEN NOT was_acknowledged THEN 'unexpected_at_kaseyaone'
        WHEN acknowledged_units <> kaseyaone_units THEN 'differs'
        ELSE 'match'
    END AS difference,
    acknowledged_units,
    kaseyaone_units,
    kaseyaone_received_at,
    was_acknowledged,
    is_held
FROM joined
