-- A server's generation: every write bumps it, so a writer that acted on an
-- older read (the state sync, whose host listing may predate an action) can
-- tell its view is stale and write nothing.
ALTER TABLE servers ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;

-- The row a server create locks first, one per project: creates in one
-- project then check their quota and insert one at a time (PostgreSQL's row
-- lock; SQLite has one writer anyway).
CREATE TABLE quota_locks (
    project_id TEXT PRIMARY KEY,
    creates BIGINT NOT NULL DEFAULT 0
);
