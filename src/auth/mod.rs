//! Authentication: who may sign in, and how. The login rules live here once and are called by
//! both the WebSocket RPCs and the REST shim.
//!
//! Order of checks, as in the reference mock: the user exists → second factor → password →
//! disabled. An unknown user and a wrong password give the same answer after the same work.

pub mod jwt;
pub mod otp;
pub mod password;
pub mod tokens;
pub mod users;

use std::sync::Arc;

use crate::error::{Error, MfaKind};
use otp::OtpGuard;
use password::PasswordChecker;
use tokens::{MfaStore, TokenStore};
use users::{User, UserDirectory};

/// A first-step login attempt.
pub struct Credentials<'a> {
    pub username: &'a str,
    /// `None` is allowed for the mock's first MFA step (it answers 428 without a password).
    pub password: Option<&'a str>,
    pub otp_code: Option<&'a str>,
}

pub struct Authenticator {
    pub users: UserDirectory,
    pub tokens: TokenStore,
    pub mfa: MfaStore,
    pub otp: OtpGuard,
    pub passwords: PasswordChecker,
}

impl Authenticator {
    /// Checks credentials; on success the caller issues a token for the returned user.
    pub async fn login(&self, creds: Credentials<'_>) -> Result<Arc<User>, Error> {
        let Some(user) = self.users.by_name(creds.username).cloned() else {
            if let Some(password) = creds.password {
                self.passwords.verify_dummy(password).await?;
            }
            return Err(Error::InvalidCredentials);
        };
        if let Some(kind) = mfa_kind(&user) {
            if kind != MfaKind::Otp {
                return Err(Error::MfaRequired {
                    kind,
                    mfa_token: None,
                });
            }
            match creds.otp_code {
                None => {
                    let password_ok = match creds.password {
                        Some(p) => self.passwords.verify(&user.password_hash, p).await?,
                        None => false,
                    };
                    let mfa_token = self.mfa.issue(&user, password_ok).await?;
                    return Err(Error::MfaRequired {
                        kind,
                        mfa_token: Some(mfa_token),
                    });
                }
                Some(code) => {
                    if !self.otp.verify(&user, code).await? {
                        return Err(Error::InvalidOtp);
                    }
                }
            }
        }
        let password_ok = match creds.password {
            Some(p) => self.passwords.verify(&user.password_hash, p).await?,
            None => false,
        };
        finish(user, password_ok)
    }

    /// Completes an OTP challenge issued by [`Authenticator::login`].
    pub async fn otp_verify(&self, mfa_token: &str, otp_code: &str) -> Result<Arc<User>, Error> {
        let Some(challenge) = self.mfa.get(mfa_token, &self.users).await? else {
            return Err(Error::InvalidMfaToken);
        };
        if !self.otp.verify(&challenge.user, otp_code).await? {
            self.mfa.fail(mfa_token).await?;
            return Err(Error::InvalidOtp);
        }
        if !self.mfa.take(mfa_token).await? {
            // Another request used this challenge a moment ago.
            return Err(Error::InvalidMfaToken);
        }
        finish(challenge.user, challenge.password_ok)
    }
}

fn mfa_kind(user: &User) -> Option<MfaKind> {
    if user.otp_enabled {
        Some(MfaKind::Otp)
    } else if user.adfs_enabled {
        Some(MfaKind::Adfs)
    } else if user.hardware_token_enabled {
        Some(MfaKind::HardwareToken)
    } else {
        None
    }
}

fn finish(user: Arc<User>, password_ok: bool) -> Result<Arc<User>, Error> {
    if !password_ok {
        return Err(Error::InvalidCredentials);
    }
    if user.disabled {
        return Err(Error::Disabled);
    }
    Ok(user)
}
