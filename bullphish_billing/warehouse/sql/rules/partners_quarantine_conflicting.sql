-- Rule 7, partners: a partner id served more than once with different content, or whose
-- record failed validation beside a good copy, quarantines every copy of it ($reason).
-- The whole partner list of the date at once: a partner's partner_id is its own id.
INSERT INTO ops.quarantine
WITH conflicting AS (
    SELECT id FROM raw.partners WHERE usage_date = $d
    GROUP BY id
    HAVING count(DISTINCT (name, subscription_type, kaseyaone_activated, psa,
                           unified_login_enabled, updated_at)) > 1
        OR id IN (SELECT record_id FROM ops.quarantine
                  WHERE usage_date = $d AND entity = 'partner')
)
SELECT $d, p.id, 'partner', p.id, p.page_no, p.page_row, 'set', $reason, $run, now()
FROM raw.partners p JOIN conflicting USING (id)
WHERE p.usage_date = $d
