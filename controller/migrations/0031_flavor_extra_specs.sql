-- A flavor's extra specs (Nova's os-extra_specs): one row per key, so that
-- concurrent sets of different keys never lose one another.
CREATE TABLE flavor_extra_specs (
    flavor_id TEXT NOT NULL,
    spec_key TEXT NOT NULL,
    spec_value TEXT NOT NULL,
    PRIMARY KEY (flavor_id, spec_key)
);
