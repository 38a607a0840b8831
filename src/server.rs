//! The HTTP server: one Router (WebSocket RPC at `/`), background jobs, graceful shutdown.
//! `run` never binds: callers (main, tests) hand it a listener.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener, ListenerExt};
use tokio_rustls::TlsAcceptor;

use crate::tls::TlsListener;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::state::AppState;

/// Every route poolgate serves.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(crate::ws::upgrade))
        .merge(crate::rest::router())
        .route("/metrics", get(crate::metrics::metrics))
        .route("/healthz", get(crate::metrics::healthz))
        .with_state(state)
}

/// Serves plain HTTP/WebSocket until `state.shutdown` is cancelled, then waits for every
/// connection and task runner to finish. Call [`AppState::start`] first (recovery, seed tasks,
/// the event bus).
pub async fn run(listener: TcpListener, state: AppState) -> anyhow::Result<()> {
    serve(listener, state).await
}

/// Like [`run`], over TLS (`wss://` and `https://` on the same port).
pub async fn run_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: AppState,
) -> anyhow::Result<()> {
    // `tap_io` gives the listener axum's generic `ConnectInfo<SocketAddr>` support.
    serve(TlsListener::new(listener, acceptor)?.tap_io(|_| {}), state).await
}

async fn serve<L>(listener: L, state: AppState) -> anyhow::Result<()>
where
    L: Listener<Addr = SocketAddr>,
    L::Io: Send,
    for<'a> SocketAddr: Connected<IncomingStream<'a, L>>,
{
    let shutdown = state.shutdown.clone();
    state.tracker.spawn(sweep(state.clone()));
    let service = app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    // axum's graceful shutdown does not wait for upgraded sockets (tokio-rs/axum#3003).
    state.tracker.close();
    state.tracker.wait().await;
    Ok(())
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
                match state.auth.tokens.sweep().await {
                    Ok(dropped) if dropped > 0 => tracing::debug!(dropped, "expired sessions dropped"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "session sweep failed"),
                }
                state.jwt.sweep();
            }
        }
    }
}
