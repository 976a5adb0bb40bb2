-- Rules 2-5: the billing metrics of the (not held) partner-dates $p of $d. For every active
-- organization that is not held, both metrics of the partner's subscription, zeros included:
-- per_organization 1 when the module is enabled, per_user its active targets (each id once,
-- quarantined ones left out) when enabled; 0 when the module is off.
-- A template: {module_columns} is the organizations' module flags (results.MODULES).
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
    SELECT DISTINCT partner_id, id AS organization_id, {module_columns}
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
modules AS (               -- a row per billed organization and module, with its flag
    SELECT o.partner_id, o.organization_id, o.module, o.enabled,
           coalesce(a.active, 0) AS active
    FROM billed_orgs
         UNPIVOT INCLUDE NULLS (enabled FOR module IN ({module_columns})) AS o
    LEFT JOIN active_targets a USING (partner_id, organization_id)
)
-- rules 3-5: both metrics of the subscription for every billed organization, zeros too
SELECT $d, partner_id, organization_id,
       'bullphish_id.' || module || '.' || p.subscription_type AS billing_type,
       CASE WHEN NOT enabled THEN 0
            WHEN p.subscription_type = $per_organization THEN 1
            ELSE active END AS units,
       p.subscription_type, $run, now()
FROM modules JOIN partners p USING (partner_id)
