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
//! **Key layout.** On one Redis the keys are as they always were. On a cluster every
//! multi-key operation must keep its keys in one hash slot, so the keys that scripts touch
//! together carry a *bucket* hash tag, `{bN}` with N in 0..[`BUCKETS`]: a user's bucket (a hash
//! of their id) for their tasks, latest tasks, assignments, sessions and session set, plus the
//! per-bucket indexes the sweeps read (active and ended tasks, assignments); a token digest's
//! bucket (its first bytes) for an MFA challenge and its count. A user's sessions sit in their
//! user's bucket because a session token is drawn until its digest falls in that bucket
//! ([`Store::token_fits`]: ~1 000 draws, 0.8 ms per sign-in), so a token
//! still names its session's slot. Tags by bucket, not by user, so that the sweeps visit a
//! fixed 1 024 index keys instead of a registry of users, while 1 024 tags still spread evenly
//! over the cluster's masters. Keys used alone (leases, counters, TOTP steps, JWT revocations,
//! directory records, inventories) carry no tag. Users' bus channels are sharded channels
//! (`SSUBSCRIBE`/`SPUBLISH`) in their user's bucket, so a script publishes on the channel of the
//! slot it writes in; the global channel stays a plain one.

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

pub mod watches;

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

/// The connection every call goes through: to one Redis, or to a cluster (which routes each
/// command by its first key's slot).
#[derive(Clone)]
enum Con {
    One(Renewable<ConnectionManager>),
    Cluster(Renewable<ClusterConnection>),
}

/// A connection that [`watchdog`] can replace under every handle: each call takes the current
/// one (a cheap clone), so a replacement needs no caller to know. Calls in flight finish on the
/// connection they took, which lives until the last of them does.
///
/// One Redis: the client's connection manager reconnects by itself after a lost connection —
/// except when a reconnection is refused by authentication (WRONGPASS, NOAUTH: an ACL user
/// switched off and on again, a password changed and changed back): it then answers that
/// error for good. A cluster: the client repairs its connections to the nodes by itself, but
/// was seen wedged for minutes after a master restarted empty while another was frozen
/// (SIGSTOP), every command timing out unsent.
#[derive(Clone)]
struct Renewable<T>(Arc<arc_swap::ArcSwap<T>>);

impl<T: Clone> Renewable<T> {
    fn new(con: T) -> Self {
        Renewable(Arc::new(arc_swap::ArcSwap::from_pointee(con)))
    }

    /// The current connection (a cheap handle).
    fn get(&self) -> T {
        (**self.0.load()).clone()
    }

    fn renew(&self, con: T) {
        self.0.store(Arc::new(con));
    }
}

/// Whether an error means the connection manager could not authenticate, which it never
/// retries by itself.
fn refused_authentication(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS") | Some("NOAUTH"))
}

/// Whether the cluster client looks wedged: a PING to every master that times out (rather
/// than being refused, as by a master that is down: the client reconnects to that one by
/// itself, and a new client would fare no better).
async fn cluster_timed_out(mut con: ClusterConnection) -> bool {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy};
    let ping = con.route_command(
        redis::cmd("PING"),
        RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::AllSucceeded),
        )),
    );
    // Well within the probe period (and the client's own 2 s), so rounds keep their pace.
    match tokio::time::timeout(Duration::from_secs(1), ping).await {
        Err(_) => true,
        Ok(Err(e)) => e.is_timeout(),
        Ok(Ok(_)) => false,
    }
}

