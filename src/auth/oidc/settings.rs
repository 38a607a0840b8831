//! The `[oidc]` table and the top-level `public_url`, with the checks serde cannot make.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use openidconnect::url::Url;
use serde::Deserialize;

use crate::domain::{Problem, secs};

/// Environment variable that may hold the client secret.
pub const CLIENT_SECRET_ENV: &str = "POOLGATE_OIDC_CLIENT_SECRET";

/// Where the provider sends browsers back, under `public_url`.
pub const CALLBACK_PATH: &str = "/oidc/callback";

/// The `[oidc]` table: the OpenID provider people sign in at.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// The issuer identifier; discovery reads `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// A file holding the client secret (or set `POOLGATE_OIDC_CLIENT_SECRET`); with neither,
    /// poolgate is a public client (PKCE only).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The portal's button reads "Sign in with {display_name}".
    #[serde(default = "display_name")]
    pub display_name: String,
    #[serde(default = "scopes")]
    pub scopes: Vec<String>,
    /// The ID token's claim whose value is the poolgate username.
    #[serde(default = "username_claim")]
    pub username_claim: String,
    /// The ID token's claim listing the person's groups (a string or an array of strings).
    #[serde(default = "groups_claim")]
    pub groups_claim: String,
    /// Members of any of these groups are administrators.
    #[serde(default)]
    pub admin_groups: Vec<String>,
    /// PEM file of certificate authorities to trust for the provider, besides the web roots
    /// built in (Mozilla's, as webpki-roots ships them).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A provider's MFA (`amr` holding one of `mfa_amr_values`) stands in for poolgate's own
    /// one-time code.
    #[serde(default)]
    pub trust_provider_mfa: bool,
    #[serde(default = "mfa_amr_values")]
    pub mfa_amr_values: Vec<String>,
    /// Seconds each request to the provider may take (connecting included).
    #[serde(default = "timeout", with = "secs")]
    pub timeout: Duration,
    /// The browser hand-off of thin clients (`[oidc.handoff]`).
    #[serde(default)]
    pub handoff: HandoffSettings,
}

/// `[oidc.handoff]`: how long a thin client's user code lives and how often it may poll.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandoffSettings {
    #[serde(with = "secs")]
    pub expires_in: Duration,
    #[serde(with = "secs")]
    pub interval: Duration,
}

impl Default for HandoffSettings {
    fn default() -> Self {
        HandoffSettings {
            expires_in: Duration::from_secs(600),
            interval: Duration::from_secs(5),
        }
    }
}

fn display_name() -> String {
    "single sign-on".into()
}
fn scopes() -> Vec<String> {
    ["openid", "profile", "email"].map(String::from).to_vec()
}
fn username_claim() -> String {
    "preferred_username".into()
}
fn groups_claim() -> String {
    "groups".into()
}
fn mfa_amr_values() -> Vec<String> {
    ["mfa", "otp"].map(String::from).to_vec()
}
fn timeout() -> Duration {
    Duration::from_secs(5)
}

impl OidcSettings {
    /// Settings with every default, for `issuer` and `client_id`.
    pub fn new(issuer: impl Into<String>, client_id: impl Into<String>) -> Self {
        OidcSettings {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret_file: None,
            display_name: display_name(),
            scopes: scopes(),
            username_claim: username_claim(),
            groups_claim: groups_claim(),
            admin_groups: Vec::new(),
            ca_file: None,
            trust_provider_mfa: false,
            mfa_amr_values: mfa_amr_values(),
            timeout: timeout(),
            handoff: HandoffSettings::default(),
        }
    }

    /// What serde cannot check: the first problem of [`OidcSettings::problems`].
    pub fn validate(&self, public_url: Option<&str>) -> anyhow::Result<()> {
        if let Some(url) = public_url {
            validate_public_url(url)?;
        }
        match self.problems(public_url).into_iter().next() {
            Some(p) => bail!("{}", p.message),
            None => Ok(()),
        }
    }

