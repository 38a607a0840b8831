//! `/metrics` and `/healthz`: what a scraper and a load balancer ask, on the main port or the
//! metrics listener.

use std::sync::LazyLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::state::AppState;
use crate::telemetry::RateLimitedLog;

/// `GET /metrics`: OpenMetrics text, with the gauges sampled now.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let sampled = crate::metrics::Sampled {
        signed_in_sockets: state.events.socket_count(),
        sessions_in_memory: state.auth.tokens.cached(),
        accepted_open: state.admission.open(),
        bus: state.store.router().map_or((0, 0, 0), |r| {
            let counts = r.counts();
            (counts.received, counts.shed, counts.watched)
        }),
        audit_not_stored: state.audit.dropped(),
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
pub(super) async fn healthz(State(state): State<AppState>) -> Response {
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
    // The sign-in provider's last fault: asked again (within a second) whether it answers now.
    if let Some(sso) = &state.auth.sso
        && sso.fault().is_some()
    {
        let _ = tokio::time::timeout(Duration::from_secs(1), sso.client()).await;
        if let Some(fault) = sso.fault() {
            degraded.push(format!("sign-in provider unavailable ({fault})"));
        }
    }
    if degraded.is_empty() {
        (true, "ok\n".to_owned())
    } else {
        (true, format!("degraded: {}\n", degraded.join("; ")))
    }
}