impl ConnectionLike for Con {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Con::One(c) => {
                let mut c = c.get();
                Box::pin(async move { c.req_packed_command(cmd).await })
            }
            Con::Cluster(c) => {
                let mut c = c.get();
                Box::pin(async move { c.req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Con::One(c) => {
                let mut c = c.get();
                Box::pin(async move { c.req_packed_commands(cmd, offset, count).await })
            }
            Con::Cluster(c) => {
                let mut c = c.get();
                Box::pin(async move { c.req_packed_commands(cmd, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Con::One(c) => c.get().get_db(),
            Con::Cluster(c) => c.get().get_db(),
        }
    }
}

/// Buckets of the cluster layout (see the module docs).
pub const BUCKETS: u16 = 1024;

/// Sweeps over the buckets of a cluster ask this many buckets at once.
const BUCKETS_IN_FLIGHT: usize = 32;

fn user_bucket(user: Uuid) -> u16 {
    let digest = sha2::Sha256::digest(user.as_bytes());
    u16::from_be_bytes([digest[0], digest[1]]) % BUCKETS
}

fn hash_bucket(hash: &TokenHash) -> u16 {
    u16::from_be_bytes([hash[0], hash[1]]) % BUCKETS
}

/// The cluster layout's rule for a session digest (see [`Store::token_fits`]): it falls in its
/// user's bucket.
pub fn in_users_bucket(user: Uuid, hash: &TokenHash) -> bool {
    user_bucket(user) == hash_bucket(hash)
}

/// Key names, in the layout of the deployment (see the module docs): plain on one Redis,
/// bucket-tagged on a cluster.
#[derive(Clone)]
struct Keys {
    /// Key namespace (`state_prefix`): instances of one deployment share it.
    prefix: String,
    cluster: bool,
}

impl Keys {
    fn k(&self, parts: &[&str]) -> String {
        key(&self.prefix, parts)
    }

    /// `prefix:kind[:{bN}]:rest…` — the tag on a cluster only.
    fn tagged(&self, kind: &str, bucket: u16, rest: &[&str]) -> String {
        let mut key = self.k(&[kind]);
        if self.cluster {
            key.push_str(&format!(":{{b{bucket}}}"));
        }
        for part in rest {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// The buckets the sweeps visit: one (untagged) on one Redis.
    fn buckets(&self) -> std::ops::Range<u16> {
        if self.cluster { 0..BUCKETS } else { 0..1 }
    }

    fn session(&self, hash: &TokenHash) -> String {
        self.tagged("session", hash_bucket(hash), &[&hex::encode(hash)])
    }

    /// What a bucket's session keys begin with (scripts append the hash).
    fn session_prefix(&self, bucket: u16) -> String {
        self.tagged("session", bucket, &[""])
    }

    fn user_sessions(&self, user: Uuid) -> String {
        self.tagged("user_sessions", user_bucket(user), &[&user.to_string()])
    }

    fn user_sessions_prefix(&self, bucket: u16) -> String {
        self.tagged("user_sessions", bucket, &[""])
    }

    fn mfa(&self, hash: &TokenHash) -> String {
        self.tagged("mfa", hash_bucket(hash), &[&hex::encode(hash)])
    }

    /// The digest of a user's one pending challenge of a kind (`password_ok`), in the user's
    /// bucket.
    fn mfa_latest(&self, user: Uuid, password_ok: bool) -> String {
        let kind = if password_ok { "ok" } else { "guess" };
        self.tagged("mfa_latest", user_bucket(user), &[&user.to_string(), kind])
    }

    /// A challenge's wrong-code count (a counter beside the record, so `mfa_fail` is one INCR).
    fn mfa_attempts(&self, hash: &TokenHash) -> String {
        self.tagged("mfa_attempts", hash_bucket(hash), &[&hex::encode(hash)])
    }

    fn task(&self, bucket: u16, id: &str) -> String {
        self.tagged("task", bucket, &[id])
    }

    fn latest(&self, (user, pool, kind): TaskKey) -> String {
        self.tagged(
            "latest",
            user_bucket(user),
            &[&user.to_string(), &pool.to_string(), kind.as_str()],
        )
    }

    fn latest_prefix(&self, bucket: u16) -> String {
        self.tagged("latest", bucket, &[""])
    }

    fn user_tasks(&self, user: Uuid) -> String {
        self.tagged("user_tasks", user_bucket(user), &[&user.to_string()])
    }

    fn user_tasks_prefix(&self, bucket: u16) -> String {
        self.tagged("user_tasks", bucket, &[""])
    }

    fn active_tasks(&self, bucket: u16) -> String {
        self.tagged("active_tasks", bucket, &[])
    }

    fn done_tasks(&self, bucket: u16) -> String {
        self.tagged("done_tasks", bucket, &[])
    }

    fn assignment(&self, bucket: u16, member: &str) -> String {
        self.tagged("assignment", bucket, &[member])
    }

    fn assignments(&self, bucket: u16) -> String {
        self.tagged("assignments", bucket, &[])
    }

    /// A user's channel: their tasks, releases, session revocations and the cache's
    /// announcements, heard by the instances that hold a socket of theirs. On a cluster a
    /// sharded channel in the user's bucket (a script publishes on it from that slot).
    fn channel(&self, user: Uuid) -> String {
        if self.cluster {
            self.tagged("bus", user_bucket(user), &[&user.to_string()])
        } else {
            key(&self.prefix, &["bus", &format!("{{{user}}}")])
        }
    }

    /// The command that publishes on a user's channel.
    fn publish_command(&self) -> &'static str {
        if self.cluster { "SPUBLISH" } else { "PUBLISH" }
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
    /// The `origin` of those announcements (see [`Store::announced_writes_origin`]).
    origin: u64,
    task_create: Script,
    task_update: Script,
    totp_advance: Script,
    lease_acquire: Script,
    lease_release: Script,
    session_put: Script,
    session_touch: Script,
    session_delete: Script,
    session_delete_user: Script,
    mfa_fail: Script,
    jwt_revoke_user: Script,
    assignment_create: Script,
    assignment_remove: Script,
    task_sweep: Script,
    failures_add: Script,
    failures_undo: Script,
    backoff_slot: Script,
}

/// Lua: `now`, the server's clock in ms (scripts may read it: Redis >= 6.2 replicates their
/// effects, not the script).
const LUA_NOW: &str = "local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";

/// Lua: `extend(key, until)`: makes `key` expire no earlier than `until` (ms). A key without
/// an expiry keeps none; a missing one is left missing.
const LUA_EXTEND: &str = "local function extend(key, until_ms)
    local left = redis.call('PTTL', key)
    if left >= 0 and now + left < until_ms then redis.call('PEXPIREAT', key, until_ms) end
  end";

/// Events waiting to be published, at most; past it they are shed.
pub const OUTBOX_CAPACITY: usize = 16_384;

/// Revocations waiting to be published, at most (they are rare: sign-outs, admin revokes).
pub const REVOCATIONS_CAPACITY: usize = 4_096;

/// The global channel: what every instance hears (JWT revocations).
fn global_channel(prefix: &str) -> String {
    key(prefix, &["bus"])
}

/// Carries out the router's subscription changes on the store's connection.
struct Subscriptions {
    con: Con,
    keys: Keys,
    /// Buckets whose slot moved to another master (a failover, a reshard) since their last
    /// subscription: the client's slot map may still name the old master, which — demoted to
    /// a replica — would accept a sharded subscription (and lose it when the client drops
    /// that connection), so the next subscription there first makes the client learn the
    /// slot's new owner.
    moved: Arc<dashmap::DashSet<u16>>,
}

impl Subscriptions {
    async fn change(&self, subscribe: bool, users: &[Uuid]) -> redis::RedisResult<()> {
        match &self.con {
            Con::One(con) => {
                let channels: Vec<String> = users.iter().map(|u| self.keys.channel(*u)).collect();
                let mut con = con.get();
                if subscribe {
                    con.subscribe(&channels).await
                } else {
                    con.unsubscribe(&channels).await
                }
            }
            // One command per slot (a bucket's channels share one): a sharded subscription
            // cannot span slots.
            Con::Cluster(con) => {
                let mut by_bucket: std::collections::HashMap<u16, Vec<String>> =
                    std::collections::HashMap::new();
                for user in users {
                    by_bucket
                        .entry(user_bucket(*user))
                        .or_default()
                        .push(self.keys.channel(*user));
                }
                let changes = by_bucket.into_iter().map(|(bucket, channels)| {
                    let mut con = con.get();
                    async move {
                        if subscribe {
                            if self.moved.remove(&bucket).is_some() {
                                // A read of the slot: the old master answers MOVED, and the
                                // client refreshes its slot map before the subscription.
                                if let Err(e) = con.exists::<_, bool>(&channels[0]).await {
                                    self.moved.insert(bucket);
                                    return Err(e);
                                }
                            }
                            con.ssubscribe(&channels).await
                        } else {
                            con.sunsubscribe(&channels).await
                        }
                    }
                });
                futures_util::future::join_all(changes)
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }
}

impl watches::Subscriber for Subscriptions {
    async fn apply(&self, subscribe: bool, users: &[Uuid]) -> bool {
        match self.change(subscribe, users).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, users = users.len(), subscribe, "a change of the bus subscriptions failed; retrying");
                false
            }
        }
    }
}

/// Sessions checked per `session_touch` script call: one round trip each, short enough not to
/// hold Redis up for long.
const TOUCH_CHUNK: usize = 256;

/// `text` as a `SCAN MATCH` pattern that matches it alone (`*`, `?`, `[`, `]`, `\` escaped).
fn glob_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn key(prefix: &str, parts: &[&str]) -> String {
    let mut key = String::from(prefix);
    for p in parts {
        key.push(':');
        key.push_str(p);
    }
    key
}

/// The user whose (cluster) channel this is: `<prefix>:bus:{bN}:<user id>`.
fn user_of_channel(prefix: &str, channel: &str) -> Option<Uuid> {
    let rest = channel.strip_prefix(prefix)?.strip_prefix(":bus:")?;
    rest.rsplit(':').next()?.parse().ok()
}

/// Probe rounds in a row that must fail before the connection is made anew; each renewal
/// that did not help doubles it (up to [`RENEW_AFTER_MAX`]) until a probe succeeds again.
const RENEW_AFTER: u32 = 3;
const RENEW_AFTER_MAX: u32 = 30;

/// Every two seconds while the store lives, `probe` looks at the current connection (true:
/// it failed the way that wants a new one — see [`Renewable`]). After [`RENEW_AFTER`] failed
/// probes in a row, `connect` makes a new connection, which replaces the old; then — as after
/// a lost connection — every subscription is made again on it: the router's watches (each
/// user's socket catches up once confirmed), then the global channel, whose confirmation ends
/// the bus gap. One line is logged per renewal; failed attempts at most once a minute.
async fn watchdog<T, P, C>(
    router: std::sync::Weak<watches::Watches>,
    con: Renewable<T>,
    probe: impl Fn(T) -> P,
    connect: impl Fn() -> C,
    push_tx: mpsc::UnboundedSender<redis::PushInfo>,
    channel: String,
    why: &'static str,
) where
    T: Clone,
    P: Future<Output = bool>,
    C: Future<Output = redis::RedisResult<T>>,
    Renewable<T>: Into<Con>,
{
    let (mut failed, mut renew_after) = (0, RENEW_AFTER);
    let failures = crate::telemetry::RateLimitedLog::new(Duration::from_secs(60));
    let mut every = tokio::time::interval(Duration::from_secs(2));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        if router.strong_count() == 0 {
            return;
        }
        if probe(con.get()).await {
            failed += 1;
        } else {
            (failed, renew_after) = (0, RENEW_AFTER);
        }
        if failed < renew_after {
            continue;
        }
        match connect().await {
            Ok(new) => {
                tracing::warn!("{why}: the Redis connection is made anew");
                con.renew(new);
                (failed, renew_after) = (0, (renew_after * 2).min(RENEW_AFTER_MAX));
                if let Some(router) = router.upgrade() {
                    router
                        .renewed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // As a lost connection: the watches are subscribed again on the new one...
                let _ = push_tx.send(redis::PushInfo {
                    kind: PushKind::Disconnection,
                    data: Vec::new(),
                });
                // ...and the global channel, whose confirmation ends the gap.
                if let Err(e) = subscribe_global(&mut con.clone().into(), &channel).await {
                    tracing::warn!(error = %e, "cannot subscribe the new Redis connection to the bus");
                }
            }
            Err(e) => {
                if let Some(n) = failures.hit() {
                    tracing::warn!(error = %e, attempts = n, "{why}, and a new Redis connection cannot be made yet");
                }
            }
        }
    }
}

impl From<Renewable<ConnectionManager>> for Con {
    fn from(con: Renewable<ConnectionManager>) -> Con {
        Con::One(con)
    }
}

impl From<Renewable<ClusterConnection>> for Con {
    fn from(con: Renewable<ClusterConnection>) -> Con {
        Con::Cluster(con)
    }
}

/// Subscribes the connection to the global channel.
async fn subscribe_global(con: &mut Con, channel: &str) -> redis::RedisResult<()> {
    match con {
        Con::One(con) => con.get().subscribe(channel).await,
        Con::Cluster(con) => con.get().subscribe(channel).await,
    }
}

/// The seed nodes, for messages (passwords masked).
fn seeds(nodes: &[String]) -> String {
    nodes
        .iter()
        .map(|n| super::url::redacted(n).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A cluster client speaking RESP3 (pushes carry the bus), with the single-node timeouts.
fn cluster_client(
    nodes: &[String],
    password: Option<&str>,
) -> anyhow::Result<ClusterClientBuilder> {
    use redis::IntoConnectionInfo;
    let infos = nodes
        .iter()
        .map(|n| n.as_str().into_connection_info())
        .collect::<Result<Vec<_>, _>>()
        .context("invalid redis-cluster URL")?;
    let mut builder = ClusterClientBuilder::new(infos)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        .retries(3)
        .max_retry_wait(1_000);
    if let Some(password) = password {
        builder = builder.password(password);
    }
    Ok(builder)
}

/// Connects once to a cluster with the configured password and sends PING to every node
/// (`check-config --connect`).
pub async fn ping_cluster(nodes: &[String], password: Option<&str>) -> anyhow::Result<Vec<String>> {
    let attempt = async {
        let mut con = cluster_client(nodes, password)?
            .build()?
            .get_async_connection()
            .await?;
        redis::cmd("PING").query_async::<String>(&mut con).await?;
        let mut warnings: Vec<String> = durability(&Con::Cluster(Renewable::new(con)), "")
            .await
            .into_iter()
            .collect();
        // The cluster answered through some seed; one that does not is worth knowing before
        // the others are the ones down.
        let mut silent = Vec::new();
        for node in nodes {
            use redis::IntoConnectionInfo;
            let Ok(info) = node.as_str().into_connection_info() else {
                continue;
            };
            let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
                continue;
            };
            let reached = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect((host.as_str(), *port)),
            )
            .await;
            if !matches!(reached, Ok(Ok(_))) {
                silent.push(format!("{host}:{port}"));
            }
        }
        if !silent.is_empty() {
            warnings.push(format!(
                "seed node{} {} did not answer (the cluster was reached through the others)",
                if silent.len() == 1 { "" } else { "s" },
                silent.join(", ")
            ));
        }
        anyhow::Ok(warnings)
    };
    match tokio::time::timeout(Duration::from_secs(8), attempt).await {
        Ok(Ok(warnings)) => Ok(warnings),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "cannot reach the cluster at {}: {e:#}",
            seeds(nodes)
        )),
        Err(_) => Err(anyhow::anyhow!(
            "cannot reach the cluster at {}: no answer within 8 s",
            seeds(nodes)
        )),
    }
}

/// What `check-config --connect` says of Redis' durability: the warning of [`aof_warning`], or
/// that it cannot be told.
async fn durability(con: &Con, one: &str) -> Option<String> {
    match nodes_without_aof(con, one).await {
        Ok(without) => aof_warning(&without),
        Err(e) => Some(format!(
            "cannot tell whether Redis keeps an append-only file (INFO persistence): {e}"
        )),
    }
}

/// Connects once with the configured password and sends PING (`check-config --connect`);
/// answers a warning when a Redis restart would lose accepted writes ([`aof_warning`]).
pub async fn ping(url: &str, password: Option<&str>) -> anyhow::Result<Option<String>> {
    use redis::IntoConnectionInfo;
    let mut info = url.into_connection_info().context("invalid redis URL")?;
    if let Some(password) = password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    let client = redis::Client::open(info).context("invalid redis URL")?;
    let attempt = async {
        let mut con = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut con).await?;
        if let Ok(info) = redis::cmd("INFO")
            .arg("cluster")
            .query_async::<String>(&mut con)
            .await
            && is_cluster_node(&info)
        {
            return Ok(Err(cluster_node_message(&super::url::redacted(url))));
        }
        let info = redis::cmd("INFO")
            .arg("persistence")
            .query_async::<String>(&mut con)
            .await;
        Ok::<_, redis::RedisError>(Ok(match info {
            Ok(text) if aof_enabled(&text) == Some(false) => {
                aof_warning(&[super::url::redacted(url).into_owned()])
            }
            Ok(_) => None,
            Err(e) => Some(format!(
                "cannot tell whether Redis keeps an append-only file (INFO persistence): {e}"
            )),
        }))
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(Ok(warning))) => Ok(warning),
        Ok(Ok(Err(refused))) => Err(anyhow::anyhow!("{refused}")),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "cannot reach {}: {e}",
            super::url::redacted(url)
        )),
        Err(_) => Err(anyhow::anyhow!(
            "cannot reach {}: no answer within 3 s",
            super::url::redacted(url)
        )),
    }
}

