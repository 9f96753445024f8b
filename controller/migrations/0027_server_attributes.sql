-- What a server's owner sets on it beyond its name and metadata: the
-- access addresses (accessIPv4/v6, shown as given), the disk config label
-- (OS-DCF:diskConfig, AUTO or MANUAL) and a description (microversion 2.19).
ALTER TABLE servers ADD COLUMN access_ipv4 TEXT NOT NULL DEFAULT '';
ALTER TABLE servers ADD COLUMN access_ipv6 TEXT NOT NULL DEFAULT '';
ALTER TABLE servers ADD COLUMN disk_config TEXT NOT NULL DEFAULT 'MANUAL';
ALTER TABLE servers ADD COLUMN description TEXT;
-- The id shared by the servers one request created (min_count/max_count),
-- and each one's place among them.
ALTER TABLE servers ADD COLUMN reservation_id TEXT NOT NULL DEFAULT '';
ALTER TABLE servers ADD COLUMN launch_index INTEGER NOT NULL DEFAULT 0;
-- Server tags (microversion 2.26), a sorted JSON array of strings.
ALTER TABLE servers ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
-- Locked servers refuse changes from anyone but admins (lock/unlock).
ALTER TABLE servers ADD COLUMN locked INTEGER NOT NULL DEFAULT 0;

-- An action is a request's on one server: one request (a multiple create)
-- may act on several servers.
CREATE TABLE instance_actions_by_server (
    request_id TEXT NOT NULL,
    server_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    action TEXT NOT NULL,
    start_us BIGINT NOT NULL,
    finish_us BIGINT,
    result TEXT,
    message TEXT,
    PRIMARY KEY (server_id, request_id)
);
INSERT INTO instance_actions_by_server
    SELECT request_id, server_id, project_id, user_id, action, start_us, finish_us, result, message
    FROM instance_actions;
DROP TABLE instance_actions;
ALTER TABLE instance_actions_by_server RENAME TO instance_actions;
CREATE INDEX instance_actions_server ON instance_actions (server_id, start_us);
