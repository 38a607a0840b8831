//! One RPC connection's own state ([`Conn`]) and the step from a text frame to its reply
//! ([`handle_text`]): envelope in, lookup, dispatch, metrics, envelope out. Everything about the
//! socket itself (reading, writing, timers, close codes) is the socket loop's, in `ws`.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::{Ctx, Method, dispatch};
use crate::auth::tokens::Session;
use crate::envelope;
use crate::error::Error;
use crate::events::{EventFormat, Outbox, Prepared, Subscriber};
use crate::state::AppState;

/// What one connection knows about itself between messages.
pub struct Conn {
    pub id: u64,
    pub peer: SocketAddr,
    /// The browser, if the upgrade carried the portal's device cookie (boxed: most sockets
    /// have none, and every byte here is held by every idle socket).
    pub device: Option<Box<crate::auth::lockout::DeviceId>>,
    /// The signed-in session, if any. Checked (not looked up) on every message.
    pub session: Option<Arc<Session>>,
    /// Failed sign-in attempts on this socket; past the limit, auth calls get 429.
    pub auth_failures: u32,
    /// The upgrade came from a browser (it carried an `Origin`): the portal, for the audit.
    pub browser: bool,
    /// A single sign-on hand-off this socket waits for (`auth_sso`).
    pub sso: Option<Arc<super::auth_sso::SsoWait>>,
    /// The portal's one-time single sign-on code, if the upgrade carried its cookie (for
    /// `auth_sso_code`, once).
    pub portal_code: Option<Box<str>>,
    /// The socket's outbound queue (events; the loop writes replies directly). Its kick
    /// closes the socket as too slow.
    pub outbound: Arc<Outbox>,
    /// Set by a sign-in; the socket subscribes to events once the reply is queued, so the
    /// catch-up events follow the reply.
    pending_subscribe: bool,
    /// What the sign-in readied for that subscription (the user's channel watched before the
    /// reply, on a store that routes events per user; otherwise nothing, and no allocation).
    /// Held by value in every connection's future, so it is kept one pointer wide.
    prepared: Prepared,
}

impl Conn {
    pub fn new(
        id: u64,
        peer: SocketAddr,
        device: Option<crate::auth::lockout::DeviceId>,
        outbound: Arc<Outbox>,
    ) -> Self {
        Conn {
            id,
            peer,
            device: device.map(Box::new),
            session: None,
            portal_code: None,
            auth_failures: 0,
            browser: false,
            sso: None,
            outbound,
            pending_subscribe: false,
            prepared: Prepared::default(),
        }
    }

    /// Binds a session to this connection; events start after the reply (see
    /// [`Conn::subscribe_if_signed_in`]).
    pub async fn set_session(&mut self, state: &AppState, session: Arc<Session>) {
        self.clear_session(state);
        self.prepared = state.events.prepare(session.user.id).await;
        // A sign-out elsewhere between the lookup and the watch was not heard here.
        if let Err(e) = state.auth.tokens.recheck(&session).await {
            tracing::warn!(conn_id = self.id, error = %e, "cannot re-check a session after its watch; the next session flush will");
        }
        self.session = Some(session);
        self.pending_subscribe = true;
    }

    /// Signs the connection out locally (the token itself is untouched). Events queued for
    /// the old sign-in and not yet written are dropped: none reaches whoever signs in next.
    /// Binds the session a finished hand-off brought, if one did (at the socket's next request).
    pub async fn adopt_sso(&mut self, state: &AppState) {
        let Some(session) = self.sso.as_ref().and_then(|w| w.take_session()) else {
            return;
        };
        self.sso = None;
        self.set_session(state, session).await;
    }

    /// Whether the socket is signed in, or waits for a hand-off that may still sign it in.
    pub fn signed_in_or_waiting(&self) -> bool {
        self.session.is_some() || self.sso.as_ref().is_some_and(|w| w.waiting())
    }

    pub fn clear_session(&mut self, state: &AppState) {
        if let Some(wait) = self.sso.take() {
            wait.stop();
        }
        if let Some(old) = self.session.take() {
            state.events.unsubscribe(old.user.id, self.id);
            self.outbound.drop_events();
        }
        self.pending_subscribe = false;
        self.prepared = Prepared::default();
    }

    /// After a sign-in's reply is queued: registers for task events and queues one event per
    /// active task of the user, so a reconnecting client catches up.
    pub fn subscribe_if_signed_in(&mut self, state: &AppState) {
        if !std::mem::take(&mut self.pending_subscribe) {
            return;
        }
        let Some(session) = &self.session else { return };
        let user = session.user.id;
        let (session, ttl) = (session.clone(), state.auth.tokens.ttl());
        let sub = Subscriber {
            alive: Arc::new(move || session.is_live(ttl)),
            conn_id: self.id,
            format: EventFormat::Rpc,
            tx: self.outbound.clone(),
        };
        let prepared = std::mem::take(&mut self.prepared);
        state.events.subscribe(user, sub, prepared);
    }
}

/// Parses and runs one text frame; always produces exactly one reply. The frame's size was
/// checked by the socket loop.
pub async fn handle_text(state: &AppState, conn: &mut Conn, text: &str) -> String {
    let request = match envelope::parse(text) {
        Ok(request) => request,
        Err(bad) => return envelope::error(bad.namespace.as_deref(), bad.id, &bad.error),
    };
    let mut ctx = Ctx { state, conn };
    let method = Method::lookup(&request.namespace, &request.name);
    let result = dispatch(
        &mut ctx,
        method,
        &request.namespace,
        &request.name,
        request.args,
    )
    .await;
    state.metrics.rpc(
        method.map(|m| (m.index(), m.name())),
        result.as_ref().map_or_else(|e| e.code(), |_| 200),
    );
    match result {
        Ok(args) => envelope::response(&request.namespace, request.id, &args),
        Err(err) => {
            if let Error::Internal(cause) = &err {
                tracing::error!(conn_id = ctx.conn.id, method = %request.name, error = ?cause, "internal error");
            }
            envelope::error(Some(&request.namespace), request.id, &err)
        }
    }
}

/// How the RPC socket answers a frame it cannot read (binary, too large, not UTF-8): an error
/// envelope whose id is null, since none could be read.
pub fn refusal(error: &Error) -> String {
    envelope::error(None, RawValue::NULL, error)
}
