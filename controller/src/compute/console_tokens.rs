//! The one-time tokens of serial console URLs: 32 random bytes on the wire,
//! their SHA-256 in the database (in it, so that any controller sharing the
//! database can take a token another issued). A token is taken once, and
//! only within [`TOKEN_TTL_SECS`] of being issued (Nova's `token_ttl`).

use crate::identity::now;
use crate::identity::token::{digest, generate};
use crate::store::{int, text, Store, StoreError, Value};

pub const TOKEN_TTL_SECS: i64 = 600;

pub struct ConsoleTokens {
    store: Store,
}

impl ConsoleTokens {
    pub fn new(store: Store) -> Self {
        ConsoleTokens { store }
    }

    /// A new token for server `server_id`'s console; expired ones are
    /// forgotten on the way.
    pub async fn issue(&self, server_id: &str) -> Result<String, StoreError> {
        let t = now();
        self.store
            .execute(
                "DELETE FROM console_tokens WHERE expires_at <= $1",
                &[Value::Int(t)],
            )
            .await?;
        let token = generate();
        self.store
            .execute(
                "INSERT INTO console_tokens (token_hash, server_id, expires_at) VALUES ($1, $2, $3)",
                &[
                    Value::Text(&digest(&token)),
                    Value::Text(server_id),
                    Value::Int(t + TOKEN_TTL_SECS),
                ],
            )
            .await?;
        Ok(token)
    }

    /// Takes `token`: the server it opens, if it was issued, not taken
    /// before, and has not expired.
    pub async fn take(&self, token: &str) -> Result<Option<String>, StoreError> {
        let hash = digest(token);
        let Some(row) = self
            .store
            .fetch_optional(
                "SELECT server_id, expires_at FROM console_tokens WHERE token_hash = $1",
                &[Value::Text(&hash)],
            )
            .await?
        else {
            return Ok(None);
        };
        let (server_id, expires_at) = (text(&row, "server_id")?, int(&row, "expires_at")?);
        // Whoever deletes the row took it: of two racing, one wins.
        let taken = self
            .store
            .execute(
                "DELETE FROM console_tokens WHERE token_hash = $1",
                &[Value::Text(&hash)],
            )
            .await?;
        Ok((taken == 1 && expires_at > now()).then_some(server_id))
    }
}
