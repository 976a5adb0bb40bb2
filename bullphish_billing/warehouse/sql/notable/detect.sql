-- Notable changes of the partner-dates $partners of $day against the day before: per-user
-- counts that moved by more than $min_share and at least $min_users users, modules switched
-- on or off. A template: {modules} is the organizations' module flags (results.MODULES).
INSERT INTO ops.notable_changes
WITH this_day AS (
    SELECT partner_id, organization_id, billing_type, units
    FROM main.billing_metrics
    WHERE usage_date = $day AND list_contains($partners, partner_id)
),

previous_day AS (
    SELECT partner_id, organization_id, billing_type, units AS previous_units
    FROM main.billing_metrics
    WHERE usage_date = $day - 1 AND list_contains($partners, partner_id)
),

both_days AS (
    SELECT *, split_part(billing_type, '.', 2) AS module
    FROM this_day
    JOIN previous_day USING (partner_id, organization_id, billing_type)
),

module_flags AS (
    -- each organization's module flags on the two days (exact duplicates collapse; an
    -- organization served with conflicting content is held and has no metrics)
    SELECT usage_date, partner_id, organization_id, module, bool_or(enabled) AS enabled
    FROM (
        SELECT usage_date, partner_id, id AS organization_id, {modules}
        FROM raw.organizations
        WHERE usage_date IN ($day, $day - 1) AND list_contains($partners, partner_id)
    ) UNPIVOT (enabled FOR module IN ({modules}))
    GROUP BY ALL
),

compared AS (
    SELECT
        b.*,
        now_flag.enabled AS enabled,
        before_flag.enabled AS was_enabled,
        b.units - b.previous_units AS moved
    FROM both_days AS b
    LEFT JOIN module_flags AS now_flag
      ON now_flag.usage_date = $day
     AND (now_flag.partner_id, now_flag.organization_id, now_flag.module)
       = (b.partner_id, b.organization_id, b.module)
    LEFT JOIN module_flags AS before_flag
      ON before_flag.usage_date = $day - 1
     AND (before_flag.partner_id, before_flag.organization_id, before_flag.module)
       = (b.partner_id, b.organization_id, b.module)
),

classified AS (
    SELECT
        *,
        CASE
            WHEN enabled AND NOT was_enabled THEN 'module_on'
            WHEN was_enabled AND NOT enabled THEN 'module_off'
            WHEN billing_type LIKE '%.' || $per_user
             AND abs(moved) >= $min_users
             AND abs(moved) > $min_share * previous_units
                THEN CASE WHEN moved > 0 THEN 'users_up' ELSE 'users_down' END
        END AS change
    FROM compared
)

SELECT
    $day,
    partner_id,
    organization_id,
    billing_type,
    change,
    previous_units,
    units,
    CASE WHEN previous_units > 0 THEN moved / previous_units END,
    $day - 1,
    $run_id,
    now()
FROM classified
WHERE change IS NOT NULL
