-- Instance actions (Nova's os-instance-actions): one row per request that
-- changed a server, with how it ended.
CREATE TABLE instance_actions (
    request_id TEXT PRIMARY KEY,
    server_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    action TEXT NOT NULL,
    -- Microseconds since the epoch: actions a second apart still sort.
    start_us BIGINT NOT NULL,
    finish_us BIGINT,
    result TEXT,
    message TEXT
);
CREATE INDEX instance_actions_server ON instance_actions (server_id, start_us);
