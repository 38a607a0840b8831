//! Sign-in with a security key, on the one sign-in path ([`Authenticator`]): the challenge a
//! key user's password gets (`auth`'s 428/102), a passkey sign-in without a username, and the
//! assertion that answers either (`webauthn_verify`). Each answer is reserved with the lockout
//! under the user's name first, as a password is: a refused one counts like a wrong password
//! (and a cloned key — its sign counter gone back — is logged at warn); a right one after a
//! password completes that sign-in's challenge as a one-time code does; the metrics
//! (`poolgate_logins_total`) count each outcome.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, PasskeyAuthentication, PublicKeyCredential, WebauthnError,
};

use super::super::lockout::DeviceId;
use super::super::recheck::{Standing, standing};
use super::super::users::User;
use super::super::{Authenticator, Verdict, finish};
use super::{SignIn, passkey, public_key};
use crate::error::{Error, KeyChallenge, MfaKind};
use crate::store::{SecurityKey, now_ms};

impl Authenticator {
    /// A user's keys when they sign in with one after their password (they have one, or are
    /// marked `hardware_token_enabled`); `None` when they do not. ADFS users sign in at their
    /// provider.
    pub(crate) async fn key_factor(&self, user: &User) -> Result<Option<Vec<SecurityKey>>, Error> {
        if user.adfs_enabled {
            return Ok(None);
        }
        let keys = self.keys.of(user.id).await?;
        Ok((!keys.is_empty() || user.hardware_token_enabled).then_some(keys))
    }

    /// The 428 a key user's password gets: the request options for their keys, or — none
    /// registered yet — that an administrator must send an enrolment link. A wrong password gets
    /// the same challenge, which never completes.
    pub(crate) async fn key_challenge(
        &self,
        user: &User,
        password_ok: bool,
        keys: &[SecurityKey],
    ) -> Result<Error, Error> {
        if keys.is_empty() {
            return Ok(Error::MfaRequired {
                kind: MfaKind::HardwareToken,
                mfa_token: None,
            });
        }
        let passkeys = keys.iter().map(passkey).collect::<Result<Vec<_>, _>>()?;
        let (options, state) = self
            .keys
            .webauthn()?
            .start_passkey_authentication(&passkeys)
            .map_err(Error::internal)?;
        let signin = SignIn {
            user: Some(user.id),
            password_ok,
            state: serde_json::to_value(state).map_err(Error::internal)?,
            from: None,
        };
        let mfa_token = self.keys.keep_signin(&signin).await?;
        Ok(Error::KeyRequired(Box::new(KeyChallenge {
            mfa_token,
            public_key: public_key(&options)?,
        })))
    }

    /// `webauthn_begin`: a passkey sign-in without a username (discoverable credentials): the
    /// token naming the ceremony and the request options (no allowed credentials; user
    /// verification required).
    /// Each keeps its ceremony in the store until answered or expired, so an address has only
    /// so many unanswered ones at a time ([`super::super::lockout::Lockout::passkey_begin`]).
    pub async fn passkey_begin(&self, peer: IpAddr) -> Result<(String, Value), Error> {
        self.lockout.check_address(peer).await?;
        let (options, state) = self
            .keys
            .webauthn()?
            .start_discoverable_authentication()
            .map_err(Error::internal)?;
        let signin = SignIn {
            user: None,
            password_ok: true,
            state: serde_json::to_value(state).map_err(Error::internal)?,
            from: Some(peer),
        };
        self.lockout.passkey_begin(peer).await?;
        let token = self.keys.keep_signin(&signin).await?;
        Ok((token, public_key(&options)?))
    }

    /// `webauthn_verify`: the key's answer to a challenge, taken once. Unknown, used or expired:
    /// 401 (a token this server never issued counts against the address like a made-up one).
    /// The user signed in, and whether it was a passkey sign-in without a username.
    pub async fn key_verify(
        &self,
        mfa_token: &str,
        credential: &PublicKeyCredential,
        peer: IpAddr,
        device: Option<DeviceId>,
    ) -> Result<(Arc<User>, bool), Error> {
        self.lockout.check_address(peer).await?;
        let Some(signin) = self.keys.take_signin(mfa_token).await? else {
            if !self.keys.issued_here(mfa_token) {
                self.lockout.unknown_token(peer).await?;
            }
            return Err(Error::ChallengeExpired);
        };
        if let Some(from) = signin.from {
            self.lockout.passkey_answered(from).await?;
        }
        let owner = match signin.user {
            Some(id) => self.users.resolve(&id).await?,
            None => self.passkey_owner(credential).await?,
        };
        let Some(user) = owner else {
            // A passkey nobody here registered (or whose user handle is not its owner's).
            self.lockout.unknown_token(peer).await?;
            log_refused(None, "a passkey not registered here");
            return self.record(Err(Error::KeyRefused)).map(|u| (u, true));
        };
        let attempt = self
            .lockout
            .begin(&user.username, peer, device.as_ref())
            .await?;
        let discoverable = signin.user.is_none();
        let (verdict, result) = match self
            .check_assertion(user, &signin, credential, discoverable)
            .await
        {
            // A passkey signs a directory user in without their directory password: the
            // directory is asked whether the account still stands, as a bind would have.
            (Verdict::Success, Ok(user)) if discoverable && user.dn.is_some() => {
                self.directory_still_admits(user).await
            }
            // A single sign-on user signs in at the provider (a passkey registered before they
            // were one does not sign them in around it).
            (Verdict::Success, Ok(user)) if user.adfs_enabled => {
                log_refused(
                    Some(&user),
                    "a single sign-on user's passkey: they sign in at the provider",
                );
                (Verdict::NotAGuess, Err(Error::KeyRefused))
            }
            other => other,
        };
        match verdict {
            // After a password: its challenge's count is taken back, as `otp_verify` does.
            Verdict::Success if !discoverable => attempt.challenge_completed().await?,
            verdict => self.settle(attempt, verdict).await?,
        }
        self.record(result).map(|user| (user, discoverable))
    }

