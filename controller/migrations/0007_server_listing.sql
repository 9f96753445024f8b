-- Server lists page newest first within a project (Nova's default order).
CREATE INDEX servers_project_created ON servers (project_id, created_at, id);
CREATE INDEX servers_host ON servers (host_id);
