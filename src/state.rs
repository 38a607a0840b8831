//! The shared application state: a cheap-to-clone handle given to every connection and handler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::auth::jwt::{JwtKeys, Missing};
use crate::auth::lockout::Lockout;
use crate::auth::otp::OtpGuard;
use crate::auth::password::PasswordChecker;
use crate::auth::tokens::{MfaStore, TagKey, TokenStore};
use crate::auth::users::UserDirectory;
use crate::config::Config;
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::pools::{Pools, PoolsDeps, Timings};
use crate::provision::Provisioner;
use crate::store::{BusEvent, StateUrl, Store};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
    pub pools: Pools,
    /// The audit log ([`crate::audit`]).
    pub audit: Arc<crate::audit::AuditLog>,
    pub events: Arc<EventHub>,
    pub metrics: Arc<Metrics>,
    /// One slot per accepted connection (`max_connections`, `max_connections_per_address`),
    /// taken at accept and held until the socket closes, WebSocket or not.
    pub admission: Arc<crate::admission::Admission>,
    /// Cancelled when the server shuts down; connections and background jobs watch it.
    pub shutdown: CancellationToken,
    /// Cancelled to stop at once: running tasks are cancelled without waiting out
    /// `drain_timeout` (a second stop signal).
    pub stop_now: CancellationToken,
    /// Every open WebSocket's outbound queue: shutdown kicks each (they close with 1001).
    pub sockets: Arc<crate::events::OpenSockets>,
    /// Every connection task and background job, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Events from the store's bus, consumed once `start` runs.
    bus: Mutex<Option<mpsc::UnboundedReceiver<BusEvent>>>,
    next_conn_id: AtomicU64,
    /// Rendered `task` replies, reused while a task is unchanged.
    pub task_replies: crate::envelope::TaskReplies,
    /// `rpc/connect_info` replies of finished step 2s, keyed by machine.
    pub connect_replies: crate::envelope::Replies<crate::pools::ConnectOutcome>,
    /// `/healthz`'s last verdict and when its check began: probes that waited for that check
    /// take its verdict.
    pub health: tokio::sync::Mutex<Option<(std::time::Instant, Health)>>,
}

/// What `/healthz` answers: serving (200) or not (503), and the body.
pub type Health = (bool, String);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// What the state is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Open the configured store, keep (or generate) the JWT secret in the data directory.
    Serve,
    /// Build everything serving builds, from the same code, writing nothing: the store is a
    /// throwaway memory one (the configured one is reached by `check-config --connect`), and
    /// a JWT secret serving would generate is a throwaway one.
    Check,
}

