-- Rule 7, organizations and targets (one template, filled per entity): an id served more than
-- once by a partner with different content, or whose record failed validation beside a good
-- copy, quarantines every copy of it ($reason).
-- Placeholders (identifiers): table, raw.organizations or raw.targets; content, the record's
-- columns as served, but its id. Parameter $entity: organization or target.
INSERT INTO ops.quarantine
WITH records AS (
    SELECT * FROM {table}
    WHERE usage_date = $d AND list_contains($p, partner_id)
),
repeated AS (  -- ids served more than once: few, so the DISTINCT below is cheap
    SELECT partner_id, id FROM records GROUP BY ALL HAVING count(*) > 1
),
conflicting AS (
    SELECT partner_id, id FROM records SEMI JOIN repeated USING (partner_id, id)
    GROUP BY ALL
    HAVING count(DISTINCT ({content})) > 1
    UNION
    SELECT partner_id, record_id FROM ops.quarantine
    WHERE usage_date = $d AND list_contains($p, partner_id)
      AND entity = $entity AND record_id IS NOT NULL
)
SELECT $d, partner_id, $entity, id, page_no, page_row, 'set', $reason, $run, now()
FROM records JOIN conflicting USING (partner_id, id)
