-- Keypairs belong to users; quotas to projects (absent row: the defaults).
CREATE TABLE keypairs (
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    key_type TEXT NOT NULL DEFAULT 'ssh',
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, name)
);

CREATE TABLE quotas (
    project_id TEXT PRIMARY KEY,
    instances BIGINT NOT NULL,
    cores BIGINT NOT NULL,
    ram_mib BIGINT NOT NULL,
    key_pairs BIGINT NOT NULL
);