impl RedisStore {
    /// One Redis. `password` (from `POOLGATE_REDIS_PASSWORD` or `state_password_file`)
    /// overrides one in the URL, so the URL in the config file can stay free of secrets.
    pub async fn connect(
        url: &str,
        password: Option<&str>,
        prefix: &str,
        sink: mpsc::UnboundedSender<BusEvent>,
    ) -> anyhow::Result<Self> {
        use redis::IntoConnectionInfo;
        let mut info = super::url::resp3(url)
            .as_str()
            .into_connection_info()
            .context("invalid redis URL")?;
        if let Some(password) = password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).context("invalid redis URL")?;
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_tx.clone())
            .set_automatic_resubscription()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let con = client
            .get_connection_manager_with_config(config.clone())
            .await
            .with_context(|| format!("cannot connect to {}", super::url::redacted(url)))?;
        let label = super::url::redacted(url).into_owned();
        let mut probe = con.clone();
        if let Ok(info) = redis::cmd("INFO")
            .arg("cluster")
            .query_async::<String>(&mut probe)
            .await
            && is_cluster_node(&info)
        {
            anyhow::bail!("{}", cluster_node_message(&label));
        }
        let one = Renewable::new(con);
        let store = Self::start(Con::One(one.clone()), push_rx, prefix, sink, label).await?;
        tokio::spawn(watchdog(
            std::sync::Arc::downgrade(&store.router),
            one,
            |mut con| async move {
                let ping = redis::cmd("PING").query_async::<String>(&mut con).await;
                ping.is_err_and(|e| refused_authentication(&e))
            },
            move || {
                let (client, config) = (client.clone(), config.clone());
                async move { client.get_connection_manager_with_config(config).await }
            },
            push_tx,
            global_channel(prefix),
            "Redis refused the connection by authentication",
        ));
        Ok(store)
    }

    /// A Redis Cluster (or Valkey cluster) through its seed nodes (`redis://` URLs), with the
    /// bucket-tagged key layout (see the module docs). `password` as for [`Self::connect`].
    pub async fn connect_cluster(
        nodes: &[String],
        password: Option<&str>,
        prefix: &str,
        sink: mpsc::UnboundedSender<BusEvent>,
    ) -> anyhow::Result<Self> {
        // Config validation refuses it too; a store opened otherwise must not mistag either.
        anyhow::ensure!(
            !prefix.contains(['{', '}']),
            "state_prefix must not contain '{{' or '}}' on a Redis Cluster"
        );
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let client = cluster_client(nodes, password)?
            .push_sender(push_tx.clone())
            .build()
            .context("invalid redis-cluster URL")?;
        let con = client
            .get_async_connection()
            .await
            .with_context(|| format!("cannot connect to the cluster at {}", seeds(nodes)))?;
        let cluster = Renewable::new(con);
        let store = Self::start(
            Con::Cluster(cluster.clone()),
            push_rx,
            prefix,
            sink,
            String::new(),
        )
        .await?;
        tokio::spawn(watchdog(
            std::sync::Arc::downgrade(&store.router),
            cluster,
            cluster_timed_out,
            move || {
                let client = client.clone();
                async move { client.get_async_connection().await }
            },
            push_tx,
            global_channel(prefix),
            "the Redis Cluster client stopped answering",
        ));
        Ok(store)
    }

    /// `label` names one Redis in the durability warning (a cluster's nodes name themselves).
    async fn start(
        mut con: Con,
        mut push_rx: mpsc::UnboundedReceiver<redis::PushInfo>,
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
        let check = con.clone();
        tokio::spawn(async move {
            match nodes_without_aof(&check, &label).await {
                Ok(without) => {
                    if let Some(warning) = aof_warning(&without) {
                        tracing::warn!("{warning}");
                    }
                }
                Err(e) => tracing::info!(
                    error = %e,
                    "cannot tell whether Redis keeps an append-only file (INFO persistence)"
                ),
            }
        });
        let moved = Arc::new(dashmap::DashSet::new());
        let router = watches::Watches::new(Subscriptions {
            con: con.clone(),
            keys: keys.clone(),
            moved: moved.clone(),
        });

        let push_router = router.clone();
        let push_channel = channel.clone();
        let push_con = con.clone();
        let push_prefix = prefix.to_owned();
        tokio::spawn(async move {
            let router = push_router;
            while let Some(push) = push_rx.recv().await {
                // A gap in the subscription: what is published until it is back is missed.
                // (The global channel's subscription stands for the connection's; each
                // user's is confirmed by the router.)
                let gap = match push.kind {
                    PushKind::Message | PushKind::SMessage => None,
                    PushKind::Disconnection => {
                        router.disconnected();
                        // A cluster reports each node's connection: the one that dropped may
                        // not carry the global channel, whose re-subscription tells when the
                        // gap is over — so subscribe it again (a no-op where it stands).
                        if let Con::Cluster(_) = push_con {
                            let (mut con, channel) = (push_con.clone(), push_channel.clone());
                            tokio::spawn(async move {
                                while subscribe_global(&mut con, &channel).await.is_err() {
                                    tokio::time::sleep(Duration::from_millis(250)).await;
                                }
                            });
                        }
                        Some(false)
                    }
                    // On a cluster, a master that loses a slot (failover, reshard) unsubscribes
                    // its clients from the slot's sharded channels: subscribe again where the
                    // slot is now (our own unsubscriptions end watches that are gone already).
                    PushKind::SUnsubscribe => {
                        if let Some(user) = push
                            .data
                            .first()
                            .and_then(|c| redis::from_redis_value_ref::<String>(c).ok())
                            .and_then(|c| user_of_channel(&push_prefix, &c))
                        {
                            moved.insert(user_bucket(user));
                            router.lost(user);
                            // The client learns the new owner from a MOVED, but refreshes its
                            // slot map in the background: the subscription may still follow
                            // the old map to the demoted master, which takes it and loses it
                            // when the client drops that connection. So once the topology has
                            // settled, subscribe once more (a no-op for a user no longer
                            // watched; the catch-up covers what the gap missed).
                            let (router, moved) = (router.clone(), moved.clone());
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                moved.insert(user_bucket(user));
                                router.lost(user);
                            });
                        }
                        continue;
                    }
                    PushKind::Subscribe
                        if push.data.first().is_some_and(|c| {
                            redis::from_redis_value_ref::<String>(c)
                                .is_ok_and(|c| c == push_channel)
                        }) =>
                    {
                        Some(true)
                    }
                    _ => continue,
                };
                if let Some(resumed) = gap {
                    if sink.send(BusEvent::BusGap { resumed }).is_err() {
                        return;
                    }
                    continue;
                }
                router
                    .received
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(payload) = push.data.into_iter().nth(1) else {
                    continue;
                };
                let Ok(text) = redis::from_redis_value::<String>(payload) else {
                    continue;
                };
                match serde_json::from_str::<BusEvent>(&text) {
                    Ok(event) => {
                        if sink.send(event).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable event on the bus"),
                }
            }
        });

        let (outbox, mut out_rx) = mpsc::channel::<BusEvent>(OUTBOX_CAPACITY);
        let (revocations, mut rev_rx) = mpsc::channel::<BusEvent>(REVOCATIONS_CAPACITY);
        let mut pub_con = con.clone();
        let out_keys = keys.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    biased;
                    Some(event) = rev_rx.recv() => event,
                    Some(event) = out_rx.recv() => event,
                    else => break,
                };
                let text = serde_json::to_string(&event).expect("events serialize");
                let publish = match event.user() {
                    Some(user) => redis::cmd(out_keys.publish_command())
                        .arg(out_keys.channel(user))
                        .arg(&text)
                        .to_owned(),
                    None => redis::cmd("PUBLISH")
                        .arg(global_channel(&out_keys.prefix))
                        .arg(&text)
                        .to_owned(),
                };
                // Retry briefly across a reconnect; an event lost here is a missed push, and
                // clients can always ask for the task's state.
                for attempt in 0..3 {
                    match publish.query_async::<()>(&mut pub_con).await {
                        Ok(()) => break,
                        Err(e) if attempt == 2 => tracing::warn!(error = %e, "event not published"),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
        });

        Ok(RedisStore {
            con,
            keys,
            outbox,
            revocations,
            router,
            origin: rand::random(),
            // KEYS: the key's latest, the task, the user's tasks, the active set, the ended
            // index. ARGV: the expected latest ('' for none), id, body, created (ms), 'active'
            // or 'done', the bus channel, the announcement, the publish command. The
            // compare-and-set of a key's latest task.
            task_create: Script::new(
                r"local cur = redis.call('GET', KEYS[1]) or ''
                  if cur ~= ARGV[1] then return 0 end
                  redis.call('SET', KEYS[2], ARGV[3])
                  redis.call('SET', KEYS[1], ARGV[2])
                  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
                  if ARGV[5] == 'active' then redis.call('SADD', KEYS[4], ARGV[2])
                  else redis.call('SREM', KEYS[4], ARGV[2])
                    redis.call('ZADD', KEYS[5], ARGV[4], ARGV[2]) end
                  redis.call(ARGV[8], ARGV[6], ARGV[7])
                  return 1",
            ),
            // KEYS: the task, the active set, the ended index. ARGV: id, body, 'active' or
            // 'done', created (ms), the bus channel, the announcement, the publish command,
            // the status. Only a stored task is overwritten (0 when there is none), and not
            // one that has ended with another status (2: an end is final).
            task_update: Script::new(
                r"local cur = redis.call('GET', KEYS[1])
                  if not cur then return 0 end
                  local was = cjson.decode(cur)['status']
                  if was ~= 'PENDING' and was ~= 'RUNNING' and was ~= ARGV[8] then return 2 end
                  redis.call('SET', KEYS[1], ARGV[2])
                  if ARGV[3] == 'active' then redis.call('SADD', KEYS[2], ARGV[1])
                  else redis.call('SREM', KEYS[2], ARGV[1])
                    redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1]) end
                  redis.call(ARGV[7], ARGV[5], ARGV[6])
                  return 1",
            ),
            totp_advance: Script::new(
                r"local cur = redis.call('GET', KEYS[1])
                  if (not cur) or tonumber(ARGV[1]) > tonumber(cur) then
                    redis.call('SET', KEYS[1], ARGV[1]) return 1 end
                  return 0",
            ),
            lease_acquire: Script::new(
                r"local cur = redis.call('GET', KEYS[1])
                  if (not cur) or cur == ARGV[1] then
                    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
                  return 0",
            ),
            lease_release: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
                  return 0",
            ),
            // The window starts with the key: a count taken back to 0 keeps its window.
            failures_add: Script::new(
                r"local n = redis.call('INCR', KEYS[1])
                  if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
                  return n",
            ),
            failures_undo: Script::new(
                r"local n = tonumber(redis.call('GET', KEYS[1]))
                  if n and n > 0 then redis.call('DECR', KEYS[1]) end
                  return 0",
            ),
            backoff_slot: Script::new(
                r"local now = tonumber(ARGV[1])
                  local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
                  if slot - now > tonumber(ARGV[3]) then return {0, slot} end
                  redis.call('SET', KEYS[1], slot + tonumber(ARGV[2]), 'PX', ARGV[4])
                  return {1, slot}",
            ),
            // KEYS: the session, the user's session set. ARGV: hash, user, created, last
            // active, peer, ttl, cap, the session key prefix. Stores the session, drops set
            // members whose session is gone, and past the cap deletes the least recently
            // active others; returns their hashes. The set then expires with its last session.
            session_put: Script::new(&format!(
                r"{LUA_NOW}
                  local expires = tonumber(ARGV[4]) + tonumber(ARGV[6])
                  redis.call('HSET', KEYS[1], 'user_id', ARGV[2], 'created_ms', ARGV[3],
                    'last_active_ms', ARGV[4], 'peer', ARGV[5])
                  redis.call('PEXPIREAT', KEYS[1], expires)
                  redis.call('SADD', KEYS[2], ARGV[1])
                  local others = {{}}
                  for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do
                    if m ~= ARGV[1] then
                      local h = redis.call('HMGET', ARGV[8] .. m, 'last_active_ms', 'created_ms')
                      if h[1] then
                        others[#others + 1] = {{m, tonumber(h[1]), tonumber(h[2]) or 0}}
                      else
                        redis.call('SREM', KEYS[2], m)
                      end
                    end
                  end
                  local keep = tonumber(ARGV[7]) - 1
                  local evicted = {{}}
                  table.sort(others, function(a, b)
                    if a[2] ~= b[2] then return a[2] < b[2] end
                    return a[3] < b[3]
                  end)
                  local last = expires
                  for i, o in ipairs(others) do
                    if i <= #others - keep then
                      redis.call('DEL', ARGV[8] .. o[1])
                      redis.call('SREM', KEYS[2], o[1])
                      evicted[#evicted + 1] = o[1]
                    else
                      local left = redis.call('PTTL', ARGV[8] .. o[1])
                      if left == -1 then last = nil
                      elseif last and now + left > last then last = now + left end
                    end
                  end
                  if last then redis.call('PEXPIREAT', KEYS[2], last)
                  else redis.call('PERSIST', KEYS[2]) end
                  return evicted",
            )),
            // KEYS: sessions. ARGV: ttl, the session key prefix, the user set key prefix, then
            // one activity time per key. Returns the (1-based) positions of the sessions that
            // are gone. A session that moves takes its user's set along (put back if missing).
            session_touch: Script::new(&format!(
                r"{LUA_NOW}
                  {LUA_EXTEND}
                  local ttl = tonumber(ARGV[1])
                  local missing = {{}}
                  for i, key in ipairs(KEYS) do
                    local h = redis.call('HMGET', key, 'last_active_ms', 'user_id')
                    local cur = tonumber(h[1])
                    if not cur then
                      missing[#missing + 1] = i
                    else
                      local at = tonumber(ARGV[i + 3])
                      if at > cur then
                        redis.call('HSET', key, 'last_active_ms', ARGV[i + 3])
                        redis.call('PEXPIREAT', key, at + ttl)
                        local set = ARGV[3] .. h[2]
                        if redis.call('SADD', set, string.sub(key, #ARGV[2] + 1)) == 1
                          and redis.call('SCARD', set) == 1 then
                          redis.call('PEXPIREAT', set, at + ttl)
                        else
                          extend(set, at + ttl)
                        end
                      end
                    end
                  end
                  return missing",
            )),
            // KEYS: the session. ARGV: the hash, the user set key prefix.
            session_delete: Script::new(
                r"local user = redis.call('HGET', KEYS[1], 'user_id')
                  redis.call('DEL', KEYS[1])
                  if user then redis.call('SREM', ARGV[2] .. user, ARGV[1]) end
                  return 0",
            ),
            // KEYS: the user's session set. ARGV: the session key prefix. Returns the hashes
            // of the sessions that were there.
            session_delete_user: Script::new(
                r"local live = {}
                  for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
                    if redis.call('DEL', ARGV[1] .. m) == 1 then live[#live + 1] = m end
                  end
                  redis.call('DEL', KEYS[1])
                  return live",
            ),
            // KEYS: the challenge, its wrong-code count. The count lives and dies with the
            // challenge; -1 when there is none.
            mfa_fail: Script::new(
                r"local left = redis.call('PTTL', KEYS[1])
                  if left == -2 then return -1 end
                  local n = redis.call('INCR', KEYS[2])
                  if left > 0 then redis.call('PEXPIRE', KEYS[2], left) end
                  return n",
            ),
            // KEYS: the per-user revocations. ARGV: user, before. Only moves forward.
            jwt_revoke_user: Script::new(
                r"local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
                  if (not cur) or tonumber(ARGV[2]) > cur then
                    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
                  return 0",
            ),
            // KEYS: the assignment, the index. ARGV: body, index member, the bus channel, the
            // announcement, the publish command.
            assignment_create: Script::new(
                r"if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
                  redis.call('SADD', KEYS[2], ARGV[2])
                  redis.call(ARGV[5], ARGV[3], ARGV[4])
                  return 1",
            ),
            // KEYS: the assignment, the index. ARGV: index member, the bus channel, the
            // announcement, the publish command. A script, not MULTI: a transaction's EXEC reply on the connection
            // that is also subscribed to the bus could be taken for the announcement's push.
            assignment_remove: Script::new(
                r"local body = redis.call('GET', KEYS[1])
                  redis.call('DEL', KEYS[1])
                  redis.call('SREM', KEYS[2], ARGV[1])
                  redis.call(ARGV[4], ARGV[2], ARGV[3])
                  return body",
            ),
            // KEYS: the task, the index of ended tasks. ARGV: the id, what the bucket's latest
            // and user task index keys begin with. Deletes an ended task unless it is the
            // latest of its key (then it stays indexed and is looked at again by the next
            // sweep, once a newer task replaced it).
            task_sweep: Script::new(
                r"local body = redis.call('GET', KEYS[1])
                  if not body then redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end
                  local t = cjson.decode(body)
                  if t.status == 'PENDING' or t.status == 'RUNNING' then
                    redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end
                  local latest = ARGV[2] .. t.user_id .. ':' .. t.pool_id .. ':' .. t.kind
                  if redis.call('GET', latest) == ARGV[1] then return 0 end
                  redis.call('DEL', KEYS[1])
                  redis.call('ZREM', ARGV[3] .. t.user_id, ARGV[1])
                  redis.call('ZREM', KEYS[2], ARGV[1])
                  return 1",
            ),
        })
    }

    /// The announcement a write of `user`'s records (and of task `task`) publishes with it.
    fn announcement(&self, user: Uuid, task: Option<Uuid>) -> String {
        serde_json::to_string(&BusEvent::Invalidate {
            origin: self.origin,
            user_id: user,
            task_id: task,
        })
        .expect("events serialize")
    }

    fn k(&self, parts: &[&str]) -> String {
        self.keys.k(parts)
    }

    fn con(&self) -> Con {
        self.con.clone()
    }

    /// Every key of the namespace matching a pattern (SCAN: for sweeps, counts and the admin
    /// view only). On a cluster, every master is scanned.
    async fn keys_matching(&self, parts: &[&str]) -> StoreResult<Vec<String>> {
        // The prefix is the operator's: glob characters in it are literal.
        let pattern = key(&glob_literal(&self.keys.prefix), parts);
        let mut keys = Vec::new();
        match &self.con {
            Con::One(con) => {
                let mut con = con.get();
                let mut iter = con.scan_match::<_, String>(pattern).await?;
                while let Some(key) = futures_util::StreamExt::next(&mut iter).await {
                    keys.push(key?);
                }
            }
            Con::Cluster(con) => {
                let mut con = con.get();
                for (host, port) in masters(&mut con).await? {
                    let mut cursor = 0u64;
                    loop {
                        let page = con
                            .route_command(
                                redis::cmd("SCAN")
                                    .arg(cursor)
                                    .arg("MATCH")
                                    .arg(&pattern)
                                    .arg("COUNT")
                                    .arg(1000)
                                    .to_owned(),
                                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                                    host: host.clone(),
                                    port,
                                }),
                            )
                            .await?;
                        let (next, found): (u64, Vec<String>) = redis::from_redis_value(page)?;
                        keys.extend(found);
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
                }
            }
        }
        Ok(keys)
    }

    /// Runs `read` for every bucket (a few at once on a cluster) and gathers what they return.
    async fn each_bucket<T, F>(&self, read: impl Fn(u16) -> F) -> StoreResult<Vec<T>>
    where
        F: Future<Output = StoreResult<Vec<T>>>,
    {
        use futures_util::{StreamExt, TryStreamExt};
        let found: Vec<Vec<T>> = futures_util::stream::iter(self.keys.buckets())
            .map(read)
            .buffer_unordered(BUCKETS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// Once per store on one Redis: puts the ended tasks written before the `done_tasks`
    /// index existed into it, so the retention sweep finds them too. (A cluster's layout is
    /// newer than the index.)
    async fn index_done_tasks(&self) -> StoreResult<()> {
        if self.keys.cluster {
            return Ok(());
        }
        let flag = self.k(&["done_tasks", "indexed"]);
        let mut con = self.con();
        if con.exists(&flag).await? {
            return Ok(());
        }
        let keys = self.keys_matching(&["task", "*"]).await?;
        for chunk in keys.chunks(TOUCH_CHUNK) {
            let mut pipe = redis::pipe();
            for task in self.tasks_at(chunk.to_vec()).await? {
                if task.status.is_done() {
                    pipe.zadd(
                        self.keys.done_tasks(0),
                        task.id.to_string(),
                        task.created.timestamp_millis(),
                    )
                    .ignore();
                }
            }
            pipe.query_async::<()>(&mut con).await?;
        }
        con.set::<_, _, ()>(&flag, 1).await?;
        Ok(())
    }

    /// The tasks stored at these keys (missing ones skipped).
    async fn tasks_at(&self, keys: Vec<String>) -> StoreResult<Vec<Task>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let bodies: Vec<Option<String>> = self.con().mget(keys).await?;
        bodies
            .into_iter()
            .flatten()
            .map(|b| task_from_json(&b))
            .collect()
    }

    /// The tasks of a bucket with these ids.
    async fn tasks_by_ids(&self, bucket: u16, ids: &[String]) -> StoreResult<Vec<Task>> {
        self.tasks_at(ids.iter().map(|id| self.keys.task(bucket, id)).collect())
            .await
    }
}

/// The masters of a cluster, as (host, port).
async fn masters(con: &mut ClusterConnection) -> StoreResult<Vec<(String, u16)>> {
    nodes(con, false).await
}

/// The cluster's nodes (`host`, `port`) by `CLUSTER SLOTS`: the masters serving slots, and
/// with `replicas` their replicas too.
async fn nodes(con: &mut ClusterConnection, replicas: bool) -> StoreResult<Vec<(String, u16)>> {
    let slots = con
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").to_owned(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let ranges: Vec<Vec<Value>> = redis::from_redis_value(slots)?;
    let mut found = std::collections::BTreeSet::new();
    for range in ranges {
        // [start, end, [host, port, id, …], replicas…]
        for node in range
            .into_iter()
            .skip(2)
            .take(if replicas { usize::MAX } else { 1 })
        {
            let node: Vec<Value> = redis::from_redis_value(node)?;
            let mut node = node.into_iter();
            if let (Some(host), Some(port)) = (node.next(), node.next()) {
                found.insert((
                    redis::from_redis_value::<String>(host)?,
                    redis::from_redis_value::<u16>(port)?,
                ));
            }
        }
    }
    Ok(found.into_iter().collect())
}

/// Whether `INFO cluster` says the node is in cluster mode.
fn is_cluster_node(info: &str) -> bool {
    info.lines().any(|l| l.trim() == "cluster_enabled:1")
}

/// Why a `redis://` state pointing at a cluster node is refused (it would answer MOVED to most
/// keys).
fn cluster_node_message(label: &str) -> String {
    format!(
        "{label} is a node of a Redis Cluster: use state = \"redis-cluster://host:port,...\" \
         (its nodes as seeds)"
    )
}

/// Whether a node's `INFO persistence` says it keeps an append-only file.
fn aof_enabled(info: &str) -> Option<bool> {
    info.lines()
        .find_map(|l| l.strip_prefix("aof_enabled:"))
        .map(|v| v.trim() == "1")
}

/// The nodes (`host:port`, or the URL's for one Redis) that keep no append-only file: a
/// restart of one loses every write it acknowledged since its last snapshot. An error when
/// a node's `INFO` cannot be read (down, or an ACL that denies it): then nobody can tell.
async fn nodes_without_aof(con: &Con, one: &str) -> StoreResult<Vec<String>> {
    let info = redis::cmd("INFO").arg("persistence").to_owned();
    let mut without = Vec::new();
    match con {
        Con::One(c) => {
            let text: String = info.query_async(&mut c.get()).await?;
            if aof_enabled(&text) == Some(false) {
                without.push(one.to_owned());
            }
        }
        Con::Cluster(c) => {
            let mut c = c.get();
            for (host, port) in nodes(&mut c, true).await? {
                let reply = c
                    .route_command(
                        info.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        }),
                    )
                    .await?;
                let text: String = redis::from_redis_value(reply)?;
                if aof_enabled(&text) == Some(false) {
                    without.push(format!("{host}:{port}"));
                }
            }
        }
    }
    Ok(without)
}

