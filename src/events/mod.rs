//! Per-user fan-out of task status changes (and machine releases) to every signed-in socket of
//! that user.
//!
//! Delivery never waits: each socket has a bounded outbound queue, and a socket whose queue is
//! full is told to close (with a reason) rather than silently skipped or allowed to block the
//! others.
//!
//! The hub knows neither transport nor backend: it queues [`Text`] (UTF-8 bytes) that the
//! socket layer turns into its WebSocket library's type, and on a store that routes events per
//! user it asks the store's [`Routing`] trait which users this instance hears.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use dashmap::DashMap;
use uuid::Uuid;

use crate::domain::Task;
use crate::store::Store;
use crate::store::routing::{Routing, WatchGuard};

mod outbox;
pub use outbox::{OpenSockets, Outbox};

/// An event's text on its way to the sockets: UTF-8 by construction (made from a `String` or
/// a `&'static str` only), and reference-counted, so an event rendered once is shared by every
/// socket it goes to. The hub knows no WebSocket library: the socket layer turns it into its
/// library's text type — without checking the UTF-8 again, so every constructor must take a
/// `str` (or `String`), never bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(Bytes);

impl Text {
    /// The UTF-8 bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Text(Bytes::from(text))
    }
}

impl From<&'static str> for Text {
    fn from(text: &'static str) -> Self {
        Text(Bytes::from_static(text.as_bytes()))
    }
}

/// A frame on a socket's outbound queue; the socket's task writes it as a WebSocket message.
#[derive(Debug)]
pub enum Frame {
    Text(Text),
    Close(u16, String),
    /// A keep-alive probe (status sockets).
    Ping,
}

/// The close code of a socket whose credentials ended while it was open (the socket loop's
/// 4003, "token expired or revoked").
pub const CREDENTIALS_ENDED: u16 = 4003;

/// The events pushed on the RPC socket. Every one of them can be turned off and on again per
/// socket with `events/unsubscribe` and `events/subscribe`; all are on after a sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventName {
    /// A task's status or progress changed.
    Task,
    /// A machine the user held was given back.
    Machine,
}

impl EventName {
    pub const ALL: [EventName; 2] = [EventName::Task, EventName::Machine];

    pub fn as_str(self) -> &'static str {
        match self {
            EventName::Task => "task",
            EventName::Machine => "machine",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// Which events a socket receives.
#[derive(Debug)]
pub struct Subscriptions {
    task: AtomicBool,
    machine: AtomicBool,
}

impl From<bool> for Subscriptions {
    /// Every event on, or every event off.
    fn from(on: bool) -> Self {
        Subscriptions {
            task: AtomicBool::new(on),
            machine: AtomicBool::new(on),
        }
    }
}

impl Subscriptions {
    fn flag(&self, event: EventName) -> &AtomicBool {
        match event {
            EventName::Task => &self.task,
            EventName::Machine => &self.machine,
        }
    }

    pub fn set(&self, event: EventName, on: bool) {
        self.flag(event).store(on, Ordering::Relaxed);
    }

    pub fn get(&self, event: EventName) -> bool {
        self.flag(event).load(Ordering::Relaxed)
    }
}

/// How a subscriber wants task events rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFormat {
    /// `{"namespace":"events","name":"task","id":"","args":<task>}` on the RPC socket.
    Rpc,
    /// `{"status","id","kind",...}` on the v2 status socket.
    V2Status,
}

impl EventFormat {
    pub fn render(self, task: &Task) -> Text {
        match self {
            EventFormat::Rpc => crate::envelope::event(EventName::Task.as_str(), task).into(),
            EventFormat::V2Status => {
                let mut v = serde_json::json!({
                    "status": task.status,
                    "id": task.id,
                    "kind": task.kind,
                    "pool_id": task.pool_id,
                });
                if let Some(p) = task.progress {
                    v["progress"] = p.into();
                }
                v.to_string().into()
            }
        }
    }
}

/// One socket's registration.
pub struct Subscriber {
    pub conn_id: u64,
    pub format: EventFormat,
    pub tx: Arc<Outbox>,
    /// Whether the socket's credentials still hold (token not expired or revoked); events
    /// stop the moment they do not, even before the socket's next message.
    pub alive: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Subscriber {
    /// Queues a frame without waiting; a full queue kicks the socket.
    pub fn push(&self, text: Text) {
        if self.tx.push(Frame::Text(text)).is_err() && !self.tx.kicked() {
            // Once: the pushes that follow until the socket closes find it full too.
            tracing::warn!(
                conn_id = self.conn_id,
                "outbound queue full: closing slow socket"
            );
            self.tx.kick();
        }
    }
}

/// One user's sockets, and the latest state of the user's active tasks (for catch-up).
#[derive(Default)]
struct UserEntry {
    subs: Vec<Subscriber>,
    /// On a store that routes events per user: each registered socket's hold on the user's
    /// channel (from its [`Prepared`]), by `conn_id`. Kept beside `subs` rather than in each
    /// [`Subscriber`], so that where nothing is routed this stays unallocated and a
    /// `Subscriber` — one per held socket — does not carry an always-empty slot.
    watches: Vec<(u64, WatchGuard)>,
    active: HashMap<Uuid, Task>,
    /// Sign-ins between their watch and their registration ([`EventHub::prepare`]); while
    /// any is, the tasks that end are remembered in `ended`, so that a snapshot read before
    /// an end never brings the task back as active.
    seeding: usize,
    ended: HashSet<Uuid>,
}

impl UserEntry {
    /// Records a task's new state and, if `notify`, sends it to every enabled, still
    /// signed-in socket of the user.
    fn apply(&mut self, task: &Task, notify: bool) {
        if task.status.is_active() {
            self.active.insert(task.id, task.clone());
        } else {
            self.active.remove(&task.id);
            if self.seeding > 0 {
                self.ended.insert(task.id);
            }
        }
        if notify {
            let mut rendered: [Option<Text>; 2] = [None, None];
            for sub in self
                .subs
                .iter()
                .filter(|s| s.tx.subscriptions().get(EventName::Task) && (s.alive)())
            {
                let slot = &mut rendered[sub.format as usize];
                let text = slot.get_or_insert_with(|| sub.format.render(task)).clone();
                sub.push(text);
            }
        }
    }

