-- Rule 7, partners, before their set-level checks run again for a date: forget the partners
-- an earlier run quarantined as conflicting duplicates (record-level rows stay).
DELETE FROM ops.quarantine
WHERE usage_date = $d AND entity = 'partner' AND stage = 'set'
