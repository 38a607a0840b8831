//! No access outlives its account: a directory user's sessions — session tokens, the sockets
//! signed in with them, REST JWTs — are checked against the directory again at most every
//! `directory_recheck`, and ended everywhere when the account is gone, disabled, or in no
//! group that grants a pool (or administration). The check happens when a session is used
//! (`auth_token`, a signed-in socket's request, a REST call) and its last check is older than
//! `directory_recheck`, and in the session sweep for the users with a socket open (so a
//! silent socket is closed on time too).
//!
//! One lookup per user per period across the server: concurrent checks of a user on one
//! instance share one lookup, and instances share the time of the last check through the
//! state store ([`crate::store::Store::directory_recheck_claim`]), so only the instance that
//! claims a due check asks the directory. Ending the sessions is `admin_revoke`'s revocation
//! (every token and JWT of the user, on every instance) plus a
//! [`BusEvent::SessionsEnded`] that closes the user's sockets with the reason; logged once
//! (by the instance that asked) and counted (`poolgate_sessions_ended_total`).
//!
//! **A directory that cannot be asked ends nothing** (fail-open): an outage — or a firewall
//! change, or an attacker keeping the directory busy — must not sign every directory user out
//! at once. The sessions are kept, the failure is logged (at most once per 10 s) and counted,
//! and the user is checked again one `directory_recheck` later. What bounds this: no session
//! outlives `session_max_age` (tokens and JWTs alike), and nobody signs in again while the
//! directory is down, so a deleted account keeps its access through an outage for at most
//! `session_max_age` after its last sign-in.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::StreamExt;
use uuid::Uuid;

use super::Authenticator;
use super::directory::{Directory, DirectoryEntry, DirectoryError, same_dn};
use super::jwt::Claims;
use super::tokens::Session;
use super::users::{User, directory_user_id};
use crate::store::{BusEvent, now_ms};
use crate::telemetry::RateLimitedLog;

/// Directory users the session sweep re-checks at once.
const SWEEP_CONCURRENCY: usize = 8;

/// At most one "cannot re-check" line per period.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the session sweep, the re-checks and `session_max_age` share.
pub struct Recheck {
    every: Duration,
    max_age: Duration,
    /// Groups (DNs) that grant something: every pool's `groups` and the directory's
    /// `admin_groups`. Empty: no pool is opened to a group, and the group rule is off.
    granting: Vec<String>,
    /// Per user: the latest check this instance knows of (its own, or another instance's
    /// claim). Entries older than `every` are swept.
    checked: DashMap<Uuid, Checked>,
    /// Per user: the check under way here, which concurrent callers wait for.
    inflight: DashMap<Uuid, Arc<tokio::sync::OnceCell<Checked>>>,
}

/// A check of a user: when, and whether it ended the sessions signed in until then.
#[derive(Debug, Clone, Copy)]
struct Checked {
    at_ms: u64,
    ended: bool,
}

/// Why the directory no longer admits a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Gone,
    Disabled,
    NoPoolGroup,
}

impl Ending {
    /// What is logged, counted and told to the sockets.
    fn reason(self) -> &'static str {
        match self {
            Ending::Gone => "directory: account gone",
            Ending::Disabled => "directory: disabled",
            Ending::NoPoolGroup => "directory: no pool group",
        }
    }
}

/// What the directory says of a user's entry now.
pub(super) enum Standing {
    Present(DirectoryEntry),
    Disabled,
    Gone,
}

impl Recheck {
    /// `every`: `directory_recheck`; `max_age`: `session_max_age`; `granting`: the groups that
    /// grant a pool or administration.
    pub fn new(every: Duration, max_age: Duration, granting: Vec<String>) -> Self {
        Recheck {
            every,
            max_age,
            granting,
            checked: DashMap::new(),
            inflight: DashMap::new(),
        }
    }

    fn every_ms(&self) -> u64 {
        self.every.as_millis() as u64
    }

    /// The check of `user` that still covers `now`, if this instance knows one.
    fn fresh(&self, user: Uuid, now: u64) -> Option<Checked> {
        self.checked
            .get(&user)
            .map(|c| *c)
            .filter(|c| now.saturating_sub(c.at_ms) < self.every_ms())
    }

    fn record(&self, user: Uuid, checked: Checked) -> Checked {
        self.checked.insert(user, checked);
        checked
    }

