//! A real OpenID provider for the cases: panva's `oidc-provider` (npm), run by `node` from
//! `tests/oidc/provider/provider.js` on a free loopback port with a config written here
//! (clients, accounts with passwords and groups), a fresh RS256 key at each start. Stopped
//! (killed) when dropped.
//!
//! The people: `user-5` (group `vdi-users`), `admin-1` (`vdi-admins` and `vdi-users`),
//! `solo` (its groups a single string, `vdi-users`), `mfa-user` (signed in with `amr`
//! `["pwd", "mfa"]`). The clients: `poolgate` (confidential, [`CLIENT_SECRET`]), `public`
//! (no secret: PKCE only), `poolgate-hs` (confidential, its ID tokens signed HS256 with its
//! secret).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use poolgate::auth::oidc::OidcSettings;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Where the provider's script and its `node_modules` are.
pub fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../oidc/provider")
}

/// Where poolgate says it is served (the redirect URI's origin); nothing listens there: the
/// cases read the provider's redirect to it. A name, not an IP address: public_url's host is
/// also the security keys' relying party, and an IP address is refused as one.
pub const PUBLIC_URL: &str = "http://localhost:9";

pub const CLIENT_SECRET: &str = "test-client-secret-0123456789abcdef0123456789";

pub const USER: (&str, &str) = ("user-5", "user-5-password");
pub const ADMIN: (&str, &str) = ("admin-1", "admin-1-password");
pub const SOLO: (&str, &str) = ("solo", "solo-password");
pub const MFA_USER: (&str, &str) = ("mfa-user", "mfa-user-password");
/// Another person the provider calls `USER-5`: not the local user-5, who is pinned to the
/// provider's `user-5` at their first single sign-on.
pub const IMPOSTOR: (&str, &str) = ("USER-5", "impostor-password");
/// A person whose username would pass for a directory user's Guacamole name.
pub const COLON: (&str, &str) = ("ldap:user-1", "colon-password");
/// A person the provider calls `User-1`, as the local user-1 (who does not sign in through
/// the provider) in another case.
pub const CASE: (&str, &str) = ("User-1", "case-password");

/// Which of the provider's clients poolgate is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    Confidential,
    Public,
    /// Confidential, its ID tokens signed HS256 with the client secret.
    Hs256,
}

/// How to start the provider (the fault cases' bends of it).
#[derive(Default, Clone)]
pub struct Options {
    /// `id_token_signing_alg_values_supported` in the discovery document.
    pub advertise_algs: Option<Vec<&'static str>>,
    /// The issuer the tokens carry, when it should differ from the discovery document's.
    pub token_issuer_path: Option<&'static str>,
    /// The `aud` of every ID token.
    pub id_token_audience: Option<&'static str>,
    /// Where poolgate is served, when a case runs it (the redirect URI registered is under
    /// it); [`PUBLIC_URL`] otherwise.
    pub public_url: Option<String>,
    /// The port to listen on (a provider started again where one was); a free one otherwise.
    pub port: Option<u16>,
}

/// A running provider.
pub struct Provider {
    pub port: u16,
    /// What the discovery document says the issuer is (`http://127.0.0.1:PORT`).
    pub issuer: String,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
    http: reqwest::Client,
}

impl Provider {
    pub async fn start() -> Provider {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Provider {
        let port = options.port.unwrap_or_else(free_port);
        let issuer = format!("http://127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let config = config(port, &issuer, &options);
        let file = dir.path().join("provider.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let secret = dir.path().join("client-secret");
        std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
        let mut provider = Provider {
            port,
            issuer,
            dir,
            child: None,
            http: reqwest::Client::new(),
        };
        provider.spawn().await;
        provider
    }

    /// Starts node and waits for `listening on PORT`.
    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("provider.log")).unwrap();
        let mut child = tokio::process::Command::new(node().expect("node is installed"))
            .arg("provider.js")
            .arg(self.dir.path().join("provider.json"))
            .current_dir(provider_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(15), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("listening on") {
                    return true;
                }
            }
            false
        })
        .await;
        if ready != Ok(true) {
            let _ = child.kill().await;
            panic!(
                "the test OpenID provider did not start:\n{}",
                std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
            );
        }
        // The rest of its stdout is not read; keep the pipe open by keeping the reader alive.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    /// Stops the provider (its port refuses connections from now on).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// poolgate's `[oidc]` for this provider as `client`.
    pub fn settings(&self, client: Client) -> OidcSettings {
        let id = match client {
            Client::Confidential => "poolgate",
            Client::Public => "public",
            Client::Hs256 => "poolgate-hs",
        };
        let mut settings = OidcSettings::new(self.issuer.clone(), id);
        if client != Client::Public {
            let file = self.dir.path().join("client-secret");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            settings.client_secret_file = Some(file);
        }
        settings.admin_groups = vec!["vdi-admins".into()];
        settings.timeout = Duration::from_secs(2);
        settings
    }

