-- Rule 1: per partner listed for the date, billable, skipped (naming every unmet
-- prerequisite: KaseyaOne integration activated, a PSA, unified login) or held (its own record
-- is bad, with the quarantine's reasons). One row per partner: id, subscription_type,
-- decision, reason.
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
