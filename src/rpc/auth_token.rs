//! `rpc/auth_token {token}` → `[token, ttl]`: re-authenticates a connection with a saved token.

use serde::Deserialize;
use serde_json::Value;

use super::{Ctx, guard_auth_attempt, parse_args, record_auth_outcome, token_reply};
use crate::error::Error;

#[derive(Deserialize)]
pub struct AuthToken {
    token: String,
}

impl AuthToken {
    pub fn parse(args: Value) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        guard_auth_attempt(ctx)?;
        let auth = &ctx.state.auth;
        let result = match auth.tokens.lookup(&self.token, &auth.users).await? {
            Some(session) if session.user.disabled => Err(Error::Disabled),
            Some(session) => {
                ctx.conn.set_session(ctx.state, session);
                Ok(token_reply(&self.token, ctx.state))
            }
            None => Err(Error::InvalidToken),
        };
        record_auth_outcome(ctx, &result);
        result
    }
}
