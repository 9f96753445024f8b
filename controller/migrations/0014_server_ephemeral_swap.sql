-- The flavor's ephemeral disk (GiB) and swap (MiB) a server was created
-- with, as Nova keeps its flavor: hostd makes those disks for it.
ALTER TABLE servers ADD COLUMN ephemeral_gib BIGINT NOT NULL DEFAULT 0;
ALTER TABLE servers ADD COLUMN swap_mib BIGINT NOT NULL DEFAULT 0;
