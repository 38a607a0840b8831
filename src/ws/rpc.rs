//! The RPC socket at `/`: the socket loop's handler for `rpc` — each text frame is one
//! request and gets one reply (`rpc::handle_text`), sign-in has a grace period, and nothing is
//! pinged (clients ping, or send requests, within `idle_timeout`). A browser's upgrade must
//! come from an allowed `Origin` and name a `Host` this server answers browsers on
//! (`http::check_origin`, the status socket's and the REST sign-in's rule).

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

use super::connection::{Handler, Link, Policy};
use super::upgrade::{NotUpgrade, Upgrade};
use crate::config::Config;
use crate::error::Error;
use crate::http::BrowserRefusal;
use crate::rpc::{self, Conn};
use crate::state::AppState;

/// `GET /`: upgrades to the RPC socket; a browser's plain request gets the web portal
/// (`portal`), any other plain HTTP 426 and a pointer to the protocol.
pub(super) async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<Upgrade, NotUpgrade>,
) -> Response {
    let Ok(ws) = ws else {
        if crate::portal::wants_page(&headers) {
            let tls = state.config.https_for_browsers();
            return crate::portal::index(&headers, &state.auth.devices, tls);
        }
        return (
            StatusCode::UPGRADE_REQUIRED,
            [("upgrade", "websocket")],
            "poolgate: this endpoint speaks JSON envelopes over WebSocket; see protocol/ in the \
             repository (e.g. `wscat -c ws://HOST:PORT/`).\n",
        )
            .into_response();
    };
    if let Err(why) = state.config.check_browser(&headers) {
        return foreign_browser(&headers, peer, why);
    }
    let device = crate::portal::device(&headers, &state.auth.devices);
    let portal_code = crate::http::cookie(
        &headers,
        state.config.https_for_browsers(),
        crate::auth::sso::PORTAL_CODE_COOKIE,
    )
    .filter(|code| code.len() <= 64)
    .map(Box::from);
    let browser = headers.contains_key(header::ORIGIN);
    super::accept(ws, state, move |_, link: Link| {
        tracing::debug!(conn_id = link.conn_id, %peer, "connected");
        let mut conn = Conn::new(link.conn_id, peer, device, link.outbox);
        conn.portal_code = portal_code;
        conn.browser = browser;
        RpcSocket(conn)
    })
}

/// The answer to an upgrade from another site's page, or from a page that reached this server
/// under a name it does not answer browsers on (`http::check_origin`): 403 and why, logged at
/// most once per 10 s with the count. Without it, any page a user visits could open the socket
/// from the user's browser and network and try sign-ins there.
fn foreign_browser(headers: &HeaderMap, peer: SocketAddr, why: BrowserRefusal) -> Response {
    let origin = crate::http::header_text(headers, header::ORIGIN);
    match why {
        BrowserRefusal::Origin(_) => {
            crate::warn_refusal!(%peer, %origin, "RPC socket refused: foreign Origin (at most one line per 10 s, with the count)");
        }
        BrowserRefusal::Host => {
            let host = crate::http::header_text(headers, header::HOST);
            crate::warn_refusal!(%peer, %origin, %host, "RPC socket refused: a browser named a Host this server does not answer on; add it to server_names if it is ours (at most one line per 10 s, with the count)");
        }
    }
    (
        StatusCode::FORBIDDEN,
        format!("poolgate: {}\n", why.message()),
    )
        .into_response()
}

/// One RPC connection: its [`Conn`] is all it keeps between frames.
struct RpcSocket(Conn);

impl Handler for RpcSocket {
    const KIND: &'static str = "rpc";

    fn policy(config: &Config) -> Policy {
        Policy {
            idle: config.idle_timeout,
            grace: Some(config.auth_grace),
            ping: None,
            max_frame: config.max_frame_bytes,
            max_message: config.max_message_bytes,
            max_message_before_auth: config.max_message_bytes_pre_auth,
        }
    }

    fn text(
        &mut self,
        state: &AppState,
        text: &str,
    ) -> impl Future<Output = Option<String>> + Send {
        rpc::handle_text(state, &mut self.0, text).map(Some)
    }

    fn refusal(&self, error: &Error) -> Option<String> {
        Some(rpc::refusal(error))
    }

    fn replied(&mut self, state: &AppState) {
        self.0.subscribe_if_signed_in(state);
    }

    fn signed_in(&self) -> bool {
        self.0.signed_in_or_waiting()
    }

    fn close(&mut self, state: &AppState) {
        self.0.clear_session(state);
    }
}