    /// A sign-in just asked the directory: no check is due for a period.
    pub fn saw(&self, user: Uuid) {
        self.record(
            user,
            Checked {
                at_ms: now_ms(),
                ended: false,
            },
        );
    }

    /// Whether one of `groups` grants a pool or administration (always, with no group rule).
    fn grants(&self, groups: &[String]) -> bool {
        self.granting.is_empty()
            || groups
                .iter()
                .any(|g| self.granting.iter().any(|p| same_dn(p, g)))
    }

    /// Forgets the checks that no longer cover anything.
    pub fn sweep(&self) {
        let now = now_ms();
        let every = self.every_ms();
        self.checked
            .retain(|_, c| now.saturating_sub(c.at_ms) < every);
    }

    /// Whether a JWT issued at `iat` (unix seconds) is within `session_max_age`.
    fn within_max_age(&self, iat: i64) -> bool {
        iat.saturating_add(self.max_age.as_secs() as i64) > chrono::Utc::now().timestamp()
    }
}

impl Authenticator {
    /// Whether the directory check of a session is due: a directory user's, last checked
    /// longer than `directory_recheck` ago. Cheap, for every request.
    pub fn recheck_due(&self, session: &Session) -> bool {
        self.directory.is_some()
            && session.user.dn.is_some()
            && now_ms().saturating_sub(session.checked_ms()) >= self.recheck.every_ms()
    }

    /// Whether a session may go on as far as the directory is concerned: checked when due
    /// (see the module doc). False once its user's sessions were ended; the caller answers as
    /// for a revoked token.
    pub async fn session_confirmed(&self, session: &Session) -> bool {
        if !self.recheck_due(session) {
            return true;
        }
        match self
            .directory_confirms(&session.user, session.created_ms)
            .await
        {
            Some(at) => {
                session.set_checked(at);
                true
            }
            None => false,
        }
    }

    /// Whether a REST JWT's session still holds: issued within `session_max_age`, and — a
    /// directory user's — confirmed by the directory when a check is due.
    pub async fn jwt_session_holds(&self, user: &User, claims: &Claims) -> bool {
        if !self.recheck.within_max_age(claims.iat) {
            return false;
        }
        if user.dn.is_none() || self.directory.is_none() {
            return true;
        }
        let since_ms = u64::try_from(claims.iat).unwrap_or(0).saturating_mul(1000);
        self.directory_confirms(user, since_ms).await.is_some()
    }

    /// Whether a JWT's claims are within `session_max_age` (an open status socket's check).
    pub fn jwt_within_max_age(&self, claims: &Claims) -> bool {
        self.recheck.within_max_age(claims.iat)
    }

    /// The session sweep's part: re-checks the directory users among `users` (those with a
    /// socket on this instance) whose check is due.
    pub async fn recheck_connected(&self, users: Vec<Uuid>) {
        if self.directory.is_none() {
            return;
        }
        self.recheck.sweep();
        let now = now_ms();
        let due: Vec<Uuid> = users
            .into_iter()
            .filter(|id| self.users.by_id(id).is_none() && self.recheck.fresh(*id, now).is_none())
            .collect();
        futures_util::stream::iter(due)
            .for_each_concurrent(SWEEP_CONCURRENCY, |id| async move {
                match self.users.resolve(&id).await {
                    Ok(Some(user)) if user.dn.is_some() => {
                        self.directory_confirms(&user, now_ms()).await;
                    }
                    Ok(_) => {}
                    Err(e) => cannot_recheck(&e.to_string()),
                }
            })
            .await;
    }

    /// Asks the directory about `user` unless a check that covers now is known (here, or by
    /// the store's claim). `Some(at)`: a session signed in at `since_ms` goes on, its user
    /// confirmed (or, the directory being down, kept) at `at`; `None`: it was ended.
    async fn directory_confirms(&self, user: &User, since_ms: u64) -> Option<u64> {
        let Some(directory) = &self.directory else {
            return Some(now_ms());
        };
        let checked = match self.recheck.fresh(user.id, now_ms()) {
            Some(checked) => checked,
            None => {
                let cell = self.recheck.inflight.entry(user.id).or_default().clone();
                let checked = *cell.get_or_init(|| self.recheck_now(directory, user)).await;
                self.recheck
                    .inflight
                    .remove_if(&user.id, |_, c| Arc::ptr_eq(c, &cell));
                checked
            }
        };
        (!checked.ended || since_ms > checked.at_ms).then_some(checked.at_ms)
    }

