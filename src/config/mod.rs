//! Settings: a TOML file (or the embedded demo dataset when none is given), then command-line
//! overrides. Everything that tests or operators may want to shorten is a duration here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use std::collections::HashMap;

use crate::auth::users::UserRecord;
use crate::domain::secs;
use crate::pools::{PoolConfig, SeedTask};
use crate::provision::ProvisionerConfig;
use crate::store::StateUrl;

mod problems;
mod read;
mod rules;

pub use problems::{Source, Sources, key_line};
pub use read::Loaded;

/// The demo dataset of the reference mock; used when no `--config` is given.
pub const DEMO_CONFIG: &str = include_str!("../../examples/demo.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP/WebSocket listener binds to.
    pub listen: SocketAddr,
    /// PEM certificate chain and private key: with both, the port serves `wss://` and
    /// `https://` (TLS 1.2 and 1.3).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Where poolgate keeps its state (generated secrets, the embedded store).
    pub data_dir: PathBuf,
    /// Marks a demo server: only then is the mock's `date` one-time code accepted.
    pub demo: bool,
    /// A token dies after this long without a successful authenticated message.
    #[serde(with = "secs")]
    pub token_ttl: Duration,
    /// A connection that sends nothing (not even a ping) for this long is closed.
    #[serde(with = "secs")]
    pub idle_timeout: Duration,
    /// A connection that has not authenticated within this long is closed.
    #[serde(with = "secs")]
    pub auth_grace: Duration,
    /// How long an MFA challenge token stays usable.
    #[serde(with = "secs")]
    pub mfa_token_ttl: Duration,
    /// Largest text frame answered normally; larger ones get a 413 error envelope.
    pub max_frame_bytes: usize,
    /// Largest message the transport reads at all; beyond it the socket is closed (1009),
    /// because the bytes would have to be buffered to be skipped.
    pub max_message_bytes: usize,
    /// Largest message a WebSocket reads before it has signed in (what a sign-in needs);
    /// a longer one is refused at its header, before it is buffered, and closes the socket
    /// (1009). `max_message_bytes` applies once signed in (and when it is the smaller).
    pub max_message_bytes_pre_auth: usize,
    /// Simultaneous connections of every kind (plain HTTP, TLS handshakes, keep-alive,
    /// WebSockets), taken at accept; the next one is answered 503. Unset: what the open-file
    /// limit allows (see `limits`); more than it allows stops start-up.
    pub max_connections: Option<usize>,
    /// Simultaneous connections from one client address (IPv6: one /64); the next one is
    /// answered 429. Sized for a NAT'd office (see docs/security.md, Brute force).
    pub max_connections_per_address: usize,
    /// A connection has this long for its PROXY header (`proxy_protocol`), then for its TLS
    /// handshake, then for each request's headers
    /// (slowloris), then for the request's body; a keep-alive connection waiting for its next
    /// request is closed after this long too.
    #[serde(with = "secs")]
    pub http_header_timeout: Duration,
    /// Reverse proxies and load balancers (addresses or CIDR networks) whose `X-Forwarded-For`
    /// names the client: then the sign-in lockout, the logs and the sessions' `peer` see the
    /// client's address instead of the proxy's. Empty (the default): the header is ignored.
    /// The proxies only: a client inside a listed network is believed about its own address
    /// (`check-config` warns of entries wider than a /24 or a /64).
    pub trusted_proxies: crate::http::TrustedProxies,
    /// The main listener (`listen`) is behind an L4 load balancer that opens every connection
    /// with a PROXY protocol v2 header naming the client (HAProxy `send-proxy-v2`): only peers
    /// in `trusted_proxies` are accepted, each must send the header within
    /// `http_header_timeout`, and the client it names is the connection's address. Not for
    /// `metrics_listen`, which scrapers reach directly.
    pub proxy_protocol: bool,
    /// Origins (`scheme://host[:port]`) whose pages may open the cookie-authenticated status
    /// WebSocket. Empty: only pages served from the host the request names (`Host`).
    pub allowed_origins: Vec<String>,
    /// Host names browsers reach this server by (`desktops.example.com`), besides IP
    /// addresses, `localhost`, this machine's own name and the hosts of `allowed_origins`: a
    /// browser's request (one with an `Origin`) naming any other `Host` is refused, so a page
    /// whose name was rebound to this server's address (DNS rebinding) gets nothing.
    pub server_names: Vec<String>,
    /// A separate listener for `/metrics` (and `/healthz`); when set, `/metrics` is no longer
    /// served on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// Per-socket queue of outbound frames; a socket that lets it fill is closed.
    pub outbound_queue: usize,
    /// Failed authentication attempts one socket may make before it gets 429s.
    pub max_auth_failures: u32,
    /// Failed sign-ins of one username from one client address within `lockout_window`
    /// before that pair gets 429; also where a username's back-off starts (see
    /// `auth::lockout`).
    pub lockout_attempts: u32,
    /// Failed sign-ins from one client address (IPv6: one /64), whatever the usernames,
    /// within `lockout_window` before the address gets 429.
    pub lockout_address_attempts: u32,
    #[serde(with = "secs")]
    pub lockout_window: Duration,
    /// Longest spacing of a username's back-off, and the longest an attempt waits for its
    /// turn before it is refused with the time to retry.
    #[serde(with = "secs")]
    pub lockout_backoff_max: Duration,
    /// How long a successful sign-in keeps its address known for the user: a known address
    /// is never queued behind strangers' guesses by the username's back-off.
    #[serde(with = "secs")]
    pub lockout_known_for: Duration,
    /// Password hashes computed at once; more logins wait their turn (default: cores − 1).
    pub max_concurrent_hashes: usize,
    /// Where state lives: `sqlite:<path>` (empty path: `<data_dir>/poolgate.sqlite3`, the
    /// default), `redis://host:port` for several instances, or `memory` (lost on exit);
    /// parsed when the config is read.
    pub state: StateUrl,
    /// Namespace of keys and of the event channel in a shared store: instances of one
    /// deployment share it.
    pub state_prefix: String,
    /// File holding the Redis password (or set `POOLGATE_REDIS_PASSWORD`); keeps the secret
    /// out of the config file and of the `state` URL.
    pub state_password_file: Option<PathBuf>,
    /// How long a machine stays assigned to a user before the lease sweep gives it back.
    #[serde(with = "secs")]
    pub assignment_ttl: Duration,
    /// How often expired assignments are released.
    #[serde(with = "secs")]
    pub lease_sweep: Duration,
    /// On shared stores: how long an instance's claim on a task lasts without renewal; a task
    /// whose instance died is ended within about this long.
    #[serde(with = "secs")]
    pub task_lease: Duration,
    /// How often session activity is written to the store: the stored last-activity of a
    /// token is at most this stale (a token may expire this much early after a crash).
    #[serde(with = "secs")]
    pub session_flush: Duration,
    /// How often a directory user's sessions are checked against the directory again (the
    /// account still there, not disabled, still in a group that grants a pool): when one is
    /// used after this long, and by a sweep of connected sockets. One lookup per user per
    /// period across every instance.
    #[serde(with = "secs")]
    pub directory_recheck: Duration,
    /// Every session (a token and the sockets signed in with it, a REST JWT) ends this long
    /// after its sign-in, however active it is.
    #[serde(with = "secs")]
    pub session_max_age: Duration,
    /// Sessions (tokens) one user may hold; signing in past it revokes the least recently
    /// active ones, so a user — or a script with a user's password — cannot grow the store
    /// without bound.
    pub max_sessions_per_user: usize,
    /// Desktops one user may hold at once across all pools (assigned machines and step-1
    /// tasks under way); unlimited when absent.
    pub max_desktops_per_user: Option<usize>,
    /// How long ended tasks are kept (for `task`/`tasks` and the admin's view) before they are
    /// deleted; the latest task of each (user, pool, kind) is kept regardless.
    #[serde(with = "secs")]
    pub task_retention: Duration,
    /// How long audit events are kept in the state store (the log target keeps its own
    /// copy as long as the logs are kept).
    #[serde(with = "secs")]
    pub audit_retention: Duration,
    /// Groups whose members are auditors: they see `admin_sessions`, `admin_tasks`, the
    /// audit log and the portal's Activity page, and change nothing. Matched against a
    /// directory user's groups (DNs, compared as `admin_groups` are) and a single sign-on
    /// user's groups claim (exact).
    pub auditor_groups: Vec<String>,
    /// How often expired records are deleted from the state store: idle sessions, MFA
    /// challenges, lockout counters, JWT revocations, and tasks past `task_retention`.
    #[serde(with = "secs")]
    pub sweep_interval: Duration,
    /// Every connect task ends within this long (CANCELLED if it overruns).
    #[serde(with = "secs")]
    pub task_deadline: Duration,
    /// At shutdown (SIGTERM), how long tasks still running may go on to their end — never
    /// past `task_deadline` — before they are cancelled; sockets close at once either way.
    /// Zero: cancelled at once. A second signal stops at once.
    #[serde(with = "secs")]
    pub drain_timeout: Duration,
    /// How long a FAILED step 1 makes the pool refuse the user (403 / 800, the mock's
    /// answer) before a new request starts a new task. Zero: never refuse. Operators clear it
    /// at once with `admin_reset` or `admin_release`.
    #[serde(with = "secs")]
    pub failed_step_retry: Duration,
    /// Every provisioner release (and the start-up query of what a provisioner holds) ends
    /// within this long; an overrun is abandoned (a command's process group is killed).
    #[serde(with = "secs")]
    pub release_deadline: Duration,
    /// Lifetime of a v2 REST JWT (the mock's: 24 h). Logout revokes it earlier.
    #[serde(with = "secs")]
    pub jwt_ttl: Duration,
    /// JWT signing secret. Prefer the env var POOLGATE_JWT_SECRET or `jwt_secret_file`; with
    /// none of them, one is generated in the data directory.
    pub jwt_secret: Option<SecretString>,
    pub jwt_secret_file: Option<PathBuf>,
    /// Values of `GET /api/v2/users/settings/` (the mock's by default).
    pub client_settings: crate::domain::client_settings::ClientSettings,
    /// Optional separate users file (same `[[users]]` tables), relative to the config file.
    pub users_file: Option<PathBuf>,
    /// Users defined inline.
    pub users: Vec<UserRecord>,
    /// An LDAP / Active Directory to sign people in against (`[directory]`).
    pub directory: Option<crate::auth::directory::DirectoryConfig>,
    /// How browsers reach this server (`https://host[:port]`, no path): the links poolgate
    /// hands out, such as the single sign-on redirect URI `{public_url}/oidc/callback`, are
    /// built from it.
    pub public_url: Option<String>,
    /// An OpenID Connect provider to sign people in at (`[oidc]`).
    pub oidc: Option<crate::auth::oidc::OidcSettings>,
    /// Further origins whose pages may run security-key ceremonies, besides `public_url`
    /// (which is the WebAuthn relying party: its host is the RP ID).
    pub webauthn_origins: Vec<String>,
    /// The relying party's name, shown by some authenticators.
    pub rp_name: String,
    /// How long a security key's challenge may be answered.
    #[serde(with = "secs")]
    pub webauthn_challenge_ttl: Duration,
    /// Desktop pools and who may use them.
    pub pools: Vec<PoolConfig>,
    /// Named provisioners pools refer to; `simulated` exists even when not defined.
    pub provisioners: HashMap<String, ProvisionerConfig>,
    /// Tasks present at start-up (the demo dataset's).
    pub seed_tasks: Vec<SeedTask>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("poolgate-data"),
            tls_cert: None,
            tls_key: None,
            demo: false,
            token_ttl: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(600),
            auth_grace: Duration::from_secs(60),
            mfa_token_ttl: Duration::from_secs(120),
            max_frame_bytes: 64 * 1024,
            max_message_bytes: 4 * 1024 * 1024,
            max_message_bytes_pre_auth: 64 * 1024,
            max_connections: None,
            max_connections_per_address: 1024,
            http_header_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            server_names: Vec::new(),
            trusted_proxies: Default::default(),
            proxy_protocol: false,
            metrics_listen: None,
            outbound_queue: 256,
            max_auth_failures: 5,
            lockout_attempts: 5,
            lockout_address_attempts: 100,
            lockout_window: Duration::from_secs(15 * 60),
            lockout_backoff_max: Duration::from_secs(60),
            lockout_known_for: Duration::from_secs(30 * 24 * 3600),
            // One core fewer than the machine has: a login storm never takes every core
            // from the sockets (measured in bench/: workload 5).
            max_concurrent_hashes: std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1).max(1)),
            task_deadline: Duration::from_secs(90),
            drain_timeout: Duration::ZERO,
            failed_step_retry: Duration::from_secs(60),
            max_sessions_per_user: 32,
            max_desktops_per_user: None,
            directory_recheck: Duration::from_secs(300),
            session_max_age: Duration::from_secs(12 * 3600),
            task_retention: Duration::from_secs(7 * 24 * 3600),
            audit_retention: Duration::from_secs(90 * 24 * 3600),
            auditor_groups: Vec::new(),
            sweep_interval: Duration::from_secs(30),
            release_deadline: Duration::from_secs(60),
            state: StateUrl::default(),
            state_prefix: "poolgate".into(),
            state_password_file: None,
            assignment_ttl: Duration::from_secs(8 * 3600),
            lease_sweep: Duration::from_secs(60),
            task_lease: Duration::from_secs(10),
            session_flush: Duration::from_secs(5),
            jwt_ttl: Duration::from_secs(24 * 3600),
            jwt_secret: None,
            jwt_secret_file: None,
            client_settings: Default::default(),
            users_file: None,
            users: Vec::new(),
            directory: None,
            public_url: None,
            oidc: None,
            webauthn_origins: Vec::new(),
            rp_name: "poolgate".into(),
            webauthn_challenge_ttl: Duration::from_secs(60),
            pools: Vec::new(),
            provisioners: HashMap::new(),
            seed_tasks: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<UserRecord>,
}