/// What `serve` logs and `check-config --connect` prints when Redis would lose accepted
/// writes on a restart; `None` when every node keeps an append-only file.
pub fn aof_warning(without: &[String]) -> Option<String> {
    (!without.is_empty()).then(|| {
        format!(
            "{} keep{} no append-only file (appendonly no): a Redis that crashes or is killed \
             loses every write since its last snapshot (sessions, sign-outs, tasks, machine \
             assignments); set appendonly yes (README.rst: State and restarts)",
            without.join(", "),
            if without.len() == 1 { "s" } else { "" }
        )
    })
}

#[async_trait]
impl Upkeep for RedisStore {
    async fn ping(&self) -> StoreResult<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.con())
            .await?;
        Ok(())
    }

    /// On a cluster, each master that `CLUSTER SLOTS` names is asked on its own (a PING to
    /// "the cluster" is answered by whichever node is up).
    async fn health(&self) -> StoreResult<Option<String>> {
        let Con::Cluster(con) = &self.con else {
            return self.ping().await.map(|()| None);
        };
        let mut con = con.get();
        let masters = masters(&mut con).await?;
        // All at once, each within a second.
        let answers = futures_util::future::join_all(masters.iter().map(|(host, port)| {
            let mut con = con.clone();
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            });
            async move {
                let ping = con.route_command(redis::cmd("PING").to_owned(), route);
                matches!(
                    tokio::time::timeout(Duration::from_secs(1), ping).await,
                    Ok(Ok(_))
                )
            }
        }))
        .await;
        let down: Vec<String> = masters
            .iter()
            .zip(answers)
            .filter(|(_, answered)| !answered)
            .map(|((host, port), _)| format!("{host}:{port}"))
            .collect();
        if down.len() == masters.len() {
            return Err(StoreError(anyhow::anyhow!(
                "no master of the cluster answers"
            )));
        }
        // A cluster that requires full coverage refuses every key once a slot has no master.
        let state: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut con)
            .await?;
        if state.lines().any(|l| l.trim() == "cluster_state:fail") {
            return Err(StoreError(anyhow::anyhow!(
                "the cluster is down (cluster_state:fail)"
            )));
        }
        Ok((!down.is_empty()).then(|| {
            format!(
                "{} of {} cluster masters unreachable ({})",
                down.len(),
                masters.len(),
                down.join(", ")
            )
        }))
    }

    /// Every record with an expiry is a key with a TTL: nothing is left to delete.
    async fn sweep_expired(&self) -> StoreResult<usize> {
        Ok(0)
    }

    async fn counts(&self) -> StoreResult<StoreCounts> {
        let sets = self.keys_matching(&["user_sessions", "*"]).await?;
        let mut session_index = 0;
        let mut con = self.con();
        for set in &sets {
            session_index += con.scard::<_, usize>(set).await?;
        }
        Ok(StoreCounts {
            sessions: self.keys_matching(&["session", "*"]).await?.len(),
            session_index,
            tasks: self.keys_matching(&["task", "*"]).await?.len(),
            failure_counters: self.keys_matching(&["failures", "*"]).await?.len()
                + self.keys_matching(&["backoff", "*"]).await?.len(),
        })
    }
}

