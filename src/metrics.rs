//! Prometheus metrics: the registry and its counters, rendered as OpenMetrics text (the
//! `/metrics` and `/healthz` handlers are the router's, in `server`).
//!
//! What is counted: accepted connections (open, and refused by reason), WebSocket connections
//! (open and total), RPCs by method and result code, sign-ins by outcome, task durations by
//! kind and outcome, failed provisioner steps by pool, step and outcome, each pool's warm set
//! and its target, and, sampled at scrape time, signed-in sockets and sessions held in memory.
//!
//! This module knows no method table and no state: the RPC layer names its methods once
//! ([`Metrics::name_methods`]) and the router passes the sampled figures to [`Metrics::encode`].

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProvisionerLabels {
    /// The pool's name (its id when the pool is unknown).
    pub pool: String,
    /// `expand`, `connect`, `release`, or `warm` (an expand that fills a warm set).
    pub step: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The pool's name.
    pub pool: String,
}

fn task_histogram() -> Histogram {
    // 50 ms to ~100 s.
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

pub struct Metrics {
    registry: Registry,
    pub connections_open: Gauge,
    pub connections_total: Counter,
    pub rpc_requests: Family<RpcLabels, Counter>,
    /// Each method's `code="200"` counter, by its position in the names given to
    /// [`Metrics::name_methods`]: the hot path skips the family's lock and label hash.
    rpc_ok: OnceLock<Box<[Counter]>>,
    pub logins: Family<OutcomeLabels, Counter>,
    pub task_seconds: Family<TaskLabels, Histogram, fn() -> Histogram>,
    /// Failed provisioner steps, each counted once where it is logged.
    pub provisioner_failures: Family<ProvisionerLabels, Counter>,
    /// Machines in each pool's warm set, and what the set is to hold now, as this instance
    /// last looked (every few seconds, and when a fill or shrink round ends).
    pub warm_machines: Family<PoolLabels, Gauge>,
    pub warm_target: Family<PoolLabels, Gauge>,
    signed_in_sockets: Gauge,
    cached_sessions: Gauge,
    /// Accepted connections of every kind held against `max_connections` (sampled).
    accepted_open: Gauge,
    /// Connections refused at accept, by the cap that refused them.
    refused: Family<ReasonLabels, Counter>,
    /// Sign-ins the directory could not answer (down, slow, refusing the service account).
    pub directory_errors: Counter,
    /// Sessions ended by the server for a reason the user did not choose: the directory no
    /// longer admits them, or `session_max_age` (logged once each).
    sessions_ended: Family<ReasonLabels, Counter>,
    /// Lookups made to re-check directory users' sessions (one per user per
    /// `directory_recheck` across the instances).
    pub directory_rechecks: Counter,
    /// The shared store's bus, sampled: messages received, events shed, users watched.
    bus_received: Counter,
    bus_shed: Counter,
    bus_watched_users: Gauge,
    /// Audit events that reached the log but not the state store (sampled).
    audit_not_stored: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("poolgate");
        let m = Metrics {
            connections_open: Gauge::default(),
            connections_total: Counter::default(),
            rpc_requests: Family::default(),
            rpc_ok: OnceLock::new(),
            logins: Family::default(),
            task_seconds: Family::new_with_constructor(task_histogram),
            provisioner_failures: Family::default(),
            warm_machines: Family::default(),
            warm_target: Family::default(),
            signed_in_sockets: Gauge::default(),
            cached_sessions: Gauge::default(),
            accepted_open: Gauge::default(),
            refused: Family::default(),
            directory_errors: Counter::default(),
            sessions_ended: Family::default(),
            directory_rechecks: Counter::default(),
            bus_received: Counter::default(),
            bus_shed: Counter::default(),
            bus_watched_users: Gauge::default(),
            audit_not_stored: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections_open",
            "Open WebSocket connections",
            m.connections_open.clone(),
        );
        registry.register(
            "connections",
            "WebSocket connections accepted",
            m.connections_total.clone(),
        );
        registry.register(
            "rpc_requests",
            "RPC requests by method and result code",
            m.rpc_requests.clone(),
        );
        registry.register("logins", "Sign-in attempts by outcome", m.logins.clone());
        registry.register(
            "task_duration_seconds",
            "Connect task durations by kind and outcome",
            m.task_seconds.clone(),
        );
        registry.register(
            "provisioner_failures",
            "Failed provisioner steps by pool, step and outcome",
            m.provisioner_failures.clone(),
        );
        registry.register(
            "warm_machines",
            "Machines in each pool's warm set: provisioned, unassigned, taken at once by step 1",
            m.warm_machines.clone(),
        );
        registry.register(
            "warm_target",
            "How many machines each pool's warm set is to hold now (warm, raised by warm_schedule)",
            m.warm_target.clone(),
        );
        registry.register(
            "signed_in_sockets",
            "Sockets signed in and receiving events",
            m.signed_in_sockets.clone(),
        );
        registry.register(
            "sessions_in_memory",
            "Sessions held in this instance's memory",
            m.cached_sessions.clone(),
        );
        registry.register(
            "accepted_connections_open",
            "Accepted connections of every kind (HTTP, TLS, WebSocket) held against max_connections",
            m.accepted_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused at accept, by the cap that refused them",
            m.refused.clone(),
        );
        registry.register(
            "directory_errors",
            "Directory (LDAP) operations that failed: down, slow, or refusing the service account",
            m.directory_errors.clone(),
        );
        registry.register(
            "sessions_ended",
            "Sessions ended by the server: the directory no longer admits the user, or session_max_age",
            m.sessions_ended.clone(),
        );
        registry.register(
            "directory_rechecks",
            "Directory lookups made to re-check directory users' sessions",
            m.directory_rechecks.clone(),
        );
        register_store(&mut registry, &m);
        Metrics { registry, ..m }
    }
}

