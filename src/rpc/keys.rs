//! Security keys and passkeys over the socket (see `auth::webauthn`).
//!
//! - `webauthn_verify {mfa_token, credential}`: the key's answer to `auth`'s 428/102 →
//!   `[token, ttl]` as `auth`; to `webauthn_begin`'s options → `[token, ttl, username]`.
//! - `webauthn_begin {}` → `{"mfa_token", "publicKey"}`: a passkey sign-in without a username
//!   (uses one of the socket's sign-in attempts, as a hand-off does).
//! - `key_register_begin {enroll_code}` (no sign-in), or signed in `{password}` (the user
//!   proves their password again: a local one here, a directory one to the directory; single
//!   sign-on users have no keys); `"passkey": true` asks for a discoverable credential →
//!   `{"registration", "publicKey", "username"}`. `key_register_finish {registration, name,
//!   credential}` → `{"id", "name", "created"}`.
//! - `keys {}`, `key_remove {id}`: the signed-in user's own keys (never the last one).
//! - Admins: `admin_enroll_key {username, ttl?}` → `{"url", "expires"}`, `admin_keys
//!   {username}`, `admin_remove_key {username, id}`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use super::admin::{named_user, require_admin, require_viewer};
use super::{Ctx, guard_auth_attempt, parse_args, record_auth_outcome, sign_in, user};
use crate::auth::users::User;
use crate::auth::webauthn::register::no_keys_for_single_sign_on;
use crate::auth::webauthn::{key_view, rfc3339};
use crate::error::Error;

/// Wrong passwords a session may give to add a key (within `lockout_window`) before it is
/// ended: a holder who cannot give it may have stolen the token.
pub const WRONG_REPROOFS: u32 = 3;
/// An enrolment link's default and longest lifetimes.
const ENROL_TTL: Duration = Duration::from_secs(24 * 3600);
const ENROL_TTL_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Deserialize)]
pub struct Verify {
    mfa_token: String,
    credential: PublicKeyCredential,
}

impl Verify {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        guard_auth_attempt(ctx)?;
        let outcome = ctx
            .state
            .auth
            .key_verify(
                &self.mfa_token,
                &self.credential,
                ctx.conn.peer.ip(),
                ctx.conn.device.as_deref().copied(),
            )
            .await;
        let result = match outcome {
            Ok((user, passkey)) => {
                let username = user.username.clone();
                let reply = sign_in(ctx, user).await;
                match reply {
                    // Who signed in, when the page typed no name.
                    Ok(Value::Array(mut items)) if passkey => {
                        items.push(Value::String(username));
                        Ok(Value::Array(items))
                    }
                    other => other,
                }
            }
            Err(e) => Err(e),
        };
        record_auth_outcome(ctx, &result);
        result
    }
}

/// `webauthn_begin`: the options of a passkey sign-in without a username.
pub async fn begin(ctx: &mut Ctx<'_>) -> Result<Value, Error> {
    guard_auth_attempt(ctx)?;
    // Each one uses one of the socket's sign-in attempts: a socket cannot fill the store.
    ctx.conn.auth_failures += 1;
    let (token, options) = ctx.state.auth.passkey_begin(ctx.conn.peer.ip()).await?;
    Ok(json!({"mfa_token": token, "publicKey": options}))
}

#[derive(Deserialize)]
pub struct RegisterBegin {
    #[serde(default)]
    enroll_code: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// Register a discoverable credential (signs in alone, without a username).
    #[serde(default)]
    passkey: bool,
}

