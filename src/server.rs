//! The HTTP server: one Router (WebSocket RPC at `/`), the accept loop with its connection
//! caps and timeouts, an optional metrics listener, background jobs, graceful shutdown.
//! `run` never binds: `Application` (app.rs, used by main and the tests alike) binds
//! and hands it its listeners.
//!
//! Connections are served with hyper's HTTP/1.1 connection builder directly (`axum::serve`
//! exposes none of its settings): that is where the header read timeout lives. Every accepted
//! connection first takes a slot from [`Admission`] (all connections, and per client
//! address); the slot travels inside the stream, so it is held through the TLS handshake,
//! keep-alive and an upgrade to a WebSocket, and freed when the socket is closed.
//!
//! With `proxy_protocol` the main listener is behind an L4 balancer: only peers in
//! `trusted_proxies` are accepted, in the total cap alone; each must open with a PROXY v2
//! header within `http_header_timeout`, and the client it names is then counted against its
//! own address and is the connection's address from there on (before the TLS handshake).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::admission::{Admission, Refusal};
use crate::http::{DeadlineBody, Holding, TrustedProxies};
use crate::state::AppState;
use crate::telemetry::RateLimitedLog;

/// At most one log line per this long for each kind of refused connection, with the count.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Refused plain-HTTP connections answered at once (the status line is written, then the
/// request is drained so that closing does not reset the connection before the client has
/// read the answer). Past this many, refused connections are only written to and closed.
const REFUSERS: usize = 64;
/// How long a refused connection is drained before it is closed anyway.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Connections the metrics listener accepts at once: scrapers and health checks only.
const METRICS_CONNECTIONS: usize = 64;
/// Of those, what one client address may hold: a scraper or a load balancer's health checks
/// need a few, and one address holding them all (silent sockets, until `http_header_timeout`
/// closes them) would leave the health check of everybody else a 503.
const METRICS_CONNECTIONS_PER_ADDRESS: usize = 8;

/// Every route poolgate serves on its main port. `/metrics` moves to its own listener when
/// `metrics_listen` is set.
pub fn app(state: AppState) -> Router {
    let router = Router::new()
        .route("/", crate::ws::rpc_route(&state))
        .merge(crate::rest::router(crate::ws::status_route()))
        .route("/portal/{asset}", get(crate::portal::asset))
        .route("/healthz", get(healthz));
    let router = if state.config.metrics_listen.is_none() {
        router.route("/metrics", get(metrics))
    } else {
        router
    };
    router.with_state(state)
}

/// The routes of the metrics listener.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// `GET /metrics`: OpenMetrics text, with the gauges sampled now.
async fn metrics(State(state): State<AppState>) -> Response {
    let sampled = crate::metrics::Sampled {
        signed_in_sockets: state.events.socket_count(),
        sessions_in_memory: state.auth.tokens.cached(),
        accepted_open: state.admission.open(),
        bus: state.store.router().map_or((0, 0, 0), |r| {
            let counts = r.counts();
            (counts.received, counts.shed, counts.watched)
        }),
    };
    match state.metrics.encode(sampled) {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `GET /healthz`: 200 when serving and the state store answers, 503 otherwise. Part of the
/// store unreachable (a Redis Cluster master down, until a replica takes over) or a
/// configured directory that does not answer within a second makes it "degraded" — still 200:
/// the users it does not touch are served, and every instance would say the same, so taking
/// them all out of the balancer would serve nobody.
///
/// Anyone may ask, as often as they like: the checks run one at a time (on a cluster a check
/// is a round trip to every master), a probe that waited for a check takes that check's
/// verdict rather than running another (never an older one), and what they find is logged at
/// most once per 10 s.
async fn healthz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let asked = std::time::Instant::now();
    let mut last = state.health.lock().await;
    let verdict = match last.as_ref() {
        Some((began, verdict)) if *began >= asked => verdict.clone(),
        _ => {
            let began = std::time::Instant::now();
            let verdict = check_health(&state).await;
            *last = Some((began, verdict.clone()));
            verdict
        }
    };
    drop(last);
    let (ok, body) = verdict;
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body).into_response()
}

