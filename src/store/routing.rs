//! Per-user routing of a shared store's bus, as the layers above use it — the event hub, the
//! read cache, the token store: which users this instance hears, and since when. A trait, so
//! that none of them names a backend's machinery; Redis implements it with its per-user
//! channels ([`super::redis_store::watches`]), and a store whose bus is in-process has none
//! ([`super::Bus::router`] is `None`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use uuid::Uuid;

/// How long [`Routing::watch`] waits for its subscription before going on unconfirmed.
pub const CONFIRM_WAIT: Duration = Duration::from_secs(3);

/// Which users this instance hears. A *watch* of a user lasts from its first [`WatchGuard`]
/// to the drop of its last; it is *confirmed* once the bus delivers the user's events here,
/// and each confirmation gets a new *epoch*.
pub trait Routing: Send + Sync + 'static {
    /// Starts (or joins) the watch of `user`; what it returns turns true once the watch is
    /// confirmed. Each call is ended by one [`Routing::leave`] (a [`WatchGuard`] makes it).
    fn join(&self, user: Uuid) -> watch::Receiver<bool>;
    /// Ends one [`Routing::join`] of `user`; the last one ends the watch.
    fn leave(&self, user: Uuid);
    /// The epoch of `user`'s watch while it is confirmed; `None` otherwise.
    fn epoch(&self, user: Uuid) -> Option<u64>;
    /// A mark to take before a read: a watch confirmed after it has an epoch at or above it.
    fn mark(&self) -> u64;
    /// The users whose watch is confirmed again after a lost connection, as it happens: the
    /// application catches their sockets up (once; `None` after the first call).
    fn take_resumed(&self) -> Option<mpsc::UnboundedReceiver<Uuid>>;
    /// What the bus has done so far, for metrics.
    fn counts(&self) -> BusCounts;
}

/// Figures of a routed bus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusCounts {
    /// Messages received.
    pub received: u64,
    /// Events not published because the outbox was full.
    pub shed: u64,
    /// Times the store's connection was made anew (every subscription with it).
    pub renewed: u64,
    /// Users watched here.
    pub watched: usize,
}

impl dyn Routing {
    /// Starts (or joins) the watch of `user`; returns once it is confirmed, or after
    /// [`CONFIRM_WAIT`] (logged: the subscription goes on in the background).
    pub async fn watch(self: &Arc<Self>, user: Uuid) -> WatchGuard {
        let mut confirmed = self.join(user);
        let guard = WatchGuard {
            routing: self.clone(),
            user,
        };
        if tokio::time::timeout(CONFIRM_WAIT, confirmed.wait_for(|c| *c))
            .await
            .is_err()
        {
            tracing::warn!(%user, "the bus did not confirm a user's subscription in time; their events may be late until it does");
        }
        guard
    }
}

/// Holds a watch of one user; the last one dropped ends it.
pub struct WatchGuard {
    routing: Arc<dyn Routing>,
    user: Uuid,
}

impl std::fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchGuard")
            .field("user", &self.user)
            .finish()
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.routing.leave(self.user);
    }
}
