-- What rules 2-5 computed for the partner-dates $p of $d: per partner, its subscription,
-- the organizations billed and the metrics computed.
SELECT partner_id, any_value(subscription_type), count(DISTINCT organization_id),
       count(*)
FROM main.billing_metrics
WHERE usage_date = $d AND list_contains($p, partner_id)
GROUP BY partner_id
