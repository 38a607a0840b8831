//! Every route of the main port and of the metrics listener, and the header the TLS listener
//! adds to every response.

use axum::Router;
use axum::http::header;
use axum::response::Response;
use axum::routing::get;

use super::health::{healthz, metrics};
use crate::state::AppState;

/// Every route poolgate serves on its main port. `/metrics` moves to its own listener when
/// `metrics_listen` is set.
pub fn app(state: AppState) -> Router {
    let router = Router::new()
        .route("/", crate::ws::rpc_route(&state))
        .merge(crate::rest::router(crate::ws::status_route()))
        .route("/portal/{asset}", get(crate::portal::asset))
        .merge(super::sso::routes())
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

/// Adds `Strict-Transport-Security` (a year) to a response of the TLS listener — every route,
/// the portal, `/docs`, the 426 of `/`, errors and the fallback's 404 alike: a browser that
/// saw it once never again tries `http://` (where a network attacker could answer instead).
/// Subdomains are not named: they may be other services, which the operator decides for.
pub(super) async fn strict_transport_security(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        header::HeaderValue::from_static("max-age=31536000"),
    );
    response
}
