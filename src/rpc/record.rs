//! What the audit log records of the RPC socket's methods, once, after each call
//! ([`after`]): every sign-in method's outcome, sign-outs, and the admin methods (those that
//! change something always; the read-only ones when refused). Connections handed out are
//! recorded by `connect_info` itself, a thin client's single sign-on hand-off by the task that
//! waits for it (`auth_sso`), releases by the pools.
//!
//! Nothing of a request's secrets reaches an event: a refusal's message is the error's own
//! (never an echo of the arguments: a malformed request is "Invalid arguments."), and of an
//! admin method's arguments only the names it acts on are kept.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::{Ctx, Method, Reply};
use crate::audit::{Entry, Transport};
use crate::auth::MAX_USERNAME_BYTES;
use crate::auth::tokens::Session;
use crate::error::Error;

/// What a method's call is to the audit.
#[derive(Clone, Copy)]
enum Audited {
    /// A sign-in, and how.
    SignIn(&'static str),
    SignOut,
    /// An admin method: `changes` says whether it changes anything; `event` is what it is
    /// recorded as.
    Admin {
        changes: bool,
        event: &'static str,
    },
    Not,
}

fn audited(method: Method) -> Audited {
    use Method::*;
    match method {
        Auth => Audited::SignIn("password"),
        AuthToken => Audited::SignIn("token"),
        OtpVerify => Audited::SignIn("otp"),
        AuthSsoCode => Audited::SignIn("sso"),
        WebauthnVerify => Audited::SignIn("security_key"),
        AuthClear => Audited::SignOut,
        AdminRevoke => Audited::Admin {
            changes: true,
            event: "revoke",
        },
        AdminRelease | AdminReset | AdminTotp | AdminUnpinSso | AdminEnrollKey | AdminRemoveKey => {
            Audited::Admin {
                changes: true,
                event: "admin",
            }
        }
        AdminSessions | AdminTasks | AdminKeys | AdminAudit => Audited::Admin {
            changes: false,
            event: "admin",
        },
        _ => Audited::Not,
    }
}

/// What the recorder needs from before the call: who was signed in, for a sign-out (`None`
/// for every other method, so most calls copy nothing).
pub(super) fn before(ctx: &Ctx<'_>, method: Method) -> Option<Arc<Session>> {
    match audited(method) {
        Audited::SignOut => ctx.conn.session.clone(),
        _ => None,
    }
}

fn transport(ctx: &Ctx<'_>) -> Transport {
    if ctx.conn.browser {
        Transport::Portal
    } else {
        Transport::Ws
    }
}

/// A new event of this socket: its transport, address and method.
fn entry(ctx: &Ctx<'_>, event: &'static str, method: Method) -> Entry {
    Entry::new(event, transport(ctx))
        .ip(ctx.conn.peer.ip())
        .method(method.name())
}

/// A refusal's words: the error's own message, except for a malformed request, whose
/// message may quote what was sent.
fn message(error: &Error) -> String {
    match error {
        Error::BadRequest(_) => "Invalid arguments.".to_owned(),
        other => truncated(&other.to_string(), 200),
    }
}

fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The named fields of a request's arguments (only strings and booleans; never anything else).
fn arg(args: &RawValue, name: &str) -> Option<serde_json::Value> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(args.get()).ok()?;
    map.get(name)
        .filter(|v| v.is_string() || v.is_boolean())
        .cloned()
}

fn arg_text(args: &RawValue, name: &str) -> Option<String> {
    arg(args, name)?
        .as_str()
        .map(|s| truncated(s, MAX_USERNAME_BYTES))
}

/// Records a call of `method` that ended with `result` (see the module docs).
pub(super) fn after(
    ctx: &Ctx<'_>,
    method: Method,
    args: &RawValue,
    before: Option<Arc<Session>>,
    result: &Result<Reply, Error>,
) {
    let audit = &ctx.state.audit;
    match (audited(method), result) {
        (Audited::Not, _) => {}
        (Audited::SignIn(how), Ok(_)) => {
            let Some(session) = &ctx.conn.session else {
                return;
            };
            let how = match how {
                "password" if session.user.dn.is_some() => "directory",
                how => how,
            };
            audit.record(
                entry(ctx, "sign_in", method)
                    .user(session.user.username.clone())
                    .detail(how),
            );
        }
        (Audited::SignIn(how), Err(error)) => {
            let how = match how {
                "password" if arg(args, "ldap") == Some(serde_json::Value::Bool(true)) => {
                    "directory"
                }
                how => how,
            };
            let mut e = match error.code() {
                // A second factor asked for: the sign-in goes on.
                428 => {
                    let mut e = entry(ctx, "sign_in", method).failed(428, message(error));
                    e.outcome = "challenge";
                    e
                }
                code => entry(ctx, "sign_in_refused", method).failed(code, message(error)),
            };
            e.detail = Some(format!("{how}: {}", e.detail.unwrap_or_default()));
            // The name typed, for `auth`; the other methods carry none.
            if let Some(name) = arg_text(args, "username") {
                e = e.user(name);
            }
            audit.record(e);
        }
        (Audited::SignOut, _) => {
            if let Some(session) = before {
                let e = entry(ctx, "sign_out", method).user(session.user.username.clone());
                audit.record(match result {
                    Ok(_) => e,
                    Err(error) => e.failed(error.code(), message(error)),
                });
            }
        }
        (Audited::Admin { changes, event }, result) => {
            if !changes && result.is_ok() {
                return;
            }
            let mut e = entry(ctx, event, method);
            if let Some(session) = &ctx.conn.session {
                e = e.actor(session.user.username.clone());
            }
            if let Some(target) = arg_text(args, "username").or_else(|| arg_text(args, "dn")) {
                e = e.user(target);
            }
            if let Some(pool) = arg_text(args, "pool_id") {
                e = e.pool(pool);
            }
            let mut detail = Vec::new();
            if let Some(id) = arg_text(args, "id") {
                detail.push(format!("key {id}"));
            }
            if arg(args, "disable") == Some(serde_json::Value::Bool(true)) {
                detail.push("disable".to_owned());
            }
            if !detail.is_empty() {
                e = e.detail(detail.join(", "));
            }
            audit.record(match result {
                Ok(_) => e,
                Err(error) => e.failed(error.code(), message(error)),
            });
        }
    }
}

/// A connection's data handed out (`connect_info`, step 2 done).
pub(super) fn connected(ctx: &Ctx<'_>, pool: String) {
    if let Some(session) = &ctx.conn.session {
        ctx.state.audit.record(
            entry(ctx, "connect", Method::ConnectInfo)
                .user(session.user.username.clone())
                .pool(pool),
        );
    }
}
