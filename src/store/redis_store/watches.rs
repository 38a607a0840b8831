//! Per-user event routing on a shared store: an instance hears the bus only for the users who
//! hold a socket on it.
//!
//! Each user's events (task changes, machine releases, session revocations and the read
//! cache's invalidations) are published on a channel of that user's own; an instance
//! subscribes to it while it *watches* the user — from the first of the user's sockets
//! signing in here to the last one leaving ([`Watches::watch`], a counted [`WatchGuard`]; the layers above see it as [`Routing`]).
//! What concerns every instance whoever it is about (JWT revocations: a REST request may come
//! to any instance) stays on the one global channel. So an instance's bus traffic grows with
//! the users connected to it, not with the deployment.
//!
//! **When a watch is good.** A watch is *confirmed* once a `SUBSCRIBE` for the user's channel
//! has completed while the watch existed: from then on Redis delivers the user's events here.
//! [`Watches::watch`] returns once it is (or after [`CONFIRM_WAIT`](crate::store::routing::CONFIRM_WAIT), logged, if Redis does not
//! answer: the subscription is then retried in the background). Each confirmation gets a new
//! *epoch*: the read cache keeps a user's records only under the epoch they were read in
//! ([`Watches::epoch`]), so nothing read while this instance might have missed the user's
//! announcements — before a confirmation, across a lost connection, after the last socket
//! left — is ever served. When the connection drops every watch is unconfirmed, and each is
//! subscribed again (and confirmed anew) once Redis is back.
//!
//! Subscriptions are changed by one task, in the order the watches asked for them, so an
//! `UNSUBSCRIBE` for a user who left never overtakes the `SUBSCRIBE` of their next sign-in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::store::routing::{BusCounts, Routing, WatchGuard};

/// Pause between attempts of a subscription change that failed (Redis away).
const RETRY: Duration = Duration::from_millis(250);

/// A change of subscription, for the task that talks to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Subscribe to the user's channel for the watch of this generation.
    Subscribe(Uuid, u64),
    Unsubscribe(Uuid),
}

/// What carries out the changes: the shared store's subscription connection.
pub trait Subscriber: Send + Sync + 'static {
    /// Subscribes to or unsubscribes from the users' channels; true once done.
    fn apply(&self, subscribe: bool, users: &[Uuid]) -> impl Future<Output = bool> + Send;
}

struct Watch {
    /// Sockets (and other holders) of this user on this instance.
    count: usize,
    /// Tells a confirmation apart from one for an earlier watch of the same user.
    generation: u64,
    /// Set while the watch is confirmed (see the module docs).
    epoch: Option<u64>,
    /// Whether it was confirmed before: a confirmation after that follows a lost connection.
    confirmed_before: bool,
    confirmed: watch::Sender<bool>,
}

/// Which users this instance watches; see the module docs.
pub struct Watches {
    users: DashMap<Uuid, Watch>,
    next: AtomicU64,
    changes: mpsc::UnboundedSender<Change>,
    /// Lost connections so far: a subscription made across one confirms nothing (the
    /// re-subscription queued by [`Watches::disconnected`] does).
    disconnects: AtomicU64,
    /// The users whose watch was confirmed again after a lost connection: what was published
    /// for them meanwhile was not heard ([`Watches::take_resumed`]).
    resumed: mpsc::UnboundedSender<Uuid>,
    resumed_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Uuid>>>,
    /// Bus messages received, and events not published because the outbox was full.
    pub received: AtomicU64,
    pub shed: AtomicU64,
    /// Times the store's connection was made anew by its watchdog (a wedged cluster client, a
    /// reconnection refused by authentication), every subscription with it.
    pub renewed: AtomicU64,
}

impl Watches {
    /// A table whose subscription changes `subscriber` carries out, in order, on a task of
    /// its own.
    pub fn new(subscriber: impl Subscriber) -> Arc<Self> {
        let (changes, rx) = mpsc::unbounded_channel();
        let (resumed, resumed_rx) = mpsc::unbounded_channel();
        let router = Arc::new(Watches {
            resumed,
            resumed_rx: std::sync::Mutex::new(Some(resumed_rx)),
            users: DashMap::new(),
            next: AtomicU64::new(1),
            changes,
            disconnects: AtomicU64::new(0),
            received: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            renewed: AtomicU64::new(0),
        });
        tokio::spawn(run(Arc::downgrade(&router), subscriber, rx));
        router
    }

    /// Starts (or joins) the watch of `user`; returns once it is confirmed, or after
    /// [`CONFIRM_WAIT`](crate::store::routing::CONFIRM_WAIT) (see [`Routing::watch`]).
    pub async fn watch(self: &Arc<Self>, user: Uuid) -> WatchGuard {
        let routing: Arc<dyn Routing> = self.clone();
        routing.watch(user).await
    }

    /// The epoch of `user`'s watch while it is confirmed; `None` otherwise.
    pub fn epoch(&self, user: Uuid) -> Option<u64> {
        self.users.get(&user)?.epoch
    }