    /// One check of `user`, if this instance claims it; ends their sessions when the
    /// directory no longer admits them.
    async fn recheck_now(&self, directory: &Directory, user: &User) -> Checked {
        let now = now_ms();
        match self
            .store
            .directory_recheck_claim(user.id, now, self.recheck.every)
            .await
        {
            Ok(Ok(())) => {}
            // Another instance (or an earlier call) checked within the period.
            Ok(Err(at)) => {
                return self.recheck.record(
                    user.id,
                    Checked {
                        at_ms: at,
                        ended: false,
                    },
                );
            }
            // The state store cannot answer: the request will meet it too. Kept, and asked
            // again at the session's next check.
            Err(e) => {
                cannot_recheck(&e.to_string());
                return Checked {
                    at_ms: now,
                    ended: false,
                };
            }
        }
        self.metrics.directory_rechecks.inc();
        let ending = match standing(directory, user).await {
            Ok(Standing::Present(entry)) if self.recheck.grants(&entry.groups) => None,
            Ok(Standing::Present(_)) => Some(Ending::NoPoolGroup),
            Ok(Standing::Disabled) => Some(Ending::Disabled),
            Ok(Standing::Gone) => Some(Ending::Gone),
            Err(e) => {
                // Fail-open, bounded by session_max_age: see the module doc.
                self.metrics.directory_errors.inc();
                cannot_recheck(&e.to_string());
                None
            }
        };
        if let Some(ending) = ending {
            self.end_directory_sessions(user, ending).await;
        }
        self.recheck.record(
            user.id,
            Checked {
                at_ms: now_ms(),
                ended: ending.is_some(),
            },
        )
    }

    /// Ends every session and JWT of `user` everywhere, as `admin_revoke` does, and has
    /// every instance close their sockets with the reason.
    async fn end_directory_sessions(&self, user: &User, ending: Ending) {
        let reason = ending.reason();
        let before_ms = now_ms();
        match self.revoke_user(user.id).await {
            // The line session_max_age's end logs too (tokens.rs): `session ended`, user,
            // reason; here every token (`sessions`) and every JWT of the user.
            Ok(sessions) => tracing::info!(
                user = %user.username,
                reason,
                sessions,
                "session ended"
            ),
            // Ended here and, by the event below, on every instance; the stored records
            // stay until the next check ends them again.
            Err(e) => tracing::warn!(
                user = %user.username,
                reason,
                error = %e,
                "session ended on the instances, but the state store could not delete it"
            ),
        }
        self.metrics.session_ended(reason);
        self.tokens.revoke_user_local(user.id, before_ms);
        self.jwt
            .revoke_user_local(user.id, (before_ms / 1000) as i64);
        self.store.publish(BusEvent::SessionsEnded {
            user_id: user.id,
            reason: reason.into(),
            before_ms: Some(before_ms),
        });
    }
}

/// Where the directory has `user`'s entry now: found from the DN of their last sign-in, or —
/// moved or renamed since — from their account name, through the user filter either way
/// (an entry the filter no longer admits is gone); the same entry only (its key is the
/// user's identity).
pub(super) async fn standing(
    directory: &Directory,
    user: &User,
) -> Result<Standing, DirectoryError> {
    let names = user
        .dn
        .iter()
        .map(|dn| (dn.as_str(), true))
        .chain([(user.username.as_str(), false)]);
    for (name, by_dn) in names {
        if let Some(entry) = directory.lookup(name, by_dn).await?
            && directory_user_id(&entry.key) == user.id
        {
            return Ok(if entry.disabled {
                Standing::Disabled
            } else {
                Standing::Present(entry)
            });
        }
    }
    Ok(Standing::Gone)
}

/// Logs, at a bounded rate, a re-check that could not be made (sessions kept).
fn cannot_recheck(error: &str) {
    static LOG: LazyLock<RateLimitedLog> = LazyLock::new(|| RateLimitedLog::new(LOG_EVERY));
    if let Some(failed) = LOG.hit() {
        tracing::warn!(
            error,
            also_failed_since_last_line = failed - 1,
            "cannot re-check directory users' sessions: they are kept and checked again at the next directory_recheck"
        );
    }
}
