//! The user directory: loaded once from the config, read-only afterwards, looked up by name
//! (login) and by id (tokens, tasks).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::otp::{OtpMethod, TotpOrDate, TotpSecret};
use crate::store::{DirectoryUser, FederatedUser, Store, StoreResult};

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
    /// An auditor: sees the admin views and the audit log, changes nothing (the same as
    /// `"auditor"` among `roles`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auditor: bool,
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

/// The role of an auditor: the admin views and the audit log, nothing that changes anything.
pub const AUDITOR: &str = "auditor";

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
    /// A directory user's groups (DNs) and own DN; empty and `None` for a local user.
    pub groups: Vec<String>,
    pub dn: Option<String>,
    pub disabled: bool,
    pub otp_enabled: bool,
    pub adfs_enabled: bool,
    pub hardware_token_enabled: bool,
    pub(crate) otp: Option<TotpOrDate>,
    pub(crate) password_hash: String,
}

impl User {
    /// Whether the user signs in with a password this server checks (a local user).
    pub fn has_password(&self) -> bool {
        self.dn.is_none() && !self.password_hash.is_empty()
    }

    /// An auditor: the role (a local user's `auditor = true`), or one of the user's groups in
    /// `auditor_groups` — a directory user's compared as DNs, as `admin_groups` are; a single
    /// sign-on user's groups claim exactly.
    pub fn is_auditor(&self, auditor_groups: &[String]) -> bool {
        self.roles.iter().any(|r| r == AUDITOR)
            || self.groups.iter().any(|g| {
                auditor_groups.iter().any(|a| match self.dn {
                    Some(_) => super::directory::same_dn(a, g),
                    None => a == g,
                })
            })
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The users of the settings file, and — with a state store attached — the directory users
/// who signed in before (their records are in the store, see [`UserDirectory::resolve`]).
#[derive(Default)]
pub struct UserDirectory {
    by_name: HashMap<String, Arc<User>>,
    by_id: HashMap<Uuid, Arc<User>>,
    store: Option<Arc<dyn Store>>,
}

/// Directory users' ids: a name-based UUID of their entry's key (its entryUUID or
/// objectGUID), so that a person is one user on every instance, under every name that signs in
/// to their entry, and across renames and moves in the directory tree.
const DIRECTORY_NAMESPACE: Uuid = Uuid::from_u128(0x6c1f_5a0e_2b9d_4f57_8e31_d2a4_0b7c_9e15);

/// The id of the directory user whose entry has this key
/// ([`crate::auth::directory::entry_key`]).
pub fn directory_user_id(entry_key: &str) -> Uuid {
    Uuid::new_v5(&DIRECTORY_NAMESPACE, entry_key.as_bytes())
}

/// Federated people's ids: a name-based UUID of (issuer, subject), so that a person is one
/// user on every instance, whatever their username at the provider becomes.
const FEDERATED_NAMESPACE: Uuid = Uuid::from_u128(0x9d2e_41c7_73a0_4b1e_a5c6_0f3b_8e27_d914);

/// The id of the person the provider `issuer` knows as `subject`.
pub fn federated_user_id(issuer: &str, subject: &str) -> Uuid {
    Uuid::new_v5(
        &FEDERATED_NAMESPACE,
        format!("{issuer}\n{subject}").as_bytes(),
    )
}

/// A name as compared for look-alikes: Unicode NFKC (fullwidth letters, the Kelvin sign… as
/// the letters they stand for), then lower case.
pub fn fold(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    name.nfkc().collect::<String>().to_lowercase()
}

/// The id under which the store keeps which provider person (issuer, subject) a local
/// `adfs_enabled` user is (their pin, set at their first single sign-on). Never a session's
/// user id.
pub fn local_pin_id(user: &Uuid) -> Uuid {
    Uuid::new_v5(
        &FEDERATED_NAMESPACE,
        format!("local pin\n{user}").as_bytes(),
    )
}

impl User {
    /// A person the OpenID provider signed in, as its last ID token described them: no
    /// password (the provider checks it), groups from the groups claim, roles from
    /// `oidc.admin_groups`, no one-time code of poolgate's own.
    pub fn from_federated(record: &FederatedUser) -> Self {
        User {
            id: record.id,
            username: record.username.clone(),
            full_name: String::new(),
            email: String::new(),
            roles: if record.admin {
                vec!["admin".into(), "user".into()]
            } else {
                vec!["user".into()]
            },
            groups: record.groups.clone(),
            dn: None,
            disabled: false,
            otp_enabled: false,
            adfs_enabled: true,
            hardware_token_enabled: false,
            otp: None,
            password_hash: String::new(),
        }
    }

    /// A directory user as their record describes them: no password hash (the directory
    /// checks passwords), roles from the admin groups, and a one-time code to give if they are
    /// enrolled in TOTP (`totp_secret`, base32). A secret that does not parse still asks for a
    /// code, which then never matches: a broken enrolment refuses, it never waives the factor.
    pub fn from_directory(record: &DirectoryUser, totp_secret: Option<&str>) -> Self {
        let otp = totp_secret.and_then(|secret| {
            TotpSecret::from_base32(secret, &record.username)
                .inspect_err(|e| {
                    tracing::warn!(user = %record.username, error = %e, "a directory user's TOTP enrolment is unusable; their sign-ins are refused until an admin enrols them again");
                })
                .ok()
                .map(TotpOrDate::Totp)
        });
        User {
            id: record.id,
            username: record.username.clone(),
            full_name: record.full_name.clone(),
            email: record.email.clone(),
            roles: if record.admin {
                vec!["admin".into(), "user".into()]
            } else {
                vec!["user".into()]
            },
            groups: record.groups.clone(),
            dn: Some(record.dn.clone()),
            disabled: false,
            otp_enabled: totp_secret.is_some(),
            adfs_enabled: false,
            hardware_token_enabled: false,
            otp,
            password_hash: String::new(),
        }
    }
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
                roles: {
                    let mut roles = r.roles.clone();
                    if r.auditor && !roles.iter().any(|role| role == AUDITOR) {
                        roles.push(AUDITOR.to_owned());
                    }
                    roles
                },
                groups: Vec::new(),
                dn: None,
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

    /// The local user of this name in any case or compatibility form (`Ann` and `ＡＮＮ` for
    /// `ann`: Unicode NFKC, then lower case): the exact name first.
    pub fn by_name_any_case(&self, username: &str) -> Option<&Arc<User>> {
        self.by_name(username).or_else(|| {
            let folded = fold(username);
            self.by_name
                .iter()
                .find(|(name, _)| fold(name) == folded)
                .map(|(_, user)| user)
        })
    }

    pub fn by_id(&self, id: &Uuid) -> Option<&Arc<User>> {
        self.by_id.get(id)
    }

    /// Where directory users' records are kept; without it only local users resolve.
    pub fn attach_store(&mut self, store: Arc<dyn Store>) {
        self.store = Some(store);
    }

    /// Any user by id: a local one, or a directory or federated user who signed in before (read from the
    /// state store, so a session, challenge or task of theirs resolves on every instance).
    pub async fn resolve(&self, id: &Uuid) -> StoreResult<Option<Arc<User>>> {
        if let Some(user) = self.by_id.get(id) {
            return Ok(Some(user.clone()));
        }
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let Some(record) = store.directory_user_get(*id).await? else {
            let federated = store.federated_user_get(*id).await?;
            return Ok(federated.map(|r| Arc::new(User::from_federated(&r))));
        };
        let secret = store.directory_totp_get(*id).await?;
        Ok(Some(Arc::new(User::from_directory(
            &record,
            secret.as_deref(),
        ))))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(groups: &[&str], admin: bool) -> DirectoryUser {
        DirectoryUser {
            id: Uuid::new_v4(),
            dn: "uid=alice,ou=people,dc=example,dc=org".into(),
            username: "alice".into(),
            full_name: String::new(),
            email: String::new(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            admin,
            updated_ms: 0,
        }
    }

    #[test]
    fn auditors_by_role_by_directory_group_as_dns_and_by_provider_group_exactly() {
        let groups = vec![
            "CN=VDI Auditors,OU=Groups,DC=example,DC=org".to_owned(),
            "vdi-auditors".to_owned(),
        ];
        let directory = User::from_directory(
            &record(&["cn=vdi auditors, ou=groups, dc=example, dc=org"], false),
            None,
        );
        assert!(directory.is_auditor(&groups), "a DN, compared as DNs are");
        let other = User::from_directory(&record(&["cn=vdi users,dc=example,dc=org"], false), None);
        assert!(!other.is_auditor(&groups));
        let federated = |group: &str| {
            User::from_federated(&FederatedUser {
                id: Uuid::new_v4(),
                issuer: "https://idp.example.org".into(),
                subject: "s".into(),
                username: "bob".into(),
                groups: vec![group.to_owned()],
                admin: false,
                updated_ms: 0,
            })
        };
        assert!(federated("vdi-auditors").is_auditor(&groups));
        assert!(
            !federated("VDI-Auditors").is_auditor(&groups),
            "a claim, exactly"
        );
        assert!(
            !federated("vdi-auditors").is_auditor(&[]),
            "no groups configured"
        );
        let mut local = User::from_directory(&record(&[], false), None);
        local.dn = None;
        local.roles = vec!["user".into(), AUDITOR.into()];
        assert!(local.is_auditor(&[]), "the role");
    }
}
