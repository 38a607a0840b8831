//! `/pools/` and `/pools/{id}/connect/` (GET: step 1, POST: step 2).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AuthUser, RestError, data, json_body, uuid_path};
use crate::pools::task::TaskStatus;
use crate::pools::{ConnectOutcome, ConnectParams};
use crate::state::AppState;

/// The mock pages with fastapi-pagination's defaults.
const PAGE_SIZE: usize = 50;

pub async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, RestError> {
    let favorites_only = match query.get("is_favorite").map(String::as_str) {
        None => false,
        Some("true" | "True" | "1" | "on" | "yes") => true,
        Some("false" | "False" | "0" | "off" | "no") => false,
        Some(_) => {
            return Err(RestError::validation(
                &["query", "is_favorite"],
                "Input should be a valid boolean.",
                "bool_parsing",
            ));
        }
    };
    let pools = state.pools.list(&auth.user, favorites_only);
    let total = pools.len();
    let page: Vec<_> = pools.into_iter().take(PAGE_SIZE).collect();
    Ok((
        StatusCode::OK,
        axum::Json(json!({
            "data": page,
            "total": total,
            "page": 1,
            "size": PAGE_SIZE,
            "pages": total.div_ceil(PAGE_SIZE).max(1),
        })),
    )
        .into_response())
}

/// Step 1: 202 with the task while it runs (or was just created), 200 once COMPLETED.
pub async fn step1(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<Response, RestError> {
    let pool_id = uuid_path(&id, "id")?;
    let task = state.pools.request_machine(&auth.user, pool_id).await?;
    let status = if task.status == TaskStatus::Completed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(data(status, task))
}

/// Step 2: 202 with the task while not ready, 200 with the connection data when ready.
pub async fn step2(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, RestError> {
    let pool_id = uuid_path(&id, "id")?;
    let params: ConnectParams = json_body(body)?;
    Ok(
        match state
            .pools
            .connect_info(&auth.user, pool_id, &params)
            .await?
        {
            ConnectOutcome::Task(task) => data(StatusCode::ACCEPTED, task),
            ConnectOutcome::Connection(c) => data(StatusCode::OK, c),
        },
    )
}
