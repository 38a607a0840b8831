//! Directory sign-in: people and groups kept in LDAP or Active Directory.
//!
//! A sign-in searches the user with the service account (`bind_dn`), the username escaped as
//! RFC 4515 says (a `*`, `(`, `)`, `\` or NUL in it is a literal character, never filter
//! syntax), then binds as the entry found with the password given, on a connection of its
//! own. An empty password is refused before any bind: LDAP treats a simple bind with a DN and
//! no password as an *unauthenticated* bind, which succeeds on many servers. Full name, email
//! and groups come from the entry (groups from `group_attribute`, e.g. `memberOf`, or from a
//! search of `group_base` with `group_filter`); `admin_groups` make an administrator.
//!
//! Disabled accounts are said to be disabled only once the password was proven right: an AD
//! account with `userAccountControl` bit 0x2 when the bind succeeded (or when AD answers the
//! bind with its "data 533", which it only gives for a right password); an OpenLDAP account
//! locked by ppolicy cannot be told apart — slapd refuses a locked account's bind whatever the
//! password — so it answers like a wrong password. Sessions already open are re-checked
//! with the service account alone ([`Directory::lookup`], [`DirectoryEntry::disabled`]),
//! which reads both marks.
//!
//! Every operation runs under `timeout`; a directory that does not answer, refuses the
//! service account or fails otherwise is [`DirectoryError::Unavailable`] (the caller's 503).
//! Service-bound connections are kept for reuse (a few) and dropped when they fail, so a
//! directory that restarts is reconnected to by the next sign-in.

mod config;
mod entry;

use std::sync::Arc;

use ldap3::{
    Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, SearchOptions, ldap_escape,
};

use config::tls_config;
pub use config::{DirectoryConfig, PASSWORD_ENV};
use entry::{account_name, first};
pub use entry::{entry_key, same_dn};

/// Service-bound connections kept for reuse.
const IDLE_CONNECTIONS: usize = 4;

/// Most groups a group search returns (more is refused as the directory's error).
const MAX_GROUPS: i32 = 1000;

/// LDAP's sizeLimitExceeded result code.
const SIZE_LIMIT_EXCEEDED: u32 = 4;

/// LDAP's noSuchObject and invalidDNSyntax result codes.
const NO_SUCH_OBJECT: u32 = 32;
const INVALID_DN_SYNTAX: u32 = 34;
/// LDAP result code of a bind refused for its name or password.
const INVALID_CREDENTIALS: u32 = 49;

/// The attributes read from a user's entry; the first four may hold a name the user filter
/// matches (see [`Directory::lookup`]).
const NAME_ATTRIBUTES: [&str; 4] = ["uid", "sAMAccountName", "userPrincipalName", "mail"];

/// A person found in the directory whose password was right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    pub dn: String,
    /// What identifies the entry whatever name it is signed in with and wherever it moves:
    /// see [`entry_key`].
    pub key: String,
    /// The entry's own account name (`uid` or `sAMAccountName`), else the name signed in with.
    pub username: String,
    pub full_name: String,
    pub email: String,
    /// The DNs of the user's groups, as the directory writes them.
    pub groups: Vec<String>,
    /// Whether a group of `admin_groups` is among them.
    pub admin: bool,
    /// Whether the directory says the account is disabled, as far as the service account
    /// can read it: AD's `userAccountControl` bit 0x2, or OpenLDAP ppolicy's administrative
    /// lock (`pwdAccountLockedTime` of `000001010000Z`). A lock that ppolicy set after failed
    /// binds (a time stamp) is not: it lapses by itself, and anyone who can fail binds could
    /// set it. For the re-check of sessions ([`crate::auth::recheck`]); a sign-in learns it
    /// from the bind.
    pub disabled: bool,
}