    /// A new signing key; the old one is no longer published.
    pub async fn rotate_keys(&self) -> String {
        let answer = self.test_call(reqwest::Method::POST, "/test/rotate").await;
        answer["kid"].as_str().unwrap().to_owned()
    }

    /// Moves the provider's clock by `offset` seconds from the real time.
    pub async fn set_clock(&self, offset: i64) {
        self.test_call(
            reqwest::Method::POST,
            &format!("/test/clock?offset={offset}"),
        )
        .await;
    }

    /// How many requests each path got.
    pub async fn requests(&self, path: &str) -> u64 {
        let stats = self.test_call(reqwest::Method::GET, "/test/stats").await;
        stats[path].as_u64().unwrap_or(0)
    }

    async fn test_call(&self, method: reqwest::Method, path: &str) -> Value {
        let url = format!("{}{path}", self.issuer);
        let response = self.http.request(method, &url).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }
}

/// The provider's config: clients, accounts, bends.
fn config(port: u16, issuer: &str, options: &Options) -> Value {
    let public_url = options.public_url.as_deref().unwrap_or(PUBLIC_URL);
    let redirect = OidcSettings::redirect_uri(public_url);
    let confidential = |id: &str, alg: &str| {
        json!({
            "client_id": id,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [redirect],
            "post_logout_redirect_uris": [format!("{public_url}/")],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "id_token_signed_response_alg": alg,
        })
    };
    let account = |id: &str, (username, password): (&str, &str), groups: Value, amr: Value| json!({"id": id, "username": username, "password": password, "groups": groups, "amr": amr});
    let mut config = json!({
        "port": port,
        "issuer": match options.token_issuer_path {
            Some(path) => format!("{issuer}{path}"),
            None => issuer.to_owned(),
        },
        "clients": [
            confidential("poolgate", "RS256"),
            confidential("poolgate-hs", "HS256"),
            {
                "client_id": "public",
                "token_endpoint_auth_method": "none",
                "redirect_uris": [redirect],
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
            },
        ],
        "accounts": [
            account("sub-user-5", USER, json!(["vdi-users"]), json!(["pwd"])),
            account("sub-admin-1", ADMIN, json!(["vdi-admins", "vdi-users"]), json!(["pwd"])),
            account("sub-solo", SOLO, json!("vdi-users"), json!(["pwd"])),
            account("sub-mfa", MFA_USER, json!(["vdi-users"]), json!(["pwd", "mfa"])),
            account("sub-impostor", IMPOSTOR, json!(["vdi-users"]), json!(["pwd"])),
            account("sub-colon", COLON, json!(["vdi-users"]), json!(["pwd"])),
            account("sub-case", CASE, json!(["vdi-users"]), json!(["pwd"])),
        ],
    });
    if let Some(algs) = &options.advertise_algs {
        config["advertiseAlgs"] = json!(algs);
    }
    if options.token_issuer_path.is_some() {
        config["advertiseIssuer"] = json!(issuer);
    }
    if let Some(aud) = options.id_token_audience {
        config["idTokenAudience"] = json!(aud);
    }
    config
}

/// `node`, if installed.
pub fn node() -> Option<PathBuf> {
    crate::harness::on_path("node")
}

/// Why the cases cannot run here, with how to make them run; `None` if they can.
pub fn missing() -> Option<String> {
    if node().is_none() {
        return Some("no node on the PATH; to run them: apt-get install nodejs npm, then npm ci --prefix tests/oidc/provider".into());
    }
    if !provider_dir()
        .join("node_modules/oidc-provider/package.json")
        .exists()
    {
        return Some(
            "oidc-provider is not installed; to run them: npm ci --prefix tests/oidc/provider"
                .into(),
        );
    }
    None
}

pub use crate::helpers::free_port;
