//! `rpc/auth_clear` (args ignored): signs out. The token is revoked server-side, so it is
//! refused on every connection, not just this one; a single sign-on hand-off the socket waits
//! for is given up. Idempotent on a signed-out connection.

use serde_json::{Value, json};

use super::Ctx;
use crate::error::Error;

pub struct AuthClear;

impl AuthClear {
    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        // A hand-off under way ends too: signing out means no token comes later.
        if let Some(wait) = ctx.conn.sso.take() {
            wait.stop();
        }
        if let Some(session) = ctx.conn.session.clone() {
            ctx.conn.clear_session(ctx.state);
            ctx.state
                .auth
                .tokens
                .revoke(session.user.id, &session.hash)
                .await?;
            tracing::info!(conn_id = ctx.conn.id, user = %session.user.username, "signed out");
        }
        Ok(json!("success"))
    }
}
