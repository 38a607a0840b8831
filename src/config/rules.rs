//! What serde cannot check of a config, each rule a [`Problem`] at its key: ranges and rules
//! across keys ([`Config::value_problems`], which start-up insists on), and the references
//! between tables — the users a pool lists, the provisioner it names, unique ids — that the
//! state would refuse one at a time when built ([`Config::problems`] has them all).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use super::Config;
use crate::domain::Problem;
use crate::pools::{MAX_WARM, WarmWindow};
use crate::provision::ProvisionerConfig;
use crate::store::StateUrl;

impl Config {
    /// Checks what serde cannot: ranges and cross-field rules. Called once, by the state's
    /// constructor (`AppState`), which every way of running a config goes through: `serve`,
    /// `check-config`, the tests. The error lists every problem, a line each.
    pub fn validate(&self) -> anyhow::Result<()> {
        let problems = self.value_problems();
        if problems.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.key_path(), p.message))
            .collect();
        bail!("{}", lines.join("\n"))
    }

    /// [`Config::value_problems`] and the references between tables (users, pools, seed
    /// tasks, provisioners): everything `check-config` can tell from the config alone.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = self.value_problems();
        problems.extend(self.user_problems());
        problems.extend(self.pool_problems());
        problems.extend(self.provisioner_problems());
        problems
    }

    /// Ranges and rules across keys.
    pub fn value_problems(&self) -> Vec<Problem> {
        let mut p = self.duration_problems();
        let mut fail = |key: &str, message: &str| p.push(Problem::new(&[key], message));
        if matches!(self.state, StateUrl::RedisCluster { .. })
            && self.state_prefix.contains(['{', '}'])
        {
            fail(
                "state_prefix",
                "must not contain '{' or '}' on a Redis Cluster: poolgate tags each \
                 key with its user's bucket ({bN}) to spread users over the masters, and Redis \
                 hashes a key by its first {…}, so a brace in the prefix would put every key in \
                 one slot or split a script's keys over several; remove the braces",
            );
        }
        if self.session_flush > Duration::from_secs(10) {
            fail(
                "session_flush",
                "must be at most 10 s: it bounds how stale stored token activity may be; \
                 e.g. session_flush = 5",
            );
        }
        if self.max_frame_bytes == 0 || self.max_frame_bytes > self.max_message_bytes {
            fail(
                "max_frame_bytes",
                "must be between 1 and max_message_bytes; e.g. max_frame_bytes = 65536",
            );
        }
        if self.max_message_bytes_pre_auth < 1024 {
            fail(
                "max_message_bytes_pre_auth",
                "must be at least 1024: a sign-in must fit; e.g. max_message_bytes_pre_auth = 65536",
            );
        }
        for (key, zero) in [
            ("max_connections", self.max_connections == Some(0)),
            ("outbound_queue", self.outbound_queue == 0),
            ("max_concurrent_hashes", self.max_concurrent_hashes == 0),
            ("lockout_attempts", self.lockout_attempts == 0),
            (
                "lockout_address_attempts",
                self.lockout_address_attempts == 0,
            ),
            ("max_sessions_per_user", self.max_sessions_per_user == 0),
            (
                "max_desktops_per_user",
                self.max_desktops_per_user == Some(0),
            ),
        ] {
            if zero {
                fail(
                    key,
                    "must be at least 1; raise it, or remove it for the default",
                );
            }
        }
        if self.max_connections_per_address == 0 {
            fail(
                "max_connections_per_address",
                "must be at least 1; to lift it, set it to max_connections",
            );
        }
        p.extend(self.browser_problems());
        for (i, pool) in self.pools.iter().enumerate() {
            let at = |key: &str| vec!["pools".to_owned(), i.to_string(), key.to_owned()];
            p.extend(self.policy_problems(pool, &at));
        }
        p.extend(self.warm_problems());
        p
    }

    /// Every duration setting, by name.
    fn durations(&self) -> [(&'static str, Duration); 21] {
        [
            ("token_ttl", self.token_ttl),
            ("idle_timeout", self.idle_timeout),
            ("auth_grace", self.auth_grace),
            ("mfa_token_ttl", self.mfa_token_ttl),
            ("task_deadline", self.task_deadline),
            ("release_deadline", self.release_deadline),
            ("task_retention", self.task_retention),
            ("audit_retention", self.audit_retention),
            ("sweep_interval", self.sweep_interval),
            ("assignment_ttl", self.assignment_ttl),
            ("lease_sweep", self.lease_sweep),
            ("task_lease", self.task_lease),
            ("session_flush", self.session_flush),
            ("lockout_window", self.lockout_window),
            ("lockout_backoff_max", self.lockout_backoff_max),
            ("lockout_known_for", self.lockout_known_for),
            ("jwt_ttl", self.jwt_ttl),
            ("directory_recheck", self.directory_recheck),
            ("session_max_age", self.session_max_age),
            ("http_header_timeout", self.http_header_timeout),
            ("webauthn_challenge_ttl", self.webauthn_challenge_ttl),
        ]
    }

    /// Every duration is above zero; the `[directory]` and `[oidc]` tables' own rules.
    fn duration_problems(&self) -> Vec<Problem> {
        let defaults = Config::default().durations();
        let mut problems: Vec<Problem> = self
            .durations()
            .iter()
            .zip(defaults)
            .filter(|((_, d), _)| d.is_zero())
            .map(|((name, _), (_, usual))| {
                Problem::new(
                    &[name],
                    format!(
                        "must be greater than zero; write seconds, e.g. {name} = {} \
                         (the default), or remove it",
                        usual.as_secs_f64()
                    ),
                )
            })
            .collect();
        if let Some(directory) = &self.directory {
            problems.extend(directory.problems());
        }
        if let Some(oidc) = &self.oidc {
            problems.extend(oidc.problems(self.public_url.as_deref()));
        }
        if let Err(e) = self.webauthn_settings() {
            let text = format!("{e:#}");
            let key = ["webauthn_origins", "rp_name", "public_url"]
                .into_iter()
                .find(|k| text.starts_with(k))
                .unwrap_or("webauthn_origins");
            let message = text
                .strip_prefix(key)
                .map_or(text.as_str(), |t| t.trim_start_matches([':', ' ']));
            problems.push(Problem::new(&[key], message.to_owned()));
        }
        problems
    }

    /// `public_url`, `allowed_origins`, `server_names`, the listeners, TLS, the PROXY header.
    fn browser_problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if let Some(url) = &self.public_url
            && let Err(e) = crate::auth::oidc::validate_public_url(url)
        {
            p.push(Problem::new(&["public_url"], format!("{e:#}")));
        }
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            if crate::http::Origin::parse(origin).is_err() {
                p.push(Problem::at(
                    vec!["allowed_origins".into(), i.to_string()],
                    format!(
                        "{origin:?} is not an origin; write scheme://host[:port], e.g. \
                         \"https://desktops.example.com\""
                    ),
                ));
            }
        }
        for (i, name) in self.server_names.iter().enumerate() {
            let ok = !name.is_empty()
                && name.len() <= 253
                && name.trim_end_matches('.').split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !ok {
                p.push(Problem::at(
                    vec!["server_names".into(), i.to_string()],
                    format!(
                        "{name:?} is not a host name; write the name alone, without scheme or \
                         port, e.g. \"desktops.example.com\""
                    ),
                ));
            }
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            p.push(Problem::new(
                &["proxy_protocol"],
                "proxy_protocol = true needs trusted_proxies: only the load balancers listed \
                 there may send a PROXY header (anyone else could name any address), so with \
                 none every connection would be refused; list the balancers' addresses, e.g. \
                 trusted_proxies = [\"10.0.0.2\"]",
            ));
        }
        if let Some(metrics) = self.metrics_listen
            && metrics == self.listen
            && metrics.port() != 0
        {
            p.push(Problem::new(
                &["metrics_listen"],
                "must differ from listen; give it another port, e.g. \
                 metrics_listen = \"127.0.0.1:9090\"",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            let missing = if self.tls_cert.is_some() {
                "tls_key"
            } else {
                "tls_cert"
            };
            let given = if missing == "tls_key" {
                "tls_cert"
            } else {
                "tls_key"
            };
            p.push(Problem::new(
                &[given],
                format!("tls_cert and tls_key go together; add {missing}, or remove {given}"),
            ));
        }
        p
    }

    /// Each user on its own (what the user directory checks), then unique names and ids.
    fn user_problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut names = HashMap::new();
        let mut ids = HashMap::new();
        for (i, user) in self.users.iter().enumerate() {
            let at = |key: &str| vec!["users".to_owned(), i.to_string(), key.to_owned()];
            if let Err(e) =
                crate::auth::users::UserDirectory::new(std::slice::from_ref(user), self.demo)
            {
                let message = format!("{e:#}");
                let key = ["password_hash", "otp_method", "otp_secret", "otp_enabled"]
                    .into_iter()
                    .find(|k| message.contains(k))
                    .unwrap_or("username");
                let hint = if key == "password_hash" && !message.contains("hash-password") {
                    "; make a hash with poolgate hash-password (or set it with poolgate user passwd)"
                } else {
                    ""
                };
                p.push(Problem::at(at(key), format!("{message}{hint}")));
            }
            if names.insert(user.username.clone(), i).is_some() {
                p.push(Problem::at(
                    at("username"),
                    format!(
                        "user {:?} is defined twice; remove one or rename it",
                        user.username
                    ),
                ));
            }
            if let Some(first) = ids.insert(user.id, i) {
                p.push(Problem::at(
                    at("id"),
                    format!(
                        "user id {} is used twice (also by {:?}); give each user its own id \
                         (uuidgen makes one)",
                        user.id, self.users[first].username
                    ),
                ));
            }
        }
        p
    }

    /// A pool's policy keys that cannot work as written.
    fn policy_problems(
        &self,
        pool: &crate::pools::PoolConfig,
        at: &dyn Fn(&str) -> Vec<String>,
    ) -> Vec<Problem> {
        let mut p = Vec::new();
        let is_static = matches!(
            self.provisioners.get(&pool.provisioner),
            Some(crate::provision::ProvisionerConfig::Static(_))
        );
        if pool.balance != crate::pools::Balance::First && !is_static {
            p.push(Problem::at(
                at("balance"),
                format!(
                    "pool {:?}: balance picks among a static inventory's machines, and this \
                     pool's provisioner {:?} is not kind = \"static\"; remove it",
                    pool.name, pool.provisioner
                ),
            ));
        }
        if let Some(idle) = pool.idle_release
            && idle < Duration::from_secs(60)
        {
            p.push(Problem::at(
                at("idle_release"),
                format!(
                    "must be at least 60 s (it is {} s): instances tell each other who has a \
                     socket every 15 s, and a user reconnecting needs a moment",
                    idle.as_secs_f64()
                ),
            ));
        }
        for (key, value) in [("max_session", pool.max_session)] {
            if value.is_some_and(|d| d.is_zero()) {
                p.push(Problem::at(
                    at(key),
                    "must be greater than zero; remove it for no limit".to_owned(),
                ));
            }
        }
        if pool.warn_before.is_zero() {
            p.push(Problem::at(
                at("warn_before"),
                "must be greater than zero (600 s by default)".to_owned(),
            ));
        }
        p
    }

    /// The provisioner each pool names and the users it lists exist; pool ids are unique; the
    /// seed tasks name a known user and pool.
    fn pool_problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut provisioners: Vec<String> = self.provisioners.keys().cloned().collect();
        provisioners.push("simulated".into());
        provisioners.sort();
        let users: Vec<String> = self.users.iter().map(|u| u.username.clone()).collect();
        let mut ids = HashMap::new();
        for (i, pool) in self.pools.iter().enumerate() {
            let at = |key: &str| vec!["pools".to_owned(), i.to_string(), key.to_owned()];
            if !provisioners.contains(&pool.provisioner) {
                p.push(Problem::at(
                    at("provisioner"),
                    format!(
                        "pool {:?} names an undefined provisioner {:?}; {}",
                        pool.name,
                        pool.provisioner,
                        suggest(
                            &pool.provisioner,
                            &provisioners,
                            "[provisioners.NAME] table"
                        )
                    ),
                ));
            }
            for name in pool.users.iter().filter(|u| !users.contains(u)) {
                p.push(Problem::at(
                    at("users"),
                    format!(
                        "pool {:?} lists an unknown user {name:?}; {}",
                        pool.name,
                        suggest(name, &users, "[[users]] table (poolgate user add)")
                    ),
                ));
            }
            if let Some(first) = ids.insert(pool.id, i) {
                p.push(Problem::at(
                    at("id"),
                    format!(
                        "pool id {} is used twice (also by pool {:?}); give each pool its own \
                         id (uuidgen makes one)",
                        pool.id, self.pools[first].name
                    ),
                ));
            }
        }
        let known: HashSet<_> = self.pools.iter().map(|p| p.id).collect();
        for (i, seed) in self.seed_tasks.iter().enumerate() {
            let at = |key: &str| vec!["seed_tasks".to_owned(), i.to_string(), key.to_owned()];
            if !users.contains(&seed.username) {
                p.push(Problem::at(
                    at("username"),
                    format!(
                        "seed task {} names an unknown user {:?}; {}",
                        seed.id,
                        seed.username,
                        suggest(&seed.username, &users, "[[users]] table")
                    ),
                ));
            }
            if !known.contains(&seed.pool_id) {
                p.push(Problem::at(
                    at("pool_id"),
                    format!(
                        "seed task {} names an unknown pool {}; use the id of a [[pools]] table",
                        seed.id, seed.pool_id
                    ),
                ));
            }
        }
        p
    }

    /// Warm sets (`warm`, `warm_schedule`): only on pools whose provisioner makes machines,
    /// at most [`MAX_WARM`] machines, and windows that open and close.
    fn warm_problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        for (i, pool) in self.pools.iter().enumerate() {
            let at = |key: &[&str]| {
                let mut path = vec!["pools".to_owned(), i.to_string()];
                path.extend(key.iter().map(|k| (*k).to_owned()));
                path
            };
            let too_many = |n: u32| {
                format!(
                    "must be at most {MAX_WARM} (it is {n}): each is a machine the provisioner \
                     keeps running for nobody; e.g. warm = 2"
                )
            };
            if pool.warm > MAX_WARM {
                p.push(Problem::at(at(&["warm"]), too_many(pool.warm)));
            }
            if (pool.warm > 0 || !pool.warm_schedule.is_empty())
                && let Some(ProvisionerConfig::Static(_)) = self.provisioners.get(&pool.provisioner)
            {
                let key = if pool.warm > 0 {
                    "warm"
                } else {
                    "warm_schedule"
                };
                p.push(Problem::at(
                    at(&[key]),
                    format!(
                        "pool {:?} takes its machines from the static inventory {:?}, whose \
                         machines are always up: there is nothing to start ahead of time, and \
                         a warm set would only keep machines from users; remove warm and \
                         warm_schedule from this pool",
                        pool.name, pool.provisioner
                    ),
                ));
            }
            for (j, w) in pool.warm_schedule.iter().enumerate() {
                let j = j.to_string();
                if w.count > MAX_WARM {
                    p.push(Problem::at(
                        at(&["warm_schedule", &j, "count"]),
                        too_many(w.count),
                    ));
                }
                if w.at == WarmWindow::END_OF_DAY {
                    p.push(Problem::at(
                        at(&["warm_schedule", &j, "at"]),
                        "starts at 24:00: write at = \"00:00\"",
                    ));
                } else if w.until == Some(w.at) {
                    p.push(Problem::at(
                        at(&["warm_schedule", &j, "until"]),
                        format!(
                            "ends when it starts ({}): leave until out to keep the set up to the \
                             end of the day, or give the time it may shrink again",
                            w.at
                        ),
                    ));
                }
            }
        }
        p
    }

    /// Each provisioner builds (what serving builds, on a throwaway store).
    fn provisioner_problems(&self) -> Vec<Problem> {
        let (sink, _bus) = tokio::sync::mpsc::unbounded_channel();
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::memory::MemoryStore::new(sink));
        let mut names: Vec<&String> = self.provisioners.keys().collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|name| {
                let e = self.provisioners[name].build(name, store.clone()).err()?;
                let message = format!("{e:#}");
                // "env_files.TOKEN: …" names the key inside the table.
                let mut key = vec!["provisioners".to_owned(), name.clone()];
                if let Some((inner, _)) = message.split_once(": ")
                    && !inner.contains(' ')
                {
                    key.extend(inner.split('.').map(str::to_owned));
                }
                Some(Problem::at(key, message))
            })
            .collect()
    }
}

