//! The checks `serve` runs on a loaded config before it binds, shared with `poolgate
//! check-config`, so that a config that checks clean also starts: every file the config names
//! is readable (TLS certificate and key, parsed and matched; the JWT and Redis secret files or
//! a JWT secret kept in the data directory; command-provisioner programs, executable, their
//! working directories and `env_files`; the state URL was parsed when the config was read).
//! With `connect` (`check-config --connect`) it also reaches what serving needs: Redis answers
//! PING with the configured password, and the data directory (and a SQLite file's directory)
//! can be written.
//!
//! Every problem names its key; `Sources::render` adds the line and column of that key in the
//! config file.
//! Nothing here writes, except the short-lived probe file of the writability check under
//! `connect`.

use std::path::{Path, PathBuf};

use crate::config::{Config, Sources};
use crate::provision::ProvisionerConfig;
use crate::store::StateUrl;

pub use crate::domain::Problem;

/// Everything `check-config` and `serve` find in a config before anything is started, in one
/// list: what reading the file found (`read`, keys of the files already), the rules and
/// references of [`Config::problems`] and the files of [`files`] (keys of the config as read,
/// named in the files through `sources`).
pub fn problems(config: &Config, read: &[Problem], sources: &Sources) -> Vec<Problem> {
    let mut all: Vec<Problem> = read.to_vec();
    let found = config.problems().into_iter().chain(files(config));
    // A provisioner whose table was refused is not also "undefined" for its pools.
    let refused: Vec<String> = read
        .iter()
        .filter(|p| p.key.first().is_some_and(|k| k == "provisioners"))
        .filter_map(|p| Some(format!("undefined provisioner {:?}", p.key.get(1)?)))
        .collect();
    let found = found.filter(|p| !refused.iter().any(|r| p.message.contains(r.as_str())));
    all.extend(found.map(|p| sources.in_files(p)));
    // Two checks may find one problem (a provisioner's `env_files` are read by the provisioner
    // and by `files`): a problem whose message holds, or is held by, an earlier one's at the
    // same key is said once.
    let mut kept: Vec<Problem> = Vec::new();
    for p in all {
        let said = kept.iter().any(|k| {
            k.key == p.key && (k.message.contains(&p.message) || p.message.contains(&k.message))
        });
        if !said {
            kept.push(p);
        }
    }
    kept
}

/// The checks that need nothing but the file system: run by `serve` before it binds and by
/// `check-config`.
pub fn files(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    tls(config, &mut problems);
    secrets(config, &mut problems);
    let mut names: Vec<&String> = config.provisioners.keys().collect();
    names.sort();
    for name in names {
        if let ProvisionerConfig::Command(c) = &config.provisioners[name] {
            command(name, c, &mut problems);
        }
    }
    gateways(config, &mut problems);
    if let Some(d) = &config.directory
        && d.problems().is_empty()
        && let Err(e) = crate::auth::directory::Directory::new(d.clone())
    {
        problems.push(Problem::new(&["directory"], format!("{e:#}")));
    }
    oidc_files(config, &mut problems);
    problems
}

/// The OIDC client secret (file or environment) and the provider's CA file can be read.
fn oidc_files(config: &Config, problems: &mut Vec<Problem>) {
    use crate::auth::oidc::CLIENT_SECRET_ENV;
    let Some(oidc) = &config.oidc else {
        return;
    };
    if let Err(e) = oidc.client_secret() {
        let key: &[&str] = if crate::process::var_os(CLIENT_SECRET_ENV).is_some() {
            &[CLIENT_SECRET_ENV]
        } else {
            &["oidc", "client_secret_file"]
        };
        problems.push(Problem::new(key, format!("{e:#}")));
    }
    if oidc.ca_file.is_some()
        && let Err(e) = crate::auth::oidc::http_client(oidc)
    {
        problems.push(Problem::new(&["oidc", "ca_file"], format!("{e:#}")));
    }
}

