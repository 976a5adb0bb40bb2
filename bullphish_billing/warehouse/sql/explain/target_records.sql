-- What happened to each target record of the partner-dates $partners of $d, first match wins
-- (rules 2, 6, 7): unknown organization, conflicting duplicate, quarantined (set level),
-- organization held, organization archived, exact duplicate collapsed, active, inactive; and
-- the records quarantined at validation (not in raw.*: organization_id NULL). One row per
-- record copy: (usage_date, partner_id, organization_id, id, kind, reason). Each run counts
-- them into ops.target_fates (view metric_explanations); `explain --targets` lists the ids.
WITH held_organizations AS (
    SELECT DISTINCT usage_date, partner_id, record_id AS organization_id
    FROM ops.quarantine
    WHERE usage_date = $d AND list_contains($partners, partner_id)
      AND entity = 'organization' AND record_id IS NOT NULL
),

archived_organizations AS (
    SELECT DISTINCT usage_date, partner_id, id AS organization_id
    FROM raw.organizations
    WHERE usage_date = $d AND list_contains($partners, partner_id) AND status <> 'active'
),

set_quarantine AS (
    -- rules 6-7 at set level, per copy of a target (its position in the lists)
    SELECT usage_date, partner_id, record_id AS id, page_no, page_row, min(reason) AS reason
    FROM ops.quarantine
    WHERE usage_date = $d AND list_contains($partners, partner_id)
      AND entity = 'target' AND stage = 'set'
    GROUP BY ALL
),

targets AS (
    SELECT
        t.usage_date, t.partner_id, t.id, t.organization_id, t.status, q.reason AS set_reason,
        row_number() OVER (
            PARTITION BY t.usage_date, t.partner_id, t.id ORDER BY t.page_no, t.page_row
        ) AS copy_no
    FROM raw.targets AS t
    LEFT JOIN set_quarantine AS q USING (usage_date, partner_id, id, page_no, page_row)
    WHERE t.usage_date = $d AND list_contains($partners, t.partner_id)
),

classified AS (
    SELECT
        t.usage_date, t.partner_id, t.organization_id, t.id,
        CASE
            WHEN t.set_reason LIKE 'unknown organization%' THEN 'unknown organization'
            WHEN t.set_reason = 'duplicate id with conflicting content'
                THEN 'conflicting duplicate'
            WHEN t.set_reason IS NOT NULL THEN 'quarantined'
            WHEN h.organization_id IS NOT NULL THEN 'organization held'
            WHEN a.organization_id IS NOT NULL THEN 'organization archived'
            WHEN t.copy_no > 1 THEN 'exact duplicate collapsed'
            WHEN t.status = 'active' THEN 'active'
            ELSE 'inactive'
        END AS kind,
        t.set_reason
    FROM targets AS t
    LEFT JOIN held_organizations AS h USING (usage_date, partner_id, organization_id)
    LEFT JOIN archived_organizations AS a USING (usage_date, partner_id, organization_id)
)

SELECT
    usage_date, partner_id, organization_id, id, kind,
    CASE WHEN kind = 'quarantined' THEN 'quarantined target: ' || set_reason ELSE kind END
        AS reason
FROM classified
UNION ALL
-- rule 7: records that failed validation are not in raw.*: their organization is unknown
SELECT
    usage_date, partner_id, NULL::VARCHAR, record_id, 'quarantined',
    'quarantined ' || entity || ': ' || reason
FROM ops.quarantine
WHERE usage_date = $d AND list_contains($partners, partner_id)
  AND (stage = 'record' AND entity = 'target' OR entity = 'organization' AND record_id IS NULL)
