//! Single sign-on over the socket.
//!
//! - `rpc/auth_sso` (no args), and `rpc/auth` for a user who signs in through the provider
//!   when `[oidc]` is set: 428 (`err_code` 101, as the mock) with where the person signs in
//!   (`verification_uri`, `verification_uri_complete`, `user_code`, `expires_in`,
//!   `interval`). The socket then waits: once the person has signed in, it gets the pushed
//!   event `auth_sso` — `{"code": 200, "token", "ttl", "username"}`, and the socket is signed in as if
//!   `auth` had succeeded; or `{"code": 428, "err_code": 100, "mfa_token"}` when the user's
//!   one-time code is still due (`otp_verify` next); or the error (401: the code expired).
//! - `rpc/auth_sso_code {}`: the portal's one-time code (which the provider's callback left in
//!   an HttpOnly cookie of the browser, carried by the socket's upgrade), exchanged once for
//!   a normal token, as `auth` answers, with the username appended.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Ctx, guard_auth_attempt, parse_args, record_auth_outcome, sign_in};
use crate::audit::{Entry, Transport};
use crate::auth::federated::Waiter;
use crate::auth::sso::HANDOFF_CHECK_EVERY;
use crate::auth::tokens::Session;
use crate::envelope;
use crate::error::Error;
use crate::events::Outbox;
use crate::state::AppState;

/// A socket's hand-off under way: the session it brings, for the socket to take at its next
/// request (the waiting task cannot reach into the socket's own state).
pub struct SsoWait {
    session: Mutex<Option<Arc<Session>>>,
    /// Cancelled when the socket closes, signs in otherwise or starts another hand-off.
    stop: CancellationToken,
    until: tokio::time::Instant,
}