    /// Applies a task read from the store if it is news: further on than the copy held, or
    /// an end of a task held as active. What ended since the read began (`ended`), or a copy
    /// as far on as the held one, is not (a read may be older than the events heard since).
    fn merge(&mut self, task: Task, notify: bool) {
        if self.ended.contains(&task.id) {
            return;
        }
        let newer = match self.active.get(&task.id) {
            Some(held) => task.stage() > held.stage(),
            None => task.status.is_active(),
        };
        if newer {
            self.apply(&task, notify);
        }
    }
}

/// On a store that routes events per user: whose channels this instance hears, and where a
/// new watch reads the user's active tasks.
struct Routed {
    router: Arc<dyn Routing>,
    store: Arc<dyn Store>,
}

/// What [`EventHub::prepare`] readies for a socket's registration: nothing (the default) on a
/// store that does not route events per user. One pointer wide, and boxed only when there is
/// something: a connection keeps one from its sign-in's reply to its registration, and every
/// byte it takes is a byte of every held connection's future.
#[derive(Default)]
pub struct Prepared(Option<Box<Readied>>);

/// A routed sign-in's watch of its user's channel, and what was read once it was confirmed.
struct Readied {
    watch: WatchGuard,
    snapshot: Vec<Task>,
    seeding: Seeding,
}

/// A sign-in between its watch and its registration; see `UserEntry::seeding`.
struct Seeding {
    users: Arc<DashMap<Uuid, UserEntry>>,
    user: Uuid,
}

impl Drop for Seeding {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut e) = self.users.entry(self.user) {
            let entry = e.get_mut();
            entry.seeding -= 1;
            if entry.seeding == 0 {
                entry.ended.clear();
                if entry.subs.is_empty() {
                    e.remove();
                }
            }
        }
    }
}

/// Every task change — from this instance or, through the store's bus, from others — passes
/// through `publish`, so the hub's view of active tasks is as fresh as what sockets were told.
///
/// On a store that routes events per user ([`crate::store::routing`]) the hub knows only the
/// users with a socket here: a user's first socket starts the watch of their channel and reads
/// their active tasks once it is confirmed ([`EventHub::prepare`]); from then on every change
/// reaches the hub; the last socket leaving ends the watch and forgets the user.
#[derive(Default)]
pub struct EventHub {
    users: Arc<DashMap<Uuid, UserEntry>>,
    routing: OnceLock<Routed>,
    /// When each user's last socket here closed (the server's clock, ms), until they sign in
    /// again or the pools' round forgets it: what `idle_release` counts from.
    left: DashMap<Uuid, u64>,
    clock: Arc<crate::domain::clock::Clock>,
}

