-- What the next daily run re-sends (ours to repair): the open differences (the latest check of
-- each partner-date, main.reconciliation_open) of the dates $dates that are missing_at_kaseyaone
-- or differs, not re-sent yet, whose acknowledgment still stands as the check saw it (a later
-- delivery has not changed it since), and whose partner-date has no batch pending. Re-sent are
-- the acknowledged units: what KaseyaOne told us it holds. unexpected_at_kaseyaone is never
-- here: a metric we never sent is reported, never deleted.
SELECT
    o.check_id,
    o.usage_date,
    o.partner_id,
    o.organization_id,
    o.billing_type,
    a.units
FROM main.reconciliation_open AS o
JOIN ops.acknowledged_metrics AS a USING (usage_date, partner_id, organization_id, billing_type)
WHERE o.difference IN ('missing_at_kaseyaone', 'differs')
  AND o.repaired_by IS NULL
  AND a.accepted
  AND a.units = o.acknowledged_units
  AND list_contains($dates, o.usage_date)
  AND NOT EXISTS (
      SELECT 1 FROM ops.outbox AS b
      WHERE b.status = 'pending' AND b.usage_date = o.usage_date AND b.partner_id = o.partner_id
  )
ORDER BY o.usage_date, o.partner_id, o.organization_id, o.billing_type
