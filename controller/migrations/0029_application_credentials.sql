-- Keystone application credentials: a secret a user makes for automation,
-- tied to one project and a subset of the user's roles there; a token made
-- with one names it, and carries only those roles.
CREATE TABLE application_credentials (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    secret_hash TEXT NOT NULL,
    -- Microseconds since the Unix epoch, UTC; none for never.
    expires_us BIGINT,
    unrestricted BIGINT NOT NULL DEFAULT 0,
    -- JSON: [{"id": .., "name": ..}], the roles a token made with it carries.
    roles TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (user_id, name)
);
ALTER TABLE tokens ADD COLUMN app_cred_id TEXT;
