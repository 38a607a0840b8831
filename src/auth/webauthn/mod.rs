//! Security keys and passkeys (WebAuthn), with webauthn-rs's passkey ceremonies: every key is
//! registered and used with user verification required (a PIN or a fingerprint on the key), so
//! one ceremony serves both ways in — a second factor after the password (`auth`'s 428/102
//! carries the request options; `webauthn_verify` answers them), and, for keys registered as
//! discoverable passkeys, a sign-in on its own without a username (`webauthn_begin`).
//!
//! The ceremonies' states live in the state store (webauthn-rs's
//! `danger-allow-state-serialisation`), so any instance finishes a ceremony another began;
//! each is single-use (taken before it is checked), bound to its attempt (the `mfa_token`
//! names it, and a second-factor one to its user and whether their password was right) and
//! expires `webauthn_challenge_ttl` after it began. Sign-ins run on the one sign-in path
//! ([`super::Authenticator`]): the lockout, the metrics and the sessions; see `signin.rs`.
//! Registration (an administrator's one-time enrolment link, or a signed-in user proving a
//! factor again) and the keys' management are in `register.rs`.

pub mod register;
pub mod rp;
pub mod signin;

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use webauthn_rs::Webauthn;
use webauthn_rs::prelude::Passkey;

use super::tokens::{TagKey, hash_token};
use crate::error::Error;
use crate::store::{SecurityKey, Store, now_ms};

pub use rp::RpSettings;

/// What a sign-in's token begins with.
const SIGNIN_PREFIX: &str = "pgw_";

/// The relying party and the ceremonies' records.
pub struct Keys {
    settings: RpSettings,
    /// Built once the listening port is known ([`Keys::listening`]): the relying party, and the
    /// base URL of enrolment links.
    built: OnceLock<(Webauthn, String)>,
    store: Arc<dyn Store>,
    tags: TagKey,
}

/// A sign-in ceremony under way, kept under its token's digest.
#[derive(Serialize, Deserialize)]
struct SignIn {
    /// The user whose password came first; `None` for a passkey sign-in without a username.
    user: Option<uuid::Uuid>,
    /// Whether that password was right (a wrong one gets a challenge that never completes).
    password_ok: bool,
    /// webauthn-rs's `PasskeyAuthentication` (or `DiscoverableAuthentication`).
    state: Value,
    /// Where a passkey sign-in without a username was begun: its count there is given back
    /// when it is answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<std::net::IpAddr>,
}

impl Keys {
    pub fn new(settings: RpSettings, store: Arc<dyn Store>, tags: TagKey) -> Self {
        Keys {
            settings,
            built: OnceLock::new(),
            store,
            tags,
        }
    }

    /// Builds the relying party for the port the server listens on (called once it is bound;
    /// with `public_url` the port changes nothing).
    pub fn listening(&self, port: u16, tls: bool) -> anyhow::Result<()> {
        if self.settings.off.is_some() {
            // Said by the config's warnings; every ceremony then answers why.
            return Ok(());
        }
        let built = self.settings.build(port, tls)?;
        let _ = self.built.set(built);
        Ok(())
    }

    fn webauthn(&self) -> Result<&Webauthn, Error> {
        if let Some(why) = &self.settings.off {
            return Err(Error::Unprocessable(format!(
                "Security keys are off on this server: {why}."
            )));
        }
        self.built.get().map(|(w, _)| w).ok_or_else(|| {
            Error::internal(anyhow::anyhow!(
                "the WebAuthn relying party is not built yet"
            ))
        })
    }

    /// Where enrolment links point: `public_url`, or `http://localhost:PORT`.
    pub fn base_url(&self) -> Result<&str, Error> {
        self.webauthn()?;
        Ok(self
            .built
            .get()
            .map(|(_, b)| b.as_str())
            .unwrap_or_default())
    }

    /// How long a challenge may be answered.
    pub fn ttl(&self) -> std::time::Duration {
        self.settings.ttl
    }

    fn expires_ms(&self) -> u64 {
        now_ms() + self.settings.ttl.as_millis() as u64
    }

    /// Whether this server issued a sign-in token (it may have expired or been used since).
    pub fn issued_here(&self, token: &str) -> bool {
        self.tags.issued_here(SIGNIN_PREFIX, token)
    }

    /// Keeps a new sign-in ceremony; its token for the client.
    async fn keep_signin(&self, signin: &SignIn) -> Result<String, Error> {
        let (token, hash) = self.tags.new_token(SIGNIN_PREFIX);
        let body = serde_json::to_string(signin).map_err(Error::internal)?;
        self.store
            .webauthn_put(&signin_key(&hash), &body, self.expires_ms())
            .await?;
        Ok(token)
    }

    /// The sign-in ceremony of a token, taken (single-use): `None` if unknown, used or expired.
    async fn take_signin(&self, token: &str) -> Result<Option<SignIn>, Error> {
        if !token.starts_with(SIGNIN_PREFIX) || token.len() > 128 {
            return Ok(None);
        }
        let taken = self
            .store
            .webauthn_take(&signin_key(&hash_token(token)))
            .await?;
        taken
            .map(|body| serde_json::from_str(&body).map_err(Error::internal))
            .transpose()
    }

    /// A user's registered keys.
    pub async fn of(&self, user: uuid::Uuid) -> Result<Vec<SecurityKey>, Error> {
        Ok(self.store.keys_of(user).await?)
    }
}

fn signin_key(hash: &[u8; 32]) -> String {
    format!("signin:{}", hex::encode(hash))
}

/// webauthn-rs's record of a stored key.
fn passkey(key: &SecurityKey) -> Result<Passkey, Error> {
    serde_json::from_str(&key.credential).map_err(Error::internal)
}

/// webauthn-rs's `publicKey` options, as the browser's API takes them (base64url fields).
fn public_key(options: &impl Serialize) -> Result<Value, Error> {
    let mut value = serde_json::to_value(options).map_err(Error::internal)?;
    Ok(value
        .get_mut("publicKey")
        .map(Value::take)
        .unwrap_or_default())
}

/// A key as its owner and admins see it.
pub fn key_view(key: &SecurityKey) -> Value {
    serde_json::json!({
        "id": key.id,
        "name": key.name,
        "created": rfc3339(key.created_ms),
        "last_used": key.last_used_ms.map(rfc3339),
        "passkey": key.passkey,
    })
}

pub fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