impl Config {
    /// The WebAuthn relying party the settings describe (checked: see [`RpSettings::new`]).
    ///
    /// [`RpSettings::new`]: crate::auth::webauthn::RpSettings::new
    pub fn webauthn_settings(&self) -> anyhow::Result<crate::auth::webauthn::RpSettings> {
        crate::auth::webauthn::RpSettings::new(
            self.public_url.as_deref(),
            &self.webauthn_origins,
            &self.rp_name,
            self.webauthn_challenge_ttl,
        )
    }

    /// The embedded demo configuration.
    pub fn demo() -> Self {
        Self::parse(DEMO_CONFIG, None).expect("the embedded demo config is valid")
    }

    /// Reads a config file, and the users file it names; the error lists every problem
    /// reading found (see [`Config::read`]).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let loaded = Self::read(path)?;
        if !loaded.problems.is_empty() {
            bail!(
                "invalid config file {}:\n{}",
                path.display(),
                loaded.sources.render(&loaded.problems, &[]).trim_end()
            );
        }
        Ok(loaded.config)
    }

    /// Parses config text; `base` resolves a relative `users_file`. What serde cannot check
    /// (ranges, rules across keys) is [`Config::validate`]'s, run when the state is built
    /// from the config, after command-line flags have been applied.
    pub fn parse(text: &str, base: Option<&Path>) -> anyhow::Result<Self> {
        let mut config: Config = toml::from_str(text)?;
        if let Some(file) = &config.users_file {
            let file = base.map_or_else(|| file.clone(), |b| b.join(file));
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("users_file: cannot read {}: {e}", file.display()))?;
            let extra: UsersFile = toml::from_str(&text)
                .with_context(|| format!("users_file: invalid users file {}", file.display()))?;
            config.users.extend(extra.users);
        }
        Ok(config)
    }

    /// Whether browsers reach this server over https (`tls_cert`, or an https `public_url`
    /// behind a proxy): its cookies are then `__Host-` and `Secure`.
    pub fn https_for_browsers(&self) -> bool {
        self.tls_cert.is_some()
            || self
                .public_url
                .as_deref()
                .and_then(|url| url.get(..8))
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    }

    /// The host names this server answers browsers on (see `http::check_origin`): the
    /// `server_names`, this machine's names, the host of `public_url` and the hosts of
    /// `allowed_origins` (IP addresses and `localhost` are always answered). Every source of
    /// such a name joins here, and only here.
    pub fn browser_names(&self) -> crate::http::ServerNames {
        let origins = self
            .allowed_origins
            .iter()
            .chain(self.public_url.as_ref())
            .filter_map(|o| crate::http::Origin::parse(o.trim_end_matches('/')).ok())
            .map(|o| o.host);
        crate::http::ServerNames::new(
            self.server_names
                .iter()
                .cloned()
                .chain(crate::http::machine_names().iter().cloned())
                .chain(origins),
        )
    }

    /// Checks a browser's request (one with an `Origin`) against this config's names and
    /// origins: `http::check_origin` with `browser_names`, `allowed_origins` and whether the
    /// main listener speaks TLS.
    pub fn check_browser(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<(), crate::http::BrowserRefusal> {
        if !headers.contains_key(axum::http::header::ORIGIN) {
            return Ok(());
        }
        crate::http::check_origin(
            headers,
            &self.allowed_origins,
            &self.browser_names(),
            self.tls_cert.is_some(),
        )
    }

    /// Where the JWT signing secret may come from (`auth::jwt` picks, in its documented order).
    pub fn jwt_secret_sources(&self) -> crate::auth::jwt::SecretSources<'_> {
        crate::auth::jwt::SecretSources {
            value: self.jwt_secret.as_ref().map(|s| s.0.as_str()),
            file: self.jwt_secret_file.as_deref(),
            data_dir: &self.data_dir,
        }
    }

    /// The Redis password from `POOLGATE_REDIS_PASSWORD` or `state_password_file`, if any.
    pub fn redis_password(&self) -> anyhow::Result<Option<String>> {
        let (password, source) = if let Ok(p) = crate::process::var("POOLGATE_REDIS_PASSWORD") {
            (p, "POOLGATE_REDIS_PASSWORD".to_owned())
        } else if let Some(path) = &self.state_password_file {
            let p = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read state_password_file {}", path.display()))?;
            (
                p.trim().to_owned(),
                format!("state_password_file {}", path.display()),
            )
        } else {
            return Ok(None);
        };
        if password.is_empty() {
            bail!("the Redis password from {source} is empty: set it, or remove {source}");
        }
        Ok(Some(password))
    }
}