/// "did you mean X?" for a near miss, else what to add.
fn suggest(name: &str, known: &[String], table: &str) -> String {
    match super::read::closest(name, known) {
        Some(near) => format!("did you mean {near:?}?"),
        None => format!("define it in a {table}, or correct the name"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with one pool on `provisioner` (a static inventory `lab` is defined), with
    /// `warm` lines added to the pool's table.
    fn pool_with(provisioner: &str, warm: &str) -> Config {
        Config::parse(
            &format!(
                "[provisioners.lab]\nkind = \"static\"\nmachines = [{{ host = \"10.0.0.1\", port = 3389 }}]\n\n\
                 [[pools]]\nid = \"6f1c2a4e-0000-4000-8000-000000000001\"\nname = \"p\"\n\
                 pool_type = \"AUTOMATED\"\nos_type = \"Windows\"\nconnection_types = [\"RDP\"]\n\
                 provisioner = \"{provisioner}\"\n{warm}\n"
            ),
            None,
        )
        .unwrap()
    }

    fn keys(config: &Config) -> Vec<String> {
        config.problems().iter().map(|p| p.key_path()).collect()
    }

    #[test]
    fn a_warm_set_on_a_static_inventory_is_refused_at_its_key() {
        let config = pool_with("lab", "warm = 2");
        let problems = config.value_problems();
        assert_eq!(keys(&config), ["pools.0.warm"]);
        assert!(
            problems[0].message.contains("static inventory \"lab\""),
            "{problems:?}"
        );
        assert!(config.validate().is_err(), "serve refuses it too");
        let config = pool_with("lab", "warm_schedule = [{ at = \"08:00\", count = 3 }]");
        assert_eq!(keys(&config), ["pools.0.warm_schedule"]);
        let fine = pool_with(
            "simulated",
            "warm = 2\nwarm_schedule = [{ days = \"Mon-Fri\", at = \"08:30\", until = \"13:30\", \
             count = 30, timezone = \"Europe/Moscow\" }]",
        );
        assert_eq!(keys(&fine), Vec::<String>::new());
    }

    #[test]
    fn warm_counts_are_bounded_and_windows_must_open_and_close() {
        let config = pool_with(
            "simulated",
            "warm = 5000\nwarm_schedule = [\
             { at = \"08:00\", count = 1001 },\
             { at = \"24:00\", count = 1 },\
             { at = \"09:00\", until = \"09:00\", count = 1 },\
             { at = \"22:00\", until = \"06:00\", count = 1 }]",
        );
        assert_eq!(
            keys(&config),
            [
                "pools.0.warm",
                "pools.0.warm_schedule.0.count",
                "pools.0.warm_schedule.1.at",
                "pools.0.warm_schedule.2.until",
            ]
        );
        for bad in [
            "warm_schedule = [{ at = \"8:00\", count = 1 }]",
            "warm_schedule = [{ at = \"08:00\" }]",
            "warm_schedule = [{ at = \"08:00\", count = 1, zone = \"UTC\" }]",
            "warm_schedule = [{ at = \"08:00\", count = 1, timezone = \"Mars/Olympus\" }]",
            "warm_schedule = [{ days = \"Funday\", at = \"08:00\", count = 1 }]",
            "warm = -1",
        ] {
            let text = format!(
                "[[pools]]\nid = \"6f1c2a4e-0000-4000-8000-000000000001\"\nname = \"p\"\n\
                 pool_type = \"A\"\nos_type = \"W\"\nconnection_types = []\n{bad}\n"
            );
            assert!(Config::parse(&text, None).is_err(), "{bad}");
        }
    }
}
