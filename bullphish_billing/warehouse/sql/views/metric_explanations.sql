-- metric_explanations: why each billed number is what it is. One row per metric and reason:
-- the rule that produced the units (rules 3-4), then the organization's target records by what
-- happened to them (counted, inactive, exact duplicates collapsed, conflicting duplicates);
-- and, per partner-date, what no metric shows: organizations archived or held, targets of an
-- unknown organization, quarantined records whose organization is not known, a partner-date
-- skipped, held or failed. `bullphish-billing explain` reads this view.

CREATE OR REPLACE VIEW main.metric_explanations AS
WITH metrics AS (
    SELECT
        usage_date, partner_id, organization_id, billing_type, units, subscription_type,
        split_part(billing_type, '.', 2) AS module
    FROM main.billing_metrics
),

module_flags AS (
    -- each organization's module switches as served (results.MODULES)
    SELECT usage_date, partner_id, id AS organization_id, module, bool_or(enabled) AS enabled
    FROM (SELECT usage_date, partner_id, id, training_awareness, phishing FROM raw.organizations)
         UNPIVOT INCLUDE NULLS (enabled FOR module IN (training_awareness, phishing))
    GROUP BY ALL
),

held_organizations AS (
    -- rule 7: an organization whose own record is bad is held, with the quarantine's reasons
    SELECT
        usage_date, partner_id, record_id AS organization_id,
        string_agg(DISTINCT reason, '; ' ORDER BY reason) AS why
    FROM ops.quarantine
    WHERE entity = 'organization' AND record_id IS NOT NULL
    GROUP BY ALL
),

archived_organizations AS (
    -- rule 2: only active organizations are billed
    SELECT DISTINCT usage_date, partner_id, id AS organization_id
    FROM raw.organizations
    WHERE status <> 'active'
),

