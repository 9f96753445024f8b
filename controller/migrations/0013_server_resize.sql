-- A server's flavor before a resize not yet confirmed or reverted, as JSON
-- {"flavor_id", "vcpus", "ram_mib", "disk_gib"}: a revert puts it back.
ALTER TABLE servers ADD COLUMN resized_from TEXT;
