//! Registering security keys, and the keys' management.
//!
//! A key is registered either through an administrator's one-time enrolment link
//! (`admin_enroll_key`: 256 random bits, kept only as a digest, for one user, 24 h by default,
//! consumed by the registration it completes — a failed one leaves it usable until it expires)
//! or by a signed-in user who proves a current factor again (the RPC layer checks it). The
//! registration's state is kept in the store under a digest of its id, single-use and
//! expiring with the challenge. Already registered keys are excluded; a credential id
//! registered to anyone is refused (409).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use webauthn_rs::prelude::{PasskeyRegistration, RegisterPublicKeyCredential};

use super::super::Authenticator;
use super::super::directory::DirectoryError;
use super::super::users::User;
use super::super::users::directory_user_id;
use super::{passkey, public_key, rfc3339};
use crate::error::Error;
use crate::store::{KeyRemoval, SecurityKey, now_ms};

/// Longest key name, in characters.
const MAX_NAME_CHARS: usize = 64;

/// A registration under way.
#[derive(Serialize, Deserialize)]
struct Registration {
    user: uuid::Uuid,
    /// Asked for a discoverable credential (a passkey that signs in without a username).
    passkey: bool,
    /// The store key of the enrolment link it came from, consumed when it completes.
    enrol: Option<String>,
    /// webauthn-rs's `PasskeyRegistration`.
    state: Value,
}

/// An enrolment link's record, under a digest of its code.
#[derive(Serialize, Deserialize)]
struct Enrolment {
    user: uuid::Uuid,
    /// When the link expires (kept to give it back unchanged after a refused registration).
    expires_ms: u64,
}

