-- explain: the partner-date ($d, $p) as its latest run left it (ops.partner_runs), with that
-- run's dry_run flag; no row when no run ever processed it.
SELECT pr.run_id, pr.status, pr.reason, pr.subscription_type, pr.finished_at, r.dry_run,
       pr.metrics_sent
FROM ops.partner_runs AS pr
LEFT JOIN ops.runs AS r USING (run_id)
WHERE pr.usage_date = $d AND pr.partner_id = $p
ORDER BY pr.finished_at DESC, pr.run_id DESC
LIMIT 1
