-- reconciliation_open: what KaseyaOne does not hold as it acknowledged, now. One row per metric
-- found not as acknowledged by the latest successful check of its partner-date (a failed check
-- tells nothing: the one before it stands), with its re-send when the next run made one.

CREATE OR REPLACE VIEW main.reconciliation_open AS
WITH latest AS (
    SELECT usage_date, partner_id, arg_max(check_id, checked_at) AS check_id
    FROM ops.reconciliation
    WHERE status <> 'failed'
    GROUP BY ALL
),

open_differences AS (
    SELECT d.*
    FROM ops.reconciliation_differences AS d
    JOIN latest USING (usage_date, partner_id, check_id)
)

SELECT
    -- ids
    usage_date,
    partner_id,
    organization_id,
    billing_type,
    -- the finding
    difference,
    acknowledged_units,
    kaseyaone_units,
    kaseyaone_received_at,
    check_id,
    checked_at,
    -- the repair
    repaired_by,
    repaired_at
FROM open_differences;

-- The view's documentation (`COMMENT ON`), one line per column.
COMMENT ON VIEW main.reconciliation_open IS 'The open differences with KaseyaOne: per partner-date, every metric its latest successful reconciliation (ops.reconciliation) found not as KaseyaOne acknowledged it. missing_at_kaseyaone and differs are ours: the next daily run re-sends the acknowledged units once with a new Idempotency-Key (repaired_by) and checks again, which closes them. unexpected_at_kaseyaone (a metric KaseyaOne holds that we never acknowledged) is reported, never deleted: it stays open until KaseyaOne no longer holds it. A partner-date with no row here was clean at its latest check (or never checked).';
COMMENT ON COLUMN main.reconciliation_open.usage_date IS 'The usage date of the metric.';
COMMENT ON COLUMN main.reconciliation_open.partner_id IS 'BullPhish ID partner (MSP) id.';
COMMENT ON COLUMN main.reconciliation_open.organization_id IS 'BullPhish ID organization id (for unexpected_at_kaseyaone, perhaps one we never billed).';
COMMENT ON COLUMN main.reconciliation_open.billing_type IS 'bullphish_id.<module>.<per_organization|per_user>.';
COMMENT ON COLUMN main.reconciliation_open.difference IS 'missing_at_kaseyaone (acknowledged, no longer held), differs (held with other units) or unexpected_at_kaseyaone (held, never acknowledged).';
COMMENT ON COLUMN main.reconciliation_open.acknowledged_units IS 'Units KaseyaOne acknowledged; NULL for unexpected_at_kaseyaone.';
COMMENT ON COLUMN main.reconciliation_open.kaseyaone_units IS 'Units KaseyaOne held at the check; NULL for missing_at_kaseyaone.';
COMMENT ON COLUMN main.reconciliation_open.kaseyaone_received_at IS 'KaseyaOne''s received_at of the metric it held; NULL when missing.';
COMMENT ON COLUMN main.reconciliation_open.check_id IS 'The reconciliation pass that found it (ops.reconciliation.check_id).';
COMMENT ON COLUMN main.reconciliation_open.checked_at IS 'When KaseyaOne was read.';
COMMENT ON COLUMN main.reconciliation_open.repaired_by IS 'Idempotency-Key of the re-send (ops.outbox), once made; NULL before, and always for unexpected_at_kaseyaone.';
COMMENT ON COLUMN main.reconciliation_open.repaired_at IS 'When the re-send was written to the outbox.';
