-- The subscription type of each partner of $p as listed on $d.
SELECT DISTINCT id, subscription_type FROM raw.partners
WHERE usage_date = $d AND list_contains($p, id)
