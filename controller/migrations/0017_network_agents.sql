-- The hosts whose netd has reported: the tunnel endpoint (VTEP) other hosts
-- send the host's overlay traffic to, and when it last reported.
CREATE TABLE network_agents (
    host_id TEXT PRIMARY KEY,
    vtep TEXT NOT NULL,
    last_seen BIGINT NOT NULL
);
