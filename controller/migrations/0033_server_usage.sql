-- What each deleted server used and when, for usage over any period (Nova's
-- os-simple-tenant-usage counts deleted servers too): written in the
-- delete's transaction, kept as Nova keeps its deleted instances.
CREATE TABLE server_usage (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    flavor_name TEXT NOT NULL,
    vcpus BIGINT NOT NULL,
    ram_mib BIGINT NOT NULL,
    local_gib BIGINT NOT NULL,
    launched_at BIGINT NOT NULL,
    terminated_at BIGINT NOT NULL
);
CREATE INDEX server_usage_project_terminated ON server_usage (project_id, terminated_at);