impl RegisterBegin {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        guard_auth_attempt(ctx)?;
        let auth = &ctx.state.auth;
        let (user, enrol) = match &self.enroll_code {
            Some(code) => {
                let found = auth.enrolment(code, ctx.conn.peer.ip()).await;
                if let Err(Error::InvalidEnrolCode) = found {
                    ctx.conn.auth_failures += 1;
                }
                let (user, key) = found?;
                if self.passkey && (user.has_password() || user.dn.is_some()) {
                    // A passkey signs in on its own: the link alone (which may have leaked
                    // from a mailbox or a chat) must not make one. A second-factor key needs
                    // the password anyway at each sign-in.
                    let Some(password) = &self.password else {
                        return Err(Error::bad_request(
                            "A passkey signs in on its own: give your password too \
                             (\"password\") to register one with an enrolment link.",
                        ));
                    };
                    let checked = auth
                        .reprove_password(&user, password, ctx.conn.peer.ip())
                        .await;
                    if let Err(Error::InvalidCredentials) = checked {
                        ctx.conn.auth_failures += 1;
                    }
                    checked?;
                }
                (user, Some(key))
            }
            None => (self.reprove(ctx).await?, None),
        };
        ctx.state
            .auth
            .register_begin(&user, self.passkey, enrol)
            .await
    }

    /// A signed-in user proves a current factor again: their password (a local user's checked
    /// here, a directory user's by the directory; wrong: counted as a wrong password is). A
    /// session alone, however fresh, proves nothing: it may be a stolen token.
    async fn reprove(&self, ctx: &mut Ctx<'_>) -> Result<Arc<User>, Error> {
        let Some(session) = ctx.conn.session.clone() else {
            return Err(Error::Unauthenticated);
        };
        let user = session.user.clone();
        no_keys_for_single_sign_on(&user)?;
        if !user.has_password() && user.dn.is_none() {
            return Err(Error::Unprocessable(
                "This account has no password to prove again: an administrator can send an \
                 enrolment link (admin_enroll_key)."
                    .into(),
            ));
        }
        let Some(password) = &self.password else {
            return Err(Error::bad_request(
                "Give your password again (\"password\") to add a security key.",
            ));
        };
        let checked = ctx
            .state
            .auth
            .reprove_password(&user, password, ctx.conn.peer.ip())
            .await;
        let wrong = format!("reprove:{}", hex::encode(session.hash));
        match checked {
            Ok(()) => ctx.state.store.failures_reset(&wrong).await?,
            Err(Error::InvalidCredentials) => {
                ctx.conn.auth_failures += 1;
                // Its sockets may be anywhere, each address "known" by the token: the session
                // itself counts, and one that cannot give its password is ended.
                let window = ctx.state.config.lockout_window;
                if ctx.state.store.failures_add(&wrong, window).await? >= WRONG_REPROOFS {
                    ctx.conn.clear_session(ctx.state);
                    ctx.state.auth.tokens.revoke(user.id, &session.hash).await?;
                    tracing::warn!(user = %user.username, wrong = WRONG_REPROOFS, "a session whose holder gave a wrong password again and again to add a security key was ended (taken for a stolen token)");
                }
                return Err(Error::InvalidCredentials);
            }
            Err(e) => return Err(e),
        }
        Ok(user)
    }
}

#[derive(Deserialize)]
pub struct RegisterFinish {
    registration: String,
    name: String,
    credential: RegisterPublicKeyCredential,
}

impl RegisterFinish {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        let signed_in = ctx.conn.session.as_ref().map(|s| s.user.id);
        let key = ctx
            .state
            .auth
            .register_finish(&self.registration, &self.name, &self.credential, signed_in)
            .await?;
        Ok(json!({"id": key.id, "name": key.name, "created": rfc3339(key.created_ms)}))
    }
}

/// `keys`: the signed-in user's keys.
pub async fn list(ctx: &mut Ctx<'_>) -> Result<Value, Error> {
    let user = user(ctx)?.clone();
    keys_of(ctx, &user).await
}

async fn keys_of(ctx: &Ctx<'_>, user: &User) -> Result<Value, Error> {
    let keys = ctx.state.auth.keys.of(user.id).await?;
    Ok(Value::Array(keys.iter().map(key_view).collect()))
}

#[derive(Deserialize)]
pub struct Remove {
    id: String,
}

impl Remove {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        let user = user(ctx)?.clone();
        ctx.state.auth.key_remove(&user, &self.id, false).await?;
        Ok(json!("success"))
    }
}

#[derive(Deserialize)]
pub struct AdminEnroll {
    username: String,
    /// Seconds the link stays usable (default 24 h).
    #[serde(default)]
    ttl: Option<f64>,
}

impl AdminEnroll {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        require_admin(ctx)?;
        let ttl = match self.ttl {
            None => ENROL_TTL,
            Some(s) if s > 0.0 && s <= ENROL_TTL_MAX.as_secs_f64() => Duration::from_secs_f64(s),
            Some(_) => {
                return Err(Error::bad_request(format!(
                    "ttl is seconds, above 0 and at most {}.",
                    ENROL_TTL_MAX.as_secs()
                )));
            }
        };
        let target = match named_user(ctx, &self.username, None).await {
            // A directory person who has not signed in yet.
            Err(Error::NotFound(why)) => ctx
                .state
                .auth
                .directory_person(&self.username)
                .await?
                .ok_or(Error::NotFound(why))?,
            found => found?,
        };
        let (url, expires) = ctx.state.auth.enrol_link(&target, ttl).await?;
        let admin = &user(ctx)?.username;
        tracing::warn!(admin = %admin, user = %target.username, "an admin issued a security-key enrolment link");
        Ok(json!({"url": url, "expires": rfc3339(expires)}))
    }
}

#[derive(Deserialize)]
pub struct AdminKeys {
    username: String,
}

impl AdminKeys {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        require_viewer(ctx)?;
        let target = named_user(ctx, &self.username, None).await?;
        keys_of(ctx, &target).await
    }
}

#[derive(Deserialize)]
pub struct AdminRemove {
    username: String,
    id: String,
}

impl AdminRemove {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        require_admin(ctx)?;
        let target = named_user(ctx, &self.username, None).await?;
        ctx.state.auth.key_remove(&target, &self.id, true).await?;
        let admin = &user(ctx)?.username;
        tracing::warn!(admin = %admin, user = %target.username, key_id = %self.id, "an admin removed a security key");
        Ok(json!("success"))
    }
}