impl EventHub {
    /// A hub that tells the time by `clock` (the server's, which tests set).
    pub fn with_clock(clock: Arc<crate::domain::clock::Clock>) -> Self {
        EventHub {
            clock,
            ..EventHub::default()
        }
    }

    /// When `user`'s last socket here closed, if they have none now and it is remembered.
    pub fn left_at(&self, user: Uuid) -> Option<u64> {
        self.left.get(&user).map(|at| *at)
    }

    /// Forgets the departures before `before_ms` (nobody asks about them any more).
    pub fn forget_left_before(&self, before_ms: u64) {
        self.left.retain(|_, at| *at >= before_ms);
    }

    /// Routes by user when `store` does (once, before any socket signs in).
    pub fn attach(&self, store: &Arc<dyn Store>) {
        if let Some(router) = store.router() {
            let _ = self.routing.set(Routed {
                router,
                store: store.clone(),
            });
        }
    }

    /// Readies the registration of a socket of `user`: on a routing store, watches the user's
    /// channel (returning once confirmed) and then reads their recent tasks, which the
    /// registration merges into what the hub knows. Nothing to do otherwise.
    pub async fn prepare(&self, user: Uuid) -> Prepared {
        let Some(routing) = self.routing.get() else {
            return Prepared::default();
        };
        let seeding = self.seeding(user);
        let watch = routing.router.watch(user).await;
        // Ended ones too: they correct a copy held as active from an earlier watch's last
        // events.
        let snapshot = self.recent_tasks(routing, user).await;
        Prepared(Some(Box::new(Readied {
            watch,
            snapshot,
            seeding,
        })))
    }

    /// Registers a socket and first queues the current state of the user's active tasks.
    /// Both happen under the user's entry lock, which `publish` also takes, so a change racing
    /// with the sign-in is never delivered before an older state.
    pub fn subscribe(&self, user: Uuid, sub: Subscriber, prepared: Prepared) {
        let (watch, snapshot, seeding) = match prepared.0.map(|readied| *readied) {
            Some(Readied {
                watch,
                snapshot,
                seeding,
            }) => (Some(watch), snapshot, Some(seeding)),
            None => (None, Vec::new(), None),
        };
        let mut entry = self.users.entry(user).or_default();
        for task in snapshot {
            // Quietly: the new socket gets it in the catch-up below, and the others heard it.
            entry.merge(task, false);
        }
        if sub.tx.subscriptions().get(EventName::Task) {
            let mut active: Vec<&Task> = entry.active.values().collect();
            active.sort_by_key(|t| t.created);
            for task in active {
                sub.push(sub.format.render(task));
            }
        }
        if let Some(watch) = watch {
            entry.watches.push((sub.conn_id, watch));
        }
        entry.subs.push(sub);
        drop(entry);
        self.left.remove(&user);
        // After the entry's lock is let go: ending the seeding takes it.
        drop(seeding);
    }

    /// Brings what the hub knows of `user`'s tasks up to the store's after their watch was
    /// confirmed again following a lost connection (what was published meanwhile was not
    /// heard): every task that moved on since is applied and told to the user's sockets — a
    /// task that ended in the gap is said to have ended, not replayed as running later.
    pub async fn catch_up(&self, user: Uuid) {
        let Some(routing) = self.routing.get() else {
            return;
        };
        if !self.users.contains_key(&user) {
            return;
        }
        let seeding = self.seeding(user);
        let snapshot = self.recent_tasks(routing, user).await;
        if let Some(mut entry) = self.users.get_mut(&user) {
            for task in snapshot {
                entry.merge(task, true);
            }
        }
        drop(seeding);
    }

    /// Starts a read of `user`'s tasks from the store: until it is dropped, the tasks that end
    /// are remembered (see `UserEntry::seeding`).
    fn seeding(&self, user: Uuid) -> Seeding {
        self.users.entry(user).or_default().seeding += 1;
        Seeding {
            users: self.users.clone(),
            user,
        }
    }