    /// Whose passkey answered a sign-in without a username: the owner of its credential id, who
    /// must also be the user handle the authenticator gave back.
    async fn passkey_owner(
        &self,
        credential: &PublicKeyCredential,
    ) -> Result<Option<Arc<User>>, Error> {
        let Ok((handle, id)) = self
            .keys
            .webauthn()?
            .identify_discoverable_authentication(credential)
        else {
            return Ok(None);
        };
        match self.store.key_owner(&URL_SAFE_NO_PAD.encode(id)).await? {
            Some(owner) if owner == handle => Ok(self.users.resolve(&owner).await?),
            _ => Ok(None),
        }
    }

    /// Checks an assertion against the user's key it names, with the ceremony's state; on
    /// success keeps the key's new sign counter, backup flags and last use.
    async fn check_assertion(
        &self,
        user: Arc<User>,
        signin: &SignIn,
        credential: &PublicKeyCredential,
        discoverable: bool,
    ) -> (Verdict, Result<Arc<User>, Error>) {
        let id = URL_SAFE_NO_PAD.encode(&credential.raw_id);
        let keys = match self.keys.of(user.id).await {
            Ok(keys) => keys,
            Err(e) => return (Verdict::NotAGuess, Err(e)),
        };
        let Some(mut key) = keys.into_iter().find(|k| k.id == id) else {
            log_refused(Some(&user), "a key not registered to this user");
            return (Verdict::Guess, Err(Error::KeyRefused));
        };
        if discoverable && !key.passkey {
            log_refused(Some(&user), "a second-factor key used as a passkey");
            return (Verdict::Guess, Err(Error::KeyRefused));
        }
        let mut record = match passkey(&key) {
            Ok(record) => record,
            Err(e) => return (Verdict::NotAGuess, Err(e)),
        };
        let outcome = match self.keys.webauthn() {
            Ok(webauthn) if discoverable => {
                serde_json::from_value::<DiscoverableAuthentication>(signin.state.clone())
                    .map_err(|_| WebauthnError::ChallengePersistenceError)
                    .and_then(|state| {
                        webauthn.finish_discoverable_authentication_v2(credential, state, &record)
                    })
            }
            Ok(webauthn) => serde_json::from_value::<PasskeyAuthentication>(signin.state.clone())
                .map_err(|_| WebauthnError::ChallengePersistenceError)
                .and_then(|state| webauthn.finish_passkey_authentication(credential, &state)),
            Err(e) => return (Verdict::NotAGuess, Err(e)),
        };
        let result = match outcome {
            Ok(result) => result,
            Err(WebauthnError::CredentialPossibleCompromise) => {
                tracing::warn!(user = %user.username, key = %key.name, key_id = %key.id, "security key refused: its sign counter went back, so another copy of it may exist (a cloned authenticator)");
                return (Verdict::Guess, Err(Error::KeyRefused));
            }
            Err(e) => {
                log_refused(Some(&user), &e.to_string());
                return (Verdict::Guess, Err(Error::KeyRefused));
            }
        };
        record.update_credential(&result);
        key.credential = match serde_json::to_string(&record) {
            Ok(body) => body,
            Err(e) => return (Verdict::NotAGuess, Err(Error::internal(e))),
        };
        key.last_used_ms = Some(now_ms());
        if let Err(e) = self.store.key_update(&key).await {
            return (Verdict::NotAGuess, Err(e.into()));
        }
        finish(user, signin.password_ok)
    }
}

impl Authenticator {
    /// A directory user's passkey sign-in: the directory must still have the account, enabled
    /// (what a password sign-in's bind proves). Their record is refreshed from it (name, groups,
    /// admin), as a password sign-in refreshes it. A directory that cannot be asked refuses
    /// the sign-in (503), as it refuses a password: nobody signs in while it is down, so the
    /// re-checks' fail-open (`auth::recheck`) stays bounded by `session_max_age`.
    async fn directory_still_admits(&self, user: Arc<User>) -> (Verdict, Result<Arc<User>, Error>) {
        let Some(directory) = &self.directory else {
            tracing::info!(user = %user.username, "a directory user's passkey refused: no directory is configured");
            return (Verdict::NotAGuess, Err(Error::Disabled));
        };
        let entry = match standing(directory, &user).await {
            Ok(Standing::Present(entry)) => entry,
            Ok(Standing::Disabled) => {
                tracing::info!(user = %user.username, "a directory user's passkey refused: the account is disabled in the directory");
                return (Verdict::NotAGuess, Err(Error::Disabled));
            }
            Ok(Standing::Gone) => {
                tracing::info!(user = %user.username, "a directory user's passkey refused: the account is gone from the directory");
                return (Verdict::NotAGuess, Err(Error::Disabled));
            }
            Err(e) => {
                self.directory_down(&e);
                return (Verdict::NotAGuess, Err(Error::DirectoryUnavailable));
            }
        };
        match self.directory_user(&entry).await {
            Ok(user) => finish(user, true),
            Err(e) => (Verdict::NotAGuess, Err(e)),
        }
    }
}

/// A refused key answer, logged (each is counted by the lockout and the metrics).
fn log_refused(user: Option<&User>, why: &str) {
    let user = user.map(|u| u.username.as_str()).unwrap_or("-");
    tracing::info!(%user, why, "security key answer refused");
}