/// The warning for a demo server others can reach: its passwords are public.
pub fn demo_exposed(addr: &str) -> String {
    format!(
        "a DEMO server (demo = true) listens on {addr}, which other machines can reach: its \
         demo users' passwords are published (README.rst, docs/demo.md, examples/demo.toml), so anyone who \
         reaches it signs in, as an administrator too; listen on 127.0.0.1 (--listen \
         127.0.0.1:8080), or serve a config of your own with demo = false"
    )
}

/// What the config alone shows that would serve but that an operator should know: printed by
/// `check-config` (`warning: FILE:LINE:COL: key: …`, still passing) and logged by `serve` at
/// start, once each: those of [`proxy_warnings`], a directory reached in clear text, a demo
/// server on a non-loopback address.
pub fn warnings(config: &Config) -> Vec<Problem> {
    let mut warnings = proxy_warnings(config);
    if let Some(d) = &config.directory
        && d.url.starts_with("ldap://")
        && !d.encrypted()
        && !crate::domain::is_loopback_url(&d.url)
    {
        warnings.push(Problem::new(
            &["directory", "url"],
            format!(
                "{} is reached WITHOUT TLS: the service account's and every user's password \
                 cross the network in clear text; use ldaps:// or start_tls = true",
                d.url
            ),
        ));
    }
    if config.demo && !config.listen.ip().is_loopback() {
        warnings.push(Problem::new(
            &["listen"],
            demo_exposed(&config.listen.to_string()),
        ));
    }
    // (A users_file whose users were refused is reported as its own problems.)
    if config.users.is_empty()
        && config.users_file.is_none()
        && config.directory.is_none()
        && config.oidc.is_none()
    {
        warnings.push(Problem::new(
            &["users"],
            "nobody can sign in: no [[users]], no users_file, no [directory] and no [oidc]; \
             add one, e.g. poolgate user --file users.toml add alice --role admin and \
             users_file = \"users.toml\""
                .to_owned(),
        ));
    }
    warnings
}

/// A `trusted_proxies` entry wider than a /24 (IPv4) or /64 (IPv6) — a network the clients are
/// likely in too, and any client in it is believed about its own address.
fn proxy_warnings(config: &Config) -> Vec<Problem> {
    let told = if config.proxy_protocol {
        "X-Forwarded-For or a PROXY header"
    } else {
        "X-Forwarded-For"
    };
    config
        .trusted_proxies
        .broad()
        .map(|net| {
            let (size, example) = match net {
                ipnet::IpNet::V4(_) => ("/24", "\"10.0.0.2\""),
                ipnet::IpNet::V6(_) => ("/64", "\"fd00::2\""),
            };
            Problem::new(
                &["trusted_proxies"],
                format!(
                    "{net} is wider than a {size}: any client inside it may write {told} naming \
                     any address and be believed, so it can guess passwords without the sign-in \
                     lockout counting them, or get another address locked out; list the proxies' \
                     own addresses instead (e.g. {example}), or a network of theirs no wider \
                     than a {size} that no client is in"
                ),
            )
        })
        .chain(cleartext_sso(config))
        .chain(keys_off(config))
        .collect()
}

/// A `public_url` naming an IP address: browsers refuse it as a WebAuthn relying party, so
/// security keys and passkeys are off (everything else serves).
fn keys_off(config: &Config) -> Option<Problem> {
    let why = config.webauthn_settings().ok()?.off?;
    Some(Problem::new(
        &["public_url"],
        format!("security keys and passkeys are off on this server: {why}"),
    ))
}

/// Single sign-on over plain http beyond this machine: its cookies (the portal's one-time
/// code, the sign-in's `state`) can then be set by any page served on the same host name, so
/// another site there could sign a person's portal in as someone else.
fn cleartext_sso(config: &Config) -> Option<Problem> {
    let url = config.public_url.as_deref()?;
    config.oidc.as_ref()?;
    let http = url
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"));
    if !http || crate::domain::is_loopback_url(url) {
        return None;
    }
    Some(Problem::new(
        &["public_url"],
        format!(
            "{url} is plain http: with [oidc], single sign-on's cookies can be set by any other \
             page on that host name (another port, a sibling site), and sign-ins cross the \
             network in clear text; serve browsers over https (tls_cert, or a proxy) with a \
             host name that serves nothing else"
        ),
    ))
}

