-- Reverts migration 001
ALTER TABLE users DROP COLUMN role;
