-- Block storage (Cinder v3): the storage hosts' storaged registrations and
-- the volumes placed on them. A volume's status is Cinder's; the transient
-- ones (creating, extending, deleting) are the reconciler's to finish.
CREATE TABLE storage_hosts (
    host_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    availability_zone TEXT NOT NULL,
    total_bytes BIGINT NOT NULL,
    free_bytes BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);

CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    name TEXT,
    description TEXT,
    size_gib BIGINT NOT NULL,
    -- What an extend grows it to, while it is extending.
    target_size_gib BIGINT,
    status TEXT NOT NULL,
    volume_type TEXT NOT NULL,
    availability_zone TEXT NOT NULL,
    storage_host TEXT,
    bootable BIGINT NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}',
    -- Why it ended in an error state, for operators and `volume show`.
    fault TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX volumes_project ON volumes (project_id);
CREATE INDEX volumes_status ON volumes (status);
