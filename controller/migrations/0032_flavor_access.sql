-- The projects a private flavor is open to (Nova's os-flavor-access).
CREATE TABLE flavor_projects (
    flavor_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    PRIMARY KEY (flavor_id, project_id)
);