    /// A mark to take before a read: a watch confirmed after it has an epoch at or above it.
    pub fn mark(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// Users watched here.
    pub fn watched(&self) -> usize {
        self.users.len()
    }

    /// A subscription for the watch of `generation` was made, with no lost connection since
    /// `disconnects` was read.
    fn confirm(&self, user: Uuid, generation: u64, disconnects: u64) {
        if self.disconnects.load(Ordering::Acquire) != disconnects {
            return;
        }
        if let Some(mut w) = self.users.get_mut(&user)
            && w.generation == generation
            && w.epoch.is_none()
        {
            w.epoch = Some(self.next.fetch_add(1, Ordering::Relaxed));
            w.confirmed.send_replace(true);
            if std::mem::replace(&mut w.confirmed_before, true) {
                let _ = self.resumed.send(user);
            }
        }
    }

    /// The users whose watch is confirmed again after a lost connection, as it happens: the
    /// application catches their sockets up (once; `None` after the first call).
    pub fn take_resumed(&self) -> Option<mpsc::UnboundedReceiver<Uuid>> {
        self.resumed_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The server dropped the subscription to `user`'s channel by itself (on a cluster, the
    /// slot of a sharded channel moved to another master: a failover or a reshard). A watch
    /// of the user is unconfirmed and subscribed again under a new generation — so that a
    /// subscription made before the drop confirms nothing — and, once confirmed, reported
    /// resumed ([`Watches::take_resumed`]) like one after a lost connection.
    pub fn lost(&self, user: Uuid) {
        if let Some(mut w) = self.users.get_mut(&user) {
            w.generation = self.next.fetch_add(1, Ordering::Relaxed);
            w.epoch = None;
            w.confirmed.send_replace(false);
            let _ = self.changes.send(Change::Subscribe(user, w.generation));
        }
    }

    /// The subscription connection was lost: every watch is unconfirmed and subscribed again.
    pub fn disconnected(&self) {
        self.disconnects.fetch_add(1, Ordering::AcqRel);
        let mut again = Vec::new();
        for mut w in self.users.iter_mut() {
            w.epoch = None;
            w.confirmed.send_replace(false);
            again.push(Change::Subscribe(*w.key(), w.generation));
        }
        for change in again {
            let _ = self.changes.send(change);
        }
    }
}

impl Routing for Watches {
    fn join(&self, user: Uuid) -> watch::Receiver<bool> {
        let mut entry = self.users.entry(user).or_insert_with(|| Watch {
            count: 0,
            generation: self.next.fetch_add(1, Ordering::Relaxed),
            epoch: None,
            confirmed_before: false,
            confirmed: watch::channel(false).0,
        });
        entry.count += 1;
        if entry.count == 1 {
            let _ = self.changes.send(Change::Subscribe(user, entry.generation));
        }
        entry.confirmed.subscribe()
    }

    fn leave(&self, user: Uuid) {
        if let dashmap::Entry::Occupied(mut e) = self.users.entry(user) {
            e.get_mut().count -= 1;
            if e.get().count == 0 {
                e.remove();
                let _ = self.changes.send(Change::Unsubscribe(user));
            }
        }
    }

    fn epoch(&self, user: Uuid) -> Option<u64> {
        Watches::epoch(self, user)
    }

    fn mark(&self) -> u64 {
        Watches::mark(self)
    }

    fn take_resumed(&self) -> Option<mpsc::UnboundedReceiver<Uuid>> {
        Watches::take_resumed(self)
    }

    fn counts(&self) -> BusCounts {
        BusCounts {
            received: self.received.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            renewed: self.renewed.load(Ordering::Relaxed),
            watched: self.watched(),
        }
    }
}

/// Carries out the changes in order; consecutive ones of a kind go in one command.
async fn run(
    router: std::sync::Weak<Watches>,
    subscriber: impl Subscriber,
    mut rx: mpsc::UnboundedReceiver<Change>,
) {
    let mut batch: Vec<Change> = Vec::new();
    while rx.recv_many(&mut batch, 1024).await > 0 {
        let mut rest = batch.as_slice();
        while let Some(first) = rest.first() {
            let subscribe = matches!(first, Change::Subscribe(..));
            let run_len = rest
                .iter()
                .take_while(|c| matches!(c, Change::Subscribe(..)) == subscribe)
                .count();
            let (run, tail) = rest.split_at(run_len);
            rest = tail;
            let users: Vec<Uuid> = run
                .iter()
                .map(|c| match *c {
                    Change::Subscribe(u, _) | Change::Unsubscribe(u) => u,
                })
                .collect();
            let disconnects = match router.upgrade() {
                Some(router) => router.disconnects.load(Ordering::Acquire),
                None => return,
            };
            // Until Redis takes it (an unsubscription given up on is harmless: its messages
            // are ignored; a subscription is retried while its watch lasts).
            loop {
                if subscriber.apply(subscribe, &users).await {
                    break;
                }
                if !subscribe {
                    break;
                }
                tokio::time::sleep(RETRY).await;
                let Some(router) = router.upgrade() else {
                    return;
                };
                if run.iter().all(|c| !router.wanted(c)) {
                    break;
                }
            }
            let Some(router) = router.upgrade() else {
                return;
            };
            for change in run {
                if let Change::Subscribe(user, generation) = *change {
                    router.confirm(user, generation, disconnects);
                }
            }
        }
        batch.clear();
    }
}

impl Watches {
    /// Whether a subscription is still wanted (its watch lasts).
    fn wanted(&self, change: &Change) -> bool {
        match *change {
            Change::Subscribe(user, generation) => self
                .users
                .get(&user)
                .is_some_and(|w| w.generation == generation),
            Change::Unsubscribe(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Each change applied: subscribe or not, and whose channels.
    type Applied = Vec<(bool, Vec<Uuid>)>;

    /// Records the changes; fails while `down`.
    #[derive(Clone, Default)]
    struct Log {
        applied: Arc<Mutex<Applied>>,
        down: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Subscriber for Log {
        async fn apply(&self, subscribe: bool, users: &[Uuid]) -> bool {
            if self.down.load(Ordering::Relaxed) {
                return false;
            }
            self.applied
                .lock()
                .unwrap()
                .push((subscribe, users.to_vec()));
            true
        }
    }

    #[tokio::test]
    async fn a_watch_subscribes_once_confirms_and_the_last_guard_unsubscribes() {
        let log = Log::default();
        let router = Watches::new(log.clone());
        let user = Uuid::new_v4();
        let a = router.watch(user).await;
        let first = router.epoch(user).expect("confirmed once watch returns");
        let b = router.watch(user).await;
        assert_eq!(router.epoch(user), Some(first), "a second socket joins");
        drop(a);
        assert_eq!(router.epoch(user), Some(first));
        drop(b);
        assert_eq!(router.epoch(user), None, "the last one leaving ends it");
        let _c = router.watch(user).await;
        let again = router.epoch(user).unwrap();
        assert_ne!(again, first, "a new watch has a new epoch");
        assert_eq!(
            *log.applied.lock().unwrap(),
            vec![(true, vec![user]), (false, vec![user]), (true, vec![user])],
            "subscribed, unsubscribed, subscribed: in order"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_unconfirms_until_subscribed_again() {
        let log = Log::default();
        let router = Watches::new(log.clone());
        let user = Uuid::new_v4();
        let _w = router.watch(user).await;
        let before = router.epoch(user).unwrap();
        log.down.store(true, Ordering::Relaxed);
        router.disconnected();
        assert_eq!(router.epoch(user), None);
        tokio::time::sleep(RETRY * 4).await;
        assert_eq!(router.epoch(user), None, "not while Redis refuses");
        log.down.store(false, Ordering::Relaxed);
        tokio::time::sleep(RETRY * 2).await;
        let after = router.epoch(user).expect("subscribed again");
        assert_ne!(after, before);
        let mut resumed = router.take_resumed().unwrap();
        assert_eq!(
            resumed.try_recv(),
            Ok(user),
            "reported as confirmed again after the gap (once)"
        );
        assert!(resumed.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscription_dropped_by_the_server_is_made_again_and_reported_resumed() {
        let log = Log::default();
        let router = Watches::new(log.clone());
        let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
        let _w = router.watch(user).await;
        let _o = router.watch(other).await;
        let before = router.epoch(user).unwrap();
        let others = router.epoch(other).unwrap();
        log.down.store(true, Ordering::Relaxed);
        router.lost(user);
        assert_eq!(router.epoch(user), None, "unconfirmed at once");
        assert_eq!(router.epoch(other), Some(others), "other users untouched");
        tokio::time::sleep(RETRY * 4).await;
        assert_eq!(router.epoch(user), None, "not while the subscription fails");
        log.down.store(false, Ordering::Relaxed);
        tokio::time::sleep(RETRY * 2).await;
        assert!(router.epoch(user).is_some_and(|e| e != before));
        let mut resumed = router.take_resumed().unwrap();
        assert_eq!(resumed.try_recv(), Ok(user), "caught up once confirmed");
        // A user no longer watched (our own unsubscription's echo): nothing happens.
        router.lost(Uuid::new_v4());
        assert_eq!(router.watched(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_that_cannot_be_confirmed_returns_after_the_wait_and_is_confirmed_later() {
        let log = Log::default();
        log.down.store(true, Ordering::Relaxed);
        let router = Watches::new(log.clone());
        let user = Uuid::new_v4();
        let _w = router.watch(user).await;
        assert_eq!(router.epoch(user), None);
        log.down.store(false, Ordering::Relaxed);
        tokio::time::sleep(RETRY * 2).await;
        assert!(router.epoch(user).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscription_for_a_watch_gone_meanwhile_is_not_retried() {
        let log = Log::default();
        log.down.store(true, Ordering::Relaxed);
        let router = Watches::new(log.clone());
        let user = Uuid::new_v4();
        drop(router.watch(user).await);
        log.down.store(false, Ordering::Relaxed);
        tokio::time::sleep(RETRY * 4).await;
        let applied = log.applied.lock().unwrap().clone();
        assert!(
            !applied.iter().any(|(subscribe, _)| *subscribe),
            "the user left before Redis came back: {applied:?}"
        );
        assert_eq!(router.watched(), 0);
    }
}
