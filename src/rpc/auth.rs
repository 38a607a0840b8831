//! `rpc/auth {username, password, otp_code?}` → `[token, ttl]`, or 428 with an `mfa_token`.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{Ctx, guard_auth_attempt, parse_args, record_auth_outcome, sign_in};
use crate::auth::Credentials;
use crate::error::{Error, MfaKind};

#[derive(Deserialize)]
pub struct Auth {
    username: String,
    password: String,
    #[serde(default)]
    otp_code: Option<String>,
    /// Ask the directory (see `Authenticator::login`).
    #[serde(default)]
    ldap: bool,
}

impl Auth {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        guard_auth_attempt(ctx)?;
        let outcome = ctx
            .state
            .auth
            .login(Credentials {
                username: &self.username,
                password: Some(&self.password),
                otp_code: self.otp_code.as_deref(),
                peer: ctx.conn.peer.ip(),
                device: ctx.conn.device.as_deref().copied(),
                directory: self.ldap,
            })
            .await;
        let result = match outcome {
            Ok(user) => sign_in(ctx, user).await,
            // A user who signs in through the provider: the hand-off, when it is configured.
            Err(Error::MfaRequired {
                kind: MfaKind::Adfs,
                ..
            }) if ctx.state.auth.sso.is_some() => Err(super::auth_sso::handoff(ctx).await),
            Err(e) => Err(e),
        };
        record_auth_outcome(ctx, &result);
        result
    }
}
