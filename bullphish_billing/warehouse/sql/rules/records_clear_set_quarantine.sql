-- Rules 6-7, before the set-level checks of organizations and targets run again for the
-- partner-dates $p of $d: forget what an earlier run quarantined at that stage (record-level
-- rows, written as the pages arrived, stay).
DELETE FROM ops.quarantine
WHERE usage_date = $d AND list_contains($p, partner_id)
  AND entity <> 'partner' AND stage = 'set'
