//! `/tasks/{task_id}/` and `/tasks/{task_id}/is-done/`; another user's task is 404.
//!
//! The JWT first, then the path (422 at `["path","task_id"]`, the mock's name), then state.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::validate::{self, Problems};
use super::{AuthUser, RestError, data};
use crate::domain::Task;
use crate::state::AppState;

async fn caller_task(
    state: &AppState,
    auth: &AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<Task, RestError> {
    let mut problems = Problems::default();
    let id = validate::uuid_path(path, "task_id", &mut problems);
    let id = problems.finish(id)?;
    Ok(state.pools.task(&auth.user, id).await?)
}

pub async fn get(
    State(state): State<AppState>,
    auth: AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, RestError> {
    let task = caller_task(&state, &auth, path).await?;
    Ok(data(StatusCode::OK, task))
}

/// True for COMPLETED, FAILED and CANCELLED (the mock forgets CANCELLED).
pub async fn is_done(
    State(state): State<AppState>,
    auth: AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, RestError> {
    let task = caller_task(&state, &auth, path).await?;
    Ok(data(
        StatusCode::OK,
        json!({"is_done": task.status.is_done()}),
    ))
}
