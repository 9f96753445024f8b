-- When each host booted and its load averages, from its heartbeats: what
-- Nova's hypervisor uptime shows (0 and '' from hostds that predate them).
ALTER TABLE hosts ADD COLUMN booted_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN load_average TEXT NOT NULL DEFAULT '';
