-- One ops.reconciliation row per partner-date of the check $check (reconcile_checked): its
-- counts per result from reconcile_compared, or status failed with the error of its read.
INSERT INTO ops.reconciliation (check_id, usage_date, partner_id, status, metrics_acknowledged,
    metrics_at_kaseyaone, matched, missing, differing, unexpected, error, run_id, checked_at)
WITH counts AS (
    SELECT
        usage_date,
        partner_id,
        count(*) FILTER (WHERE was_acknowledged) AS metrics_acknowledged,
        count(*) FILTER (WHERE is_held) AS metrics_at_kaseyaone,
        count(*) FILTER (WHERE difference = 'match') AS matched,
        count(*) FILTER (WHERE difference = 'missing_at_kaseyaone') AS missing,
        count(*) FILTER (WHERE difference = 'differs') AS differing,
        count(*) FILTER (WHERE difference = 'unexpected_at_kaseyaone') AS unexpected
    FROM reconcile_compared
    GROUP BY ALL
)

SELECT
    $check,
    c.usage_date,
    c.partner_id,
    CASE
        WHEN c.error IS NOT NULL THEN 'failed'
        WHEN coalesce(n.missing + n.differing + n.unexpected, 0) > 0 THEN 'differences'
        ELSE 'clean'
    END,
    CASE WHEN c.error IS NULL THEN coalesce(n.metrics_acknowledged, 0) END,
    CASE WHEN c.error IS NULL THEN coalesce(n.metrics_at_kaseyaone, 0) END,
    CASE WHEN c.error IS NULL THEN coalesce(n.matched, 0) END,
    CASE WHEN c.error IS NULL THEN coalesce(n.missing, 0) END,
    CASE WHEN c.error IS NULL THEN coalesce(n.differing, 0) END,
    CASE WHEN c.error IS NULL THEN coalesce(n.unexpected, 0) END,
    c.error,
    $run,
    c.checked_at
FROM reconcile_checked AS c
LEFT JOIN counts AS n USING (usage_date, partner_id)
