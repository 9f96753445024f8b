-- Neutron's resources. Each row keeps the resource's document (`body`, JSON
-- of the service's struct) beside the columns that queries select on and the
-- constraints that must hold under concurrent requests: one VXLAN id per
-- network, one MAC per network, one owner per address, one default security
-- group per project, no duplicate rules. `revision` guards read-modify-write
-- updates (an update names the revision it read).
CREATE TABLE networks (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    vni BIGINT NOT NULL UNIQUE,
    revision BIGINT NOT NULL,
    body TEXT NOT NULL
);

CREATE TABLE subnets (
    id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL REFERENCES networks (id),
    project_id TEXT NOT NULL,
    revision BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX subnets_by_network ON subnets (network_id);

CREATE TABLE ports (
    id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL REFERENCES networks (id),
    project_id TEXT NOT NULL,
    mac_address TEXT NOT NULL,
    device_id TEXT NOT NULL,
    host_id TEXT NOT NULL,
    revision BIGINT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (network_id, mac_address)
);
CREATE INDEX ports_by_network ON ports (network_id);
CREATE INDEX ports_by_device ON ports (device_id);
CREATE INDEX ports_by_host ON ports (host_id);

-- A port's fixed IPs: an address belongs to at most one port of its subnet.
CREATE TABLE ip_allocations (
    subnet_id TEXT NOT NULL REFERENCES subnets (id),
    ip_address TEXT NOT NULL,
    port_id TEXT NOT NULL REFERENCES ports (id),
    network_id TEXT NOT NULL,
    PRIMARY KEY (subnet_id, ip_address)
);
CREATE INDEX ip_allocations_by_port ON ip_allocations (port_id);

CREATE TABLE security_groups (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    -- The project whose `default` group this is; NULL for every other group.
    default_for TEXT UNIQUE,
    revision BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX security_groups_by_project ON security_groups (project_id);

CREATE TABLE security_group_rules (
    id TEXT PRIMARY KEY,
    security_group_id TEXT NOT NULL REFERENCES security_groups (id),
    project_id TEXT NOT NULL,
    -- What makes two rules the same rule (everything but id and description).
    fingerprint TEXT NOT NULL,
    -- The group a rule names as its remote, if any (a group in use so cannot go).
    remote_group_id TEXT,
    body TEXT NOT NULL,
    UNIQUE (security_group_id, fingerprint)
);

CREATE TABLE port_security_groups (
    port_id TEXT NOT NULL REFERENCES ports (id),
    security_group_id TEXT NOT NULL REFERENCES security_groups (id),
    PRIMARY KEY (port_id, security_group_id)
);
CREATE INDEX port_security_groups_by_group ON port_security_groups (security_group_id);

-- Per-project limits; an absent row means the defaults.
CREATE TABLE network_quotas (
    project_id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