impl AppState {
    /// Validates the config, opens the state store and builds the state. [`AppState::start`]
    /// starts its background work.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        Self::with_provisioners(config, HashMap::new()).await
    }

    /// Like [`AppState::new`], with extra provisioners by name (tests inject their own).
    pub async fn with_provisioners(
        config: Config,
        extra: HashMap<String, Arc<dyn Provisioner>>,
    ) -> anyhow::Result<Self> {
        Self::build(config, extra, Purpose::Serve).await
    }

    /// Builds the state the way serving would — validation, users, secrets, provisioners,
    /// pools — without opening the store or writing anything (`check-config`); the state is
    /// dropped at once.
    pub async fn check(config: Config) -> anyhow::Result<()> {
        Self::build(config, HashMap::new(), Purpose::Check).await?;
        Ok(())
    }

    async fn build(
        mut config: Config,
        extra: HashMap<String, Arc<dyn Provisioner>>,
        purpose: Purpose,
    ) -> anyhow::Result<Self> {
        // The one place a config is validated: every way of running one comes through here,
        // after its flags (or a test's edits) are applied.
        config.validate()?;
        let max_connections = connection_limit(&config)?;
        config.max_connections = Some(max_connections);
        let mut users = UserDirectory::new(&config.users, config.demo)?;
        let directory = config
            .directory
            .clone()
            .map(crate::auth::directory::Directory::new)
            .transpose()
            .map_err(|e| e.context("directory"))?;
        let (state, missing) = match purpose {
            Purpose::Serve => {
                // Private before anything is kept in it.
                crate::files::data_dir(&config.data_dir)?;
                (&config.state, Missing::Generate)
            }
            Purpose::Check => (&StateUrl::Memory, Missing::Throwaway),
        };
        // A JWT is a session too: it lives no longer than session_max_age.
        let jwt_ttl = config.jwt_ttl.min(config.session_max_age);
        let (jwt, tags) = JwtKeys::with_tag_key(config.jwt_secret_sources(), jwt_ttl, missing)?;
        let (sink, bus) = mpsc::unbounded_channel();
        let store = crate::store::open(
            state,
            config.redis_password()?.as_deref(),
            &config.state_prefix,
            &config.data_dir,
            sink,
        )
        .await?;
        users.attach_store(store.clone());
        let mut provisioners = Pools::build_provisioners(&config.provisioners, &store)?;
        provisioners.extend(extra);
        let metrics = Arc::new(Metrics::default());
        let auth = authenticator(&config, users, directory, jwt, tags, &store, &metrics);
        if purpose == Purpose::Check {
            // The relying party as serving builds it once bound (check-config's port is the
            // configured one).
            let tls = config.tls_cert.is_some();
            auth.keys.listening(config.listen.port(), tls)?;
        }
        let shutdown = CancellationToken::new();
        let stop_now = CancellationToken::new();
        let drained = drain_timer(config.drain_timeout, &shutdown, &stop_now);
        let tracker = TaskTracker::new();
        let sockets = Arc::new(crate::events::OpenSockets::default());
        sockets.stop_at(&shutdown);
        let (instance, audit) = audit_log(&config, &store);
        let events = Arc::new(EventHub::with_clock(audit.clock.clone()));
        events.attach(&store);
        let pools = Pools::new(
            &config.pools,
            PoolsDeps {
                provisioners: &provisioners,
                users: &auth.users,
                store: store.clone(),
                events: events.clone(),
                metrics: metrics.clone(),
                tracker: tracker.clone(),
                shutdown: shutdown.clone(),
                drained: drained.clone(),
                audit: audit.clone(),
                instance,
            },
            timings(&config),
        )?;
        Ok(AppState(Arc::new(Inner {
            store,
            admission: crate::admission::Admission::new(
                max_connections,
                config.max_connections_per_address,
            ),
            auth,
            pools,
            audit,
            events,
            metrics: metrics.clone(),
            shutdown,
            stop_now,
            sockets,
            tracker,
            bus: Mutex::new(Some(bus)),
            next_conn_id: AtomicU64::new(1),
            task_replies: Default::default(),
            connect_replies: Default::default(),
            health: Default::default(),
            config,
        })))
    }

    /// Recovers and starts the background work: the bus, leftover tasks, seed tasks, sweeps.
    /// Call once, before serving.
    pub async fn start(&self) -> anyhow::Result<()> {
        let bus = self
            .bus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| anyhow::anyhow!("AppState::start called twice"))?;
        self.tracker.spawn(dispatch_bus(self.clone(), bus));
        tracing::info!(instance = %self.audit.instance(), "audit events of this instance name it so");
        if let Some(mut resumed) = self.store.router().and_then(|r| r.take_resumed()) {
            // A user heard again after a lost connection: their sockets catch up on what was
            // published meanwhile.
            let state = self.clone();
            self.tracker.spawn(async move {
                loop {
                    let user = tokio::select! {
                        _ = state.shutdown.cancelled() => return,
                        user = resumed.recv() => match user {
                            Some(user) => user,
                            None => return,
                        },
                    };
                    let catching = state.clone();
                    state
                        .tracker
                        .spawn(async move { catching.events.catch_up(user).await });
                }
            });
        }
        self.auth.jwt.load_revocations(&*self.store).await?;
        self.check_jwt_key().await?;
        self.tracker.spawn(session_sweep(self.clone()));
        self.pools
            .start(&self.config.seed_tasks, &self.auth.users)
            .await?;
        Ok(())
    }

    /// Instances sharing a store must sign REST JWTs with one key, or a JWT from one is
    /// "Permission denied." on the next: each marks the key's fingerprint in the store (for
    /// [`JWT_KEY_MARK_TTL`], renewed every third of it while it serves), and one whose key
    /// differs from a live mark refuses to start, naming `jwt_secret_file`.
    async fn check_jwt_key(&self) -> anyhow::Result<()> {
        let ours = self.auth.jwt.fingerprint().to_owned();
        if let Some(theirs) = self
            .store
            .mark(JWT_KEY_MARK, &ours, JWT_KEY_MARK_TTL)
            .await?
        {
            anyhow::bail!(
                "jwt_secret_file: this instance signs REST JWTs with a key (fingerprint {ours}) \
                 other instances sharing the state store do not have (theirs: {theirs}), so a \
                 JWT from one would be refused by the other; give every instance the same \
                 jwt_secret_file (or POOLGATE_JWT_SECRET) — a generated data_dir/jwt-secret \
                 is that instance's own. To change the key, stop every instance with the old \
                 one; its mark expires {} s after the last one stopped",
                JWT_KEY_MARK_TTL.as_secs()
            );
        }
        let state = self.clone();
        self.tracker.spawn(async move {
            let mut every = tokio::time::interval(JWT_KEY_MARK_TTL / 3);
            loop {
                tokio::select! {
                    _ = state.shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                match state.store.mark(JWT_KEY_MARK, &ours, JWT_KEY_MARK_TTL).await {
                    Ok(None) => {}
                    Ok(Some(theirs)) => {
                        crate::warn_refusal!(ours = %ours, theirs = %theirs, "another instance sharing the state store signs REST JWTs with another key: JWTs of one are refused by the other; give every instance the same jwt_secret_file");
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot renew the JWT key's mark"),
                }
            }
        });
        Ok(())
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
}
/// The store key under which instances mark their JWT key's fingerprint.
const JWT_KEY_MARK: &str = "jwt-key";

/// How long a JWT key's mark outlives the last instance that renewed it.
pub const JWT_KEY_MARK_TTL: std::time::Duration = std::time::Duration::from_secs(120);

/// How many connections may be open at once: `max_connections`, or what the open-file limit
/// (raised as far as allowed) leaves after the files the server needs itself.
fn connection_limit(config: &Config) -> anyhow::Result<usize> {
    let files = crate::limits::FileLimit::raise()
        .map_err(|e| anyhow::anyhow!("cannot read or raise the open-file limit: {e}"))?;
    let max_connections = files.max_connections(config.max_connections)?;
    tracing::info!(
        open_files = files.soft,
        raised_from = files.was,
        kept_for_files = files.reserve(),
        max_connections,
        "connection limit from the open-file limit"
    );
    Ok(max_connections)
}

/// The sign-in side of the state: users, sessions and MFA tokens, one-time codes, password
/// hashing, lockout, JWTs, the directory and its re-checks, each sized by `config`.
fn authenticator(
    config: &Config,
    users: UserDirectory,
    directory: Option<crate::auth::directory::Directory>,
    jwt: JwtKeys,
    tags: TagKey,
    store: &Arc<dyn Store>,
    metrics: &Arc<Metrics>,
) -> Authenticator {
    let keys = crate::auth::webauthn::Keys::new(
        config
            .webauthn_settings()
            .expect("checked by Config::validate"),
        store.clone(),
        tags.clone(),
    );
    Authenticator {
        keys,
        users,
        tokens: TokenStore::new(
            store.clone(),
            tags.clone(),
            config.token_ttl,
            config.session_flush,
            config.max_sessions_per_user,
            config.session_max_age,
            metrics.clone(),
        ),
        devices: tags.clone(),
        mfa: MfaStore::new(store.clone(), tags, config.mfa_token_ttl),
        otp: OtpGuard::new(store.clone()),
        passwords: PasswordChecker::new(config.max_concurrent_hashes),
        lockout: Lockout::new(
            store.clone(),
            config.lockout_attempts,
            config.lockout_address_attempts,
            config.lockout_window,
            config.lockout_backoff_max,
            config.lockout_known_for,
        ),
        jwt,
        directory,
        store: store.clone(),
        metrics: metrics.clone(),
        recheck: crate::auth::recheck::Recheck::new(
            config.directory_recheck,
            config.session_max_age,
            granting_groups(config),
        ),
        sso: config
            .oidc
            .clone()
            .zip(config.public_url.clone())
            .map(|(settings, public_url)| crate::auth::sso::Sso::new(settings, public_url)),
    }
}

/// This process's instance id — it names the instance in task leases and, after the host
/// name, in audit events — and its audit log.
fn audit_log(config: &Config, store: &Arc<dyn Store>) -> (String, Arc<crate::audit::AuditLog>) {
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let host = gethostname::gethostname();
    let audit = crate::audit::AuditLog::new(
        store.clone(),
        format!("{}/{}", host.to_string_lossy(), &instance[..8]),
        config.audit_retention,
    );
    (instance, Arc::new(audit))
}

/// The token that says running tasks have had their time: cancelled `drain` after
/// `shutdown` (at once when `drain` is zero), or at once on `stop_now` (a second stop signal).
fn drain_timer(
    drain: std::time::Duration,
    shutdown: &CancellationToken,
    stop_now: &CancellationToken,
) -> CancellationToken {
    let drained = CancellationToken::new();
    {
        let (shutdown, stop_now, drained) = (shutdown.clone(), stop_now.clone(), drained.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = stop_now.cancelled() => {}
                _ = drained.cancelled() => return,
            }
            if !drain.is_zero() {
                tracing::info!(
                    drain_timeout = drain.as_secs_f64(),
                    "shutting down: running tasks go on for at most drain_timeout"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(drain) => {}
                _ = stop_now.cancelled() => {}
                _ = drained.cancelled() => {}
            }
            drained.cancel();
        });
    }
    drained
}

/// The task runner's timings from the settings.
fn timings(config: &Config) -> Timings {
    Timings {
        deadline: config.task_deadline,
        assignment_ttl: config.assignment_ttl,
        max_desktops_per_user: config.max_desktops_per_user,
        lease_sweep: config.lease_sweep,
        task_lease: config.task_lease,
        failed_step_retry: config.failed_step_retry,
        release_deadline: config.release_deadline,
        task_retention: config.task_retention,
        sweep_interval: config.sweep_interval,
    }
}

/// Applies what arrives on the bus (from this instance or others) to this instance.
async fn dispatch_bus(state: AppState, mut bus: mpsc::UnboundedReceiver<BusEvent>) {
    loop {
        let event = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            event = bus.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        match event {
            BusEvent::Task { task, notify } => state.events.publish(&task, notify),
            BusEvent::Released {
                user_id,
                pool_id,
                machine_id,
                reason,
            } => state.events.released(user_id, pool_id, machine_id, &reason),
            BusEvent::Ending {
                user_id,
                pool_id,
                machine_id,
                ends_at_ms,
                ends_in,
                reason,
            } => state.events.machine_event(
                user_id,
                &serde_json::json!({
                    "pool_id": pool_id,
                    "machine_id": machine_id,
                    "status": "ENDING",
                    "ends_in": ends_in,
                    "ends_at": crate::domain::clock::rfc3339(ends_at_ms),
                    "reason": reason,
                }),
            ),
            BusEvent::SessionRevoked { hash, .. } => state.auth.tokens.revoke_local(&hash),
            BusEvent::JwtRevoked { jti, exp } => state.auth.jwt.revoke_local(&jti, exp),
            BusEvent::JwtUserRevoked { user_id, before } => {
                state.auth.jwt.revoke_user_local(user_id, before)
            }
            BusEvent::SessionsEnded {
                user_id,
                reason,
                before_ms,
            } => {
                if let Some(before) = before_ms {
                    state.auth.tokens.revoke_user_local(user_id, before);
                    state
                        .auth
                        .jwt
                        .revoke_user_local(user_id, (before / 1000) as i64);
                }
                state.events.close_ended(user_id, &reason);
            }
            // The store's read cache consumes these before they get here.
            BusEvent::Invalidate { .. } | BusEvent::BusGap { .. } => {}
        }
    }
}

/// The groups (DNs) that grant a directory user something: every pool's `groups`, and the
/// directory's `admin_groups`.
fn granting_groups(config: &Config) -> Vec<String> {
    let pools = config.pools.iter().flat_map(|p| p.groups.iter().cloned());
    let admins = config
        .directory
        .iter()
        .flat_map(|d| d.admin_groups.iter().cloned());
    pools.chain(admins).collect()
}

/// Ends what must end although nobody uses it: the sessions held by sockets here that
/// `session_max_age` ended, and the sessions of the directory users with a socket here whose
/// re-check is due (`auth::recheck`). Runs every quarter of the shorter of the two (between
/// 250 ms and 30 s), so a silent socket is closed within about that much of its end.
async fn session_sweep(state: AppState) {
    let period = (state
        .config
        .directory_recheck
        .min(state.config.session_max_age)
        / 4)
    .clamp(
        std::time::Duration::from_millis(250),
        std::time::Duration::from_secs(30),
    );
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sweep = async {
            if let Err(e) = state.auth.tokens.end_aged_held().await {
                tracing::warn!(error = %e, "cannot end the sessions past session_max_age; trying again");
            }
            state.auth.recheck_connected(state.events.user_ids()).await;
        };
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = sweep => {}
        }
    }
}
