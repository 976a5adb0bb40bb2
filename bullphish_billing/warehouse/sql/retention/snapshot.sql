-- Whether the target snapshot (raw.targets) of partner-date ($d, $p) is kept or was dropped by
-- BILLING_RAW_RETENTION_DAYS: its latest drop (ops.raw_retention) when no extraction followed
-- it. No row: kept (or never extracted). `explain --targets` reads it.
SELECT r.dropped_at, r.retention_days, r.kept_from, r.targets_dropped
FROM ops.raw_retention AS r
LEFT JOIN ops.extractions AS e USING (usage_date, partner_id)
WHERE r.usage_date = $d AND r.partner_id = $p
  AND (e.extracted_at IS NULL OR r.dropped_at > e.extracted_at)
ORDER BY r.dropped_at DESC
LIMIT 1
