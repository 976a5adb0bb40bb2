-- Rules 2-5, before the metrics of the (not held) partner-dates $p of $d are computed again:
-- their earlier metrics go.
DELETE FROM main.billing_metrics WHERE usage_date = $d AND list_contains($p, partner_id)
