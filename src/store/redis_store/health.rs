//! What the Redis store says of itself: `/healthz` (every master of a cluster asked on its
//! own), the counts, the append-only check logged at start-up, and `check-config --connect`'s
//! PING.

use super::*;

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
pub(super) async fn durability(con: &Con, one: &str) -> Option<String> {
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

/// Whether `INFO cluster` says the node is in cluster mode.
pub(super) fn is_cluster_node(info: &str) -> bool {
    info.lines().any(|l| l.trim() == "cluster_enabled:1")
}

/// Why a `redis://` state pointing at a cluster node is refused (it would answer MOVED to most
/// keys).
pub(super) fn cluster_node_message(label: &str) -> String {
    format!(
        "{label} is a node of a Redis Cluster: use state = \"redis-cluster://host:port,...\" \
         (its nodes as seeds)"
    )
}

/// Whether a node's `INFO persistence` says it keeps an append-only file.
pub(super) fn aof_enabled(info: &str) -> Option<bool> {
    info.lines()
        .find_map(|l| l.strip_prefix("aof_enabled:"))
        .map(|v| v.trim() == "1")
}

/// The nodes (`host:port`, or the URL's for one Redis) that keep no append-only file: a
/// restart of one loses every write it acknowledged since its last snapshot. An error when
/// a node's `INFO` cannot be read (down, or an ACL that denies it): then nobody can tell.
pub(super) async fn nodes_without_aof(con: &Con, one: &str) -> StoreResult<Vec<String>> {
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
             assignments); set appendonly yes (docs/operating.md: State and restarts)",
            without.join(", "),
            if without.len() == 1 { "s" } else { "" }
        )
    })
}

#[async_trait]
impl Upkeep for RedisStore {
    async fn presence_put(&self, user: Uuid, seen_ms: u64, ttl: Duration) -> StoreResult<()> {
        redis::cmd("SET")
            .arg(self.k(&["presence", &user.to_string()]))
            .arg(seen_ms)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn presence_get(&self, user: Uuid) -> StoreResult<Option<u64>> {
        let seen: Option<u64> = redis::cmd("GET")
            .arg(self.k(&["presence", &user.to_string()]))
            .query_async(&mut self.con())
            .await?;
        Ok(seen)
    }

    async fn mark(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<Option<String>> {
        let key = self.k(&["mark", key]);
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let mut con = self.con();
        for _ in 0..3 {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut con)
                .await?;
            if set.is_some() {
                return Ok(None);
            }
            let current: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut con).await?;
            match current {
                Some(current) if current == value => {
                    redis::cmd("PEXPIRE")
                        .arg(&key)
                        .arg(ttl_ms)
                        .query_async::<()>(&mut con)
                        .await?;
                    return Ok(None);
                }
                Some(other) => return Ok(Some(other)),
                // Expired between the two: set it again.
                None => continue,
            }
        }
        Ok(None)
    }

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

/// Logs, once at start-up, when a Redis restart would lose accepted writes ([`aof_warning`]).
pub(super) async fn warn_without_aof(con: Con, label: String) {
    match nodes_without_aof(&con, &label).await {
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
}
