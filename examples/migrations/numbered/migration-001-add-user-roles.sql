-- Migration 001: users get a role (the runbooks' example "migration-001-add-user-roles.sql")
-- Ticket: OPS-101
ALTER TABLE users
    ADD COLUMN role text NOT NULL DEFAULT 'member'
        CONSTRAINT users_role_check CHECK (role IN ('member', 'admin', 'owner'));

COMMENT ON COLUMN users.role IS 'member | admin | owner';