impl Bus for RedisStore {
    fn is_shared(&self) -> bool {
        true
    }

    fn publish(&self, event: BusEvent) {
        let lane = match event {
            BusEvent::SessionRevoked { .. }
            | BusEvent::SessionsEnded { .. }
            | BusEvent::JwtRevoked { .. }
            | BusEvent::JwtUserRevoked { .. } => &self.revocations,
            _ => &self.outbox,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = lane.try_send(event) {
            let shed = self
                .router
                .shed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            // 1, 2, 4, 8…: the log says it happens without flooding while it does.
            if shed.is_power_of_two() {
                tracing::warn!(
                    shed,
                    "Redis is not keeping up with the events to publish: events shed (clients can ask for a task's state)"
                );
            }
        }
    }

    fn announced_writes_origin(&self) -> Option<u64> {
        Some(self.origin)
    }

    fn router(&self) -> Option<Arc<watches::Watches>> {
        Some(self.router.clone())
    }
}

#[async_trait]
impl Sessions for RedisStore {
    fn token_fits(&self, user: Uuid, hash: &TokenHash) -> bool {
        !self.keys.cluster || in_users_bucket(user, hash)
    }

    async fn session_put(
        &self,
        rec: &SessionRecord,
        ttl: Duration,
        max_per_user: usize,
    ) -> StoreResult<Vec<TokenHash>> {
        if !self.token_fits(rec.user_id, &rec.hash) {
            return Err(StoreError(anyhow::anyhow!(
                "a session token outside its user's bucket (see Store::token_fits)"
            )));
        }
        let evicted: Vec<String> = self
            .session_put
            .key(self.keys.session(&rec.hash))
            .key(self.keys.user_sessions(rec.user_id))
            .arg(hex::encode(rec.hash))
            .arg(rec.user_id.to_string())
            .arg(rec.created_ms)
            .arg(rec.last_active_ms)
            .arg(&rec.peer)
            .arg(ttl.as_millis() as u64)
            .arg(max_per_user.max(1))
            .arg(self.keys.session_prefix(user_bucket(rec.user_id)))
            .invoke_async(&mut self.con())
            .await?;
        Ok(evicted
            .iter()
            .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
            .collect())
    }

