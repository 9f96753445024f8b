-- Whether the server's guest gets a config drive (Nova's `config_drive`):
-- asked for, forced by the image or the deployment. Servers made before
-- this column always had one, and keep it.
ALTER TABLE servers ADD COLUMN config_drive BIGINT NOT NULL DEFAULT 1;
