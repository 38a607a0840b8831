//! What the audit log records of the REST sign-ins (the other REST events are recorded where
//! they happen: a sign-out, a connection handed out).

use std::net::SocketAddr;

use crate::audit::{Entry, Transport};
use crate::error::Error;
use crate::state::AppState;

/// Records a REST sign-in's outcome in the audit log: who signed in and how, or the refusal
/// (with the name typed, when there was one), or a second factor asked for.
pub(super) fn sign_in(
    state: &AppState,
    peer: SocketAddr,
    route: &str,
    how: &str,
    outcome: Result<&crate::auth::users::User, (&Error, &str)>,
) {
    let entry = |event| {
        Entry::new(event, Transport::Rest)
            .ip(peer.ip())
            .method(route)
    };
    let entry = match outcome {
        Ok(user) => {
            let how = if user.dn.is_some() { "directory" } else { how };
            entry("sign_in").user(user.username.clone()).detail(how)
        }
        Err((error, typed)) => {
            let message = match error {
                Error::BadRequest(_) => "Invalid arguments.".to_owned(),
                other => other.to_string(),
            };
            let mut e = match error.code() {
                428 => {
                    let mut e = entry("sign_in").failed(428, format!("{how}: {message}"));
                    e.outcome = "challenge";
                    e
                }
                code => entry("sign_in_refused").failed(code, format!("{how}: {message}")),
            };
            if !typed.is_empty() {
                let mut end = typed.len().min(crate::auth::MAX_USERNAME_BYTES);
                while !typed.is_char_boundary(end) {
                    end -= 1;
                }
                e = e.user(&typed[..end]);
            }
            e
        }
    };
    state.audit.record(entry);
}