    /// Every rule serde cannot check, each problem at its key; `public_url` is the top-level
    /// key the redirect URI is built from (checked on its own by the config).
    pub fn problems(&self, public_url: Option<&str>) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut fail = |key: &[&str], message: String| problems.push(Problem::new(key, message));
        if public_url.is_none() {
            fail(
                &["oidc"],
                format!(
                    "oidc needs public_url (how browsers reach this server, e.g. \
                     public_url = \"https://broker.example.com\"): the provider sends people \
                     back to {{public_url}}{CALLBACK_PATH}"
                ),
            );
        }
        if let Err(e) = validate_issuer(&self.issuer) {
            fail(&["oidc", "issuer"], format!("{e:#}"));
        }
        if self.client_id.trim().is_empty() {
            fail(
                &["oidc", "client_id"],
                "oidc.client_id must not be empty; write the client id the provider gave".into(),
            );
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            fail(
                &["oidc", "scopes"],
                "oidc.scopes must include \"openid\" (without it there is no ID token)".into(),
            );
        }
        if let Some(bad) = self.scopes.iter().find(|s| !is_scope_token(s)) {
            fail(
                &["oidc", "scopes"],
                format!("oidc.scopes: {bad:?} is not a scope (no spaces, quotes or backslashes)"),
            );
        }
        for (name, value) in [
            ("username_claim", &self.username_claim),
            ("groups_claim", &self.groups_claim),
            ("display_name", &self.display_name),
        ] {
            if value.trim().is_empty() {
                fail(&["oidc", name], format!("oidc.{name} must not be empty"));
            }
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            fail(
                &["oidc", "timeout"],
                "oidc.timeout must be more than 0 and at most 60 s".into(),
            );
        }
        problems.extend(self.handoff.problems());
        problems
    }

    /// The client secret: `POOLGATE_OIDC_CLIENT_SECRET`, else `client_secret_file` (which only
    /// its owner may read), else none (a public client).
    pub fn client_secret(&self) -> anyhow::Result<Option<String>> {
        let secret = if let Ok(s) = crate::process::var(CLIENT_SECRET_ENV) {
            s
        } else if let Some(path) = &self.client_secret_file {
            check_private(path)?;
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read oidc.client_secret_file {}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned()
        } else {
            return Ok(None);
        };
        if secret.is_empty() {
            bail!(
                "the OIDC client secret is empty: write it in oidc.client_secret_file or \
                 {CLIENT_SECRET_ENV}, or set neither for a public client"
            );
        }
        Ok(Some(secret))
    }

    /// `{public_url}/oidc/callback`.
    pub fn redirect_uri(public_url: &str) -> String {
        format!("{}{CALLBACK_PATH}", public_url.trim_end_matches('/'))
    }
}

impl HandoffSettings {
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.interval < Duration::from_secs(1) || self.interval > Duration::from_secs(60) {
            problems.push(Problem::new(
                &["oidc", "handoff", "interval"],
                "oidc.handoff.interval must be between 1 and 60 s",
            ));
        }
        if self.expires_in <= self.interval || self.expires_in > Duration::from_secs(3600) {
            problems.push(Problem::new(
                &["oidc", "handoff", "expires_in"],
                "oidc.handoff.expires_in must be longer than interval and at most 3600 s",
            ));
        }
        problems
    }
}