/// 256 random bits, base64url.
fn random_code() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random number generator is unavailable");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn digest_key(kind: &str, secret: &str) -> String {
    format!("{kind}:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

impl Authenticator {
    /// `admin_enroll_key`: a one-time link with which `user` registers a key; its URL and
    /// when it expires (ms). It replaces the user's earlier link, if one is still usable: a
    /// user has one live link, and an administrator who fears one leaked sends a new one.
    pub async fn enrol_link(&self, user: &User, ttl: Duration) -> Result<(String, u64), Error> {
        let base = self.keys.base_url()?.to_owned();
        no_keys_for_single_sign_on(user)?;
        let code = random_code();
        let expires = now_ms() + ttl.as_millis() as u64;
        let enrolment = Enrolment {
            user: user.id,
            expires_ms: expires,
        };
        let body = serde_json::to_string(&enrolment).map_err(Error::internal)?;
        let key = digest_key("enrol", &code);
        let current = format!("enrol_of:{}", user.id);
        if let Some(earlier) = self.store.webauthn_take(&current).await?
            && self.store.webauthn_take(&earlier).await?.is_some()
        {
            tracing::info!(user = %user.username, "an earlier enrolment link, still unused, was replaced");
        }
        self.store.webauthn_put(&key, &body, expires).await?;
        self.store.webauthn_put(&current, &key, expires).await?;
        tracing::info!(user = %user.username, expires = %rfc3339(expires), "enrolment link for a security key issued");
        Ok((format!("{base}/?enroll={code}"), expires))
    }

    /// The user an enrolment link's code is for (left usable), and its store key. Unknown,
    /// used or expired: 401, counted against the address like a made-up token.
    pub async fn enrolment(&self, code: &str, peer: IpAddr) -> Result<(Arc<User>, String), Error> {
        self.lockout.check_address(peer).await?;
        let key = digest_key("enrol", code);
        let found = match code.len() {
            1..=128 => self.store.webauthn_get(&key).await?,
            _ => None,
        };
        let enrolment = found
            .map(|body| serde_json::from_str::<Enrolment>(&body).map_err(Error::internal))
            .transpose()?;
        let user = match enrolment {
            Some(e) => self.users.resolve(&e.user).await?,
            None => None,
        };
        let Some(user) = user else {
            self.lockout.unknown_token(peer).await?;
            tracing::info!(%peer, "an unknown, used or expired enrolment link was refused");
            return Err(Error::InvalidEnrolCode);
        };
        Ok((user, key))
    }

    /// Starts registering a key for `user`: the registration's id and the creation options
    /// (their keys excluded; a passkey asks for a discoverable credential).
    pub async fn register_begin(
        &self,
        user: &User,
        as_passkey: bool,
        enrol: Option<String>,
    ) -> Result<Value, Error> {
        no_keys_for_single_sign_on(user)?;
        let exclude: Vec<_> = self
            .keys
            .of(user.id)
            .await?
            .iter()
            .map(passkey)
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .map(|k| k.cred_id().clone())
            .collect();
        let display = match user.full_name.as_str() {
            "" => user.username.as_str(),
            name => name,
        };
        let (options, state) = self
            .keys
            .webauthn()?
            .start_passkey_registration(user.id, &user.username, display, Some(exclude))
            .map_err(Error::internal)?;
        let mut options = public_key(&options)?;
        if as_passkey {
            // A passkey must be discoverable: an authenticator that cannot keep one refuses.
            options["authenticatorSelection"]["residentKey"] = json!("required");
            options["authenticatorSelection"]["requireResidentKey"] = json!(true);
        }
        let registration = Registration {
            user: user.id,
            passkey: as_passkey,
            enrol,
            state: serde_json::to_value(state).map_err(Error::internal)?,
        };
        let id = random_code();
        let body = serde_json::to_string(&registration).map_err(Error::internal)?;
        self.store
            .webauthn_put(&digest_key("register", &id), &body, self.keys.expires_ms())
            .await?;
        Ok(json!({"registration": id, "publicKey": options, "username": user.username}))
    }

    /// Completes a registration (taken once): checks the key's answer, consumes the enrolment
    /// link it came from, and stores the key. `signed_in`: the socket's user, who must be the
    /// registration's when it did not come from a link.
    pub async fn register_finish(
        &self,
        id: &str,
        name: &str,
        credential: &RegisterPublicKeyCredential,
        signed_in: Option<uuid::Uuid>,
    ) -> Result<SecurityKey, Error> {
        let name = checked_name(name)?;
        let taken = match id.len() {
            1..=128 => {
                self.store
                    .webauthn_take(&digest_key("register", id))
                    .await?
            }
            _ => None,
        };
        let Some(body) = taken else {
            return Err(Error::ChallengeExpired);
        };
        let reg: Registration = serde_json::from_str(&body).map_err(Error::internal)?;
        if reg.enrol.is_none() && signed_in != Some(reg.user) {
            return Err(Error::Unauthenticated);
        }
        let state: PasskeyRegistration =
            serde_json::from_value(reg.state).map_err(Error::internal)?;
        let record = self
            .keys
            .webauthn()?
            .finish_passkey_registration(credential, &state)
            .map_err(|e| {
                Error::Unprocessable(format!("The security key's registration was refused: {e}."))
            })?;
        let key = SecurityKey {
            user_id: reg.user,
            id: URL_SAFE_NO_PAD.encode(record.cred_id()),
            name,
            passkey: reg.passkey,
            credential: serde_json::to_string(&record).map_err(Error::internal)?,
            created_ms: now_ms(),
            last_used_ms: None,
        };
        self.add_key(&key, reg.enrol.as_deref()).await?;
        Ok(key)
    }

    /// Stores a new key, consuming the enrolment link it came from (given back if the key is
    /// refused).
    async fn add_key(&self, key: &SecurityKey, enrol: Option<&str>) -> Result<(), Error> {
        let link = match enrol {
            Some(enrol) => Some(
                self.store
                    .webauthn_take(enrol)
                    .await?
                    .ok_or(Error::InvalidEnrolCode)?,
            ),
            None => None,
        };
        if self.store.key_add(key).await? {
            tracing::info!(user_id = %key.user_id, key = %key.name, passkey = key.passkey, "security key registered");
            return Ok(());
        }
        if let (Some(enrol), Some(body)) = (enrol, link) {
            // Usable again until it expires.
            let expires = serde_json::from_str::<Enrolment>(&body)
                .map_err(Error::internal)?
                .expires_ms;
            self.store.webauthn_put(enrol, &body, expires).await?;
        }
        let owner = self.store.key_owner(&key.id).await?;
        Err(Error::Conflict(if owner == Some(key.user_id) {
            "This security key is registered to this account already.".into()
        } else {
            "This security key is registered to another account.".into()
        }))
    }

    /// A signed-in user's password, proved again before they add a key: a local user's against
    /// its hash, a directory user's by the directory (a bind, as at sign-in). Reserved with the
    /// lockout and counted as a sign-in's password is.
    pub async fn reprove_password(
        &self,
        user: &User,
        password: &str,
        peer: IpAddr,
    ) -> Result<(), Error> {
        let attempt = self.lockout.begin(&user.username, peer, None).await?;
        let lane = match attempt.known() {
            true => super::super::password::Lane::Known,
            false => super::super::password::Lane::Stranger(peer),
        };
        let checked = match (&user.dn, &self.directory) {
            (None, _) => {
                self.passwords
                    .verify(&user.password_hash, password, lane)
                    .await
            }
            (Some(_), Some(directory)) => {
                match directory.authenticate(&user.username, password).await {
                    // The name may have moved to another entry since: only their own entry proves.
                    Ok(entry) => Ok(directory_user_id(&entry.key) == user.id),
                    Err(DirectoryError::InvalidCredentials | DirectoryError::WrongPassword(_)) => {
                        Ok(false)
                    }
                    Err(DirectoryError::Disabled(_)) => Err(Error::Disabled),
                    Err(DirectoryError::Unavailable(why)) => {
                        self.metrics.directory_errors.inc();
                        tracing::warn!(error = %why, "directory unavailable: a password proved again to add a security key was answered 503");
                        Err(Error::DirectoryUnavailable)
                    }
                }
            }
            (Some(_), None) => Err(Error::DirectoryUnavailable),
        };
        match checked {
            Ok(true) => attempt.succeeded().await,
            Ok(false) => {
                attempt.failed();
                Err(Error::InvalidCredentials)
            }
            Err(e) => {
                attempt.not_a_guess().await?;
                Err(e)
            }
        }
    }

    /// Removes one of a user's keys. `by_admin`: an administrator may remove the last one;
    /// the user may not (409).
    /// The user's own removals are counted and removed in one step of the store, so that
    /// removals at once (from several sockets or instances) cannot take the last key between
    /// them.
    pub async fn key_remove(&self, user: &User, id: &str, by_admin: bool) -> Result<(), Error> {
        let outcome = match by_admin {
            true => match self.store.key_remove(user.id, id).await? {
                true => KeyRemoval::Removed,
                false => KeyRemoval::NotFound,
            },
            false => self.store.key_remove_unless_last(user.id, id).await?,
        };
        match outcome {
            KeyRemoval::Removed => {
                tracing::info!(user = %user.username, key_id = %id, by_admin, "security key removed");
                Ok(())
            }
            KeyRemoval::NotFound => Err(Error::NotFound(format!("No security key {id:?}."))),
            KeyRemoval::Last => Err(Error::Conflict(
                "This is the account's last security key: an administrator must remove it \
                 (admin_remove_key), so that the account keeps its second factor."
                    .into(),
            )),
        }
    }
}

/// A single sign-on user signs in at the provider, whose account and factors govern theirs: a
/// key would be a way in that the provider never sees (and that outlives their account there),
/// so none is registered for them (422).
pub fn no_keys_for_single_sign_on(user: &User) -> Result<(), Error> {
    if user.adfs_enabled {
        return Err(Error::Unprocessable(format!(
            "{} signs in at the single sign-on provider: security keys and passkeys are not \
             used for them.",
            user.username
        )));
    }
    Ok(())
}

/// A key's name as its owner gave it: 1 to 64 characters, no control characters, and none of
/// the invisible ones that change how a name reads where admins and the owner see it (a
/// right-to-left override turning "gpj.exe" round, a zero-width space making two names look
/// the same).
fn checked_name(name: &str) -> Result<String, Error> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(|c| c.is_control() || invisible(c))
    {
        return Err(Error::bad_request(format!(
            "A key's name is 1 to {MAX_NAME_CHARS} characters, none of them control or \
             invisible formatting characters."
        )));
    }
    Ok(name.to_owned())
}

/// Unicode's format characters that matter in a short name: the soft hyphen, the bidirectional
/// marks, overrides and isolates, the zero-width characters and joiners, the word joiner and
/// invisible operators, the byte order mark and the interlinear annotation marks.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_refuse_control_and_invisible_characters() {
        assert_eq!(
            checked_name("  YubiKey on my keyring ").unwrap(),
            "YubiKey on my keyring"
        );
        assert_eq!(checked_name("clé – 鍵 🔑").unwrap(), "clé – 鍵 🔑");
        // Shown as text by the portal, never as markup.
        assert!(checked_name("<img src=x onerror=alert(1)>").is_ok());
        for bad in [
            "",
            "   ",
            "x\ny",
            "a\u{202e}gpj.exe",
            "\u{200b}",
            "Yubi\u{200d}Key",
            "\u{2066}key\u{2069}",
            "\u{feff}key",
            &"k".repeat(65),
        ] {
            assert!(checked_name(bad).is_err(), "{bad:?}");
        }
        assert!(checked_name(&"k".repeat(64)).is_ok());
    }
}
