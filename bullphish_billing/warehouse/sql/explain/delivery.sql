-- explain: per current metric of the partner-date ($d, $p), what was sent of it and what
-- KaseyaOne held at the last reconciliation. The units' explanation itself is the view
-- main.metric_explanations; this adds the delivery facts of ops.*.
WITH metrics AS (
    SELECT organization_id, billing_type, units
    FROM main.billing_metrics
    WHERE usage_date = $d AND partner_id = $p
),

acknowledged AS (   -- KaseyaOne's last answer per metric, with the batch that got it
    SELECT
        a.organization_id, a.billing_type, a.units AS acknowledged_units, a.accepted,
        a.rejected_reason, a.idempotency_key, a.acknowledged_at,
        o.created_at AS sent_at, o.http_status, o.replayed, o.run_id AS sent_by_run
    FROM ops.acknowledged_metrics AS a
    LEFT JOIN ops.outbox AS o USING (idempotency_key)
    WHERE a.usage_date = $d AND a.partner_id = $p
),

unanswered AS (     -- the latest unacknowledged batch holding each metric, if any
    SELECT
        m.organization_id, m.billing_type, m.units AS batch_units,
        b.idempotency_key AS unanswered_key, b.status AS unanswered_status,
        b.created_at AS unanswered_at, b.error AS unanswered_error
    FROM ops.outbox AS b,
         unnest(from_json(b.payload -> 'metrics',
                '[{"organization_id": "VARCHAR", "billing_type": "VARCHAR", "units": "BIGINT"}]'
         )) AS t(m)
    WHERE b.usage_date = $d AND b.partner_id = $p AND b.status <> 'acknowledged'
    QUALIFY row_number() OVER (
        PARTITION BY m.organization_id, m.billing_type ORDER BY b.created_at DESC
    ) = 1
),

last_check AS (     -- the partner-date's latest reconciliation that did not fail
    SELECT check_id, status AS check_status, checked_at
    FROM ops.reconciliation
    WHERE usage_date = $d AND partner_id = $p AND status <> 'failed'
    ORDER BY checked_at DESC
    LIMIT 1
),

differences AS (
    SELECT d.organization_id, d.billing_type, d.difference, d.kaseyaone_units
    FROM ops.reconciliation_differences AS d
    JOIN last_check USING (check_id)
    WHERE d.usage_date = $d AND d.partner_id = $p
)

SELECT
    m.organization_id, m.billing_type, m.units,
    a.acknowledged_units, a.accepted, a.rejected_reason, a.idempotency_key, a.sent_at,
    a.acknowledged_at, a.http_status, a.replayed, a.sent_by_run,
    u.batch_units, u.unanswered_key, u.unanswered_status, u.unanswered_at, u.unanswered_error,
    c.check_id, c.check_status, c.checked_at, d.difference, d.kaseyaone_units
FROM metrics AS m
LEFT JOIN acknowledged AS a USING (organization_id, billing_type)
LEFT JOIN unanswered AS u USING (organization_id, billing_type)
LEFT JOIN last_check AS c ON true
LEFT JOIN differences AS d USING (organization_id, billing_type)
ORDER BY m.organization_id, m.billing_type