/// Each pool's Guacamole gateway loads: its key is readable and well formed (never quoted).
fn gateways(config: &Config, problems: &mut Vec<Problem>) {
    for (i, pool) in config.pools.iter().enumerate() {
        if let Some(g) = &pool.guacamole
            && let Err(e) = crate::pools::Gateway::load(g, pool)
        {
            let index = i.to_string();
            problems.push(Problem::new(
                &["pools", &index, "guacamole"],
                format!("pool {:?}: {e:#}", pool.name),
            ));
        }
    }
}

fn tls(config: &Config, problems: &mut Vec<Problem>) {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return;
    };
    let mut readable = true;
    for (name, path) in [("tls_cert", cert), ("tls_key", key)] {
        if let Err(e) = std::fs::File::open(path) {
            problems.push(Problem::new(
                &[name],
                format!(
                    "cannot read {}: {e}; check the path, and that the user running poolgate \
                     may read it",
                    path.display()
                ),
            ));
            readable = false;
        }
    }
    if readable && let Err(e) = crate::tls::acceptor(cert, key) {
        let message = format!("{e:#}");
        let name = if message.contains("private key") || message.contains("do not match") {
            "tls_key"
        } else {
            "tls_cert"
        };
        problems.push(Problem::new(&[name], message));
    }
}

fn secrets(config: &Config, problems: &mut Vec<Problem>) {
    use crate::auth::jwt::{JwtKeys, Missing, SECRET_ENV};
    // Which source serving would use; a generated secret is checked only once it exists
    // (generating it is serving's job).
    let source: Option<&str> = if crate::process::var_os(SECRET_ENV).is_some() {
        Some(SECRET_ENV)
    } else if config.jwt_secret_file.is_some() {
        Some("jwt_secret_file")
    } else if config.jwt_secret.is_some() {
        Some("jwt_secret")
    } else if config.data_dir.join(crate::auth::jwt::SECRET_FILE).exists() {
        Some("data_dir")
    } else {
        None
    };
    if let Some(key) = source
        && let Err(e) = JwtKeys::with_tag_key(
            config.jwt_secret_sources(),
            config.jwt_ttl,
            Missing::Throwaway,
        )
    {
        problems.push(Problem::new(&[key], format!("{e:#}")));
    }
    if let Err(e) = config.redis_password() {
        let key = if crate::process::var_os("POOLGATE_REDIS_PASSWORD").is_some() {
            "POOLGATE_REDIS_PASSWORD"
        } else {
            "state_password_file"
        };
        problems.push(Problem::new(&[key], format!("{e:#}")));
    }
}

fn command(name: &str, c: &crate::provision::CommandConfig, problems: &mut Vec<Problem>) {
    fn key<'a>(name: &'a str, last: &'a str) -> [&'a str; 3] {
        ["provisioners", name, last]
    }
    if let Some(dir) = &c.workdir
        && !dir.is_dir()
    {
        problems.push(Problem::new(
            &key(name, "workdir"),
            format!("{} is not a directory", dir.display()),
        ));
    }
    match c.command.first() {
        None => problems.push(Problem::new(&key(name, "command"), "must name a program")),
        Some(program) => {
            if let Err(message) = executable(program, c.workdir.as_deref()) {
                problems.push(Problem::new(&key(name, "command"), message));
            }
        }
    }
    if let Some(user) = &c.run_as
        && let Err(message) = crate::provision::resolve_run_as(user)
    {
        problems.push(Problem::new(&key(name, "run_as"), message));
    }
    for (var, path) in &c.env_files {
        let at = ["provisioners", name, "env_files", var.as_str()];
        match std::fs::read_to_string(path) {
            Err(e) => problems.push(Problem::new(
                &at,
                format!("cannot read {}: {e}", path.display()),
            )),
            Ok(text) if text.trim_end_matches(['\r', '\n']).is_empty() => {
                problems.push(Problem::new(&at, format!("{} is empty", path.display())))
            }
            Ok(_) => {}
        }
    }
}

