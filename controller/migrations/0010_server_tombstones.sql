-- Servers deleted lately: an instance of one still on a host is a leftover to
-- remove, not an instance the controller never knew.
CREATE TABLE server_tombstones (
    id TEXT PRIMARY KEY,
    host_id TEXT,
    deleted_at BIGINT NOT NULL
);
CREATE INDEX server_tombstones_deleted_at ON server_tombstones (deleted_at);
