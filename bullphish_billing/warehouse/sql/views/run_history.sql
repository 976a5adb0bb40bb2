-- run_history: every run of the daily flow, one row per run and partner-date, with its status
-- and reason; a run that recorded no partner is one row, unfinished or no partners.

CREATE OR REPLACE VIEW main.run_history AS
WITH runs AS (
    SELECT run_id, usage_date, dry_run, started_at, finished_at, exit_code
    FROM ops.runs
),

outcomes AS (
    SELECT
        run_id, usage_date, partner_id, subscription_type, status, reason,
        organizations_billed, metrics_computed, metrics_sent, metrics_rejected,
        records_quarantined
    FROM ops.partner_runs
),

joined AS (
    -- outcomes' columns by name: DuckDB stores an EXCLUDE list in no fixed order, so a view
    -- with one would never read back as the SQL migrate compares it with (it was `outcomes.*
    -- EXCLUDE (run_id, usage_date)` up to schema version 1)
    SELECT
        runs.*,
        outcomes.partner_id, outcomes.subscription_type, outcomes.status, outcomes.reason,
        outcomes.organizations_billed, outcomes.metrics_computed, outcomes.metrics_sent,
        outcomes.metrics_rejected, outcomes.records_quarantined,
        outcomes.run_id IS NOT NULL AS has_outcome
    FROM runs
    LEFT JOIN outcomes USING (run_id, usage_date)
)

SELECT
    -- ids
    run_id,
    usage_date,
    partner_id,
    -- outcome
    CASE
        WHEN has_outcome THEN status
        WHEN finished_at IS NULL THEN 'unfinished'
        ELSE 'no partners'
    END AS status,
    CASE
        WHEN has_outcome THEN reason
        WHEN finished_at IS NULL THEN 'the run has not finished: it is running, or it crashed'
    END AS reason,
    subscription_type,
    -- numerics
    organizations_billed,
    metrics_computed,
    metrics_sent,
    metrics_rejected,
    records_quarantined,
    -- the run
    dry_run,
    started_at,
    finished_at,
    exit_code AS run_exit_code
FROM joined;

-- The view's documentation (`COMMENT ON`), one line per column.
COMMENT ON VIEW main.run_history IS 'Every run of the daily flow, per partner-date, with its status and reason (the run log, ops.partner_runs, with its run from ops.runs). A run that recorded no partner is one row with partner_id NULL: status unfinished (still running, or it crashed) or no partners.';
COMMENT ON COLUMN main.run_history.run_id IS 'The run (the Prefect flow run id when run by Prefect).';
COMMENT ON COLUMN main.run_history.usage_date IS 'The usage date the run billed.';
COMMENT ON COLUMN main.run_history.partner_id IS 'The partner; NULL for a run that recorded no partner.';
COMMENT ON COLUMN main.run_history.status IS 'delivered, partial, skipped, held, failed, dry_run; unfinished or no partners for a run without partner rows.';
COMMENT ON COLUMN main.run_history.reason IS 'Why skipped, held, failed, partial or unfinished; NULL when delivered.';
COMMENT ON COLUMN main.run_history.subscription_type IS 'per_organization or per_user (NULL if unknown).';
COMMENT ON COLUMN main.run_history.organizations_billed IS 'Organizations with metrics computed.';
COMMENT ON COLUMN main.run_history.metrics_computed IS 'Metrics computed for the partner-date.';
COMMENT ON COLUMN main.run_history.metrics_sent IS 'Metrics sent to KaseyaOne by this run.';
COMMENT ON COLUMN main.run_history.metrics_rejected IS 'Current metrics KaseyaOne rejected.';
COMMENT ON COLUMN main.run_history.records_quarantined IS 'Organization and target records quarantined.';
COMMENT ON COLUMN main.run_history.dry_run IS 'True if the run was to send nothing.';
COMMENT ON COLUMN main.run_history.started_at IS 'When the run started.';
COMMENT ON COLUMN main.run_history.finished_at IS 'When the run finished; NULL while running or if it crashed.';
COMMENT ON COLUMN main.run_history.run_exit_code IS 'The run''s exit code: 0 all delivered, 1 something held/rejected/failed.';
