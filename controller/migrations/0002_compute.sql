-- Compute: flavors, and the hosts hostd registers.
CREATE TABLE flavors (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    vcpus BIGINT NOT NULL,
    ram_mib BIGINT NOT NULL,
    disk_gib BIGINT NOT NULL,
    ephemeral_gib BIGINT NOT NULL DEFAULT 0,
    swap_mib BIGINT NOT NULL DEFAULT 0,
    is_public BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL
);

CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    cpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    memory_usable_mib BIGINT NOT NULL,
    disk_free_mib BIGINT NOT NULL,
    vcpus_used BIGINT NOT NULL,
    memory_used_mib BIGINT NOT NULL,
    instances BIGINT NOT NULL,
    kvm_mode TEXT NOT NULL,
    version TEXT NOT NULL,
    enabled BIGINT NOT NULL DEFAULT 1,
    last_seen BIGINT NOT NULL
);
