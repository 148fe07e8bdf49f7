-- Reverts migration 004 (the index goes with the column)
ALTER TABLE users DROP COLUMN last_seen_at;
