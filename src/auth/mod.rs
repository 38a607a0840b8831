//! Authentication: who may sign in, and how. The login rules live here once and are called by
//! both the WebSocket RPCs and the REST shim.
//!
//! Order of checks, as in the reference mock: the user exists → second factor → password →
//! disabled. An unknown user and a wrong password give the same answer after the same work.

pub mod jwt;
pub mod lockout;
pub mod otp;
pub mod password;
pub mod tokens;
pub mod users;

use std::net::IpAddr;
use std::sync::Arc;

use crate::error::{Error, MfaKind};
use lockout::Lockout;
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
    /// Where the attempt comes from (for the per-address limit).
    pub peer: IpAddr,
}

pub struct Authenticator {
    pub users: UserDirectory,
    pub tokens: TokenStore,
    pub mfa: MfaStore,
    pub otp: OtpGuard,
    pub passwords: PasswordChecker,
    pub lockout: Lockout,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Authenticator {
    /// Checks credentials; on success the caller issues a token for the returned user.
    /// Failures count towards the lockout; a locked-out attempt costs no argon2 work.
    pub async fn login(&self, creds: Credentials<'_>) -> Result<Arc<User>, Error> {
        self.lockout.check(Some(creds.username), creds.peer).await?;
        let (username, peer) = (creds.username, creds.peer);
        let result = self.login_unlimited(creds).await;
        self.count(&result, username, peer).await?;
        result
    }

    /// Records the outcome of an attempt in the lockout counters.
    async fn count(
        &self,
        result: &Result<Arc<User>, Error>,
        username: &str,
        peer: IpAddr,
    ) -> Result<(), Error> {
        self.metrics.login(match result {
            Ok(_) => "ok",
            Err(Error::InvalidCredentials | Error::InvalidOtp) => "denied",
            Err(Error::MfaRequired { .. }) => "mfa_required",
            Err(Error::Disabled) => "disabled",
            Err(_) => "error",
        });
        match result {
            Ok(_) => self.lockout.succeeded(username).await,
            Err(Error::InvalidCredentials | Error::InvalidOtp) => {
                self.lockout.failed(Some(username), peer).await
            }
            Err(_) => Ok(()),
        }
    }

    async fn login_unlimited(&self, creds: Credentials<'_>) -> Result<Arc<User>, Error> {
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
    pub async fn otp_verify(
        &self,
        mfa_token: &str,
        otp_code: &str,
        peer: IpAddr,
    ) -> Result<Arc<User>, Error> {
        self.lockout.check(None, peer).await?;
        let Some(challenge) = self.mfa.get(mfa_token, &self.users).await? else {
            self.lockout.failed(None, peer).await?;
            return Err(Error::InvalidMfaToken);
        };
        let username = challenge.user.username.clone();
        self.lockout.check(Some(&username), peer).await?;
        let result = self
            .otp_verify_unlimited(mfa_token, otp_code, challenge)
            .await;
        self.count(&result, &username, peer).await?;
        result
    }

    async fn otp_verify_unlimited(
        &self,
        mfa_token: &str,
        otp_code: &str,
        challenge: tokens::MfaChallenge,
    ) -> Result<Arc<User>, Error> {
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

    /// Re-authentication with a saved token, under the per-address limit.
    pub async fn resume(&self, token: &str, peer: IpAddr) -> Result<Arc<tokens::Session>, Error> {
        self.lockout.check(None, peer).await?;
        match self.tokens.lookup(token, &self.users).await? {
            Some(session) if session.user.disabled => Err(Error::Disabled),
            Some(session) => Ok(session),
            None => {
                self.lockout.failed(None, peer).await?;
                Err(Error::InvalidToken)
            }
        }
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