    async fn session_get(&self, hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        let fields: std::collections::HashMap<String, String> =
            self.con().hgetall(self.keys.session(hash)).await?;
        let get = |f: &str| fields.get(f).and_then(|v| v.parse::<u64>().ok());
        Ok(
            match (
                fields.get("user_id"),
                get("created_ms"),
                get("last_active_ms"),
            ) {
                (Some(user), Some(created_ms), Some(last_active_ms)) => Some(SessionRecord {
                    hash: *hash,
                    user_id: user.parse().map_err(anyhow::Error::from)?,
                    created_ms,
                    last_active_ms,
                    peer: fields.get("peer").cloned().unwrap_or_default(),
                }),
                _ => None,
            },
        )
    }

    async fn session_touch(
        &self,
        touches: &[(TokenHash, u64)],
        ttl: Duration,
    ) -> StoreResult<Vec<TokenHash>> {
        let mut con = self.con();
        let mut missing = Vec::new();
        // One script call touches the sessions of one bucket (one slot on a cluster).
        let mut by_bucket: std::collections::BTreeMap<u16, Vec<(TokenHash, u64)>> =
            std::collections::BTreeMap::new();
        for touch in touches {
            let bucket = if self.keys.cluster {
                hash_bucket(&touch.0)
            } else {
                0
            };
            by_bucket.entry(bucket).or_default().push(*touch);
        }
        for (bucket, touches) in by_bucket {
            for chunk in touches.chunks(TOUCH_CHUNK) {
                let mut call = self.session_touch.prepare_invoke();
                call.arg(ttl.as_millis() as u64)
                    .arg(self.keys.session_prefix(bucket))
                    .arg(self.keys.user_sessions_prefix(bucket));
                for (hash, at) in chunk {
                    call.key(self.keys.session(hash)).arg(*at);
                }
                let gone: Vec<usize> = call.invoke_async(&mut con).await?;
                missing.extend(
                    gone.into_iter()
                        .filter_map(|i| chunk.get(i.checked_sub(1)?).map(|(h, _)| *h)),
                );
            }
        }
        Ok(missing)
    }

