//! Single sign-on for REST clients (RFC 8628 style): a single sign-on user's
//! `/users/login/` answers the mock's 428/101 with where the person signs in and a
//! `device_code`; `GET /users/login/sso/{user_code}/?device_code=…` then polls, answering
//! 400 `authorization_pending`, `slow_down` (sooner than `interval`), `expired_token`, and at
//! last the login's own 200 with the JWT.

use std::net::SocketAddr;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::validate;
use super::{RestError, data};
use crate::auth::federated::Poll;
use crate::error::{Error, MfaKind};
use crate::state::AppState;

/// The 428 of a single sign-on user's REST login: the mock's body, and the hand-off's fields
/// beside `next_step` (which stays the mock's).
pub async fn handoff(state: &AppState, peer: std::net::IpAddr) -> RestError {
    let (fields, device_code) = match state.auth.sso_handoff_rest(peer).await {
        Ok(started) => started,
        Err(e) => return e.into(),
    };
    let poll = format!("/api/v2/users/login/sso/{}/", fields.user_code);
    let mut item = json!({
        "msg": "MFA required.",
        "err_code": MfaKind::Adfs.err_code(),
        "type": "auth",
        "next_step": super::mfa::next_step(MfaKind::Adfs),
        "device_code": device_code,
        "poll": poll,
    });
    if let (Some(item), serde_json::Value::Object(fields)) = (item.as_object_mut(), json!(fields)) {
        item.extend(fields);
    }
    RestError {
        status: StatusCode::PRECONDITION_REQUIRED,
        detail: vec![item],
    }
}

/// `GET /users/login/sso/{user_code}/?device_code=…`. The query is read as `/pools/` reads
/// its own (a repeated parameter: the last one, as Starlette does), and a user code that is
/// not UTF-8 is answered as an unknown one — not with axum's plain-text 400s (found by a
/// hostile review).
pub async fn poll(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    user_code: Result<Path<String>, PathRejection>,
    Query(query): Query<validate::Query>,
) -> Result<Response, RestError> {
    let user_code = user_code.map(|Path(code)| code).unwrap_or_default();
    let device_code = query.get("device_code").map_or("", String::as_str);
    let answer = state
        .auth
        .sso_poll(&user_code, device_code, peer.ip())
        .await?;
    let error = match answer {
        Poll::Done(user) => {
            super::record::sign_in(
                &state,
                peer,
                "GET /api/v2/users/login/sso/",
                "sso",
                Ok(&user),
            );
            let token = state.auth.jwt.issue(&user).map_err(Error::Internal)?;
            tracing::info!(user = %user.username, "signed in over REST (single sign-on hand-off)");
            return Ok(data(
                StatusCode::OK,
                json!({"access_token": token, "refresh_token": "", "token_type": "JWT"}),
            ));
        }
        Poll::Pending => "authorization_pending",
        Poll::SlowDown => "slow_down",
        Poll::Expired => "expired_token",
    };
    Ok((
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": error, "detail": [{"msg": error, "type": "auth"}]})),
    )
        .into_response())
}
