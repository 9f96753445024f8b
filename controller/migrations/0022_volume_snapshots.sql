-- Volume snapshots, and where a volume's data came from (a snapshot or
-- another volume: made from it on the same storage host; or an image: the
-- image's properties as the volume shows them, JSON). A snapshot stays
-- on its volume's storage host, recorded here so it outlives the volume.
CREATE TABLE volume_snapshots (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    volume_id TEXT NOT NULL,
    storage_host TEXT NOT NULL,
    name TEXT,
    description TEXT,
    size_gib BIGINT NOT NULL,
    status TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    fault TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX volume_snapshots_project ON volume_snapshots (project_id);
CREATE INDEX volume_snapshots_volume ON volume_snapshots (volume_id);
ALTER TABLE volumes ADD COLUMN snapshot_id TEXT;
ALTER TABLE volumes ADD COLUMN source_volid TEXT;
ALTER TABLE volumes ADD COLUMN image_metadata TEXT;
-- A volume a server boots from (Nova's boot_index 0 block device): the
-- server's id from its create on, and whether the volume goes with it.
ALTER TABLE volumes ADD COLUMN root_of TEXT;
ALTER TABLE volumes ADD COLUMN delete_on_termination BIGINT NOT NULL DEFAULT 0;
