//! The shared application state: a cheap-to-clone handle given to every connection and handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::auth::otp::OtpGuard;
use crate::auth::password::PasswordChecker;
use crate::auth::tokens::{MfaStore, TokenStore};
use crate::auth::users::UserDirectory;
use crate::config::Config;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub auth: Authenticator,
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
    /// Builds the state from a validated config. Fails on invalid users.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let auth = Authenticator {
            users: UserDirectory::new(&config.users, config.demo)?,
            tokens: TokenStore::new(config.token_ttl),
            mfa: MfaStore::new(config.mfa_token_ttl),
            otp: OtpGuard::default(),
            passwords: PasswordChecker::new(config.max_concurrent_hashes),
        };
        Ok(AppState(Arc::new(Inner {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            auth,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_conn_id: AtomicU64::new(1),
            config,
        })))
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
}
