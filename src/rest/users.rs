//! `/users/login/`, `/users/logout/`, `/users/settings/`.
//!
//! Login has no JWT: its body is decoded, then validated as the mock's `LoginInputModel`, and
//! only a valid body reaches the lockout and the password check (so a malformed body never
//! counts as a failed sign-in). Logout and settings take no body and no parameters: the JWT
//! is their only check, and whatever else the request carries is ignored, as in the mock.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::validate::{self, Body, Fields, Problems};
use super::{AuthUser, RestError, data};
use crate::audit::{Entry, Transport};
use crate::auth::Credentials;
use crate::error::{ERR_CODE_DEFAULT, Error, MfaKind};
use crate::state::AppState;

/// The mock's `LoginInputModel`.
struct LoginBody {
    username: String,
    /// Required but nullable: `null` is the mock's documented first step for MFA users.
    password: Option<String>,
    otp_code: Option<String>,
    /// `"ldap": true` asks for the directory (see `Authenticator::login`).
    ldap: bool,
}

impl LoginBody {
    fn validate(body: &Body, problems: &mut Problems) -> Option<LoginBody> {
        let fields = Fields::of(body, problems);
        let username = fields.string("username", problems);
        let password = fields.nullable_string("password", true, problems);
        // Required and type-checked like the mock.
        let ldap = fields.boolean("ldap", problems);
        let otp_code = fields.nullable_string("otp_code", false, problems);
        Some(LoginBody {
            username: username?,
            password: password?,
            otp_code: otp_code?,
            ldap: ldap?,
        })
    }
}

pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, RestError> {
    // A browser's sign-in must come from a page of this server, reached by a name it answers
    // on: a page whose name was rebound to this address could otherwise post JSON here as its
    // own origin (and lock the visitor's office address out with wrong guesses).
    if let Err(why) = state.config.check_browser(&headers) {
        super::log_foreign_browser(&headers, peer, why, "REST sign-in");
        return Err(RestError::new(
            StatusCode::FORBIDDEN,
            why.message(),
            ERR_CODE_DEFAULT,
            "default",
        ));
    }
    let body = validate::read_json_body(&headers, body)?;
    let mut problems = Problems::default();
    let body = LoginBody::validate(&body, &mut problems);
    let body = problems.finish(body)?;

    let outcome = state
        .auth
        .login(Credentials {
            username: &body.username,
            password: body.password.as_deref(),
            otp_code: body.otp_code.as_deref(),
            peer: peer.ip(),
            device: crate::portal::device(&headers, &state.auth.devices),
            directory: body.ldap,
        })
        .await;
    let how = if body.ldap { "directory" } else { "password" };
    super::record::sign_in(
        &state,
        peer,
        "POST /api/v2/users/login/",
        how,
        outcome.as_deref().map_err(|e| (e, body.username.as_str())),
    );
    let user = match outcome {
        Ok(user) => user,
        // A user who signs in through the provider: the hand-off, when it is configured.
        Err(Error::MfaRequired {
            kind: MfaKind::Adfs,
            ..
        }) if state.auth.sso.is_some() => return Err(super::sso::handoff(&state, peer.ip()).await),
        Err(e) => return Err(e.into()),
    };
    let token = state.auth.jwt.issue(&user).map_err(Error::Internal)?;
    tracing::info!(user = %user.username, "signed in over REST");
    Ok(data(
        StatusCode::OK,
        json!({"access_token": token, "refresh_token": "", "token_type": "JWT"}),
    ))
}

/// `POST /users/login/webauthn/ {mfa_token, credential}`: the security key's answer to the
/// login's 428/102 (its `next_step`), on the same sign-in path as `rpc/webauthn_verify`; the
/// login's 200 body.
pub async fn login_webauthn(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, RestError> {
    if let Err(why) = state.config.check_browser(&headers) {
        super::log_foreign_browser(&headers, peer, why, "REST sign-in");
        return Err(RestError::new(
            StatusCode::FORBIDDEN,
            why.message(),
            ERR_CODE_DEFAULT,
            "default",
        ));
    }
    #[derive(serde::Deserialize)]
    struct KeyAnswer {
        mfa_token: String,
        credential: webauthn_rs::prelude::PublicKeyCredential,
    }
    let validate::Body::Json(body) = validate::read_json_body(&headers, body)? else {
        return Err(Error::bad_request("A JSON body {mfa_token, credential} is required.").into());
    };
    let answer: KeyAnswer = serde_json::from_value(body)
        .map_err(|e| Error::bad_request(format!("Invalid body: {e}.")))?;
    let device = crate::portal::device(&headers, &state.auth.devices);
    let outcome = state
        .auth
        .key_verify(&answer.mfa_token, &answer.credential, peer.ip(), device)
        .await;
    super::record::sign_in(
        &state,
        peer,
        "POST /api/v2/users/login/webauthn/",
        "security_key",
        outcome.as_ref().map(|(u, _)| &**u).map_err(|e| (e, "")),
    );
    let (user, _) = outcome?;
    let token = state.auth.jwt.issue(&user).map_err(Error::Internal)?;
    tracing::info!(user = %user.username, "signed in over REST (security key)");
    Ok(data(
        StatusCode::OK,
        json!({"access_token": token, "refresh_token": "", "token_type": "JWT"}),
    ))
}

/// Revokes the presented token server-side (the mock forgets to).
pub async fn logout(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    auth: AuthUser,
) -> Result<Response, RestError> {
    state
        .auth
        .revoke_jwt(&auth.claims)
        .await
        .map_err(Error::from)?;
    tracing::info!(user = %auth.user.username, "signed out over REST");
    state.audit.record(
        Entry::new("sign_out", Transport::Rest)
            .user(auth.user.username.clone())
            .ip(peer.ip())
            .method("POST /api/v2/users/logout/"),
    );
    Ok(StatusCode::RESET_CONTENT.into_response())
}

pub async fn settings(State(state): State<AppState>, auth: AuthUser) -> Response {
    data(
        StatusCode::OK,
        state.config.client_settings.for_user(&auth.user),
    )
}
