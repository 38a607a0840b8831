//! The `[directory]` table: where the directory is, the service account, where users and
//! groups are searched; and the TLS settings its connections use.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::domain::{Problem, secs};

/// Environment variable that may hold the service account's password.
pub const PASSWORD_ENV: &str = "POOLGATE_LDAP_PASSWORD";

/// The `[directory]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// `ldaps://host[:port]`, or `ldap://host[:port]` (with `start_tls`, or on loopback).
    pub url: String,
    #[serde(default)]
    pub start_tls: bool,
    /// PEM file of the certificate authorities to trust; the system's roots otherwise.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The service account that searches users.
    pub bind_dn: String,
    /// A file holding its password (or set `POOLGATE_LDAP_PASSWORD`).
    #[serde(default)]
    pub bind_password_file: Option<PathBuf>,
    /// Where users are searched (the whole subtree).
    pub user_base: String,
    /// `{username}` is replaced by the escaped username.
    #[serde(default = "user_filter")]
    pub user_filter: String,
    /// The entry's attribute listing its groups' DNs (`memberOf`)...
    #[serde(default = "group_attribute")]
    pub group_attribute: String,
    /// ...or, when set, the groups are searched here with `group_filter` (`{dn}` is replaced
    /// by the escaped DN of the user).
    #[serde(default)]
    pub group_base: Option<String>,
    #[serde(default = "group_filter")]
    pub group_filter: String,
    /// Members of any of these groups are administrators.
    #[serde(default)]
    pub admin_groups: Vec<String>,
    /// Seconds every directory operation may take.
    #[serde(default = "timeout", with = "secs")]
    pub timeout: Duration,
}

fn user_filter() -> String {
    "(&(objectClass=person)(uid={username}))".into()
}
fn group_attribute() -> String {
    "memberOf".into()
}
fn group_filter() -> String {
    "(member={dn})".into()
}
fn timeout() -> Duration {
    Duration::from_secs(5)
}

impl DirectoryConfig {
    /// Whether traffic to the directory is encrypted (`ldaps://`, or StartTLS).
    pub fn encrypted(&self) -> bool {
        self.url.starts_with("ldaps://") || self.start_tls
    }

    /// The service account's password: `POOLGATE_LDAP_PASSWORD`, else `bind_password_file`.
    pub fn bind_password(&self) -> anyhow::Result<String> {
        let password = if let Ok(p) = crate::process::var(PASSWORD_ENV) {
            p
        } else if let Some(path) = &self.bind_password_file {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read bind_password_file {}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned()
        } else {
            bail!(
                "the service account's password is needed: set bind_password_file or \
                 {PASSWORD_ENV} (it is never written in the settings file)"
            );
        };
        if password.is_empty() {
            bail!(
                "the service account's password is empty (an empty password is an unauthenticated bind)"
            );
        }
        Ok(password)
    }

    /// What serde cannot check: the first problem of [`DirectoryConfig::problems`].
    pub fn validate(&self) -> anyhow::Result<()> {
        match self.problems().into_iter().next() {
            Some(p) => bail!("{}: {}", p.key_path(), p.message),
            None => Ok(()),
        }
    }

    /// Every rule serde cannot check, each problem at its key (`directory.url`).
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut fail = |key: &str, message: &str| {
            problems.push(Problem::new(&["directory", key], message));
        };
        if !(self.url.starts_with("ldap://") || self.url.starts_with("ldaps://")) {
            fail(
                "url",
                "must start with ldap:// or ldaps://; e.g. url = \"ldaps://ldap.example.com\"",
            );
        }
        if self.start_tls && self.url.starts_with("ldaps://") {
            fail(
                "start_tls",
                "is for ldap:// URLs (ldaps:// is TLS already); remove start_tls",
            );
        }
        if !self.user_filter.contains("{username}") {
            fail(
                "user_filter",
                "must contain {username}; e.g. user_filter = \"(&(objectClass=person)(uid={username}))\"",
            );
        }
        if self.group_base.is_some() && !self.group_filter.contains("{dn}") {
            fail(
                "group_filter",
                "must contain {dn}; e.g. group_filter = \"(member={dn})\"",
            );
        }
        if self.timeout.is_zero() {
            fail("timeout", "must be more than 0; e.g. timeout = 5 (seconds)");
        }
        problems
    }
}

/// The TLS settings of a connection to the directory, trusting the certificate authorities
/// of `ca_file`.
pub(super) fn tls_config(ca_file: &std::path::Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
        .with_context(|| format!("cannot read directory.ca_file {}", ca_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("directory.ca_file {} is not PEM", ca_file.display()))?;
    if certs.is_empty() {
        bail!(
            "directory.ca_file {} holds no certificate",
            ca_file.display()
        );
    }
    for cert in certs {
        roots
            .add(cert)
            .with_context(|| format!("directory.ca_file {}", ca_file.display()))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
