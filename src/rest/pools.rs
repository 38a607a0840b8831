//! `/pools/` and `/pools/{id}/connect/` (GET: step 1, POST: step 2).
//!
//! Each handler checks in the mock's order (see [`super::validate`]): body decoding, the JWT,
//! path/query/body fields, and only then state.

use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::validate::{self, Body, Fields, Problems};
use super::{AuthUser, RestError, data};
use crate::domain::TaskStatus;
use crate::error::Error;
use crate::pools::{ConnectOutcome, ConnectParams, Discarded};
use crate::state::AppState;

/// fastapi-pagination's default page size, and its largest.
const PAGE_SIZE: i64 = 50;
const MAX_PAGE_SIZE: i64 = 100;

/// GLINT v1, the one protocol the mock (and poolgate) connects with.
const GLINT_V1: i64 = 1;

pub async fn list(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    auth: AuthUser,
    Query(query): Query<validate::Query>,
) -> Result<Response, RestError> {
    // fastapi-pagination's parameters come first in the mock's 422s, then its own.
    let mut problems = Problems::default();
    let page = validate::query_int(&query, "page", 1, (1, None), &mut problems);
    let size = validate::query_int(
        &query,
        "size",
        PAGE_SIZE,
        (1, Some(MAX_PAGE_SIZE)),
        &mut problems,
    );
    let favorites_only = validate::query_bool(&query, "is_favorite", false, &mut problems);
    let ((page, size), favorites_only) = problems.finish(page.zip(size).zip(favorites_only))?;

    let (page_no, size) = (page as usize, size as usize);
    // The fields in the order serde_json's map gave them before (sorted), so the bytes are
    // the mock's shape as they were.
    #[derive(serde::Serialize)]
    struct Page<'a> {
        data: &'a serde_json::value::RawValue,
        page: i64,
        pages: usize,
        size: usize,
        total: usize,
    }
    // Written into a buffer sized for the listing at once: grown from serde_json's default,
    // it was copied five times on its way to a few KiB (~2k instructions of a request).
    let page_of = |data: &serde_json::value::RawValue, total: usize| {
        let mut body = Vec::with_capacity(data.get().len() + 96);
        serde_json::to_writer(
            &mut body,
            &Page {
                data,
                page,
                pages: total.div_ceil(size),
                size,
                total,
            },
        )
        .map(|()| body)
    };
    // The first page holding every pool (what clients ask for) is the listing rendered once
    // per user, written as it is; another page is cut from the listing.
    let (total, first) =
        state
            .pools
            .with_listing(&auth.user, peer.ip(), favorites_only, |json, total| {
                (
                    total,
                    (page_no == 1 && total <= size).then(|| page_of(json, total)),
                )
            })?;
    let body = match first {
        Some(body) => body,
        None => {
            let items: Vec<_> = state
                .pools
                .list(&auth.user, peer.ip(), favorites_only)
                .into_iter()
                .skip(page_no.saturating_sub(1).saturating_mul(size))
                .take(size)
                .collect();
            let items = serde_json::value::to_raw_value(&items).map_err(Error::internal)?;
            page_of(&items, total)
        }
    }
    .map_err(Error::internal)?;
    Ok((
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// Step 1: 202 with the task while it runs (or was just created), 200 once COMPLETED.
pub async fn step1(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    auth: AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, RestError> {
    let mut problems = Problems::default();
    let pool_id = validate::uuid_path(path, "id", &mut problems);
    let pool_id = problems.finish(pool_id)?;

    let task = state
        .pools
        .request_machine(&auth.user, peer.ip(), pool_id)
        .await?;
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
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, RestError> {
    let body = validate::read_body(&headers, body)?;
    let auth = AuthUser::from_headers(&state, &headers).await?;
    let mut problems = Problems::default();
    let pool_id = validate::uuid_path(path, "id", &mut problems);
    let params = connect_params(&body, &mut problems);
    let (pool_id, params) = problems.finish(pool_id.zip(params))?;

    Ok(
        match state
            .pools
            .connect_info(&auth.user, peer.ip(), pool_id, &params)
            .await?
        {
            ConnectOutcome::Task(task) => data(StatusCode::ACCEPTED, task),
            ConnectOutcome::Connection(c) => {
                // Asked again for the same machine's data: not a new connection.
                if state.audit.first_connect(auth.user.id, pool_id, c.id) {
                    state.audit.record(
                        crate::audit::Entry::new("connect", crate::audit::Transport::Rest)
                            .user(auth.user.username.clone())
                            .ip(peer.ip())
                            .method("POST /api/v2/pools/{id}/connect/")
                            .pool(state.pools.pool_name(pool_id)),
                    );
                }
                data(StatusCode::OK, c)
            }
        },
    )
}

/// The mock's `MachineStartGlintRequestModel`: every field required, `password` nullable.
fn connect_params(body: &Body, problems: &mut Problems) -> Option<ConnectParams> {
    let fields = Fields::of(body, problems);
    let protocol = fields
        .int_enum("remote_protocol", &[1, 2, 3], problems)
        .and_then(|p| {
            if p == GLINT_V1 {
                return Some(p);
            }
            // The mock's own validator, word for word.
            problems.add(
                json!(["body", "remote_protocol"]),
                "value_error",
                "Value error, remote_protocol must be ConnectionTypesMap.GLINTV1",
                Some(json!({"error": {}})),
            );
            None
        });
    let width = fields.int_at_least("width", 2, problems);
    let height = fields.int_at_least("height", 2, problems);
    // Checked for its type, then dropped: never stored or logged.
    let password = fields.nullable_string("password", true, problems);
    Some(ConnectParams {
        remote_protocol: Some(protocol?),
        width: Some(width?),
        height: Some(height?),
        password: password?.map(|_| Discarded),
    })
}