    /// The user's recent tasks from the store; none (logged) if it cannot answer: the sockets
    /// then get the changes from now on.
    async fn recent_tasks(&self, routing: &Routed, user: Uuid) -> Vec<Task> {
        routing
            .store
            .tasks_of_user(user, crate::store::RECENT_TASKS)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(%user, error = %e, "cannot read a user's tasks to catch their sockets up; they get the changes from now on");
                Vec::new()
            })
    }

    pub fn unsubscribe(&self, user: Uuid, conn_id: u64) {
        let routed = self.routing.get().is_some();
        if let dashmap::Entry::Occupied(mut e) = self.users.entry(user) {
            let before = e.get().subs.len();
            e.get_mut().subs.retain(|s| s.conn_id != conn_id);
            e.get_mut().watches.retain(|(id, _)| *id != conn_id);
            let entry = e.get();
            if before > 0 && entry.subs.is_empty() {
                self.left.insert(user, self.clock.now_ms());
            }
            // Routed, a user without sockets is not heard any more: what the hub knows of
            // their tasks would only grow stale.
            let idle = if routed {
                entry.seeding == 0
            } else {
                entry.active.is_empty()
            };
            if entry.subs.is_empty() && idle {
                e.remove();
            }
        }
    }

    /// Records a task's new state and, if `notify`, sends it to every enabled, still
    /// signed-in socket of its user. Never waits: a socket whose queue is full is kicked
    /// (see [`Subscriber::push`]). Routed, a user without a socket here is ignored.
    pub fn publish(&self, task: &Task, notify: bool) {
        let routed = self.routing.get().is_some();
        let mut entry = if routed {
            match self.users.get_mut(&task.user_id) {
                Some(entry) => entry,
                None => return,
            }
        } else {
            self.users.entry(task.user_id).or_default()
        };
        entry.apply(task, notify);
        if !routed && entry.subs.is_empty() && entry.active.is_empty() {
            drop(entry);
            self.users.remove_if(&task.user_id, |_, e| {
                e.subs.is_empty() && e.active.is_empty()
            });
        }
    }

    /// Tells the user's RPC sockets that a machine was given back.
    pub fn released(&self, user: Uuid, pool_id: Uuid, machine_id: Uuid, reason: &str) {
        self.machine_event(
            user,
            &serde_json::json!({"pool_id": pool_id, "machine_id": machine_id, "status": "RELEASED", "reason": reason}),
        );
    }

    /// Whether `user` has a signed-in socket here.
    pub fn has_sockets(&self, user: Uuid) -> bool {
        self.users.get(&user).is_some_and(|e| !e.subs.is_empty())
    }

    /// Sends a `machine` event (`args`) to the user's RPC sockets that take them.
    pub fn machine_event(&self, user: Uuid, args: &serde_json::Value) {
        let Some(entry) = self.users.get(&user) else {
            return;
        };
        let text: Text = crate::envelope::event(EventName::Machine.as_str(), args).into();
        for sub in entry.subs.iter().filter(|s| {
            s.format == EventFormat::Rpc
                && s.tx.subscriptions().get(EventName::Machine)
                && (s.alive)()
        }) {
            sub.push(text.clone());
        }
    }

    /// Closes the user's sockets whose credentials no longer hold (their session ended), with
    /// [`CREDENTIALS_ENDED`] and the reason: `session ended: <reason>`. A socket whose queue
    /// is full is kicked instead.
    pub fn close_ended(&self, user: Uuid, reason: &str) {
        let Some(entry) = self.users.get(&user) else {
            return;
        };
        for sub in entry.subs.iter().filter(|s| !(s.alive)()) {
            let close = Frame::Close(CREDENTIALS_ENDED, format!("session ended: {reason}"));
            if sub.tx.push(close).is_err() {
                sub.tx.kick();
            }
        }
    }

    /// The users with a signed-in socket here (for the session sweep).
    pub fn user_ids(&self) -> Vec<Uuid> {
        self.users
            .iter()
            .filter(|e| !e.subs.is_empty())
            .map(|e| *e.key())
            .collect()
    }

    /// The user's PENDING and RUNNING tasks as this instance knows them, oldest first.
    pub fn active_tasks(&self, user: Uuid) -> Vec<Task> {
        let mut tasks: Vec<Task> = self
            .users
            .get(&user)
            .map(|e| e.active.values().cloned().collect())
            .unwrap_or_default();
        tasks.sort_by_key(|t| t.created);
        tasks
    }

    /// Signed-in sockets, for metrics and admin views.
    pub fn socket_count(&self) -> usize {
        self.users.iter().map(|e| e.subs.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prepared_registration_is_one_pointer_wide() {
        // Every connection's future holds one (`rpc::Conn`): with the watch, snapshot and
        // seeding inline it was 72 bytes, which took each socket's task (tokio allocates it
        // in 128-byte steps) from 1792 to 1920 bytes on the default store.
        assert_eq!(
            std::mem::size_of::<Prepared>(),
            std::mem::size_of::<usize>()
        );
    }
}
