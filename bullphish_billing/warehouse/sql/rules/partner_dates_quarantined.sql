-- Rule 7's hold threshold, its inputs: per extracted partner-date of $p on $d, the records
-- received (organizations and targets, bad ones included), how many were quarantined, the
-- organizations held (their own record is bad) and the active organizations.
WITH quarantined AS (
    SELECT partner_id, count(*) AS n,
           count(DISTINCT record_id) FILTER (entity = 'organization') AS orgs_held
    FROM ops.quarantine
    WHERE usage_date = $d AND list_contains($p, partner_id) AND entity <> 'partner'
    GROUP BY partner_id
)
, active AS (
    SELECT partner_id, count(DISTINCT id) AS n FROM raw.organizations
    WHERE usage_date = $d AND list_contains($p, partner_id) AND status = 'active'
    GROUP BY partner_id
)
SELECT e.partner_id,
       e.organizations_received + e.targets_received AS received,
       coalesce(q.n, 0) AS quarantined,
       coalesce(q.orgs_held, 0) AS orgs_held,
       coalesce(a.n, 0) AS active_orgs
FROM ops.extractions e
LEFT JOIN quarantined q USING (partner_id)
LEFT JOIN active a USING (partner_id)
WHERE e.usage_date = $d AND list_contains($p, e.partner_id)
