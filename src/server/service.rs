//! One admitted connection: the TLS handshake, then hyper's HTTP/1.1 connection (with its
//! header read timeout and upgrades) calling the router with the client's address.
//!
//! Connections are served with hyper's connection builder directly (`axum::serve` exposes
//! none of its settings): that is where the header read timeout lives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::site::Site;
use crate::http::{DeadlineBody, TrustedProxies};
use crate::state::AppState;

/// One admitted connection: the TLS handshake (if any), then HTTP/1.1 until the client or
/// shutdown ends it.
pub(super) async fn connection<S>(stream: S, peer: SocketAddr, site: Arc<Site>, state: AppState)
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