/// `public_url`: `http(s)://host[:port]`, nothing after it but an optional `/`.
pub fn validate_public_url(value: &str) -> anyhow::Result<()> {
    let example = "e.g. public_url = \"https://broker.example.com\"";
    let url = Url::parse(value)
        .map_err(|e| anyhow::anyhow!("public_url {value:?} is not a URL ({e}); {example}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("public_url {value:?} must start with https:// (or http://); {example}");
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("public_url {value:?} names no host; {example}");
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        bail!(
            "public_url {value:?} must not have a path, query or fragment: poolgate serves \
             from the root of its host; {example}"
        );
    }
    if !url.username().is_empty() || url.password().is_some() {
        bail!("public_url {value:?} must not hold a user or password");
    }
    Ok(())
}

/// `issuer`: https, or http on loopback only (a provider under test).
pub fn validate_issuer(value: &str) -> anyhow::Result<()> {
    let url = Url::parse(value)
        .map_err(|e| anyhow::anyhow!("oidc.issuer {value:?} is not a URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if crate::domain::is_loopback_url(value) => {}
        "http" => bail!(
            "oidc.issuer {value:?} must use https:// (plain http is only accepted on loopback): \
             the discovery document and the signing keys must come from the provider itself"
        ),
        _ => bail!("oidc.issuer {value:?} must start with https://"),
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("oidc.issuer {value:?} must not have a query or fragment");
    }
    if !url.username().is_empty() || url.password().is_some() {
        bail!("oidc.issuer {value:?} must not hold a user or password");
    }
    Ok(())
}

/// RFC 6749 §3.3's scope-token: printable ASCII but space, `"` and `\`.
fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Refuses a secret file that others than its owner may read, as ssh does with a private key.
#[cfg(unix)]
fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read oidc.client_secret_file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "permissions {:04o} for oidc.client_secret_file {} are too open: the secret lets \
             whoever reads it sign in as poolgate at the provider; chmod 600 {}",
            mode & 0o7777,
            path.display(),
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OidcSettings {
        OidcSettings::new("https://idp.example.com/realms/corp", "poolgate")
    }

    fn refused(s: &OidcSettings, public_url: Option<&str>) -> String {
        format!("{:#}", s.validate(public_url).unwrap_err())
    }

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let s: OidcSettings =
            toml::from_str("issuer = \"https://idp.example.com\"\nclient_id = \"pg\"").unwrap();
        assert_eq!(s.scopes, ["openid", "profile", "email"]);
        assert_eq!(s.username_claim, "preferred_username");
        assert_eq!(s.groups_claim, "groups");
        assert_eq!(s.mfa_amr_values, ["mfa", "otp"]);
        assert!(!s.trust_provider_mfa);
        assert_eq!(s.handoff.expires_in, Duration::from_secs(600));
        assert_eq!(s.handoff.interval, Duration::from_secs(5));
        s.validate(Some("https://broker.example.com")).unwrap();
        s.validate(Some("http://127.0.0.1:8080/")).unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<OidcSettings>(
            "issuer = \"https://idp.example.com\"\nclient_id = \"pg\"\nclient_secret = \"x\"",
        )
        .unwrap_err();
        assert!(e.to_string().contains("client_secret"), "{e}");
    }

    #[test]
    fn public_url_must_be_an_origin_over_http_s() {
        let s = settings();
        assert!(refused(&s, None).contains("oidc needs public_url"));
        for (bad, says) in [
            ("broker.example.com", "is not a URL"),
            ("ftp://broker.example.com", "must start with https://"),
            (
                "https://broker.example.com/poolgate",
                "must not have a path",
            ),
            ("https://broker.example.com/?a=b", "must not have a path"),
            ("https://broker.example.com/#x", "must not have a path"),
            ("https://u:p@broker.example.com", "user or password"),
        ] {
            let message = refused(&s, Some(bad));
            assert!(message.contains(says), "{bad}: {message}");
        }
        assert_eq!(
            OidcSettings::redirect_uri("https://broker.example.com/"),
            "https://broker.example.com/oidc/callback"
        );
    }

    #[test]
    fn the_issuer_is_https_unless_on_loopback() {
        let mut s = settings();
        for good in [
            "http://127.0.0.1:9000",
            "http://localhost:9000/x",
            "http://[::1]:1",
        ] {
            s.issuer = good.into();
            s.validate(Some("https://b.example.com")).unwrap();
        }
        for (bad, says) in [
            ("http://idp.example.com", "must use https://"),
            ("http://127.0.0.1.example.com", "must use https://"),
            ("ldap://idp.example.com", "must start with https://"),
            ("https://idp.example.com/?x=1", "query"),
            ("idp.example.com", "is not a URL"),
        ] {
            s.issuer = bad.into();
            let message = refused(&s, Some("https://b.example.com"));
            assert!(message.contains(says), "{bad}: {message}");
        }
    }

    #[test]
    fn scopes_claims_timeout_and_handoff_are_checked() {
        let public = Some("https://b.example.com");
        let mut s = settings();
        s.scopes = vec!["profile".into()];
        assert!(refused(&s, public).contains("must include \"openid\""));
        s.scopes = vec!["openid".into(), "two words".into()];
        assert!(refused(&s, public).contains("is not a scope"));
        let mut s = settings();
        s.username_claim = " ".into();
        assert!(refused(&s, public).contains("oidc.username_claim must not be empty"));
        let mut s = settings();
        s.client_id = String::new();
        assert!(refused(&s, public).contains("client_id"));
        let mut s = settings();
        s.timeout = Duration::ZERO;
        assert!(refused(&s, public).contains("oidc.timeout"));
        let mut s = settings();
        s.handoff.interval = Duration::ZERO;
        assert!(refused(&s, public).contains("oidc.handoff.interval"));
        let mut s = settings();
        s.handoff.expires_in = Duration::from_secs(5);
        assert!(refused(&s, public).contains("oidc.handoff.expires_in"));
        s.handoff.expires_in = Duration::from_secs(7200);
        assert!(refused(&s, public).contains("oidc.handoff.expires_in"));
    }

    #[cfg(unix)]
    #[test]
    fn the_secret_file_must_be_private_and_not_empty() {
        use std::os::unix::fs::PermissionsExt;
        // The environment variable wins over the file; the test only runs without it.
        if crate::process::var(CLIENT_SECRET_ENV).is_ok() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        let mut s = settings();
        assert_eq!(
            s.client_secret().unwrap(),
            None,
            "no secret: a public client"
        );
        std::fs::write(&file, "s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        s.client_secret_file = Some(file.clone());
        let e = format!("{:#}", s.client_secret().unwrap_err());
        assert!(e.contains("too open") && e.contains("chmod 600"), "{e}");
        assert!(
            !e.contains("s3cret"),
            "the secret is never in a message: {e}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(s.client_secret().unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        assert!(format!("{:#}", s.client_secret().unwrap_err()).contains("is empty"));
        s.client_secret_file = Some(dir.path().join("missing"));
        assert!(format!("{:#}", s.client_secret().unwrap_err()).contains("cannot read"));
    }
}
