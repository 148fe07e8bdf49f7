-- Migration 004: users.last_seen_at, backfilled from updated_at (schema and data in one
-- transaction: either both or neither).
ALTER TABLE users ADD COLUMN last_seen_at timestamptz;

UPDATE users SET last_seen_at = updated_at WHERE last_seen_at IS NULL;

CREATE INDEX users_last_seen_at_idx ON users (last_seen_at);
