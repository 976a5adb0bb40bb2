-- unmapped_organizations: revenue the MSP is not invoicing. One row per partner, organization
-- and billing type billed on the partner's latest usage date that the partner's PSA has not
-- mapped to a company (from KaseyaOne's organization mappings).

CREATE OR REPLACE VIEW main.unmapped_organizations AS
WITH latest_day AS (
    SELECT partner_id, max(usage_date) AS usage_date
    FROM main.billing_metrics
    GROUP BY partner_id
),

billed AS (
    SELECT m.partner_id, m.organization_id, m.billing_type, m.units, m.usage_date
    FROM main.billing_metrics AS m
    JOIN latest_day USING (partner_id, usage_date)
),

fetched AS (
    SELECT partner_id, status, fetched_at FROM ops.mapping_fetches
),

mapped AS (
    SELECT partner_id, organization_id FROM ops.organization_mappings
),

unmapped AS (
    SELECT billed.*, fetched.status, fetched.fetched_at
    FROM billed
    JOIN fetched USING (partner_id)
    ANTI JOIN mapped USING (partner_id, organization_id)
),

names AS (
    SELECT usage_date, partner_id, id AS organization_id, any_value(name) AS organization_name
    FROM raw.organizations
    GROUP BY ALL
),

psas AS (
    SELECT usage_date, id AS partner_id, any_value(psa) AS psa
    FROM raw.partners
    GROUP BY ALL
)

SELECT
    -- ids
    unmapped.partner_id,
    psas.psa,
    unmapped.organization_id,
    names.organization_name,
    unmapped.billing_type,
    -- numerics
    unmapped.usage_date,
    unmapped.units,
    -- why
    CASE unmapped.status
        WHEN 'not_linked' THEN 'partner not linked in KaseyaOne'
        ELSE 'organization not mapped to a PSA company'
    END AS reason,
    unmapped.fetched_at AS mappings_fetched_at
FROM unmapped
LEFT JOIN names USING (usage_date, partner_id, organization_id)
LEFT JOIN psas USING (usage_date, partner_id);

-- The view's documentation (`COMMENT ON`), one line per column.
COMMENT ON VIEW main.unmapped_organizations IS 'Billed organizations that the partner''s PSA has not mapped to a company, with their units on the partner''s latest usage date: KaseyaOne stores these metrics but the PSA invoices nobody for them, revenue the MSP is not invoicing. From KaseyaOne''s organization mappings, fetched by each run for the partners it delivered (ops.organization_mappings); partners whose mappings were never fetched are not listed. A partner that KaseyaOne does not link is listed with every organization (reason says so).';
COMMENT ON COLUMN main.unmapped_organizations.partner_id IS 'BullPhish ID partner (MSP) id.';
COMMENT ON COLUMN main.unmapped_organizations.psa IS 'The partner''s PSA (autotask, bms) as of usage_date, if extracted.';
COMMENT ON COLUMN main.unmapped_organizations.organization_id IS 'BullPhish ID organization id, billed but not mapped.';
COMMENT ON COLUMN main.unmapped_organizations.organization_name IS 'The organization''s name as of usage_date, if extracted.';
COMMENT ON COLUMN main.unmapped_organizations.billing_type IS 'bullphish_id.<module>.<per_organization|per_user>.';
COMMENT ON COLUMN main.unmapped_organizations.usage_date IS 'The partner''s latest usage date in billing_metrics.';
COMMENT ON COLUMN main.unmapped_organizations.units IS 'Units billed on usage_date that the PSA invoices nobody for.';
COMMENT ON COLUMN main.unmapped_organizations.reason IS 'organization not mapped to a PSA company, or partner not linked in KaseyaOne.';
COMMENT ON COLUMN main.unmapped_organizations.mappings_fetched_at IS 'When the partner''s mappings were last fetched from KaseyaOne.';
