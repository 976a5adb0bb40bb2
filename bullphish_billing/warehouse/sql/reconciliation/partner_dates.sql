-- The partner-dates a reconciliation checks: every partner-date of the dates $dates (optionally
-- of the partners $p) that KaseyaOne acknowledged metrics of, or that was sent a batch
-- (accepted, rejected or refused: KaseyaOne may hold something all the same). `in_flight` marks
-- those with a batch still pending: sent perhaps, its answer not recorded, so what KaseyaOne
-- holds may be newer than what it acknowledged; they are not checked until it is.
WITH acknowledged AS (
    SELECT DISTINCT usage_date, partner_id
    FROM ops.acknowledged_metrics
    WHERE list_contains($dates, usage_date)
      AND ($p IS NULL OR list_contains($p, partner_id))
),

sent AS (
    SELECT DISTINCT usage_date, partner_id
    FROM ops.outbox
    WHERE list_contains($dates, usage_date) AND attempts > 0
      AND ($p IS NULL OR list_contains($p, partner_id))
),

pending AS (
    SELECT DISTINCT usage_date, partner_id FROM ops.outbox WHERE status = 'pending'
)

SELECT usage_date, partner_id, pending.partner_id IS NOT NULL AS in_flight
FROM (SELECT * FROM acknowledged UNION SELECT * FROM sent) AS checked
LEFT JOIN pending USING (usage_date, partner_id)
ORDER BY usage_date, partner_id
