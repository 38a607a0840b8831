//! `rpc/otp_verify {mfa_token, otp_code}` → `[token, ttl]`: the second step of an MFA sign-in.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{Ctx, guard_auth_attempt, parse_args, record_auth_outcome, sign_in};
use crate::error::Error;

#[derive(Deserialize)]
pub struct OtpVerify {
    mfa_token: String,
    otp_code: String,
}

impl OtpVerify {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        guard_auth_attempt(ctx)?;
        let outcome = ctx
            .state
            .auth
            .otp_verify(
                &self.mfa_token,
                &self.otp_code,
                ctx.conn.peer.ip(),
                ctx.conn.device.as_deref().copied(),
            )
            .await;
        let result = match outcome {
            Ok(user) => sign_in(ctx, user).await,
            Err(e) => Err(e),
        };
        // A challenge this server issued, now expired or used, is not a guess.
        let stale = matches!(result, Err(Error::InvalidMfaToken))
            && ctx.state.auth.mfa.issued_here(&self.mfa_token);
        if !stale {
            record_auth_outcome(ctx, &result);
        }
        result
    }
}
