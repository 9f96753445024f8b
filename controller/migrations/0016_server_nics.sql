-- The NICs a server asked for (Nova's `networks`, checked and with its
-- default resolved), which its build makes ports for: written before the
-- server's row, so a build resumed after a stop finds them.
CREATE TABLE server_nic_requests (
    server_id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