target_groups AS (
    -- what happened to each target record received, counted per organization and reason by
    -- the run that evaluated the partner-date (ops.target_fates: the classification of
    -- sql/explain/target_records.sql, so this view also answers in the analysts' file)
    SELECT usage_date, partner_id, organization_id, kind, reason, records
    FROM ops.target_fates
),

explained_metrics AS (
    SELECT
        m.*,
        f.enabled,
        CASE
            WHEN m.subscription_type = 'per_organization' AND f.enabled
                THEN 'rule 3: module enabled: 1 unit per organization'
            WHEN m.subscription_type = 'per_organization'
                THEN 'rule 3: module disabled: 0 units'
            WHEN f.enabled THEN 'rule 4: module enabled: its active targets, each id once'
            ELSE 'rule 4: module disabled: 0 units'
        END AS rule,
        c.previous_usage_date, c.previous_units, c.change
    FROM metrics AS m
    LEFT JOIN module_flags AS f USING (usage_date, partner_id, organization_id, module)
    LEFT JOIN main.billing_changes AS c
           USING (usage_date, partner_id, organization_id, billing_type)
),

metric_rows AS (
    -- the metric's own row: the module switch that rules 3-4 read
    SELECT
        m.*,
        CASE WHEN m.enabled THEN 'module enabled' ELSE 'module disabled' END AS kind,
        CASE WHEN m.enabled THEN 'module enabled' ELSE 'module disabled' END AS reason,
        m.subscription_type = 'per_organization' AND coalesce(m.enabled, false) AS counted,
        NULL::BIGINT AS records
    FROM explained_metrics AS m
    UNION ALL
    -- then the organization's target records, by what happened to them
    SELECT
        m.*, g.kind, g.reason,
        m.subscription_type = 'per_user' AND coalesce(m.enabled, false)
            AND g.kind = 'active' AS counted,
        g.records
    FROM explained_metrics AS m
    JOIN target_groups AS g USING (usage_date, partner_id, organization_id)
),

billed_organizations AS (
    SELECT DISTINCT usage_date, partner_id, organization_id FROM metrics
),

organization_rows AS (
    -- organizations with no metric: held (rule 7) or archived (rules 2, 6), with their targets
    SELECT
        o.usage_date, o.partner_id, o.organization_id, o.kind,
        CASE WHEN o.why IS NULL THEN o.kind ELSE o.kind || ': ' || o.why END AS reason,
        coalesce(g.records, 0) AS records
    FROM (
        SELECT usage_date, partner_id, organization_id, 'organization held' AS kind, why
        FROM held_organizations
        UNION ALL
        SELECT usage_date, partner_id, organization_id, 'organization archived', NULL
        FROM archived_organizations
        ANTI JOIN held_organizations USING (usage_date, partner_id, organization_id)
    ) AS o
    LEFT JOIN target_groups AS g USING (usage_date, partner_id, organization_id, kind)
),

unbilled_rows AS (
    -- what no metric shows: unknown organizations, bad records, duplicates of unbilled ones
    SELECT usage_date, partner_id, organization_id, kind, reason, records
    FROM target_groups
    ANTI JOIN billed_organizations USING (usage_date, partner_id, organization_id)
    WHERE kind NOT IN ('active', 'inactive', 'exact duplicate collapsed',
                       'organization held', 'organization archived')
    UNION ALL
    SELECT * FROM organization_rows
),

partner_rows AS (
    -- a partner-date whose latest run skipped (rule 1), held (rule 7) or failed it
    SELECT
        usage_date, partner_id, NULL::VARCHAR AS organization_id,
        'partner-date ' || status AS kind,
        'partner-date ' || status || coalesce(': ' || reason, '') AS reason,
        NULL::BIGINT AS records
    FROM ops.partner_runs
    QUALIFY row_number() OVER (
        PARTITION BY usage_date, partner_id ORDER BY finished_at DESC, run_id DESC
    ) = 1
       AND status IN ('skipped', 'held', 'failed')
),

without_metric AS (
    SELECT
        *,
        CASE kind
            WHEN 'unknown organization'
                THEN 'rule 6: a target naming an organization its partner does not have '
                     || 'is quarantined, not counted'
            WHEN 'conflicting duplicate'
                THEN 'rule 7: an id served twice with different content: every copy '
                     || 'quarantined, not counted'
            WHEN 'quarantined' THEN 'rule 7: a bad record is quarantined, not counted'
            WHEN 'organization held'
                THEN 'rule 7: the organization''s own record is bad: no metric sent, its '
                     || 'targets neither counted nor quarantined'
            WHEN 'organization archived'
                THEN 'rules 2, 6: an archived organization is not billed, its targets not '
                     || 'counted'
            WHEN 'partner-date skipped' THEN 'rule 1: a prerequisite is not met: not billed'
            WHEN 'partner-date held'
                THEN 'rule 7: the partner-date is held for review: nothing sent'
            ELSE 'the partner-date failed: nothing computed or sent by that run'
        END AS rule
    FROM (SELECT * FROM unbilled_rows UNION ALL SELECT * FROM partner_rows)
),

target_snapshots AS (
    -- whether each partner-date's target snapshot (raw.targets, which the analysts' file does
    -- not hold) is kept, or was dropped by BILLING_RAW_RETENTION_DAYS after its latest extract
    -- (ops.raw_retention); the counts above stay either way
    SELECT e.usage_date, e.partner_id, max(r.dropped_at) AS targets_dropped_at
    FROM ops.extractions AS e
    LEFT JOIN ops.raw_retention AS r
           ON r.usage_date = e.usage_date AND r.partner_id = e.partner_id
          AND r.dropped_at > e.extracted_at
    GROUP BY ALL
),

explained AS (
    SELECT
        -- ids
        usage_date,
        partner_id,
        organization_id,
        billing_type,
        -- the metric and the rule that made it
        subscription_type,
        units,
        enabled AS module_enabled,
        rule,
        -- the reason and its records
        kind,
        reason,
        counted,
        records,
        -- against the partner's previous reported day
        previous_usage_date,
        previous_units,
        change
    FROM metric_rows
    UNION ALL BY NAME
    SELECT
        usage_date,
        partner_id,
        organization_id,
        NULL::VARCHAR AS billing_type,
        NULL::VARCHAR AS subscription_type,
        NULL::BIGINT AS units,
        NULL::BOOLEAN AS module_enabled,
        rule,
        kind,
        reason,
        false AS counted,
        records,
        NULL::DATE AS previous_usage_date,
        NULL::BIGINT AS previous_units,
        NULL::BIGINT AS change
    FROM without_metric
)