/// What `/healthz` answers now: serving or not, and the body.
async fn check_health(state: &AppState) -> crate::state::Health {
    static STORE: LazyLock<RateLimitedLog> =
        LazyLock::new(|| RateLimitedLog::new(Duration::from_secs(10)));
    static DIRECTORY: LazyLock<RateLimitedLog> =
        LazyLock::new(|| RateLimitedLog::new(Duration::from_secs(10)));
    let mut degraded = Vec::new();
    match tokio::time::timeout(Duration::from_secs(3), state.store.health()).await {
        Ok(Ok(None)) => {}
        Ok(Ok(Some(part))) => {
            if STORE.hit().is_some() {
                tracing::warn!(%part, "health check: part of the state store is unreachable");
            }
            degraded.push(format!("state store: {part}"));
        }
        unreachable => {
            if STORE.hit().is_some() {
                let error = match unreachable {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within 3 s".to_owned(),
                };
                tracing::warn!(error, "health check: state store unreachable");
            }
            return (false, "state store unreachable\n".to_owned());
        }
    }
    if let Some(directory) = &state.auth.directory {
        let answered = tokio::time::timeout(Duration::from_secs(1), directory.ping()).await;
        if !matches!(answered, Ok(Ok(()))) {
            state.metrics.directory_errors.inc();
            if DIRECTORY.hit().is_some() {
                let error = match answered {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within 1 s".to_owned(),
                };
                tracing::warn!(error, "health check: directory unreachable");
            }
            degraded.push("directory unreachable".to_owned());
        }
    }
    if degraded.is_empty() {
        (true, "ok\n".to_owned())
    } else {
        (true, format!("degraded: {}\n", degraded.join("; ")))
    }
}

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
    state.tracker.spawn(sweep(state.clone()));
    let router = app(state.clone());
    let router = if tls.is_some() {
        router.layer(axum::middleware::map_response(strict_transport_security))
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

/// Adds `Strict-Transport-Security` (a year) to a response of the TLS listener — every route,
/// the portal, `/docs`, the 426 of `/`, errors and the fallback's 404 alike: a browser that
/// saw it once never again tries `http://` (where a network attacker could answer instead).
/// Subdomains are not named: they may be other services, which the operator decides for.
async fn strict_transport_security(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        header::HeaderValue::from_static("max-age=31536000"),
    );
    response
}

/// One listener's routes, caps and transport.
struct Site {
    router: Router,
    admission: Arc<Admission>,
    tls: Option<TlsAcceptor>,
    /// Whose `X-Forwarded-For` names the client (`trusted_proxies`).
    trusted: Arc<TrustedProxies>,
    /// Every connection comes from a balancer in `trusted` and opens with a PROXY v2 header.
    proxy_protocol: bool,
    /// For logs: "main" or "metrics".
    name: &'static str,
}

/// The rate-limited warnings of one listener.
struct Refusals {
    full: RateLimitedLog,
    per_address: RateLimitedLog,
    accept_failed: RateLimitedLog,
    /// `proxy_protocol`: a peer not in `trusted_proxies`, or no valid header in time.
    proxy_header: RateLimitedLog,
}

impl Refusals {
    fn new() -> Self {
        Refusals {
            full: RateLimitedLog::new(REFUSAL_LOG_EVERY),
            per_address: RateLimitedLog::new(REFUSAL_LOG_EVERY),
            accept_failed: RateLimitedLog::new(REFUSAL_LOG_EVERY),
            proxy_header: RateLimitedLog::new(REFUSAL_LOG_EVERY),
        }
    }

    /// A `proxy_protocol` connection closed: from a peer not trusted, or without a valid
    /// PROXY header in time (`why`).
    fn log_proxy(&self, site: &str, why: &dyn std::fmt::Display, peer: SocketAddr) {
        if let Some(refused) = self.proxy_header.hit() {
            tracing::warn!(
                listener = site,
                reason = "proxy_protocol",
                last_peer = %peer.ip(),
                last_reason = %why,
                refused,
                "connections closed without a PROXY header from a trusted proxy (at most one \
                 line per {} s, with the count since the last)",
                REFUSAL_LOG_EVERY.as_secs()
            );
        }
    }

    fn log(&self, site: &str, refusal: Refusal, peer: SocketAddr) {
        let (log, limit) = match refusal {
            Refusal::Full { limit } => (&self.full, limit),
            Refusal::PerAddress { limit } => (&self.per_address, limit),
        };
        if let Some(refused) = log.hit() {
            tracing::warn!(
                listener = site,
                reason = refusal.label(),
                limit,
                last_peer = %crate::domain::address_key(peer.ip()),
                refused,
                "connections refused (at most one line per {} s, with the count since the last)",
                REFUSAL_LOG_EVERY.as_secs()
            );
        }
    }

