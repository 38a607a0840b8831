//! The user directory: loaded once from the config, read-only afterwards, looked up by name
//! (login) and by id (tokens, tasks).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::otp::{OtpMethod, TotpSecret};

/// One `[[users]]` table as written in the config or users file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    pub username: String,
    pub id: Uuid,
    #[serde(default)]
    pub full_name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default = "default_roles")]
    pub roles: Vec<String>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub otp_enabled: bool,
    #[serde(default)]
    pub adfs_enabled: bool,
    #[serde(default)]
    pub hardware_token_enabled: bool,
    /// `totp` (needs `otp_secret`) or `date` (the mock's demo code; demo servers only).
    #[serde(default)]
    pub otp_method: Option<OtpMethod>,
    /// Base32 TOTP secret (RFC 6238, SHA-1, 6 digits, 30 s).
    #[serde(default)]
    pub otp_secret: Option<String>,
    /// argon2id PHC string, as printed by `poolgate hash-password`.
    pub password_hash: String,
}

fn default_roles() -> Vec<String> {
    vec!["user".to_owned()]
}

/// A validated user. The password hash and OTP secret never leave this struct.
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub full_name: String,
    pub email: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    pub otp_enabled: bool,
    pub adfs_enabled: bool,
    pub hardware_token_enabled: bool,
    pub(crate) otp: Option<TotpOrDate>,
    pub(crate) password_hash: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// How this user's one-time codes are checked.
pub(crate) enum TotpOrDate {
    Totp(TotpSecret),
    Date,
}

#[derive(Default)]
pub struct UserDirectory {
    by_name: HashMap<String, Arc<User>>,
    by_id: HashMap<Uuid, Arc<User>>,
}

impl UserDirectory {
    /// Validates every record: unique names and ids, parseable hashes and secrets, and no
    /// `date` codes outside a demo server.
    pub fn new(records: &[UserRecord], demo: bool) -> anyhow::Result<Self> {
        let mut dir = UserDirectory::default();
        for r in records {
            let ctx = || format!("user {:?}", r.username);
            if r.username.is_empty() {
                bail!("a user has an empty username");
            }
            super::password::check_strength(&r.password_hash)
                .map_err(|e| anyhow::anyhow!("password_hash: {e}"))
                .with_context(ctx)?;
            let otp = match (r.otp_method, &r.otp_secret) {
                (None, None) => None,
                (Some(OtpMethod::Date), _) if !demo => {
                    bail!(
                        "user {:?}: otp_method = \"date\" is the mock's demo code and is accepted \
                         only when the config sets demo = true; give the user a TOTP secret \
                         (poolgate user totp) instead",
                        r.username
                    )
                }
                (Some(OtpMethod::Date), _) => Some(TotpOrDate::Date),
                (Some(OtpMethod::Totp) | None, Some(secret)) => Some(TotpOrDate::Totp(
                    TotpSecret::from_base32(secret, &r.username).with_context(ctx)?,
                )),
                (Some(OtpMethod::Totp), None) => {
                    bail!(
                        "user {:?}: otp_method = \"totp\" needs otp_secret",
                        r.username
                    )
                }
            };
            if r.otp_enabled && otp.is_none() {
                bail!(
                    "user {:?}: otp_enabled needs otp_method/otp_secret",
                    r.username
                );
            }
            let user = Arc::new(User {
                id: r.id,
                username: r.username.clone(),
                full_name: r.full_name.clone(),
                email: r.email.clone(),
                roles: r.roles.clone(),
                disabled: r.disabled,
                otp_enabled: r.otp_enabled,
                adfs_enabled: r.adfs_enabled,
                hardware_token_enabled: r.hardware_token_enabled,
                otp,
                password_hash: r.password_hash.clone(),
            });
            if dir
                .by_name
                .insert(r.username.clone(), user.clone())
                .is_some()
            {
                bail!("user {:?} is defined twice", r.username);
            }
            if dir.by_id.insert(r.id, user).is_some() {
                bail!("user id {} is used twice", r.id);
            }
        }
        Ok(dir)
    }

    pub fn by_name(&self, username: &str) -> Option<&Arc<User>> {
        self.by_name.get(username)
    }

    pub fn by_id(&self, id: &Uuid) -> Option<&Arc<User>> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every user, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<User>> {
        self.by_id.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
