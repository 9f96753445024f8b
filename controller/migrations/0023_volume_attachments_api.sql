-- Attachments made through Cinder's API (the attachments API, 3.27/3.44,
-- and the older os-reserve/os-attach actions) rather than by our compute
-- service: bookkeeping and connection details for whoever attaches the
-- volume, never plugged by the controller. Their mode (rw/ro) and the
-- connector the attacher gave.
ALTER TABLE volumes ADD COLUMN attach_external BIGINT NOT NULL DEFAULT 0;
ALTER TABLE volumes ADD COLUMN attach_mode TEXT;
ALTER TABLE volumes ADD COLUMN attach_connector TEXT;
