//! `/health/` and `/version/` in the mock's shapes, with real values.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::data;
use crate::state::AppState;

pub async fn health(State(state): State<AppState>) -> Response {
    let ok = !state.shutdown.is_cancelled();
    let now = chrono::Utc::now();
    data(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        json!({
            "code": if ok { 200 } else { 503 },
            "response_data": {
                "ok": ok,
                "hostname": gethostname::gethostname().to_string_lossy(),
                "timestamp": now.timestamp_micros() as f64 / 1e6,
                "detail": if ok { "" } else { "shutting down" },
            }
        }),
    )
}

pub async fn version() -> Response {
    data(
        StatusCode::OK,
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "build": option_env!("POOLGATE_BUILD").unwrap_or("dev"),
            "year": "2026",
            "url": "https://github.com/poolgate/poolgate",
            "copyright": "poolgate authors",
            // The oldest thin-client API generation this server speaks.
            "client": "4.0.0",
            "gateway": env!("CARGO_PKG_VERSION"),
        }),
    )
}
