//! The HTTP server: one Router (WebSocket RPC at `/`), the accept loop with its connection
//! caps and timeouts, an optional metrics listener, background jobs, graceful shutdown.
//! `run` never binds: `Application` (app.rs, used by main and the tests alike) binds
//! and hands it its listeners. This file wires the listeners; each job has a file:
//!
//! - `routes.rs`: every route of the main port and of the metrics listener
//! - `health.rs`: `/metrics` and `/healthz`
//! - `accept.rs`: the accept loop, admission and the PROXY header
//! - `refusals.rs`: what a refused connection gets, and the warnings that count them
//! - `site.rs`: one listener's routes, caps and transport
//! - `service.rs`: one admitted connection: TLS, HTTP/1.1, the router with the client address
//! - `sweep.rs`: the background sweep of sessions and expired records
//!
//! Every accepted connection first takes a slot from [`Admission`] (all connections, and per
//! client address); the slot travels inside the stream, so it is held through the TLS
//! handshake, keep-alive and an upgrade to a WebSocket, and freed when the socket is closed.
//!
//! With `proxy_protocol` the main listener is behind an L4 balancer: only peers in
//! `trusted_proxies` are accepted, in the total cap alone; each must open with a PROXY v2
//! header within `http_header_timeout`, and the client it names is then counted against its
//! own address and is the connection's address from there on (before the TLS handshake).

mod accept;
mod health;
mod refusals;
mod routes;
mod service;
mod site;
mod sso;
mod sweep;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::Admission;
use crate::state::AppState;
use accept::accept_loop;
pub use routes::{app, metrics_app};
use site::Site;

/// Connections the metrics listener accepts at once: scrapers and health checks only.
const METRICS_CONNECTIONS: usize = 64;
/// Of those, what one client address may hold: a scraper or a load balancer's health checks
/// need a few, and one address holding them all (silent sockets, until `http_header_timeout`
/// closes them) would leave the health check of everybody else a 503.
const METRICS_CONNECTIONS_PER_ADDRESS: usize = 8;

/// Serves `/metrics` and `/healthz` (plain HTTP) on `metrics_listen` until shutdown. Start it
/// before [`run`]: its connections are tracked, so `run` waits for them too. Its connections
/// have a budget of their own ([`METRICS_CONNECTIONS`], per address
/// [`METRICS_CONNECTIONS_PER_ADDRESS`]) and the same header read timeout as the main port.
pub(crate) fn spawn_metrics(listener: TcpListener, state: &AppState) {
    let site = Site {
        router: metrics_app(state.clone()),
        admission: Admission::new(METRICS_CONNECTIONS, METRICS_CONNECTIONS_PER_ADDRESS),
        tls: None,
        trusted: Arc::new(state.config.trusted_proxies.clone()),
        proxy_protocol: false,
        name: "metrics",
    };
    state
        .tracker
        .spawn(accept_loop(listener, site, state.clone()));
}

/// Serves HTTP/WebSocket — over TLS (`wss://` and `https://` on the same port) with an
/// acceptor — until `state.shutdown` is cancelled, then waits for every connection and task
/// runner to finish. Call [`AppState::start`] first (recovery, seed tasks, the event bus).
pub(crate) async fn run(listener: TcpListener, tls: Option<TlsAcceptor>, state: AppState) {
    state.tracker.spawn(sweep::sweep(state.clone()));
    let router = app(state.clone());
    let router = if tls.is_some() {
        router.layer(axum::middleware::map_response(
            routes::strict_transport_security,
        ))
    } else {
        router
    };
    let site = Site {
        router,
        admission: state.admission.clone(),
        tls,
        trusted: Arc::new(state.config.trusted_proxies.clone()),
        proxy_protocol: state.config.proxy_protocol,
        name: "main",
    };
    accept_loop(listener, site, state.clone()).await;
    // Upgraded sockets and connections still finishing a request are on the tracker.
    state.tracker.close();
    state.tracker.wait().await;
}
