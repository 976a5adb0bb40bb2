-- The partner-dates whose target snapshot BILLING_RAW_RETENTION_DAYS drops: those of a usage
-- date before $kept_from that hold raw.targets rows, or whose latest extraction no drop has
-- followed yet (a snapshot of no rows is dropped too, so that every partner-date before the
-- cutoff reads as dropped), with the rows each holds. Restricted to $partners when given (the
-- partner-dates whose leases the run holds), and to the usage date $d when given.
WITH held AS (
    SELECT usage_date, partner_id, count(*) AS targets
    FROM raw.targets
    WHERE usage_date < $kept_from
      AND ($d IS NULL OR usage_date = $d)
      AND ($partners IS NULL OR list_contains($partners, partner_id))
    GROUP BY ALL
),

not_dropped AS (
    -- extracted after its last drop (or never dropped)
    SELECT e.usage_date, e.partner_id
    FROM ops.extractions AS e
    WHERE e.usage_date < $kept_from
      AND ($d IS NULL OR e.usage_date = $d)
      AND ($partners IS NULL OR list_contains($partners, e.partner_id))
      AND NOT EXISTS (
          SELECT 1 FROM ops.raw_retention AS r
          WHERE r.usage_date = e.usage_date AND r.partner_id = e.partner_id
            AND r.dropped_at > e.extracted_at
      )
)

SELECT usage_date, partner_id, coalesce(h.targets, 0) AS targets
FROM (SELECT usage_date, partner_id FROM held UNION SELECT * FROM not_dropped) AS due
LEFT JOIN held AS h USING (usage_date, partner_id)
ORDER BY usage_date, partner_id
