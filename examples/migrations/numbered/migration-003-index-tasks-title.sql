-- opsbook: no-transaction
-- Migration 003: case-insensitive title search without locking writes on tasks.
-- CREATE INDEX CONCURRENTLY cannot run inside a transaction block: the marker above says so
-- (pg_migrate would also detect it). If it fails it leaves an INVALID index: drop it first.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_title_lower_idx ON tasks (lower(title));