/// The store's own metrics: its bus (sampled) and the audit events it did not take.
fn register_store(registry: &mut Registry, m: &Metrics) {
    registry.register(
        "bus_messages_received",
        "Messages this instance received on the shared store's event bus",
        m.bus_received.clone(),
    );
    registry.register(
        "bus_events_shed",
        "Events not published because the shared store could not keep up",
        m.bus_shed.clone(),
    );
    registry.register(
        "bus_watched_users",
        "Users whose event channel this instance hears (those with a socket here)",
        m.bus_watched_users.clone(),
    );
    registry.register(
        "audit_events_not_stored",
        "Audit events that reached the log but not the state store (a full queue or a store error)",
        m.audit_not_stored.clone(),
    );
}

/// Gauges sampled from the rest of the application when metrics are scraped.
pub struct Sampled {
    pub signed_in_sockets: usize,
    pub sessions_in_memory: usize,
    /// Accepted connections held against `max_connections`.
    pub accepted_open: usize,
    /// The shared store's bus: messages received, events shed, users watched (zero without
    /// a shared store).
    pub bus: (u64, u64, usize),
    /// Audit events that reached the log but not the store, since start.
    pub audit_not_stored: u64,
}

impl Metrics {
    /// A connection refused at accept; `reason` names the cap.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A session (or all of a user's) ended by the server; `reason` as in the log line.
    pub fn session_ended(&self, reason: &'static str) {
        self.sessions_ended
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Names the RPC methods (`namespace/name`), by position, and creates each one's
    /// `code="200"` counter, so every method is listed from the first scrape on. Called once by
    /// the transport that owns the method table when its route is built; later calls are
    /// ignored.
    pub fn name_methods(&self, names: &[&'static str]) {
        self.rpc_ok.get_or_init(|| {
            names
                .iter()
                .map(|&method| {
                    self.rpc_requests
                        .get_or_create(&RpcLabels { method, code: 200 })
                        .clone()
                })
                .collect()
        });
    }

    /// One RPC's outcome. `method` is the method's position in the names given to
    /// [`Metrics::name_methods`] and its name; `None` for an unknown method.
    pub fn rpc(&self, method: Option<(usize, &'static str)>, code: u16) {
        if code == 200
            && let Some((index, _)) = method
            && let Some(ok) = self.rpc_ok.get().and_then(|ok| ok.get(index))
        {
            ok.inc();
            return;
        }
        let method = method.map_or("unknown", |(_, name)| name);
        self.rpc_requests
            .get_or_create(&RpcLabels { method, code })
            .inc();
    }

    /// Every metric as OpenMetrics text ([`CONTENT_TYPE`]), with the sampled gauges set first.
    pub fn encode(&self, sampled: Sampled) -> Result<String, std::fmt::Error> {
        self.signed_in_sockets.set(sampled.signed_in_sockets as i64);
        self.cached_sessions.set(sampled.sessions_in_memory as i64);
        self.accepted_open.set(sampled.accepted_open as i64);
        let (received, shed, watched) = sampled.bus;
        self.bus_received
            .inner()
            .store(received, std::sync::atomic::Ordering::Relaxed);
        self.bus_shed
            .inner()
            .store(shed, std::sync::atomic::Ordering::Relaxed);
        self.bus_watched_users.set(watched as i64);
        self.audit_not_stored.inner().store(
            sampled.audit_not_stored,
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
