-- stale_active_targets: active users nobody has touched for a long time. One row per usage
-- date, partner and billed organization with a stale (or undated) active target, from
-- ops.stale_targets (computed by each run with BILLING_STALE_DAYS). Counts and ids only.

CREATE OR REPLACE VIEW main.stale_active_targets AS
WITH latest_day AS (        -- each partner's latest usage date with metrics
    SELECT partner_id, max(usage_date) AS usage_date
    FROM main.billing_metrics
    GROUP BY partner_id
)

SELECT
    -- ids
    s.usage_date,
    s.partner_id,
    s.organization_id,
    s.subscription_type,
    -- numerics
    s.active_targets,
    s.stale_targets,
    s.stale_targets / s.active_targets AS stale_share,
    s.undated_targets,
    s.oldest_updated_at,
    s.stale_days,
    -- which day
    latest_day.usage_date IS NOT NULL AS latest
FROM ops.stale_targets AS s
LEFT JOIN latest_day USING (partner_id, usage_date);

-- The view's documentation (`COMMENT ON`), one line per column.
COMMENT ON VIEW main.stale_active_targets IS 'Active users (targets) not updated for a long time, per usage date, partner and billed organization: active targets whose updated_at is older than BILLING_STALE_DAYS (default 180) before the usage date. Billing does not change (the feed bills active targets as BullPhish ID reports them): this is the warning that lets an MSP clean up before the invoice. Only organizations with a stale or undated active target are listed; filter on latest for the current picture.';
COMMENT ON COLUMN main.stale_active_targets.usage_date IS 'The usage date the targets were counted on.';
COMMENT ON COLUMN main.stale_active_targets.partner_id IS 'BullPhish ID partner (MSP) id.';
COMMENT ON COLUMN main.stale_active_targets.organization_id IS 'BullPhish ID organization id.';
COMMENT ON COLUMN main.stale_active_targets.subscription_type IS 'per_user (stale users are billed) or per_organization (they are not).';
COMMENT ON COLUMN main.stale_active_targets.active_targets IS 'Active targets counted for the organization on usage_date.';
COMMENT ON COLUMN main.stale_active_targets.stale_targets IS 'Of those, updated before usage_date - stale_days (00:00 UTC).';
COMMENT ON COLUMN main.stale_active_targets.stale_share IS 'stale_targets / active_targets.';
COMMENT ON COLUMN main.stale_active_targets.undated_targets IS 'Active targets whose updated_at named no real day (stored as null, see ops.normalized_values): never counted stale.';
COMMENT ON COLUMN main.stale_active_targets.oldest_updated_at IS 'The oldest updated_at among the stale targets.';
COMMENT ON COLUMN main.stale_active_targets.stale_days IS 'BILLING_STALE_DAYS the run used.';
COMMENT ON COLUMN main.stale_active_targets.latest IS 'True on the partner''s latest usage date with metrics.';
