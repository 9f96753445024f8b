-- Server groups (Nova's os-server-groups): servers placed together
-- (affinity) or apart (anti-affinity), strictly or as a preference (soft).
CREATE TABLE server_groups (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    policy TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX server_groups_project ON server_groups (project_id);
-- A server is in at most one group.
CREATE TABLE server_group_members (
    server_id TEXT PRIMARY KEY,
    group_id TEXT NOT NULL
);
CREATE INDEX server_group_members_group ON server_group_members (group_id);
