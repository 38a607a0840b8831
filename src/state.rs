//! The shared application state: a cheap-to-clone handle given to every connection and handler.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::auth::jwt::JwtKeys;
use crate::auth::otp::OtpGuard;
use crate::auth::password::PasswordChecker;
use crate::auth::tokens::{MfaStore, TokenStore};
use crate::auth::users::UserDirectory;
use crate::config::Config;
use crate::events::EventHub;
use crate::pools::Pools;
use crate::provision::Provisioner;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub auth: Authenticator,
    /// Signs and checks the v2 REST shim's JWTs.
    pub jwt: JwtKeys,
    pub pools: Pools,
    pub events: Arc<EventHub>,
    /// One permit per open WebSocket; taken before the upgrade.
    pub connections: Arc<Semaphore>,
    /// Cancelled when the server shuts down; connections and background jobs watch it.
    pub shutdown: CancellationToken,
    /// Every connection task and background job, so shutdown can wait for them.
    pub tracker: TaskTracker,
    next_conn_id: AtomicU64,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Builds the state from a validated config. Fails on invalid users or pools.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        Self::with_provisioners(config, HashMap::new())
    }

    /// Like [`AppState::new`], with extra provisioners by name (tests inject their own).
    pub fn with_provisioners(
        config: Config,
        extra: HashMap<String, Arc<dyn Provisioner>>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let mut provisioners = Pools::build_provisioners(&config.provisioners)?;
        provisioners.extend(extra);
        let auth = Authenticator {
            users: UserDirectory::new(&config.users, config.demo)?,
            tokens: TokenStore::new(config.token_ttl),
            mfa: MfaStore::new(config.mfa_token_ttl),
            otp: OtpGuard::default(),
            passwords: PasswordChecker::new(config.max_concurrent_hashes),
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let events = Arc::new(EventHub::default());
        let pools = Pools::new(
            &config.pools,
            &provisioners,
            &auth.users,
            events.clone(),
            config.task_deadline,
            tracker.clone(),
            shutdown.clone(),
        )?;
        let jwt = JwtKeys::from_config(&config)?;
        Ok(AppState(Arc::new(Inner {
            jwt,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            auth,
            pools,
            events,
            shutdown,
            tracker,
            next_conn_id: AtomicU64::new(1),
            config,
        })))
    }

    /// Loads the config's seed tasks and starts driving the active ones. Call from within the
    /// runtime, once, before serving.
    pub fn start(&self) -> anyhow::Result<()> {
        self.pools.seed(&self.config.seed_tasks, &self.auth.users)
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
}
