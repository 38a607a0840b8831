//! The shared backend for several instances: one Redis, through the `redis` crate's
//! `ConnectionManager`, or a Redis Cluster (Valkey cluster), through its cluster client — both
//! reconnect by themselves; RESP3 push messages carry the event bus and are re-subscribed after
//! a reconnect. Sessions and MFA challenges are keys with a TTL; tasks
//! and assignments are JSON values indexed by sets; every compare-and-set is a Lua script.
//! Ended tasks are also indexed by creation time (`done_tasks`), so the retention sweep reads
//! only what it may delete; a user's session set is trimmed (gone members, the cap) whenever
//! the user signs in, so it never holds more than `max_sessions_per_user`, and it expires with
//! the user's last session (its expiry only ever moves later, so it never lapses while one of
//! its sessions lives). Every record with an expiry is a key with a TTL, so `sweep_expired`
//! has nothing to do.
//!
//! The module is `redis_store`, not `redis`, so that it does not shadow the `redis` crate:
//! here `redis::…` is the crate, as anywhere else, with no `::redis::` needed to tell them
//! apart.
//!
//! One file per concern: [`connection`] (connections, re-connection, the watchdog), [`keys`]
//! (the key layout), [`scripts`] (the Lua fragments the scripts share; each script sits beside
//! its caller), [`bus`] (publisher, push reader, subscriptions), [`watches`] (per-user
//! routing), [`health`] (health, counts, append-only checks), then the contract's concerns in
//! its order: [`sessions`], [`mfa`], [`directory`], [`revocations`], [`tasks`],
//! [`assignments`], [`inventory`], [`warm`], [`lockout`].

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncCommands, Cmd, Pipeline, PushKind, RedisFuture, Script, Value};
use sha2::Digest;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::*;

mod assignments;
mod audit;
mod bus;
mod connection;
mod directory;
mod federation;
mod health;
mod inventory;
mod keys;
mod lockout;
mod mfa;
mod revocations;
mod scripts;
mod security_keys;
mod sessions;
mod tasks;
mod warm;
pub mod watches;

use bus::*;
use connection::*;
use health::*;
use keys::*;
use scripts::*;

pub use bus::{OUTBOX_CAPACITY, REVOCATIONS_CAPACITY};
pub use health::{aof_warning, ping, ping_cluster};
pub use keys::{BUCKETS, in_users_bucket};

/// This backend's errors as the store's (the message kept).
impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError(e.into())
    }
}

impl From<redis::ParsingError> for StoreError {
    fn from(e: redis::ParsingError) -> Self {
        StoreError(e.into())
    }
}

pub struct RedisStore {
    con: Con,
    keys: Keys,
    /// Events to publish, drained in order by one task (spawning a PUBLISH per event would
    /// let them overtake each other). Bounded: when Redis cannot keep up, events are shed
    /// (counted, logged) rather than queued without limit.
    outbox: mpsc::Sender<BusEvent>,
    /// Revocations (sessions, JWTs) wait apart and go first: a flood of task events never
    /// sheds a sign-out. Bounded too.
    revocations: mpsc::Sender<BusEvent>,
    /// Which users' channels this instance hears ([`watches`]).
    router: Arc<watches::Watches>,
    /// The `origin` of those announcements (see [`Bus::announced_writes_origin`]).
    origin: u64,
}

/// Sessions checked per `session_touch` script call (and tasks per sweep or index round
/// trip): one round trip each, short enough not to hold Redis up for long.
const TOUCH_CHUNK: usize = 256;

impl RedisStore {
    /// Wires a connection up: subscribes it to the global channel, checks the append-only
    /// file in the background, and starts the bus's reader and publisher. `label` names one
    /// Redis in the durability warning (a cluster's nodes name themselves).
    async fn start(
        mut con: Con,
        push_rx: mpsc::UnboundedReceiver<redis::PushInfo>,
        prefix: &str,
        sink: mpsc::UnboundedSender<BusEvent>,
        label: String,
    ) -> anyhow::Result<Self> {
        let keys = Keys {
            prefix: prefix.to_owned(),
            cluster: matches!(con, Con::Cluster(_)),
        };
        let channel = global_channel(prefix);
        subscribe_global(&mut con, &channel)
            .await
            .context("cannot subscribe to the event bus")?;
        tokio::spawn(warn_without_aof(con.clone(), label));
        let moved = Arc::new(dashmap::DashSet::new());
        let router = watches::Watches::new(Subscriptions {
            con: con.clone(),
            keys: keys.clone(),
            moved: moved.clone(),
        });
        let reader = Reader {
            watches: router.clone(),
            channel,
            con: con.clone(),
            prefix: prefix.to_owned(),
            moved,
            sink,
        };
        tokio::spawn(reader.run(push_rx));
        let (outbox, out_rx) = mpsc::channel::<BusEvent>(OUTBOX_CAPACITY);
        let (revocations, rev_rx) = mpsc::channel::<BusEvent>(REVOCATIONS_CAPACITY);
        tokio::spawn(publish_in_order(con.clone(), keys.clone(), rev_rx, out_rx));
        Ok(RedisStore {
            con,
            keys,
            outbox,
            revocations,
            router,
            origin: rand::random(),
        })
    }

    fn k(&self, parts: &[&str]) -> String {
        self.keys.k(parts)
    }

    fn con(&self) -> Con {
        self.con.clone()
    }
}
