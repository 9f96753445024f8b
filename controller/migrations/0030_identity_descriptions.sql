-- Roles and domains made through the API (POST /v3/roles, /v3/domains)
-- carry a description, as projects do.
ALTER TABLE roles ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE domains ADD COLUMN description TEXT NOT NULL DEFAULT '';
