//! One-time codes: RFC 6238 TOTP with ±1 step of skew and the §5.2 rule that an accepted code
//! is never accepted again, plus the mock's demo `date` code (`%y%m%d`, demo servers only).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use totp_rs::{Secret, Totp};

use uuid::Uuid;

use crate::store::{Store, StoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtpMethod {
    Totp,
    Date,
}

/// How one user's one-time codes are checked (`User::otp`).
pub(crate) enum TotpOrDate {
    Totp(TotpSecret),
    Date,
}

/// The mock's demo `date` code as it is now: the server's local date as YYMMDD (`261207` on
/// 7 December 2026). Accepted only on a demo server, which also tells clients the code
/// (`identify`'s `demo_code`).
pub fn date_code() -> String {
    chrono::Local::now().format("%y%m%d").to_string()
}

/// A parsed TOTP generator for one user.
pub struct TotpSecret(Totp);

impl TotpSecret {
    pub fn from_base32(secret: &str, account: &str) -> anyhow::Result<Self> {
        let secret = Secret::try_from_base32(secret.trim())
            .map_err(|e| anyhow::anyhow!("otp_secret is not valid base32: {e:?}"))?;
        let totp = totp_rs::Builder::new()
            .with_secret(secret)
            .with_skew(1)
            .with_account_name(account)
            .with_issuer(Some("poolgate"))
            .build()
            .map_err(|e| anyhow::anyhow!("otp_secret is unusable: {e:?}"))?;
        Ok(TotpSecret(totp))
    }

    /// The step (time / 30) the code matches within the skew window, if any.
    fn matching_step(&self, code: &str, unix_time: u64) -> Option<u64> {
        self.0.check(code, unix_time)
    }

    /// The `otpauth://` URI an authenticator app scans.
    pub fn otpauth_url(&self) -> anyhow::Result<String> {
        self.0
            .to_url()
            .map_err(|e| anyhow::anyhow!("cannot build the otpauth URI: {e:?}"))
    }

    /// A new random secret (160 bits, as RFC 4226 recommends), base32.
    pub fn generate_base32() -> String {
        let bytes: [u8; 20] = rand::random();
        Secret::from(bytes).to_base32()
    }

    /// The code for a given time; used by tests and the `connect` client's docs.
    pub fn code_at(&self, unix_time: u64) -> String {
        self.0.generate(unix_time).to_string()
    }
}

/// Remembers the last TOTP step accepted per user (in the state store, so it holds across
/// restarts and instances) so no code works twice (RFC 6238 §5.2).
pub struct OtpGuard {
    store: Arc<dyn Store>,
}

impl OtpGuard {
    pub fn new(store: Arc<dyn Store>) -> Self {
        OtpGuard { store }
    }

    /// Checks `code` now for the user `user_id`, whose codes are checked as `otp` says
    /// (`User::otp`). False for a wrong, malformed or replayed code.
    pub(crate) async fn verify(
        &self,
        user_id: Uuid,
        otp: Option<&TotpOrDate>,
        code: &str,
    ) -> StoreResult<bool> {
        match otp {
            None => Ok(false),
            Some(TotpOrDate::Date) => {
                let expected = date_code();
                Ok(bool::from(
                    expected.as_bytes().ct_eq(code.trim().as_bytes()),
                ))
            }
            Some(TotpOrDate::Totp(totp)) => {
                let now = chrono::Utc::now().timestamp() as u64;
                let Some(step) = totp.matching_step(code.trim(), now) else {
                    return Ok(false);
                };
                // Check and update are one atomic store operation: two logins racing with
                // the same code cannot both pass.
                self.store.totp_advance(user_id, step).await
            }
        }
    }
}
