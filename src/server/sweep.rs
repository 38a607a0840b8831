//! The background sweep: session activity persisted, expired records dropped.

use crate::state::AppState;

/// Persists session activity every `session_flush`, and drops expired sessions, MFA
/// challenges, lockout counters, JWT revocations and audit events past `audit_retention`
/// every `sweep_interval` (old tasks are the
/// task runner's: `Pools`).
pub(super) async fn sweep(state: AppState) {
    let mut flush = tokio::time::interval(state.config.session_flush);
    let mut every = tokio::time::interval(state.config.sweep_interval);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => {
                // Keep the last activity: tokens stay valid across a clean restart; and the
                // audit events still queued.
                let _ = state.auth.tokens.flush().await;
                state.audit.flush().await;
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
                match state.audit.sweep().await {
                    Ok(dropped) if dropped > 0 => tracing::debug!(dropped, "audit events past audit_retention deleted"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "sweep of old audit events failed"),
                }
            }
        }
    }
}
