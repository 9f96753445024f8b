-- Routers and floating IPs (Neutron's L3).
--
-- A router's ports (its interfaces on project subnets and its gateway on an
-- external network) are ports like any other, owned by the router through
-- `device_id`. `host_id` is the gateway host the router is placed on ('' not
-- yet): its ports are bound there.
CREATE TABLE routers (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    host_id TEXT NOT NULL,
    revision BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX routers_by_host ON routers (host_id);

-- A floating IP's address is held by its own `network:floatingip` port on
-- the external network (`address_port_id`). Its association lives in
-- columns, not in the document, because deleting the associated port or
-- router interface changes it in the same transaction: one fixed address
-- has at most one floating IP.
CREATE TABLE floating_ips (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    address_port_id TEXT NOT NULL REFERENCES ports (id),
    port_id TEXT,
    fixed_ip_address TEXT,
    router_id TEXT,
    status TEXT NOT NULL,
    revision BIGINT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (port_id, fixed_ip_address)
);
CREATE INDEX floating_ips_by_router ON floating_ips (router_id);

-- A port's owner as a column too: a router with interfaces cannot go, and
-- that check must be part of the delete.
ALTER TABLE ports ADD COLUMN device_owner TEXT NOT NULL DEFAULT '';
