-- Operators see hosts as Nova services and hypervisors: a small integer id
-- (what microversion 2.1 shows) and why a host was disabled.
ALTER TABLE hosts ADD COLUMN num BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN disabled_reason TEXT;
ALTER TABLE hosts ADD COLUMN disk_total_mib BIGINT NOT NULL DEFAULT 0;
