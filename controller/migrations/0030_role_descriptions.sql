-- Roles made through the API (POST /v3/roles) carry a description.
ALTER TABLE roles ADD COLUMN description TEXT NOT NULL DEFAULT '';