    /// Reports what was counted since the last line once the period is over.
    fn flush(&self, site: &str) {
        for (log, reason) in [
            (&self.full, "max_connections"),
            (&self.per_address, "max_connections_per_address"),
        ] {
            if let Some(refused) = log.flush() {
                tracing::warn!(listener = site, reason, refused, "connections refused");
            }
        }
        if let Some(failed) = self.accept_failed.flush() {
            tracing::warn!(listener = site, failed, "accept failed");
        }
        if let Some(refused) = self.proxy_header.flush() {
            tracing::warn!(
                listener = site,
                reason = "proxy_protocol",
                refused,
                "connections closed without a PROXY header from a trusted proxy"
            );
        }
    }
}

/// Accepts until shutdown: admits (or refuses) each connection and serves it on its own task.
async fn accept_loop(listener: TcpListener, site: Site, state: AppState) {
    let refusals = Arc::new(Refusals::new());
    let refusers = Arc::new(Semaphore::new(REFUSERS));
    let mut flush = tokio::time::interval(REFUSAL_LOG_EVERY);
    let site = Arc::new(site);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = flush.tick() => {
                refusals.flush(site.name);
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // e.g. out of file descriptors: back off instead of spinning.
                    if let Some(failed) = refusals.accept_failed.hit() {
                        tracing::warn!(listener = site.name, error = %e, failed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if site.proxy_protocol {
            admit_proxied(tcp, peer, &site, &state, &refusals, &refusers);
            continue;
        }
        match site.admission.admit(peer.ip()) {
            Ok(slot) => {
                let stream = Holding::new(tcp, slot);
                state
                    .tracker
                    .spawn(connection(stream, peer, site.clone(), state.clone()));
            }
            Err(refusal) => {
                state.metrics.refused(refusal.label());
                refusals.log(site.name, refusal, peer);
                refuse(tcp, refusal, site.tls.is_some(), &refusers);
            }
        }
    }
}

/// A connection on a `proxy_protocol` listener: closed at once unless its peer is a trusted
/// proxy; then it takes a slot in the total (its client is not known yet) and waits for its
/// PROXY header on a task of its own ([`proxied`]).
fn admit_proxied(
    tcp: TcpStream,
    balancer: SocketAddr,
    site: &Arc<Site>,
    state: &AppState,
    refusals: &Arc<Refusals>,
    refusers: &Arc<Semaphore>,
) {
    if !site.trusted.trusts(balancer.ip()) {
        state.metrics.refused("proxy_protocol");
        refusals.log_proxy(site.name, &"the peer is not in trusted_proxies", balancer);
        return;
    }
    match site.admission.admit_unattributed() {
        Ok(slot) => {
            let proxied = proxied(
                tcp,
                slot,
                balancer,
                site.clone(),
                state.clone(),
                refusals.clone(),
                refusers.clone(),
            );
            state.tracker.spawn(proxied);
        }
        Err(refusal) => {
            state.metrics.refused(refusal.label());
            refusals.log(site.name, refusal, balancer);
            refuse(tcp, refusal, site.tls.is_some(), refusers);
        }
    }
}

/// Reads a trusted balancer's PROXY header within `http_header_timeout` (closing the
/// connection without one), counts the connection against the client it names (the balancer
/// itself for a `LOCAL` health check), and serves it as that client's.
async fn proxied(
    mut tcp: TcpStream,
    mut slot: crate::admission::Slot,
    balancer: SocketAddr,
    site: Arc<Site>,
    state: AppState,
    refusals: Arc<Refusals>,
    refusers: Arc<Semaphore>,
) {
    let timeout = state.config.http_header_timeout;
    let said = tokio::select! {
        _ = state.shutdown.cancelled() => return,
        said = tokio::time::timeout(timeout, crate::proxy_protocol::read(&mut tcp)) => said,
    };
    let client = match said {
        Ok(Ok(client)) => client.unwrap_or(balancer),
        Ok(Err(bad)) => {
            state.metrics.refused("proxy_protocol");
            refusals.log_proxy(site.name, &bad, balancer);
            return;
        }
        Err(_) => {
            state.metrics.refused("proxy_protocol");
            let why = format!("no PROXY header within {} s", timeout.as_secs_f64());
            refusals.log_proxy(site.name, &why, balancer);
            return;
        }
    };
    if let Err(refusal) = slot.attribute(client.ip()) {
        state.metrics.refused(refusal.label());
        refusals.log(site.name, refusal, client);
        drop(slot);
        refuse(tcp, refusal, site.tls.is_some(), &refusers);
        return;
    }
    connection(Holding::new(tcp, slot), client, site, state).await;
}

/// Answers a refused connection. Over plain HTTP: the status line and a body saying why,
/// written before the request is read. Over TLS: a close, because answering would first cost
/// a handshake for each refused connection, which is what a flood is after.
fn refuse(mut tcp: TcpStream, refusal: Refusal, tls: bool, refusers: &Arc<Semaphore>) {
    if tls {
        return;
    }
    let answer = refusal.http_response();
    let Ok(permit) = refusers.clone().try_acquire_owned() else {
        let _ = tcp.try_write(answer.as_bytes());
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            tcp.write_all(answer.as_bytes()).await?;
            tcp.shutdown().await?;
            // Read what the client sent until it closes: closing with unread input would
            // reset the connection, and the client could lose the answer.
            let mut buf = [0u8; 2048];
            while tcp.read(&mut buf).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// One admitted connection: the TLS handshake (if any), then HTTP/1.1 until the client or
/// shutdown ends it.
async fn connection<S>(stream: S, peer: SocketAddr, site: Arc<Site>, state: AppState)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = state.config.http_header_timeout;
    let Some(acceptor) = site.tls.clone() else {
        return serve_http(stream, peer, &site, &state).await;
    };
    let handshake = tokio::select! {
        _ = state.shutdown.cancelled() => return,
        handshake = tokio::time::timeout(timeout, acceptor.accept(stream)) => handshake,
    };
    match handshake {
        Ok(Ok(tls)) => serve_http(tls, peer, &site, &state).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// HTTP/1.1 with upgrades. hyper's header read timeout runs from the moment it waits for a
/// request head: on a new connection (a silent socket is closed), while headers drip in, and
/// on a keep-alive connection between requests (an idle one is closed).
async fn serve_http<S>(stream: S, peer: SocketAddr, site: &Site, state: &AppState)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = state.config.http_header_timeout;
    let service = PeerService {
        router: site.router.clone(),
        peer,
        trusted: site.trusted.clone(),
        body_timeout: timeout,
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = state.shutdown.cancelled() => {
            // Finish the request in flight (if any), then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
}

/// The router, with the client's address (`ConnectInfo`: the TCP peer, or the address a
/// trusted proxy forwarded the request for) and the body deadline added to each request.
#[derive(Clone)]
struct PeerService {
    router: Router,
    peer: SocketAddr,
    trusted: Arc<TrustedProxies>,
    body_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for PeerService {
    type Response = Response;
    type Error = Infallible;
    type Future = RouteFuture<Infallible>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let timeout = self.body_timeout;
        let mut req = req.map(|body| Body::new(DeadlineBody::new(body, timeout)));
        let client = self.trusted.client(self.peer, req.headers());
        req.extensions_mut().insert(ConnectInfo(client));
        tower_service::Service::call(&mut self.router.clone(), req)
    }
}

/// Persists session activity every `session_flush`, and drops expired sessions, MFA
/// challenges, lockout counters and JWT revocations every `sweep_interval` (old tasks are the
/// task runner's: `Pools`).
async fn sweep(state: AppState) {
    let mut flush = tokio::time::interval(state.config.session_flush);
    let mut every = tokio::time::interval(state.config.sweep_interval);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => {
                // Keep the last activity: tokens stay valid across a clean restart.
                let _ = state.auth.tokens.flush().await;
                return;
            }
            _ = flush.tick() => {
                if let Err(e) = state.auth.tokens.flush().await {
                    tracing::warn!(error = %e, "cannot persist session activity");
                }
            }
            _ = every.tick() => {
                state.auth.tokens.sweep();
                match state.store.sweep_expired().await {
                    Ok(dropped) if dropped > 0 => tracing::debug!(dropped, "expired records dropped"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "sweep of expired records failed"),
                }
                state.auth.jwt.sweep();
            }
        }
    }
}