impl SsoWait {
    /// The session the hand-off brought, once (for the socket to bind).
    pub fn take_session(&self) -> Option<Arc<Session>> {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Whether the hand-off may still bring a session (the socket then counts as signing in).
    pub fn waiting(&self) -> bool {
        !self.stop.is_cancelled() && tokio::time::Instant::now() < self.until
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// `rpc/auth_sso`: a hand-off for anyone.
pub async fn apply(ctx: &mut Ctx<'_>) -> Result<Value, Error> {
    guard_auth_attempt(ctx)?;
    Err(handoff(ctx).await)
}

/// Starts a hand-off bound to this socket and the task that waits for it; the 428 that tells
/// the client where the person signs in (or why not).
pub async fn handoff(ctx: &mut Ctx<'_>) -> Error {
    // Each hand-off uses one of the socket's sign-in attempts (`max_auth_failures`): a socket
    // cannot fill the store with them.
    ctx.conn.auth_failures += 1;
    let waiter = Waiter::new(&format!("socket {}", ctx.conn.id), ctx.conn.peer.ip());
    let (key, fields) = match ctx.state.auth.sso_handoff(&waiter).await {
        Ok(started) => started,
        Err(e) => return e,
    };
    if let Some(old) = ctx.conn.sso.take() {
        old.stop();
    }
    let wait = Arc::new(SsoWait {
        session: Mutex::new(None),
        stop: ctx.state.shutdown.child_token(),
        until: tokio::time::Instant::now() + Duration::from_secs(fields.expires_in),
    });
    ctx.conn.sso = Some(wait.clone());
    let task = Waiting {
        state: ctx.state.clone(),
        key,
        wait,
        outbox: ctx.conn.outbound.clone(),
        peer: ctx.conn.peer.ip(),
        conn_id: ctx.conn.id,
    };
    ctx.state.tracker.spawn(task.run());
    Error::SsoRequired(Box::new(fields))
}

/// A hand-off that signed nobody in, for the audit log.
fn refused(entry: Entry, error: &Error) -> Entry {
    let mut entry = entry.failed(error.code(), format!("sso: {error}"));
    entry.event = "sign_in_refused";
    entry
}

/// The task that waits for one socket's hand-off.
struct Waiting {
    state: AppState,
    key: String,
    wait: Arc<SsoWait>,
    outbox: Arc<Outbox>,
    peer: std::net::IpAddr,
    conn_id: u64,
}

impl Waiting {
    async fn run(self) {
        let Ok(sso) = self.state.auth.sso() else {
            return;
        };
        let notify = sso.wait(&self.key);
        let outcome = loop {
            tokio::select! {
                _ = self.wait.stop.cancelled() => break None,
                _ = tokio::time::sleep_until(self.wait.until) => break Some(Err(Error::InvalidSsoCode)),
                _ = notify.notified() => {}
                _ = tokio::time::sleep(HANDOFF_CHECK_EVERY) => {}
            }
            match self.state.auth.sso_redeem(&self.key, self.peer).await {
                Ok(None) => continue,
                Ok(Some(user)) => break Some(Ok(user)),
                // The store could not answer: asked again at the next check.
                Err(Error::Unavailable(e)) => {
                    tracing::warn!(conn_id = self.conn_id, error = %e, "cannot ask the state store about a hand-off; asking again");
                    continue;
                }
                Err(e) => break Some(Err(e)),
            }
        };
        sso.unwait(&self.key);
        let Some(outcome) = outcome else {
            // Given up (signed out, socket closed, another hand-off asked for): its link must
            // sign nobody in.
            if let Err(e) = self.state.auth.sso_cancel(&self.key, self.peer).await {
                tracing::warn!(conn_id = self.conn_id, error = %e, "a given-up hand-off could not be removed; it expires by itself");
            }
            return;
        };
        let audit = Entry::new("sign_in", Transport::Ws)
            .ip(self.peer)
            .method("rpc/auth_sso");
        let args = match outcome {
            Ok(user) => match self
                .state
                .auth
                .tokens
                .issue(user, &self.peer.to_string())
                .await
            {
                Ok((token, session)) => {
                    tracing::info!(conn_id = self.conn_id, user = %session.user.username, peer = %self.peer, "signed in (single sign-on hand-off)");
                    self.state
                        .audit
                        .record(audit.user(session.user.username.clone()).detail("sso"));
                    let ttl = self.state.auth.tokens.ttl().as_secs_f64().ceil() as u64;
                    let args = json!({"code": 200, "token": token, "ttl": ttl, "username": session.user.username});
                    *self.wait.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(session);
                    args
                }
                Err(e) => {
                    let e = Error::from(e);
                    self.state.audit.record(refused(audit, &e));
                    e.to_args()
                }
            },
            Err(e) => {
                self.state.audit.record(refused(audit, &e));
                e.to_args()
            }
        };
        let frame = envelope::event("auth_sso", &args);
        if self
            .outbox
            .push(crate::events::Frame::Text(frame.into()))
            .is_err()
        {
            tracing::warn!(
                conn_id = self.conn_id,
                "a hand-off's outcome could not be queued"
            );
        }
    }
}

#[derive(Deserialize)]
pub struct AuthSsoCode {
    /// The code, if the page gives it: it must then be the one its browser's cookie holds.
    code: Option<String>,
}

impl AuthSsoCode {
    pub fn parse(args: &RawValue) -> Result<Self, Error> {
        parse_args(args)
    }

    /// `rpc/auth_sso_code {}`: the portal's one-time code, which the provider's callback gave
    /// this browser in an HttpOnly cookie that the socket's upgrade carried, for a token. A
    /// socket without that cookie (another browser, a link sent by someone) has nothing to
    /// exchange.
    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Result<Value, Error> {
        guard_auth_attempt(ctx)?;
        let browser = ctx.conn.portal_code.take().unwrap_or_default();
        let same = match &self.code {
            Some(given) => {
                use subtle::ConstantTimeEq;
                bool::from(given.as_bytes().ct_eq(browser.as_bytes()))
            }
            None => true,
        };
        let code = if same { &*browser } else { "" };
        let outcome = ctx.state.auth.sso_exchange(code, ctx.conn.peer.ip()).await;
        let result = match outcome {
            // As `auth`'s reply, and who signed in (the page did not type a name).
            Ok(user) => {
                let username = user.username.clone();
                sign_in(ctx, user).await.map(|reply| match reply {
                    Value::Array(mut items) => {
                        items.push(Value::String(username));
                        Value::Array(items)
                    }
                    other => other,
                })
            }
            Err(e) => Err(e),
        };
        record_auth_outcome(ctx, &result);
        result
    }
}
