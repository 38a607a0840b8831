//! One-time codes: RFC 6238 TOTP with ±1 step of skew and the §5.2 rule that an accepted code
//! is never accepted again, plus the mock's demo `date` code (`%y%m%d`, demo servers only).

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use totp_rs::{Secret, Totp};
use uuid::Uuid;

use super::users::{TotpOrDate, User};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtpMethod {
    Totp,
    Date,
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

    /// The code for a given time; used by tests and the `connect` client's docs.
    pub fn code_at(&self, unix_time: u64) -> String {
        self.0.generate(unix_time).to_string()
    }
}

/// Remembers the last TOTP step accepted per user so no code works twice (RFC 6238 §5.2).
#[derive(Default)]
pub struct OtpGuard {
    last_step: DashMap<Uuid, u64>,
}

impl OtpGuard {
    /// Checks `code` for `user` now. Returns false for a wrong, malformed or replayed code.
    pub fn verify(&self, user: &User, code: &str) -> bool {
        let now = chrono::Utc::now();
        match &user.otp {
            None => false,
            Some(TotpOrDate::Date) => {
                let expected = chrono::Local::now().format("%y%m%d").to_string();
                bool::from(expected.as_bytes().ct_eq(code.trim().as_bytes()))
            }
            Some(TotpOrDate::Totp(totp)) => {
                let Some(step) = totp.matching_step(code.trim(), now.timestamp() as u64) else {
                    return false;
                };
                // Check and update under the entry's lock: two logins racing with the same
                // code cannot both pass.
                let mut entry = self.last_step.entry(user.id).or_insert(0);
                if step <= *entry {
                    return false;
                }
                *entry = step;
                true
            }
        }
    }
}
