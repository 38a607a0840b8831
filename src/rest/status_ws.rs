//! `WS /api/v2/pools/ws/{client_id}/`: the per-client status socket of the v2 API.
//!
//! Authenticated by `Cookie: JWT <token>` (the mock's form) or a cookie named `JWT`; refused
//! before the upgrade without a valid token or when `client_id` is not the token's (the mock
//! never checks). A browser sends cookies with a WebSocket opened by any site's page, so the
//! `Origin` is checked first (cross-site WebSocket hijacking): it must be one of
//! `allowed_origins`, or, when that list is empty, name the host the request was sent to.
//! Requests without `Origin` come from non-browser clients, which hold the cookie themselves,
//! and are let through. Each task change of the user is sent as `{"status","id","kind",...}`; the
//! user's active tasks are sent once on connect. The server pings every 30 s; a socket that
//! answers nothing for `idle_timeout` is closed, and so is one whose token expires or is revoked.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::{AuthUser, RestError, authenticate_jwt};
use crate::admission::RefusalLog;
use crate::events::{EventFormat, Frame, Outbox, Subscriber};
use crate::http::Origin;
use crate::state::AppState;
use crate::ws::connection::{close_code, close_handshake, write};

const PING_EVERY: Duration = Duration::from_secs(30);

/// The JWT from `Cookie: JWT <token>` or `Cookie: …; JWT=<token>`.
fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            if let Some(token) = v.trim().strip_prefix("JWT ") {
                return Some(token.trim());
            }
            v.split(';')
                .find_map(|kv| kv.trim().strip_prefix("JWT="))
                .map(str::trim)
        })
}

/// At most one log line per this long about refused origins, with the count.
const ORIGIN_LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether the request's `Origin` may open this socket; the refusal says why.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), &'static str> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .ok()
        .and_then(|o| Origin::parse(o).ok())
        .ok_or("Origin not allowed: it is not a web origin (opaque or malformed).")?;
    let ok = if allowed.is_empty() {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| origin.is_host(host))
    } else {
        allowed
            .iter()
            .filter_map(|a| Origin::parse(a).ok())
            .any(|a| a == origin)
    };
    if ok {
        Ok(())
    } else if allowed.is_empty() {
        Err(
            "Origin not allowed: pages of another site may not open this socket \
             (allowed_origins lists the sites that may).",
        )
    } else {
        Err("Origin not allowed: it is not in allowed_origins.")
    }
}

/// Checks in the mock's order: a request that is no WebSocket handshake is refused first (the
/// mock has no HTTP route here at all), then a foreign `Origin` (403), then the token (403),
/// then `client_id` (403). The connection caps were applied when the connection was accepted.
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(ws) = ws else {
        return RestError::new(
            StatusCode::UPGRADE_REQUIRED,
            "This endpoint is a WebSocket.",
            999,
            "default",
        )
        .into_response();
    };
    if let Err(why) = check_origin(&headers, &state.config.allowed_origins) {
        static REFUSED: LazyLock<RefusalLog> = LazyLock::new(|| RefusalLog::new(ORIGIN_LOG_EVERY));
        if let Some(refused) = REFUSED.hit() {
            let origin = headers.get(header::ORIGIN).map_or_else(String::new, |o| {
                String::from_utf8_lossy(&o.as_bytes()[..o.len().min(200)]).into_owned()
            });
            tracing::warn!(%peer, %origin, refused, "status socket refused: foreign Origin (at most one line per 10 s, with the count)");
        }
        return RestError::new(StatusCode::FORBIDDEN, why, 999, "default").into_response();
    }
    let Some(auth) = cookie_token(&headers).and_then(|t| authenticate_jwt(&state, t)) else {
        return RestError::permission_denied().into_response();
    };
    let client_id = client_id
        .ok()
        .and_then(|Path(id)| id.parse::<uuid::Uuid>().ok());
    if client_id != Some(auth.user.id) {
        tracing::warn!(user = %auth.user.username, %peer, "status socket refused: client_id is not the token's");
        return RestError::permission_denied().into_response();
    }
    // Clients only answer pings here: the frame limit is the message limit. The connection's
    // admission slot (taken at accept) travels inside the upgraded stream.
    crate::ws::transport(ws, state.config.max_frame_bytes).on_upgrade(move |socket| {
        let tracker = state.tracker.clone();
        tracker.track_future(serve(socket, state, auth))
    })
}

async fn serve(mut socket: WebSocket, state: AppState, auth: AuthUser) {
    let conn_id = state.next_conn_id();
    let outbox = Outbox::new(state.config.outbound_queue);
    // Cancelled when the socket falls behind, and at shutdown (a child of the server's token).
    let kick = state.shutdown.child_token();
    let user_id = auth.user.id;
    let alive = {
        let (state, claims) = (state.clone(), auth.claims.clone());
        Arc::new(move || state.auth.jwt_still_valid(&claims))
    };
    let sub = Subscriber {
        conn_id,
        format: EventFormat::V2Status,
        tx: outbox.clone(),
        enabled: Arc::new(true.into()),
        kick: kick.clone(),
        alive: alive.clone(),
    };
    state.events.subscribe(user_id, sub);
    tracing::debug!(conn_id, user = %auth.user.username, "status socket open");

    let idle = state.config.idle_timeout;
    let mut last_seen = Instant::now();
    let mut ping = tokio::time::interval_at(
        Instant::now() + PING_EVERY.min(idle / 2),
        PING_EVERY.min(idle / 2),
    );
    let close = loop {
        let written = tokio::select! {
            _ = kick.cancelled() => break Some(if state.shutdown.is_cancelled() {
                (close_code::GOING_AWAY, "server shutting down")
            } else {
                (close_code::TOO_SLOW, "too slow: the socket did not read its events")
            }),
            _ = ping.tick() => {
                if !alive() {
                    break Some((close_code::TOKEN_GONE, "token expired or revoked"));
                }
                if last_seen.elapsed() >= idle {
                    break Some((close_code::IDLE_TIMEOUT, "idle timeout: no answer to pings"));
                }
                // An empty text frame would confuse clients; a ping is answered by any stack.
                write(&mut socket, Some(Frame::Ping), &outbox, &kick).await
            }
            _ = outbox.ready() => write(&mut socket, None, &outbox, &kick).await,
            frame = socket.recv() => match frame {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => {
                    last_seen = Instant::now();
                    Ok(())
                }
            },
        };
        if written.is_err() {
            break None;
        }
    };
    state.events.unsubscribe(user_id, conn_id);
    if let Some((code, reason)) = close {
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        close_handshake(&mut socket, close, &state).await;
    }
    tracing::debug!(conn_id, "status socket closed");
}