/// The top-level keys a config file may set: the fields serde reads into [`Config`], asked of
/// serde itself so that documentation checked against this list cannot fall behind the code.
pub fn keys() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    /// A deserializer that only records the field names a struct asks for.
    struct Fields<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only a struct's field names are read"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("field names read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = Config::deserialize(Fields(&mut fields));
    fields
}

/// A secret read from config: never shown by `Debug`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_and_the_defaults_are_valid() {
        Config::demo().validate().unwrap();
        Config::default().validate().unwrap();
    }

    #[test]
    fn a_webauthn_origin_outside_public_urls_host_is_refused() {
        let config = Config::parse(
            "public_url = \"https://vdi.example.com\"\nwebauthn_origins = [\"https://evil.example.net\"]",
            None,
        )
        .unwrap();
        assert!(config.validate().is_err());
    }

    #[test]
    fn public_url_and_oidc_are_read_and_checked_together() {
        let oidc = "[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"pg\"\n";
        let config = Config::parse(
            &format!("public_url = \"https://broker.example.com\"\n{oidc}"),
            None,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.oidc.unwrap().scopes, ["openid", "profile", "email"]);
        let e = Config::parse(oidc, None).unwrap().validate().unwrap_err();
        assert!(
            format!("{e:#}").starts_with("oidc: oidc needs public_url"),
            "{e:#}"
        );
        // public_url alone is checked too.
        let e = Config::parse("public_url = \"https://b.example.com/pg\"", None)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(format!("{e:#}").contains("must not have a path"), "{e:#}");
        let e = Config::parse(
            &format!("public_url = \"https://b.example.com\"\n{oidc}issuer_url = 1"),
            None,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("issuer_url"), "{e:#}");
    }
}