/// OpenLDAP ppolicy's `pwdAccountLockedTime` for an account locked until an administrator
/// unlocks it.
const PERMANENT_LOCK: &str = "000001010000Z";

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// No such user, an empty password, or an account the directory refuses without saying
    /// more.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The person exists (their entry's [`entry_key`]) and the directory refused the password.
    /// The caller answers it as [`DirectoryError::InvalidCredentials`] — unless the person
    /// has a second factor, whose challenge a wrong password gets like a right one.
    #[error("invalid credentials")]
    WrongPassword(String),
    /// The password was right and the account (its entry's [`entry_key`]) is disabled.
    #[error("account disabled")]
    Disabled(String),
    /// The directory could not be asked (down, slow, refusing the service account).
    #[error("directory unavailable: {0}")]
    Unavailable(String),
}

/// The directory, ready to sign people in.
pub struct Directory {
    config: DirectoryConfig,
    password: String,
    settings: LdapConnSettings,
    idle: std::sync::Mutex<Vec<Ldap>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

impl Directory {
    /// Checks the settings, reads the password and the CA file; connects to nothing yet.
    pub fn new(config: DirectoryConfig) -> anyhow::Result<Self> {
        // A directory reached in clear text is warned of by the config's warnings
        // (`check-config` and `serve`, once each), not here: this runs more than once.
        config.validate()?;
        let password = config.bind_password()?;
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(config.timeout)
            .set_starttls(config.start_tls);
        if let Some(ca) = &config.ca_file {
            settings = settings.set_config(Arc::new(tls_config(ca)?));
        }
        Ok(Directory {
            config,
            password,
            settings,
            idle: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn config(&self) -> &DirectoryConfig {
        &self.config
    }

    /// Signs `username` in with `password`.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<DirectoryEntry, DirectoryError> {
        if password.is_empty() {
            return Err(DirectoryError::InvalidCredentials);
        }
        let timeout = self.config.timeout;
        tokio::time::timeout(timeout, self.authenticate_unbounded(username, password))
            .await
            .unwrap_or_else(|_| {
                Err(DirectoryError::Unavailable(format!(
                    "no answer within {} s",
                    timeout.as_secs_f64()
                )))
            })
    }

    /// Finds a person by sign-in name or (`by_dn`) by the DN of their entry, with the service
    /// account alone: for an admin enrolling them in TOTP before or after their first sign-in.
    /// `None` when no entry is found or when the user filter does not lead back to the entry
    /// from any of its names (a DN outside `user_base`, or not a person the filter admits).
    pub async fn lookup(
        &self,
        name: &str,
        by_dn: bool,
    ) -> Result<Option<DirectoryEntry>, DirectoryError> {
        let timeout = self.config.timeout;
        tokio::time::timeout(timeout, self.lookup_unbounded(name, by_dn))
            .await
            .unwrap_or_else(|_| {
                Err(DirectoryError::Unavailable(format!(
                    "no answer within {} s",
                    timeout.as_secs_f64()
                )))
            })
    }

    async fn lookup_unbounded(
        &self,
        name: &str,
        by_dn: bool,
    ) -> Result<Option<DirectoryEntry>, DirectoryError> {
        if !by_dn {
            return match self.find(name).await? {
                Some(entry) => {
                    let username = account_name(&entry.attrs, name);
                    Ok(Some(self.describe(entry, username).await?))
                }
                None => Ok(None),
            };
        }
        let Some(entry) = self.read(name).await? else {
            return Ok(None);
        };
        // A person the filter admits: one of the entry's names leads back to it.
        let candidates: Vec<String> = NAME_ATTRIBUTES
            .iter()
            .flat_map(|a| {
                entry
                    .attrs
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(a))
            })
            .flat_map(|(_, v)| v.iter().cloned())
            .collect();
        for candidate in candidates {
            if let Some(found) = self.find(&candidate).await?
                && same_dn(&found.dn, &entry.dn)
            {
                let username = account_name(&found.attrs, &candidate);
                return Ok(Some(self.describe(found, username).await?));
            }
        }
        Ok(None)
    }

    /// The entry at `dn` (a base search by the service account); `None` if there is none.
    async fn read(&self, dn: &str) -> Result<Option<SearchEntry>, DirectoryError> {
        let mut ldap = self.service().await?;
        let found = ldap
            .search(dn, Scope::Base, "(objectClass=*)", self.user_attributes())
            .await;
        match found {
            Ok(ldap3::SearchResult(entries, r)) if r.rc == 0 => {
                self.put_back(ldap);
                Ok(entries.into_iter().next().map(SearchEntry::construct))
            }
            Ok(ldap3::SearchResult(_, r))
                if r.rc == NO_SUCH_OBJECT || r.rc == INVALID_DN_SYNTAX =>
            {
                self.put_back(ldap);
                Ok(None)
            }
            Ok(ldap3::SearchResult(_, r)) => Err(DirectoryError::Unavailable(format!(
                "reading an entry answered {r}"
            ))),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Whether the directory answers the service account (for `/healthz`).
    pub async fn ping(&self) -> Result<(), DirectoryError> {
        let timeout = self.config.timeout;
        let check = async {
            let mut ldap = self.service().await?;
            let found = ldap
                .search(
                    &self.config.user_base,
                    Scope::Base,
                    "(objectClass=*)",
                    ["1.1"],
                )
                .await
                .and_then(|r| r.success());
            match found {
                Ok(_) => {
                    self.put_back(ldap);
                    Ok(())
                }
                Err(e) => Err(unavailable(e)),
            }
        };
        tokio::time::timeout(timeout, check)
            .await
            .unwrap_or_else(|_| Err(DirectoryError::Unavailable("no answer".into())))
    }

    /// Goes through what serving needs of the directory step by step — connect, bind as the
    /// service account, search `user_base` — and says which step failed, the key to look at
    /// and what to do (`check-config --connect`, and `serve` at start).
    pub async fn diagnose(&self) -> Result<(), StepFailure> {
        let timeout = self.config.timeout;
        let url = &self.config.url;
        let silent = |step: Step| StepFailure {
            step,
            message: format!(
                "{step}: no answer within {} s; check that the directory at {url} runs and that \
                 this machine reaches it (firewall, address), or raise directory.timeout",
                timeout.as_secs_f64()
            ),
        };
        let mut ldap = tokio::time::timeout(timeout, self.connect())
            .await
            .map_err(|_| silent(Step::Connect))?
            .map_err(|e| StepFailure {
                step: Step::Connect,
                message: format!(
                    "connect: cannot reach {url}: {e}; check the host and port of directory.url, \
                     that the directory runs and that this machine reaches it"
                ),
            })?;
        let bind_dn = &self.config.bind_dn;
        let bound = tokio::time::timeout(timeout, ldap.simple_bind(bind_dn, &self.password))
            .await
            .map_err(|_| silent(Step::Bind))?;
        match bound {
            Ok(r) if r.rc == 0 => {}
            Ok(r) => {
                let why = if r.rc == INVALID_CREDENTIALS {
                    "the password (bind_password_file or POOLGATE_LDAP_PASSWORD) or bind_dn is \
                     wrong; correct the one that is"
                } else {
                    "check bind_dn and the service account's rights"
                };
                return Err(StepFailure {
                    step: Step::Bind,
                    message: format!(
                        "bind: the directory refused the service account {bind_dn:?} ({}); {why}",
                        result_text(&r)
                    ),
                });
            }
            Err(e) => {
                return Err(StepFailure {
                    step: Step::Bind,
                    message: format!("bind: as {bind_dn:?}: {e}; check directory.url and bind_dn"),
                });
            }
        }
        let base = &self.config.user_base;
        let found = tokio::time::timeout(
            timeout,
            ldap.search(base, Scope::Base, "(objectClass=*)", ["1.1"]),
        )
        .await
        .map_err(|_| silent(Step::Search))?;
        let _ = ldap.unbind().await;
        match found {
            Ok(ldap3::SearchResult(_, r)) if r.rc == 0 => Ok(()),
            Ok(ldap3::SearchResult(_, r)) => {
                let why = if r.rc == NO_SUCH_OBJECT || r.rc == INVALID_DN_SYNTAX {
                    "there is no such entry; correct user_base (the DN under which people are)"
                } else {
                    "check user_base and that the service account may read it"
                };
                Err(StepFailure {
                    step: Step::Search,
                    message: format!(
                        "search: the service account cannot read user_base {base:?} ({}); {why}",
                        result_text(&r)
                    ),
                })
            }
            Err(e) => Err(StepFailure {
                step: Step::Search,
                message: format!("search: user_base {base:?}: {e}; check user_base"),
            }),
        }
    }

    async fn authenticate_unbounded(
        &self,
        username: &str,
        password: &str,
    ) -> Result<DirectoryEntry, DirectoryError> {
        let entry = self.find(username).await?;
        let Some(entry) = entry else {
            // A bind all the same (as a name that does not exist), so that an unknown name
            // costs what a known one with a wrong password does.
            let mut ldap = self.connect().await?;
            let nobody = format!(
                "cn=poolgate-nobody-{},{}",
                hex::encode(rand::random::<[u8; 16]>()),
                self.config.user_base
            );
            let _ = ldap.simple_bind(&nobody, password).await;
            let _ = ldap.unbind().await;
            return Err(DirectoryError::InvalidCredentials);
        };
        // The user's own bind, on a connection of its own (a bind changes who the connection
        // is), closed afterwards.
        let mut ldap = self.connect().await?;
        let bound = ldap.simple_bind(&entry.dn, password).await;
        let _ = ldap.unbind().await;
        match bound {
            Ok(r) if r.rc == 0 => {}
            // AD gives its sub-code 533 (disabled) only for a right password.
            Ok(r) if r.rc == 49 && r.text.contains("data 533") => {
                return Err(DirectoryError::Disabled(entry_key(&entry)?));
            }
            Ok(r) if r.rc == 49 || r.rc == 53 => {
                return Err(DirectoryError::WrongPassword(entry_key(&entry)?));
            }
            Ok(r) => return Err(DirectoryError::Unavailable(format!("bind answered {r}"))),
            Err(e) => return Err(unavailable(e)),
        }
        let uac = first(&entry.attrs, "userAccountControl")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if uac & 0x2 != 0 {
            return Err(DirectoryError::Disabled(entry_key(&entry)?));
        }
        let username = account_name(&entry.attrs, username);
        self.describe(entry, username).await
    }

    /// What poolgate keeps of an entry: names, mail, groups, admin.
    async fn describe(
        &self,
        entry: SearchEntry,
        username: String,
    ) -> Result<DirectoryEntry, DirectoryError> {
        let groups = self.groups(&entry).await?;
        let uac = first(&entry.attrs, "userAccountControl")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let disabled =
            uac & 0x2 != 0 || first(&entry.attrs, "pwdAccountLockedTime") == Some(PERMANENT_LOCK);
        let admin = groups
            .iter()
            .any(|g| self.config.admin_groups.iter().any(|a| same_dn(a, g)));
        Ok(DirectoryEntry {
            key: entry_key(&entry)?,
            username,
            full_name: first(&entry.attrs, "displayName")
                .or_else(|| first(&entry.attrs, "cn"))
                .unwrap_or_default()
                .to_owned(),
            email: first(&entry.attrs, "mail").unwrap_or_default().to_owned(),
            dn: entry.dn,
            groups,
            admin,
            disabled,
        })
    }

    /// The one entry the user filter finds for `username`; none when there is none or more
    /// than one (a filter that matches several entries is a configuration mistake, logged).
    async fn find(&self, username: &str) -> Result<Option<SearchEntry>, DirectoryError> {
        let filter = self
            .config
            .user_filter
            .replace("{username}", &ldap_escape(username));
        let attrs = self.user_attributes();
        let mut ldap = self.service().await?;
        // Two entries are enough to know the filter is ambiguous: the directory stops there
        // (sizeLimitExceeded) instead of sending a whole subtree.
        let found = ldap
            .with_search_options(SearchOptions::new().sizelimit(2))
            .search(&self.config.user_base, Scope::Subtree, &filter, attrs)
            .await;
        let entries = match found {
            Ok(ldap3::SearchResult(entries, r)) if r.rc == 0 || r.rc == SIZE_LIMIT_EXCEEDED => {
                (entries, r.rc == SIZE_LIMIT_EXCEEDED)
            }
            // The base itself missing is a configuration problem, not a wrong password.
            Ok(ldap3::SearchResult(_, r)) => {
                return Err(DirectoryError::Unavailable(format!(
                    "the user search answered {r}"
                )));
            }
            Err(e) => return Err(unavailable(e)),
        };
        self.put_back(ldap);
        let (entries, truncated) = entries;
        if entries.len() > 1 || truncated {
            tracing::warn!(
                entries = entries.len(),
                "the directory's user_filter matches several entries for one username; none is used"
            );
            return Ok(None);
        }
        Ok(entries.into_iter().next().map(SearchEntry::construct))
    }

    fn user_attributes(&self) -> Vec<&str> {
        let mut attrs = NAME_ATTRIBUTES.to_vec();
        attrs.extend([
            // Operational: sent only when asked for by name.
            "entryUUID",
            "objectGUID",
            "cn",
            "displayName",
            "userAccountControl",
            "pwdAccountLockedTime",
            self.config.group_attribute.as_str(),
        ]);
        attrs
    }

    async fn groups(&self, entry: &SearchEntry) -> Result<Vec<String>, DirectoryError> {
        let Some(base) = &self.config.group_base else {
            return Ok(entry
                .attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&self.config.group_attribute))
                .map(|(_, v)| v.clone())
                .unwrap_or_default());
        };
        let filter = self
            .config
            .group_filter
            .replace("{dn}", &ldap_escape(entry.dn.as_str()));
        let mut ldap = self.service().await?;
        let found = ldap
            .with_search_options(SearchOptions::new().sizelimit(MAX_GROUPS))
            .search(base, Scope::Subtree, &filter, ["1.1"])
            .await
            .and_then(|r| r.success());
        match found {
            Ok((entries, _)) => {
                self.put_back(ldap);
                Ok(entries
                    .into_iter()
                    .map(|e| SearchEntry::construct(e).dn)
                    .collect())
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// A connection bound as the service account: an idle one, or a new one.
    async fn service(&self) -> Result<Ldap, DirectoryError> {
        while let Some(mut ldap) = self.idle.lock().expect("not poisoned").pop() {
            if !ldap.is_closed() {
                return Ok(ldap);
            }
        }
        let mut ldap = self.connect().await?;
        match ldap.simple_bind(&self.config.bind_dn, &self.password).await {
            Ok(r) if r.rc == 0 => Ok(ldap),
            Ok(r) => Err(DirectoryError::Unavailable(format!(
                "the service account's bind was refused ({})",
                r.rc
            ))),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Keeps a service-bound connection that just worked, for the next sign-in.
    fn put_back(&self, ldap: Ldap) {
        let mut idle = self.idle.lock().expect("not poisoned");
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(ldap);
        }
    }

    async fn connect(&self) -> Result<Ldap, DirectoryError> {
        let (conn, mut ldap) =
            LdapConnAsync::with_settings(self.settings.clone(), &self.config.url)
                .await
                .map_err(unavailable)?;
        ldap3::drive!(conn);
        ldap.with_timeout(self.config.timeout);
        Ok(ldap)
    }
}

fn unavailable(e: ldap3::LdapError) -> DirectoryError {
    DirectoryError::Unavailable(e.to_string())
}

/// A step of [`Directory::diagnose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Connect,
    Bind,
    Search,
}

impl Step {
    /// The key of `[directory]` the step depends on most.
    pub fn key(self) -> &'static str {
        match self {
            Step::Connect => "url",
            Step::Bind => "bind_dn",
            Step::Search => "user_base",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Connect => "connect",
            Step::Bind => "bind",
            Step::Search => "search",
        })
    }
}

/// Which step of [`Directory::diagnose`] failed, and what to do (the message starts with the
/// step's name).
#[derive(Debug)]
pub struct StepFailure {
    pub step: Step,
    pub message: String,
}

/// An LDAP result as operators read it: `invalidCredentials (49)`, with the server's text.
fn result_text(r: &ldap3::LdapResult) -> String {
    let name = match r.rc {
        INVALID_CREDENTIALS => "invalid credentials",
        NO_SUCH_OBJECT => "no such object",
        INVALID_DN_SYNTAX => "invalid DN syntax",
        50 => "insufficient access rights",
        _ => "refused",
    };
    if r.text.is_empty() {
        format!("{name}, result code {}", r.rc)
    } else {
        format!("{name}, result code {}: {}", r.rc, r.text)
    }
}
