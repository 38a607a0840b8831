//! Prometheus metrics (OpenMetrics text at `/metrics`) and `/healthz`.
//!
//! What is counted: accepted connections (open, and refused by reason), WebSocket connections
//! (open and total), RPCs by method and result code, sign-ins by outcome, task durations by
//! kind and outcome, failed provisioner steps by pool, step and outcome, and, sampled at
//! scrape time, signed-in sockets and sessions held in memory.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::AppState;

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
    /// `expand`, `connect` or `release`.
    pub step: &'static str,
    pub outcome: &'static str,
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
    /// Each method's `code="200"` counter, by `Method as usize`: the hot path skips the
    /// family's lock and label hash.
    rpc_ok: Vec<Counter>,
    pub logins: Family<OutcomeLabels, Counter>,
    pub task_seconds: Family<TaskLabels, Histogram, fn() -> Histogram>,
    /// Failed provisioner steps, each counted once where it is logged.
    pub provisioner_failures: Family<ProvisionerLabels, Counter>,
    signed_in_sockets: Gauge,
    cached_sessions: Gauge,
    /// Accepted connections of every kind held against `max_connections` (sampled).
    accepted_open: Gauge,
    /// Connections refused at accept, by the cap that refused them.
    refused: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("poolgate");
        let m = Metrics {
            connections_open: Gauge::default(),
            connections_total: Counter::default(),
            rpc_requests: Family::default(),
            rpc_ok: Vec::new(),
            logins: Family::default(),
            task_seconds: Family::new_with_constructor(task_histogram),
            provisioner_failures: Family::default(),
            signed_in_sockets: Gauge::default(),
            cached_sessions: Gauge::default(),
            accepted_open: Gauge::default(),
            refused: Family::default(),
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
        let rpc_ok = crate::rpc::METHODS
            .iter()
            .enumerate()
            .map(|(i, method)| {
                assert_eq!(*method as usize, i, "METHODS is in declaration order");
                m.rpc_requests
                    .get_or_create(&RpcLabels {
                        method: method.name(),
                        code: 200,
                    })
                    .clone()
            })
            .collect();
        Metrics {
            registry,
            rpc_ok,
            ..m
        }
    }
}

impl Metrics {
    /// A connection refused at accept; `reason` names the cap.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn rpc(&self, method: Option<crate::rpc::Method>, code: u16) {
        match method {
            Some(m) if code == 200 => {
                self.rpc_ok[m as usize].inc();
            }
            _ => {
                let method = method.map_or("unknown", crate::rpc::Method::name);
                self.rpc_requests
                    .get_or_create(&RpcLabels { method, code })
                    .inc();
            }
        }
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    m.signed_in_sockets.set(state.events.socket_count() as i64);
    m.cached_sessions.set(state.auth.tokens.cached() as i64);
    m.accepted_open.set(state.admission.open() as i64);
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &m.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /healthz`: 200 when serving and the state store answers, 503 otherwise.
pub async fn healthz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match state.store.ping().await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: state store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "state store unreachable\n").into_response()
        }
    }
}