SELECT
    x.*,
    -- the partner-date's target snapshot, for `explain --targets`
    CASE
        WHEN s.partner_id IS NULL THEN NULL
        WHEN s.targets_dropped_at IS NULL THEN 'kept'
        ELSE 'dropped'
    END AS target_snapshot,
    s.targets_dropped_at
FROM explained AS x
LEFT JOIN target_snapshots AS s USING (usage_date, partner_id);

-- The view's documentation (`COMMENT ON`), one line per column.
COMMENT ON VIEW main.metric_explanations IS 'Why each billed number is what it is (docs/billing-rules.md rules 2-7), one row per metric and reason. Per metric (billing_type set): a row with the module switch and the rule that produced the units, then the organization''s target records by kind: active (counted = true when they are the units), inactive, exact duplicate collapsed, conflicting duplicate; for a per_user metric the records of these rows add up to the organization''s target records received that passed validation. Per partner-date, rows without a metric (billing_type NULL): organizations held or archived (with their target records), targets naming an unknown organization, records quarantined at validation (organization_id NULL: a bad record''s organization is not known), and a partner-date skipped, held or failed by its latest run. Counts only (`bullphish-billing explain --targets` lists the target ids, from the warehouse''s snapshot while it is kept: target_snapshot); computed by each run from its snapshot (ops.target_fates), so it answers in the analysts'' file too. No personal data.';
COMMENT ON COLUMN main.metric_explanations.usage_date IS 'The usage date.';
COMMENT ON COLUMN main.metric_explanations.partner_id IS 'BullPhish ID partner (MSP) id.';
COMMENT ON COLUMN main.metric_explanations.organization_id IS 'The organization (for unknown organization: the id the targets named); NULL for a partner-date row or records quarantined at validation.';
COMMENT ON COLUMN main.metric_explanations.billing_type IS 'bullphish_id.<module>.<per_organization|per_user>; NULL for a row without a metric.';
COMMENT ON COLUMN main.metric_explanations.subscription_type IS 'The partner''s subscription as of the date (metric rows).';
COMMENT ON COLUMN main.metric_explanations.units IS 'The metric''s units (as in billing_metrics); NULL for a row without a metric.';
COMMENT ON COLUMN main.metric_explanations.module_enabled IS 'Whether the metric''s module is enabled for the organization as of the date.';
COMMENT ON COLUMN main.metric_explanations.rule IS 'The rule behind the row: for a metric, the one that produced its units (rule 3 per_organization, rule 4 per_user); else the one that left the records out.';
COMMENT ON COLUMN main.metric_explanations.kind IS 'module enabled, module disabled, active, inactive, exact duplicate collapsed, conflicting duplicate, quarantined, unknown organization, organization held, organization archived, partner-date skipped, partner-date held, partner-date failed.';
COMMENT ON COLUMN main.metric_explanations.reason IS 'kind in words, with the quarantine''s or the run''s reason where there is one.';
COMMENT ON COLUMN main.metric_explanations.counted IS 'True when these records (or, for a per_organization metric, the module switch) are what the units count.';
COMMENT ON COLUMN main.metric_explanations.records IS 'Target records of this kind (copies counted; active: each id once); NULL on module and partner-date rows.';
COMMENT ON COLUMN main.metric_explanations.previous_usage_date IS 'The partner''s previous reported usage date (billing_changes), for metric rows.';
COMMENT ON COLUMN main.metric_explanations.previous_units IS 'The metric''s units on previous_usage_date; NULL when it was not reported then.';
COMMENT ON COLUMN main.metric_explanations.change IS 'units - previous_units, a missing side counted as 0.';
COMMENT ON COLUMN main.metric_explanations.target_snapshot IS 'The partner-date''s target snapshot (raw.targets, the ids `explain --targets` lists): kept, or dropped by BILLING_RAW_RETENTION_DAYS (ops.raw_retention; the counts of this view stay); NULL when the partner-date was never extracted (skipped, or failed before its extract).';
COMMENT ON COLUMN main.metric_explanations.targets_dropped_at IS 'When the target snapshot was dropped (ops.raw_retention.dropped_at); NULL while it is kept.';
