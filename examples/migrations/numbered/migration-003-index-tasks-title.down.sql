-- opsbook: no-transaction
-- Reverts migration 003
DROP INDEX CONCURRENTLY IF EXISTS tasks_title_lower_idx;
