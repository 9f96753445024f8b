-- The one-time tokens of serial console URLs (Nova's console auth tokens):
-- only their SHA-256 is kept; each is taken once, before it expires.
CREATE TABLE console_tokens (
    token_hash TEXT PRIMARY KEY,
    server_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_tokens_expires_at ON console_tokens (expires_at);