    async fn session_delete(&self, hash: &TokenHash) -> StoreResult<()> {
        self.session_delete
            .key(self.keys.session(hash))
            .arg(hex::encode(hash))
            .arg(self.keys.user_sessions_prefix(hash_bucket(hash)))
            .invoke_async::<i64>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn session_delete_user(&self, user: Uuid) -> StoreResult<Vec<TokenHash>> {
        let live: Vec<String> = self
            .session_delete_user
            .key(self.keys.user_sessions(user))
            .arg(self.keys.session_prefix(user_bucket(user)))
            .invoke_async(&mut self.con())
            .await?;
        Ok(live
            .iter()
            .filter_map(|m| hex::decode(m).ok()?.try_into().ok())
            .collect())
    }

    async fn sessions_all(&self) -> StoreResult<Vec<SessionRecord>> {
        let keys = self.keys_matching(&["session", "*"]).await?;
        let mut out = Vec::new();
        for key in keys {
            let Some(hash) = key
                .rsplit(':')
                .next()
                .and_then(|h| hex::decode(h).ok())
                .and_then(|h| TokenHash::try_from(h).ok())
            else {
                continue;
            };
            if let Some(rec) = self.session_get(&hash).await? {
                out.push(rec);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Mfa for RedisStore {
    async fn mfa_put(&self, hash: &TokenHash, rec: &MfaRecord) -> StoreResult<()> {
        let key = self.keys.mfa(hash);
        let mut con = self.con();
        redis::pipe()
            .atomic()
            .set(&key, serde_json::to_string(rec)?)
            .ignore()
            .pexpire_at(&key, rec.expires_ms as i64)
            .ignore()
            .del(self.keys.mfa_attempts(hash))
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        // The user's earlier challenge of this kind goes: each writer's SET … GET sees the one
        // before it, so of concurrent writers only the last one's challenge stays.
        let earlier: Option<String> = redis::cmd("SET")
            .arg(self.keys.mfa_latest(rec.user_id, rec.password_ok))
            .arg(hex::encode(hash))
            .arg("PXAT")
            .arg(rec.expires_ms)
            .arg("GET")
            .query_async(&mut con)
            .await?;
        let earlier = earlier.and_then(|h| hex::decode(h).ok());
        if let Some(earlier) = earlier.and_then(|h| TokenHash::try_from(h.as_slice()).ok())
            && earlier != *hash
        {
            redis::pipe()
                .atomic()
                .del(self.keys.mfa(&earlier))
                .ignore()
                .del(self.keys.mfa_attempts(&earlier))
                .ignore()
                .query_async::<()>(&mut con)
                .await?;
        }
        Ok(())
    }

    async fn mfa_get(&self, hash: &TokenHash) -> StoreResult<Option<MfaRecord>> {
        let (body, failed): (Option<String>, Option<u32>) = redis::pipe()
            .atomic()
            .get(self.keys.mfa(hash))
            .get(self.keys.mfa_attempts(hash))
            .query_async(&mut self.con())
            .await?;
        let Some(body) = body else {
            return Ok(None);
        };
        let mut rec: MfaRecord = serde_json::from_str(&body)?;
        rec.attempts = rec.attempts.saturating_add(failed.unwrap_or(0));
        Ok(Some(rec))
    }

    async fn mfa_take(&self, hash: &TokenHash) -> StoreResult<bool> {
        let (taken, _): (i64, i64) = redis::pipe()
            .atomic()
            .del(self.keys.mfa(hash))
            .del(self.keys.mfa_attempts(hash))
            .query_async(&mut self.con())
            .await?;
        Ok(taken == 1)
    }

    async fn mfa_fail(&self, hash: &TokenHash) -> StoreResult<u32> {
        let n: i64 = self
            .mfa_fail
            .key(self.keys.mfa(hash))
            .key(self.keys.mfa_attempts(hash))
            .invoke_async(&mut self.con())
            .await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn totp_advance(&self, user: Uuid, step: u64) -> StoreResult<bool> {
        let n: i64 = self
            .totp_advance
            .key(self.k(&["totp", &user.to_string()]))
            .arg(step)
            .invoke_async(&mut self.con())
            .await?;
        Ok(n == 1)
    }
}

#[async_trait]
impl Directory for RedisStore {
    async fn directory_user_put(&self, user: &DirectoryUser) -> StoreResult<()> {
        self.con()
            .set::<_, _, ()>(
                self.k(&["directory_user", &user.id.to_string()]),
                serde_json::to_string(user)?,
            )
            .await?;
        Ok(())
    }

    async fn directory_user_get(&self, id: Uuid) -> StoreResult<Option<DirectoryUser>> {
        let body: Option<String> = self
            .con()
            .get(self.k(&["directory_user", &id.to_string()]))
            .await?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn directory_users(&self) -> StoreResult<Vec<DirectoryUser>> {
        let keys = self.keys_matching(&["directory_user", "*"]).await?;
        let mut out = Vec::with_capacity(keys.len());
        // MGET in pages (on a cluster the client splits each page by slot).
        for page in keys.chunks(500) {
            let bodies: Vec<Option<String>> = self.con().mget(page).await?;
            for body in bodies.into_iter().flatten() {
                out.push(serde_json::from_str(&body)?);
            }
        }
        Ok(out)
    }

    async fn directory_totp_put(&self, id: Uuid, secret: Option<&str>) -> StoreResult<()> {
        let key = self.k(&["directory_totp", &id.to_string()]);
        match secret {
            Some(secret) => self.con().set::<_, _, ()>(key, secret).await?,
            None => self.con().del::<_, ()>(key).await?,
        }
        Ok(())
    }

    async fn directory_totp_get(&self, id: Uuid) -> StoreResult<Option<String>> {
        Ok(self
            .con()
            .get(self.k(&["directory_totp", &id.to_string()]))
            .await?)
    }

    async fn directory_name_put(&self, name: &str, id: Uuid) -> StoreResult<()> {
        self.con()
            .set::<_, _, ()>(self.k(&["directory_name", name]), id.to_string())
            .await?;
        Ok(())
    }

    async fn directory_name_get(&self, name: &str) -> StoreResult<Option<Uuid>> {
        let id: Option<String> = self.con().get(self.k(&["directory_name", name])).await?;
        Ok(id.and_then(|id| Uuid::parse_str(&id).ok()))
    }

    async fn directory_recheck_claim(
        &self,
        user: Uuid,
        now_ms: u64,
        period: Duration,
    ) -> StoreResult<Result<(), u64>> {
        // A key alone (no tag): SET NX with the claim's expiry is the atomic claim.
        let key = self.k(&["directory_recheck", &user.to_string()]);
        let taken: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(now_ms)
            .arg("NX")
            .arg("PX")
            .arg(period.as_millis().max(1) as u64)
            .query_async(&mut self.con())
            .await?;
        if taken.is_some() {
            return Ok(Ok(()));
        }
        // Whose claim covers it is for the caller's bookkeeping only: one that lapsed in
        // between reads as made now.
        let at: Option<u64> = self.con().get(&key).await?;
        Ok(Err(at.unwrap_or(now_ms)))
    }
}

#[async_trait]
impl JwtRevocations for RedisStore {
    async fn jwt_revoke(&self, jti: &str, exp: i64) -> StoreResult<()> {
        // One command, so the key never exists without its expiry.
        redis::cmd("SET")
            .arg(self.k(&["jwt_revoked", jti]))
            .arg(exp)
            .arg("EXAT")
            .arg((exp + JWT_REVOCATION_MARGIN_S).max(1))
            .query_async::<()>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn jwt_revocations(&self) -> StoreResult<Vec<(String, i64)>> {
        let prefix = self.k(&["jwt_revoked", ""]);
        let keys = self.keys_matching(&["jwt_revoked", "*"]).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let exps: Vec<Option<i64>> = self.con().mget(&keys).await?;
        Ok(keys
            .into_iter()
            .zip(exps)
            .filter_map(|(key, exp)| Some((key.strip_prefix(&prefix)?.to_owned(), exp?)))
            .collect())
    }

    async fn jwt_revoke_user(&self, user: Uuid, before: i64) -> StoreResult<()> {
        self.jwt_revoke_user
            .key(self.k(&["jwt_users"]))
            .arg(user.to_string())
            .arg(before)
            .invoke_async::<i64>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn jwt_user_revocations(&self) -> StoreResult<Vec<(Uuid, i64)>> {
        let all: std::collections::HashMap<String, i64> =
            self.con().hgetall(self.k(&["jwt_users"])).await?;
        Ok(all
            .into_iter()
            .filter_map(|(u, b)| Some((u.parse().ok()?, b)))
            .collect())
    }
}

#[async_trait]
impl Tasks for RedisStore {
    async fn task_get(&self, user: Uuid, id: Uuid) -> StoreResult<Option<Task>> {
        let body: Option<String> = self
            .con()
            .get(self.keys.task(user_bucket(user), &id.to_string()))
            .await?;
        Ok(body
            .map(|b| task_from_json(&b))
            .transpose()?
            .filter(|t| t.user_id == user))
    }

    async fn task_latest(&self, key: TaskKey) -> StoreResult<Option<Task>> {
        let id: Option<String> = self.con().get(self.keys.latest(key)).await?;
        match id {
            Some(id) => Ok(self.tasks_by_ids(user_bucket(key.0), &[id]).await?.pop()),
            None => Ok(None),
        }
    }

    async fn task_create(&self, expected: Option<Uuid>, task: &Task) -> StoreResult<bool> {
        let id = task.id.to_string();
        let bucket = user_bucket(task.user_id);
        let n: i64 = self
            .task_create
            .key(self.keys.latest((task.user_id, task.pool_id, task.kind)))
            .key(self.keys.task(bucket, &id))
            .key(self.keys.user_tasks(task.user_id))
            .key(self.keys.active_tasks(bucket))
            .key(self.keys.done_tasks(bucket))
            .arg(expected.map(|e| e.to_string()).unwrap_or_default())
            .arg(&id)
            .arg(task_to_json(task))
            .arg(task.created.timestamp_millis())
            .arg(if task.status.is_active() {
                "active"
            } else {
                "done"
            })
            .arg(self.keys.channel(task.user_id))
            .arg(self.announcement(task.user_id, None))
            .arg(self.keys.publish_command())
            .invoke_async(&mut self.con())
            .await?;
        Ok(n == 1)
    }

    async fn task_update(&self, task: &Task) -> StoreResult<bool> {
        let id = task.id.to_string();
        let bucket = user_bucket(task.user_id);
        let written = self
            .task_update
            .key(self.keys.task(bucket, &id))
            .key(self.keys.active_tasks(bucket))
            .key(self.keys.done_tasks(bucket))
            .arg(&id)
            .arg(task_to_json(task))
            .arg(if task.status.is_active() {
                "active"
            } else {
                "done"
            })
            .arg(task.created.timestamp_millis())
            .arg(self.keys.channel(task.user_id))
            .arg(self.announcement(task.user_id, Some(task.id)))
            .arg(self.keys.publish_command())
            .arg(task.status.as_str())
            .invoke_async::<i64>(&mut self.con())
            .await?;
        Ok(written != 2)
    }

    async fn tasks_of_user(&self, user: Uuid, limit: usize) -> StoreResult<Vec<Task>> {
        let ids: Vec<String> = self
            .con()
            .zrevrange(self.keys.user_tasks(user), 0, limit as isize - 1)
            .await?;
        self.tasks_by_ids(user_bucket(user), &ids).await
    }

    async fn tasks_active(&self) -> StoreResult<Vec<Task>> {
        self.each_bucket(|bucket| async move {
            let ids: Vec<String> = self.con().smembers(self.keys.active_tasks(bucket)).await?;
            self.tasks_by_ids(bucket, &ids).await
        })
        .await
    }

    async fn tasks_sweep(&self, cutoff_ms: u64) -> StoreResult<usize> {
        self.index_done_tasks().await?;
        let deleted = self
            .each_bucket(|bucket| async move {
                let index = self.keys.done_tasks(bucket);
                let mut con = self.con();
                // Created strictly before the cutoff.
                let ids: Vec<String> = con
                    .zrangebyscore(&index, "-inf", format!("({cutoff_ms}"))
                    .await?;
                let mut deleted = Vec::new();
                for chunk in ids.chunks(TOUCH_CHUNK) {
                    let mut pipe = redis::pipe();
                    // EVALSHA in a pipeline needs the script loaded first.
                    pipe.load_script(&self.task_sweep).ignore();
                    for id in chunk {
                        pipe.invoke_script(
                            self.task_sweep
                                .key(self.keys.task(bucket, id))
                                .key(&index)
                                .arg(id)
                                .arg(self.keys.latest_prefix(bucket))
                                .arg(self.keys.user_tasks_prefix(bucket)),
                        );
                    }
                    let done: Vec<i64> = pipe.query_async(&mut con).await?;
                    deleted.extend(done.into_iter().filter(|n| *n == 1));
                }
                Ok(deleted)
            })
            .await?;
        Ok(deleted.len())
    }

    async fn lease_acquire(&self, task: Uuid, owner: &str, ttl: Duration) -> StoreResult<bool> {
        let n: i64 = self
            .lease_acquire
            .key(self.k(&["lease", &task.to_string()]))
            .arg(owner)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.con())
            .await?;
        Ok(n == 1)
    }

    async fn lease_release(&self, task: Uuid, owner: &str) -> StoreResult<()> {
        self.lease_release
            .key(self.k(&["lease", &task.to_string()]))
            .arg(owner)
            .invoke_async::<i64>(&mut self.con())
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Assignments for RedisStore {
    async fn assignment_get(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>> {
        let body: Option<String> = self
            .con()
            .get(
                self.keys
                    .assignment(user_bucket(user), &format!("{user}:{pool}")),
            )
            .await?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn assignment_create(&self, a: &Assignment) -> StoreResult<bool> {
        let member = format!("{}:{}", a.user_id, a.pool_id);
        let bucket = user_bucket(a.user_id);
        // One script: an assignment is never stored without its index entry, or the lease
        // sweep (which lists the index) would never give its machine back.
        let created: i64 = self
            .assignment_create
            .key(self.keys.assignment(bucket, &member))
            .key(self.keys.assignments(bucket))
            .arg(serde_json::to_string(a)?)
            .arg(&member)
            .arg(self.keys.channel(a.user_id))
            .arg(self.announcement(a.user_id, None))
            .arg(self.keys.publish_command())
            .invoke_async(&mut self.con())
            .await?;
        Ok(created == 1)
    }

    async fn assignment_remove(&self, user: Uuid, pool: Uuid) -> StoreResult<Option<Assignment>> {
        let member = format!("{user}:{pool}");
        let bucket = user_bucket(user);
        let body: Option<String> = self
            .assignment_remove
            .key(self.keys.assignment(bucket, &member))
            .key(self.keys.assignments(bucket))
            .arg(&member)
            .arg(self.keys.channel(user))
            .arg(self.announcement(user, None))
            .arg(self.keys.publish_command())
            .invoke_async(&mut self.con())
            .await?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn assignments(&self) -> StoreResult<Vec<Assignment>> {
        self.each_bucket(|bucket| async move {
            let mut con = self.con();
            let members: Vec<String> = con.smembers(self.keys.assignments(bucket)).await?;
            if members.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = members
                .iter()
                .map(|m| self.keys.assignment(bucket, m))
                .collect();
            let bodies: Vec<Option<String>> = con.mget(keys).await?;
            Ok(bodies
                .into_iter()
                .flatten()
                .map(|b| serde_json::from_str(&b))
                .collect::<Result<_, _>>()?)
        })
        .await
    }
}

#[async_trait]
impl Inventory for RedisStore {
    async fn machine_claim(&self, inventory: &str, machine: Uuid) -> StoreResult<bool> {
        let n: i64 = self
            .con()
            .sadd(self.k(&["machines", inventory]), machine.to_string())
            .await?;
        Ok(n == 1)
    }

    async fn machine_release(&self, inventory: &str, machine: Uuid) -> StoreResult<()> {
        self.con()
            .srem::<_, _, ()>(self.k(&["machines", inventory]), machine.to_string())
            .await?;
        Ok(())
    }

    async fn machines_claimed(&self, inventory: &str) -> StoreResult<Vec<Uuid>> {
        let members: Vec<String> = self
            .con()
            .smembers(self.k(&["machines", inventory]))
            .await?;
        Ok(members.iter().filter_map(|m| m.parse().ok()).collect())
    }
}

#[async_trait]
impl Lockout for RedisStore {
    async fn failures_add(&self, key: &str, window: Duration) -> StoreResult<u32> {
        let n: u32 = self
            .failures_add
            .key(self.k(&["failures", key]))
            .arg(window.as_millis() as u64)
            .invoke_async(&mut self.con())
            .await?;
        Ok(n)
    }

    async fn failures_get(&self, key: &str) -> StoreResult<u32> {
        let n: Option<u32> = self.con().get(self.k(&["failures", key])).await?;
        Ok(n.unwrap_or(0))
    }

    async fn failures_reset(&self, key: &str) -> StoreResult<()> {
        self.con().del::<_, ()>(self.k(&["failures", key])).await?;
        Ok(())
    }

    async fn failures_undo(&self, key: &str) -> StoreResult<()> {
        self.failures_undo
            .key(self.k(&["failures", key]))
            .invoke_async::<i64>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn backoff_slot(
        &self,
        key: &str,
        now_ms: u64,
        spacing: Duration,
        max_wait: Duration,
        window: Duration,
    ) -> StoreResult<Result<u64, u64>> {
        let (taken, slot): (u8, u64) = self
            .backoff_slot
            .key(self.k(&["backoff", key]))
            .arg(now_ms)
            .arg(spacing.as_millis() as u64)
            .arg(max_wait.as_millis() as u64)
            .arg(window.as_millis().max(1) as u64)
            .invoke_async(&mut self.con())
            .await?;
        Ok(if taken == 1 { Ok(slot) } else { Err(slot) })
    }
}
