//! `rpc/auth_token {token}` → `[token, ttl]`: re-authenticates a connection with a saved token.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{Ctx, guard_auth_attempt, parse_args, record_auth_outcome, token_reply};
use crate::error::Error;

#[derive(Deserialize)]
pub struct AuthToken {
    token: String,
}

impl AuthToken {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        guard_auth_attempt(ctx)?;
        let result = match ctx.state.auth.resume(&self.token, ctx.conn.peer.ip()).await {
            // A directory user's account, re-checked when due: ended, it is a revoked token.
            Ok(session) if !ctx.state.auth.session_confirmed(&session).await => {
                Err(Error::InvalidToken)
            }
            Ok(session) => {
                ctx.conn.set_session(ctx.state, session).await;
                Ok(token_reply(&self.token, ctx.state))
            }
            Err(e) => Err(e),
        };
        // A saved token this server issued, now expired or revoked, is not a guess.
        let stale = matches!(result, Err(Error::InvalidToken))
            && ctx.state.auth.tokens.issued_here(&self.token);
        if !stale {
            record_auth_outcome(ctx, &result);
        }
        result
    }
}
