//! `/users/login/`, `/users/logout/`, `/users/settings/`.

use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{AuthUser, RestError, data, json_body};
use crate::auth::Credentials;
use crate::error::Error;
use crate::state::AppState;

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    /// `null` is the mock's documented first step for MFA users.
    password: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    ldap: bool,
    #[serde(default)]
    otp_code: Option<String>,
}

pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, RestError> {
    let body: LoginBody = json_body(body)?;
    let user = state
        .auth
        .login(Credentials {
            username: &body.username,
            password: body.password.as_deref(),
            otp_code: body.otp_code.as_deref(),
            peer: peer.ip(),
        })
        .await?;
    let token = state.jwt.issue(&user).map_err(Error::Internal)?;
    tracing::info!(user = %user.username, "signed in over REST");
    Ok(data(
        StatusCode::OK,
        json!({"access_token": token, "refresh_token": "", "token_type": "JWT"}),
    ))
}

/// Revokes the presented token server-side (the mock forgets to).
pub async fn logout(State(state): State<AppState>, auth: AuthUser) -> Result<Response, RestError> {
    state
        .jwt
        .revoke(&*state.store, &auth.claims)
        .await
        .map_err(Error::from)?;
    tracing::info!(user = %auth.user.username, "signed out over REST");
    Ok(StatusCode::RESET_CONTENT.into_response())
}

pub async fn settings(State(state): State<AppState>, auth: AuthUser) -> Response {
    data(
        StatusCode::OK,
        state.config.client_settings.for_user(&auth.user),
    )
}
