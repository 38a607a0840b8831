//! `/tasks/{id}/` and `/tasks/{id}/is-done/`; another user's task is 404.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::{AuthUser, RestError, data, uuid_path};
use crate::state::AppState;

pub async fn get(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<Response, RestError> {
    let task = state.pools.task(&auth.user, uuid_path(&id, "id")?).await?;
    Ok(data(StatusCode::OK, task))
}

/// True for COMPLETED, FAILED and CANCELLED (the mock forgets CANCELLED).
pub async fn is_done(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<Response, RestError> {
    let task = state.pools.task(&auth.user, uuid_path(&id, "id")?).await?;
    Ok(data(
        StatusCode::OK,
        json!({"is_done": task.status.is_done()}),
    ))
}
