-- Stale active users of the partner-dates $partners of $day: per billed organization, its
-- active targets as billing counts them (not quarantined, each id once), those whose
-- updated_at is before $cutoff ($day - BILLING_STALE_DAYS, 00:00 UTC), and those with no
-- updated_at (a date-time that named no real day, stored as null: never stale). Only
-- organizations with a stale or undated target get a row.
INSERT INTO ops.stale_targets
WITH billed AS (            -- the organizations billed on the day (rules 2-5)
    SELECT DISTINCT partner_id, organization_id, subscription_type
    FROM main.billing_metrics
    WHERE usage_date = $day AND list_contains($partners, partner_id)
),

quarantined AS (
    SELECT partner_id, record_id AS id FROM ops.quarantine
    WHERE usage_date = $day AND list_contains($partners, partner_id)
      AND entity = 'target' AND record_id IS NOT NULL
),

active AS (                 -- exact duplicates collapse (rule 7)
    SELECT partner_id, organization_id, id, max(updated_at) AS updated_at
    FROM raw.targets
    ANTI JOIN quarantined USING (partner_id, id)
    WHERE usage_date = $day AND list_contains($partners, partner_id) AND status = 'active'
    GROUP BY ALL
)

SELECT
    $day,
    partner_id,
    organization_id,
    billed.subscription_type,
    count(*),
    count(*) FILTER (WHERE updated_at < $cutoff),
    count(*) FILTER (WHERE updated_at IS NULL),
    min(updated_at) FILTER (WHERE updated_at < $cutoff),
    $stale_days,
    $run_id,
    now()
FROM active
JOIN billed USING (partner_id, organization_id)
GROUP BY ALL
HAVING count(*) FILTER (WHERE updated_at < $cutoff OR updated_at IS NULL) > 0
