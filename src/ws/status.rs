//! The v2 status socket, `WS /api/v2/pools/ws/{client_id}/`, after its HTTP-side checks
//! (`rest::status_ws`: Origin, JWT cookie, `client_id`, the mock-shaped refusals): the socket
//! loop's handler that pushes the user's task changes. The socket is signed in from the start
//! (no grace period); what the client sends is ignored, but counts as activity. The server
//! pings every 30 s (or `idle_timeout`/2, if shorter), and closes the socket (4003) at the
//! first ping after its token expired or was revoked.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::connection::{Handler, Link, Policy};
use super::upgrade::{NotUpgrade, Upgrade};
use crate::config::Config;
use crate::error::Error;
use crate::events::{EventFormat, Subscriber};
use crate::rest::status_ws;
use crate::state::AppState;

/// The longest time between the server's pings.
const PING_EVERY: Duration = Duration::from_secs(30);

/// `GET /api/v2/pools/ws/{client_id}/`: the v2 shim's checks, then the socket.
pub(super) async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    ws: Result<Upgrade, NotUpgrade>,
) -> Response {
    let (ws, auth) = match status_ws::admit(&state, peer, client_id, &headers, ws).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    // The user's channel is watched (on a store that routes events per user) before the
    // socket opens, so no change after it opens is missed.
    let prepared = state.events.prepare(auth.user.id).await;
    super::accept(ws, state, move |state, link: Link| {
        let user_id = auth.user.id;
        let alive: Arc<dyn Fn() -> bool + Send + Sync> = {
            let (state, claims) = (state.clone(), auth.claims);
            Arc::new(move || status_ws::token_holds(&state, &claims))
        };
        // Queues the user's active tasks first, then every change.
        state.events.subscribe(
            user_id,
            Subscriber {
                conn_id: link.conn_id,
                format: EventFormat::V2Status,
                tx: link.outbox,
                alive: alive.clone(),
            },
            prepared,
        );
        tracing::debug!(conn_id = link.conn_id, user = %auth.user.username, %peer, "status socket open");
        StatusSocket {
            user_id,
            conn_id: link.conn_id,
            alive,
        }
    })
}

/// One status socket: whose events it gets, and whether its token still holds.
struct StatusSocket {
    user_id: Uuid,
    conn_id: u64,
    /// Shared with its event subscription, which stops delivering the moment it is false.
    alive: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Handler for StatusSocket {
    const KIND: &'static str = "status";

    fn policy(config: &Config) -> Policy {
        let idle = config.idle_timeout;
        Policy {
            idle,
            grace: None,
            ping: Some(PING_EVERY.min(idle / 2)),
            // Clients only answer pings here (what they send is ignored): the small limit of
            // a socket before sign-in is enough, and the frame limit is the message limit.
            max_frame: config
                .max_frame_bytes
                .min(config.max_message_bytes_pre_auth),
            max_message: config
                .max_frame_bytes
                .min(config.max_message_bytes_pre_auth),
            max_message_before_auth: config.max_message_bytes_pre_auth,
        }
    }

    fn text(
        &mut self,
        _state: &AppState,
        _text: &str,
    ) -> impl Future<Output = Option<String>> + Send {
        std::future::ready(None)
    }

    fn refusal(&self, _error: &Error) -> Option<String> {
        None
    }

    fn alive(&self) -> bool {
        (self.alive)()
    }

    fn close(&mut self, state: &AppState) {
        state.events.unsubscribe(self.user_id, self.conn_id);
    }
}
