//! The connection every call goes through — to one Redis or to a cluster — and what keeps it
//! usable: the connection manager or cluster client reconnect by themselves, and the
//! [`watchdog`] makes a new connection where they cannot (a reconnection refused by
//! authentication, a cluster client wedged). Also the scans that visit every master.

use super::*;

/// The connection every call goes through: to one Redis, or to a cluster (which routes each
/// command by its first key's slot).
#[derive(Clone)]
pub(super) enum Con {
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
pub(super) struct Renewable<T>(Arc<arc_swap::ArcSwap<T>>);

impl<T: Clone> Renewable<T> {
    pub(super) fn new(con: T) -> Self {
        Renewable(Arc::new(arc_swap::ArcSwap::from_pointee(con)))
    }

    /// The current connection (a cheap handle).
    pub(super) fn get(&self) -> T {
        (**self.0.load()).clone()
    }

    pub(super) fn renew(&self, con: T) {
        self.0.store(Arc::new(con));
    }
}

/// Whether an error means the connection manager could not authenticate, which it never
/// retries by itself.
pub(super) fn refused_authentication(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS") | Some("NOAUTH"))
}

/// Whether the cluster client looks wedged: a PING to every master that times out (rather
/// than being refused, as by a master that is down: the client reconnects to that one by
/// itself, and a new client would fare no better).
pub(super) async fn cluster_timed_out(mut con: ClusterConnection) -> bool {
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

/// Sweeps over the buckets of a cluster ask this many buckets at once.
pub(super) const BUCKETS_IN_FLIGHT: usize = 32;

/// Probe rounds in a row that must fail before the connection is made anew; each renewal
/// that did not help doubles it (up to [`RENEW_AFTER_MAX`]) until a probe succeeds again.
pub(super) const RENEW_AFTER: u32 = 3;

pub(super) const RENEW_AFTER_MAX: u32 = 30;

/// Every two seconds while the store lives, `probe` looks at the current connection (true:
/// it failed the way that wants a new one — see [`Renewable`]). After [`RENEW_AFTER`] failed
/// probes in a row, `connect` makes a new connection, which replaces the old; then — as after
/// a lost connection — every subscription is made again on it: the router's watches (each
/// user's socket catches up once confirmed), then the global channel, whose confirmation ends
/// the bus gap. One line is logged per renewal; failed attempts at most once a minute.
pub(super) async fn watchdog<T, P, C>(
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

/// The seed nodes, for messages (passwords masked).
pub(super) fn seeds(nodes: &[String]) -> String {
    nodes
        .iter()
        .map(|n| super::url::redacted(n).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A cluster client speaking RESP3 (pushes carry the bus), with the single-node timeouts.
pub(super) fn cluster_client(
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

/// The masters of a cluster, as (host, port).
pub(super) async fn masters(con: &mut ClusterConnection) -> StoreResult<Vec<(String, u16)>> {
    nodes(con, false).await
}

/// The cluster's nodes (`host`, `port`) by `CLUSTER SLOTS`: the masters serving slots, and
/// with `replicas` their replicas too.
pub(super) async fn nodes(
    con: &mut ClusterConnection,
    replicas: bool,
) -> StoreResult<Vec<(String, u16)>> {
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
}

impl RedisStore {
    /// Every key of the namespace matching a pattern (SCAN: for sweeps, counts and the admin
    /// view only). On a cluster, every master is scanned.
    pub(super) async fn keys_matching(&self, parts: &[&str]) -> StoreResult<Vec<String>> {
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
    pub(super) async fn each_bucket<T, F>(&self, read: impl Fn(u16) -> F) -> StoreResult<Vec<T>>
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
}
