-- Rule 6: a target naming an organization its partner does not have (neither served nor
-- held) is quarantined ($reason), unless it is quarantined already at that position; targets
-- of held organizations are neither counted nor quarantined.
INSERT INTO ops.quarantine
WITH known AS (
    SELECT partner_id, id FROM raw.organizations
    WHERE usage_date = $d AND list_contains($p, partner_id)
    UNION
    SELECT partner_id, record_id FROM ops.quarantine
    WHERE usage_date = $d AND list_contains($p, partner_id)
      AND entity = 'organization' AND record_id IS NOT NULL
)
SELECT $d, t.partner_id, 'target', t.id, t.page_no, t.page_row, 'set', $reason, $run, now()
FROM raw.targets t
ANTI JOIN known k ON k.partner_id = t.partner_id AND k.id = t.organization_id
WHERE t.usage_date = $d AND list_contains($p, t.partner_id)
  AND NOT EXISTS (
      SELECT 1 FROM ops.quarantine q
      WHERE q.usage_date = $d AND q.partner_id = t.partner_id
        AND q.entity = 'target' AND q.record_id = t.id
        AND q.page_no = t.page_no AND q.page_row = t.page_row)
