//! One listener's routes, caps and transport: what the accept loop admits with and the
//! service serves with.

use std::sync::Arc;

use axum::Router;
use tokio_rustls::TlsAcceptor;

use crate::admission::Admission;
use crate::http::TrustedProxies;

/// One listener's routes, caps and transport.
pub(super) struct Site {
    pub(super) router: Router,
    pub(super) admission: Arc<Admission>,
    pub(super) tls: Option<TlsAcceptor>,
    /// Whose `X-Forwarded-For` names the client (`trusted_proxies`).
    pub(super) trusted: Arc<TrustedProxies>,
    /// Every connection comes from a balancer in `trusted` and opens with a PROXY v2 header.
    pub(super) proxy_protocol: bool,
    /// For logs: "main" or "metrics".
    pub(super) name: &'static str,
}
