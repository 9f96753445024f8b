-- A volume's attachment (one: no multiattach): the server, the
-- attachment's id, the host it was plugged on and when.
ALTER TABLE volumes ADD COLUMN server_id TEXT;
ALTER TABLE volumes ADD COLUMN attachment_id TEXT;
ALTER TABLE volumes ADD COLUMN attached_host TEXT;
ALTER TABLE volumes ADD COLUMN attached_at BIGINT;
CREATE INDEX volumes_server ON volumes (server_id);
