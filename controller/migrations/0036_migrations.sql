-- Nova's migration records (`os-migrations`): one per resize of a server,
-- with the status it has reached. Ids are integers, as Nova shows them.
CREATE TABLE migrations (
    id BIGINT PRIMARY KEY,
    instance_uuid TEXT NOT NULL,
    source_compute TEXT,
    dest_compute TEXT,
    old_flavor_id TEXT,
    new_flavor_id TEXT,
    migration_type TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT
);
CREATE INDEX migrations_instance ON migrations (instance_uuid);
