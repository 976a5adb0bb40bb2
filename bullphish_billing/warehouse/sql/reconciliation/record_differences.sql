-- Every metric of the check $check that is not as acknowledged, with both sides' units.
INSERT INTO ops.reconciliation_differences (check_id, usage_date, partner_id, organization_id,
    billing_type, difference, acknowledged_units, kaseyaone_units, kaseyaone_received_at,
    checked_at)
SELECT
    $check,
    r.usage_date,
    r.partner_id,
    r.organization_id,
    r.billing_type,
    r.difference,
    r.acknowledged_units,
    r.kaseyaone_units,
    r.kaseyaone_received_at,
    c.checked_at
FROM reconcile_compared AS r
JOIN reconcile_checked AS c USING (usage_date, partner_id)
WHERE r.difference <> 'match'
