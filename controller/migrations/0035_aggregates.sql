-- Host aggregates (Nova's os-aggregates): named sets of compute hosts with
-- metadata; the `availability_zone` key puts their hosts in that zone.
-- Ids are integers, as Nova's API shows them.
CREATE TABLE aggregates (
    id BIGINT PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT
);
CREATE TABLE aggregate_hosts (
    aggregate_id BIGINT NOT NULL,
    host TEXT NOT NULL,
    PRIMARY KEY (aggregate_id, host)
);
CREATE INDEX aggregate_hosts_host ON aggregate_hosts (host);
CREATE TABLE aggregate_metadata (
    aggregate_id BIGINT NOT NULL,
    meta_key TEXT NOT NULL,
    meta_value TEXT NOT NULL,
    PRIMARY KEY (aggregate_id, meta_key)
);
