-- What the scheduler has promised on each host, claimed atomically.
ALTER TABLE hosts ADD COLUMN claimed_vcpus BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN claimed_ram_mib BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN availability_zone TEXT NOT NULL DEFAULT 'nova';
