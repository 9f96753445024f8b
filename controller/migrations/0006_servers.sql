-- Servers: the instances the compute API manages, placed on hosts.
CREATE TABLE servers (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    flavor_id TEXT NOT NULL,
    image_id TEXT NOT NULL,
    vcpus BIGINT NOT NULL,
    ram_mib BIGINT NOT NULL,
    disk_gib BIGINT NOT NULL,
    host_id TEXT,
    vm_state TEXT NOT NULL,
    task_state TEXT,
    power_state BIGINT NOT NULL DEFAULT 0,
    fault TEXT,
    key_name TEXT,
    user_data TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    availability_zone TEXT NOT NULL DEFAULT 'nova',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    launched_at BIGINT
);
CREATE INDEX servers_project ON servers (project_id);