/// Resolves a program the way it will be started — a bare name on `PATH`, a relative path
/// against the working directory — and checks it is an executable file.
fn executable(program: &str, workdir: Option<&Path>) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        let path = PathBuf::from(program);
        vec![match workdir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path,
        }]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect())
            .unwrap_or_default()
    };
    for path in &candidates {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        if !meta.is_file() {
            return Err(format!("{} is not a file", path.display()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o111 == 0 {
                return Err(format!(
                    "{} is not executable (chmod +x it)",
                    path.display()
                ));
            }
        }
        return Ok(path.clone());
    }
    Err(if program.contains('/') {
        format!(
            "{} does not exist; install the program there or correct the path",
            candidates[0].display()
        )
    } else {
        format!("{program:?} is not found on PATH")
    })
}

/// What the checks that reach out found: problems (the config would not serve) and warnings
/// (it would, but something an operator should know: Redis without an append-only file).
#[derive(Debug, Default)]
pub struct Reached {
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// What was found, for the operator (the OIDC provider's endpoints).
    pub found: Vec<String>,
}

/// The checks that reach out (`check-config --connect`): the state store answers (and keeps
/// what it acknowledges across its own restarts: a warning if not), the directories serving
/// writes to can be written, the directory binds and searches, the OIDC provider answers.
pub async fn connect(config: &Config) -> Reached {
    let mut reached = Reached::default();
    writes(config, &mut reached.problems);
    state(config, &mut reached).await;
    if let Err(problem) = directory(config).await {
        reached.problems.push(problem);
    }
    if let Some(oidc) = &config.oidc
        && let Some(public_url) = &config.public_url
    {
        match crate::auth::oidc::OidcClient::discover(oidc, public_url).await {
            Ok(client) => reached
                .found
                .extend(describe_provider(client.discovered(), public_url)),
            Err(e) => reached
                .problems
                .push(Problem::new(&["oidc", "issuer"], e.to_string())),
        }
    }
    reached
}

/// What `serve` checks before it binds, beside [`problems`]: the directories it writes to can
/// be written and the state store answers (problems), the directory binds and finds its
/// `user_base` (a refusal is a problem; a directory that cannot be reached only a warning,
/// since it may come back: its users cannot sign in until it does).
pub async fn serving(config: &Config) -> Reached {
    let mut reached = Reached::default();
    writes(config, &mut reached.problems);
    state(config, &mut reached).await;
    reached.warnings.clear(); // Redis' own warnings are the store's to log when it opens
    if let Err(problem) = directory(config).await {
        if problem.message.starts_with("connect") {
            reached.warnings.push(problem);
        } else {
            reached.problems.push(problem);
        }
    }
    reached
}

/// The data directory, and a SQLite file's directory, can be written.
fn writes(config: &Config, problems: &mut Vec<Problem>) {
    if let Err(message) = crate::files::writable(&config.data_dir) {
        problems.push(Problem::new(&["data_dir"], message));
    }
    if let StateUrl::Sqlite(Some(path)) = &config.state {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Err(message) = crate::files::writable(dir.unwrap_or(Path::new("."))) {
            problems.push(Problem::new(&["state"], message));
        }
    }
}

/// A Redis state store answers PING with the configured password.
async fn state(config: &Config, reached: &mut Reached) {
    let password = config.redis_password().ok().flatten();
    let answer = match &config.state {
        // The default file is in the data directory, checked by `writes`.
        StateUrl::Memory | StateUrl::Sqlite(_) => return,
        StateUrl::Redis { url } => crate::store::redis_store::ping(url, password.as_deref())
            .await
            .map(|w| w.into_iter().collect::<Vec<_>>()),
        StateUrl::RedisCluster { nodes, .. } => {
            crate::store::redis_store::ping_cluster(nodes, password.as_deref()).await
        }
    };
    match answer {
        Ok(found) => reached
            .warnings
            .extend(found.into_iter().map(|w| Problem::new(&["state"], w))),
        Err(e) => {
            let mut message = format!("{e:#}");
            if ["WRONGPASS", "NOAUTH", "AuthenticationFailed"]
                .iter()
                .any(|m| message.contains(m))
            {
                message.push_str(
                    "; Redis wants a password, or refused the one given: set the one it expects in \
                     state_password_file or POOLGATE_REDIS_PASSWORD",
                );
            } else if message.starts_with("cannot reach") {
                message.push_str(
                    "; poolgate keeps its sessions and tasks there, so Redis must be reachable \
                     when it starts: start Redis (or open the way to it), or correct state",
                );
            }
            reached.problems.push(Problem::new(&["state"], message));
        }
    }
}

/// The directory answers the service account and finds `user_base`, or the step that failed
/// (a bad password file is reported by `files`).
async fn directory(config: &Config) -> Result<(), Problem> {
    let Some(d) = &config.directory else {
        return Ok(());
    };
    let Ok(directory) = crate::auth::directory::Directory::new(d.clone()) else {
        return Ok(());
    };
    directory
        .diagnose()
        .await
        .map_err(|f| Problem::new(&["directory", f.step.key()], f.message))
}

/// What discovery found, a line each.
fn describe_provider(d: &crate::auth::oidc::Discovered, public_url: &str) -> Vec<String> {
    vec![
        format!("oidc: issuer {}", d.issuer),
        format!("oidc: authorization endpoint {}", d.authorization_endpoint),
        format!("oidc: token endpoint {}", d.token_endpoint),
        format!("oidc: keys {} ({} published)", d.jwks_uri, d.keys),
        format!(
            "oidc: ID token algorithms accepted: {}",
            d.algorithms.join(", ")
        ),
        format!(
            "oidc: sign-out at the provider: {}",
            d.end_session_endpoint
                .as_deref()
                .unwrap_or("not offered (no end_session_endpoint)")
        ),
        format!(
            "oidc: client {}; register the redirect URI {}",
            if d.public_client {
                "public (PKCE, no secret)"
            } else {
                "confidential (with a secret)"
            },
            crate::auth::oidc::OidcSettings::redirect_uri(public_url)
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_nobody_can_sign_in_with_is_warned_of() {
        let nobody = |config: &Config| {
            warnings(config)
                .iter()
                .any(|w| w.message.starts_with("nobody can sign in"))
        };
        assert!(nobody(&Config::parse("", None).unwrap()));
        assert!(!nobody(&Config::demo()), "the demo has users");
        let directory = Config::parse(
            "[directory]\nurl = \"ldaps://dc.example.com\"\nbind_dn = \"cn=pg\"\n\
             user_base = \"dc=example,dc=com\"\nuser_filter = \"(uid={username})\"\n",
            None,
        )
        .unwrap();
        assert!(!nobody(&directory), "a directory signs people in");
    }

    #[test]
    fn an_ip_address_as_public_url_serves_with_keys_off_and_a_warning() {
        let config = Config::parse("public_url = \"https://10.1.2.3\"", None).unwrap();
        config.validate().unwrap();
        let warnings = warnings(&config);
        assert!(
            warnings
                .iter()
                .any(|w| w.message.contains("security keys and passkeys are off")
                    && w.message.contains("DNS name")),
            "{warnings:?}"
        );
    }

    #[test]
    fn programs_are_resolved_like_the_provisioner_starts_them() {
        assert!(executable("sh", None).is_ok(), "found on PATH");
        assert!(
            executable("no-such-program-anywhere", None)
                .unwrap_err()
                .contains("not found on PATH")
        );
        let dir = std::env::temp_dir().join(format!("pg-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("prog"), "#!/bin/sh\n").unwrap();
        let err = executable("./prog", Some(&dir)).unwrap_err();
        assert!(err.contains("not executable"), "{err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join("prog"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        assert_eq!(
            executable("./prog", Some(&dir)).unwrap(),
            dir.join("./prog")
        );
        assert!(
            executable("./missing", Some(&dir))
                .unwrap_err()
                .contains("does not exist")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
