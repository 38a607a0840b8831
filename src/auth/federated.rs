//! Single sign-on's sign-in rules, on the one sign-in path ([`Authenticator`]): the same
//! lockout (a wrong, reused or expired code or `state` counts against the address like a
//! made-up token), the same metrics (`poolgate_logins_total`), the same sessions and MFA on
//! top (a user with a one-time code gets the `otp_verify` step after the provider's sign-in,
//! unless `trust_provider_mfa` and the provider's `amr` says it did MFA).
//!
//! Who is who: the provider's (issuer, subject) is the person ([`users::federated_user_id`]);
//! their record (username, groups, admin) is refreshed at each sign-in. A local user of the
//! same name is never taken over — unless the settings file marks them `adfs_enabled` (they
//! sign in through the provider), in which case the provider's sign-in is theirs.

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use super::oidc::{Callback, OidcError, PENDING_TTL, VerifiedIdentity, user_code};
use super::sso::{self, PORTAL_CODE_TTL, Pending, Sso};
use super::users::{self, User};
use super::{Authenticator, mfa_kind};
use crate::error::{Error, MfaKind, SsoHandoff};
use crate::store::{FederatedUser, Handoff, SsoOutcome, now_ms};
use crate::telemetry::RateLimitedLog;

/// At most one line per period for refused single sign-ons (each is counted in the metrics).
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Where a browser's return from the provider leads.
#[derive(Debug)]
pub enum CallbackDone {
    /// The portal: the page exchanges this one-time code over its socket for a token.
    Portal { code: String },
    /// A thin client's hand-off is done: its socket (or REST poll) gets the token. The
    /// device's address, for the person to see.
    Handoff { username: String, device: String },
}

/// Where a REST client's poll of its hand-off stands (RFC 8628 §3.5).
pub enum Poll {
    /// The person has not signed in yet (`authorization_pending`).
    Pending,
    /// Polled sooner than `interval` after the last poll (`slow_down`).
    SlowDown,
    /// Gone: expired, or taken already (`expired_token`).
    Expired,
    /// Signed in: the user to issue the JWT for.
    Done(Arc<User>),
}

impl Authenticator {
    /// A new hand-off for a REST client: what it is told, and the secret it polls with
    /// (RFC 8628's `device_code`: the user code alone, which a person types and may show
    /// around, must not be enough to collect the sign-in).
    pub async fn sso_handoff_rest(&self, peer: IpAddr) -> Result<(SsoHandoff, String), Error> {
        let device_code = sso::new_portal_code();
        let waiter = Waiter::new(&rest_waiter(&device_code), peer);
        let (_, fields) = self.sso_handoff(&waiter).await?;
        Ok((fields, device_code))
    }

    /// A REST client's poll of the hand-off with this user code, by its `device_code`. A code
    /// that is not one, or another client's, counts against the address like a made-up token.
    pub async fn sso_poll(
        &self,
        typed: &str,
        device_code: &str,
        peer: IpAddr,
    ) -> Result<Poll, Error> {
        let sso = self.sso()?;
        self.lockout.sso_check(peer).await?;
        let key = user_code::normalise(typed).map(|c| sso::key("handoff", &c));
        let handoff = match &key {
            Some(key) => self.store.handoff_get(key).await?,
            None => None,
        };
        let (Some(key), Some(handoff)) = (key, handoff) else {
            self.lockout.sso_count(peer).await?;
            log_refused(peer, "a poll of an unknown or expired hand-off code");
            return Ok(Poll::Expired);
        };
        let waiter = Waiter::parse(&handoff.waiter);
        if waiter.who != rest_waiter(device_code) {
            return self
                .refused(peer, "a poll of another client's hand-off")
                .await;
        }
        if sso.poll_too_soon(&key, now_ms()) {
            return Ok(Poll::SlowDown);
        }
        if handoff.done.is_none() {
            return Ok(Poll::Pending);
        }
        Ok(match self.sso_redeem(&key, waiter.from).await? {
            Some(user) => Poll::Done(user),
            None => Poll::Expired,
        })
    }

    /// The provider's settings and state; 404 when `[oidc]` is not configured.
    pub fn sso(&self) -> Result<&Sso, Error> {
        self.sso
            .as_ref()
            .ok_or_else(|| Error::NotFound("Single sign-on is not configured.".into()))
    }

    /// A new hand-off for a thin client (`waiter` says which, and from where): where the
    /// person signs in. Returns its store key (what the waiter waits on) and what the client
    /// is told. Each live hand-off counts against the client's address like a made-up token
    /// until it is redeemed ([`Authenticator::sso_redeem`] gives it back): an address cannot
    /// keep more of them than its `lockout_address_attempts`, nor fill the store.
    pub async fn sso_handoff(&self, waiter: &Waiter) -> Result<(String, SsoHandoff), Error> {
        let sso = self.sso()?;
        self.lockout.sso_check(waiter.from).await?;
        self.lockout.sso_count(waiter.from).await?;
        let code = user_code::generate();
        let key = sso::key("handoff", &code);
        let handoff = Handoff {
            waiter: waiter.to_string(),
            expires_ms: now_ms() + sso.settings.handoff.expires_in.as_millis() as u64,
            done: None,
        };
        self.store.handoff_put(&key, &handoff).await?;
        Ok((key, sso.handoff_fields(&code)))
    }

    /// `GET /oidc/login`: the provider's URL to send the browser to, and the sign-in's `state`
    /// (which the browser keeps in a cookie: the callback must come back to the browser that
    /// left, against login CSRF); the sign-in is kept by its `state`. With `handoff` (a user
    /// code as typed), the sign-in completes that hand-off: an unknown, used or expired code is
    /// refused and counted against the address. Every sign-in begun counts against the
    /// address until its callback succeeds (a flood of them is held to the address's limit);
    /// a hand-off's asks the provider for a fresh sign-in (`prompt=login`): a person must
    /// type their password for a device, not pass it on with one click.
    pub async fn sso_login_url(
        &self,
        handoff: Option<&str>,
        peer: IpAddr,
    ) -> Result<(String, String), Error> {
        let sso = self.sso()?;
        let handoff = match handoff {
            Some(typed) => Some(self.live_handoff(typed, peer).await?),
            None => {
                self.lockout.sso_check(peer).await?;
                None
            }
        };
        let client = sso.client().await.map_err(|e| provider_fault(sso, &e))?;
        self.lockout.sso_count(peer).await?;
        let (url, login) = client.begin(handoff.is_some());
        let state = login.state.clone();
        let key = sso::key("state", &state);
        let pending = serde_json::to_string(&Pending {
            login,
            handoff,
            from: Some(peer),
        })
        .map_err(Error::internal)?;
        let expires = now_ms() + PENDING_TTL.as_millis() as u64;
        self.store.sso_put(&key, &pending, expires).await?;
        Ok((url, state))
    }

    /// The live hand-off, not yet done, of a user code as typed (the confirmation page's):
    /// where its device asked from and when. Anything else counts against the address like a
    /// made-up token (401).
    pub async fn sso_check_code(&self, typed: &str, peer: IpAddr) -> Result<HandoffSeen, Error> {
        let sso = self.sso()?;
        let key = self.live_handoff(typed, peer).await?;
        let handoff = self
            .store
            .handoff_get(&key)
            .await?
            .ok_or(Error::InvalidSsoCode)?;
        let ttl = sso.settings.handoff.expires_in.as_millis() as u64;
        Ok(HandoffSeen {
            from: Waiter::parse(&handoff.waiter).from,
            asked_ms: handoff.expires_ms.saturating_sub(ttl),
        })
    }

    /// A hand-off its client gave up (signed out, closed, asked for another): gone from the
    /// store, so that its link signs nobody in, and its count given back to `from`.
    pub async fn sso_cancel(&self, key: &str, from: IpAddr) -> Result<(), Error> {
        // Marked done by nobody (unless a person just did), then taken: no one else can
        // take or complete it after this.
        let nobody = SsoOutcome {
            user_id: uuid::Uuid::nil(),
            otp_due: false,
        };
        self.store.handoff_complete(key, &nobody).await?;
        if self.store.handoff_take(key).await?.is_some() {
            self.lockout.sso_give_back(from).await?;
        }
        Ok(())
    }

    /// The store key of a live hand-off not yet done, from a user code as typed; anything else
    /// counts against the address like a made-up token.
    async fn live_handoff(&self, typed: &str, peer: IpAddr) -> Result<String, Error> {
        self.lockout.sso_check(peer).await?;
        if let Some(code) = user_code::normalise(typed) {
            let key = sso::key("handoff", &code);
            if let Some(handoff) = self.store.handoff_get(&key).await?
                && handoff.done.is_none()
            {
                return Ok(key);
            }
        }
        self.refused(peer, "an unknown, used or expired hand-off code")
            .await
    }

    /// Counts a refused code or `state` against the address, logs it (rate-limited) and
    /// answers 401.
    async fn refused<T>(&self, peer: IpAddr, what: &str) -> Result<T, Error> {
        self.lockout.sso_count(peer).await?;
        self.metrics.login("denied");
        log_refused(peer, what);
        Err(Error::InvalidSsoCode)
    }

    /// `GET /oidc/callback`: the provider sent the browser back. Checks the sign-in it belongs
    /// to (its `state`, used once), has the provider's answer verified, finds who signed in and
    /// completes the hand-off or gives the portal its one-time code. `browser_state` is the
    /// `state` the browser's cookie holds: a callback for another browser's sign-in is refused
    /// (and that sign-in burnt).
    pub async fn sso_callback(
        &self,
        query: &str,
        browser_state: Option<&str>,
        peer: IpAddr,
    ) -> Result<CallbackDone, Error> {
        let sso = self.sso()?;
        let callback = Callback::from_query(query);
        self.lockout.sso_check(peer).await?;
        let pending = match callback.state.as_deref().filter(|s| !s.is_empty()) {
            Some(state) => self.store.sso_take(&sso::key("state", state)).await?,
            None => None,
        };
        let same_browser = match (callback.state.as_deref(), browser_state) {
            (Some(state), Some(cookie)) => {
                use subtle::ConstantTimeEq;
                bool::from(state.as_bytes().ct_eq(cookie.as_bytes()))
            }
            _ => false,
        };
        let pending = pending.filter(|_| same_browser);
        let Some(pending) = pending else {
            return self
                .refused(
                    peer,
                    "a callback whose state is unknown, used, expired or another browser's",
                )
                .await;
        };
        let pending: Pending = serde_json::from_str(&pending).map_err(Error::internal)?;
        let client = sso.client().await.map_err(|e| provider_fault(sso, &e))?;
        let identity = match client.finish(&pending.login, &callback).await {
            Ok(identity) => identity,
            Err(e) if e.is_provider_fault() => return Err(provider_fault(sso, &e)),
            Err(e) => {
                self.metrics.login("denied");
                log_refused(peer, &e.to_string());
                return Err(Error::Unprocessable(capitalised(&e)));
            }
        };
        sso.healthy();
        // The sign-in begun by /oidc/login came back: its count is given back to the address
        // that began it.
        self.lockout
            .sso_give_back(pending.from.unwrap_or(peer))
            .await?;
        let (user, otp_due) = self.federated_user(&identity).await?;
        let outcome = SsoOutcome {
            user_id: user.id,
            otp_due,
        };
        match pending.handoff {
            Some(key) => {
                let device = match self.store.handoff_get(&key).await? {
                    Some(handoff) => Waiter::parse(&handoff.waiter).from.to_string(),
                    None => return Err(Error::InvalidSsoCode),
                };
                if !self.store.handoff_complete(&key, &outcome).await? {
                    return Err(Error::InvalidSsoCode);
                }
                sso.wake(&key);
                tracing::info!(user = %user.username, browser = %peer, device = %device, "signed in at the provider for a thin client");
                Ok(CallbackDone::Handoff {
                    username: user.username.clone(),
                    device,
                })
            }
            None => {
                let code = sso::new_portal_code();
                let body = serde_json::to_string(&outcome).map_err(Error::internal)?;
                let expires = now_ms() + PORTAL_CODE_TTL.as_millis() as u64;
                self.store
                    .sso_put(&sso::key("portal", &code), &body, expires)
                    .await?;
                Ok(CallbackDone::Portal { code })
            }
        }
    }

    /// Who the provider signed in: a local user marked `adfs_enabled` of that name (the same
    /// name in any case), pinned at their first single sign-on to the provider's (issuer,
    /// subject) — another person the provider later calls by that name does not become them;
    /// else the federated person (issuer, subject), their record refreshed. A local user of
    /// that name (in any case) who does not sign in through the provider is not taken over.
    /// Also whether poolgate's own one-time code is still due.
    async fn federated_user(&self, id: &VerifiedIdentity) -> Result<(Arc<User>, bool), Error> {
        if let Err(why) = check_provider_username(&id.username) {
            self.metrics.login("denied");
            tracing::warn!(issuer = %id.issuer, subject = ?id.subject, username = ?id.username, "single sign-on refused: {why}");
            return Err(Error::Unprocessable(format!(
                "The provider signed you in under a name this server cannot use ({why}); ask \
                 an administrator."
            )));
        }
        let user = match self.users.by_name_any_case(&id.username) {
            Some(local) if local.adfs_enabled => {
                self.pin_local(local, id).await?;
                local.clone()
            }
            Some(local) => {
                self.metrics.login("denied");
                tracing::warn!(user = ?id.username, local = %local.username, issuer = %id.issuer, "single sign-on refused: a local user of this name exists and is not marked adfs_enabled, so the provider's person does not take it over");
                return Err(Error::Unprocessable(format!(
                    "The provider signed you in as {:?}, but a local account of that name \
                     exists here that does not sign in through the provider; ask an \
                     administrator.",
                    id.username
                )));
            }
            None => {
                let record = FederatedUser {
                    id: users::federated_user_id(&id.issuer, &id.subject),
                    issuer: id.issuer.clone(),
                    subject: id.subject.clone(),
                    username: id.username.clone(),
                    groups: id.groups.clone(),
                    admin: id.admin,
                    updated_ms: now_ms(),
                };
                self.store.federated_user_put(&record).await?;
                Arc::new(User::from_federated(&record))
            }
        };
        if user.disabled {
            self.metrics.login("disabled");
            return Err(Error::Disabled);
        }
        let otp_due = mfa_kind(&user) == Some(MfaKind::Otp) && !id.provider_mfa;
        Ok((user, otp_due))
    }

    /// A local `adfs_enabled` user is the provider's person who first signed in as them
    /// (kept in the store as a pin record under [`users::local_pin_id`]); anyone else the
    /// provider calls by that name is refused. To give the account to another person, an
    /// administrator removes the pin (`admin_unpin_sso`, `poolgate admin unpin-sso USER`).
    async fn pin_local(&self, local: &User, id: &VerifiedIdentity) -> Result<(), Error> {
        let pin_id = users::local_pin_id(&local.id);
        // A pin an administrator removed is kept with no issuer.
        let pin = self
            .store
            .federated_user_get(pin_id)
            .await?
            .filter(|pin| !pin.issuer.is_empty());
        match pin {
            Some(pin) if pin.issuer == id.issuer && pin.subject == id.subject => Ok(()),
            Some(pin) => {
                self.metrics.login("denied");
                tracing::warn!(user = %local.username, issuer = %id.issuer, subject = ?id.subject, pinned_subject = ?pin.subject, "single sign-on refused: the local user is pinned to another person at the provider");
                Err(Error::Unprocessable(format!(
                    "The provider signed you in as {:?}, but that account here belongs to \
                     another person of the provider; ask an administrator.",
                    id.username
                )))
            }
            None => {
                let pin = FederatedUser {
                    id: pin_id,
                    issuer: id.issuer.clone(),
                    subject: id.subject.clone(),
                    username: local.username.clone(),
                    groups: Vec::new(),
                    admin: false,
                    updated_ms: now_ms(),
                };
                self.store.federated_user_put(&pin).await?;
                tracing::info!(user = %local.username, issuer = %id.issuer, subject = ?id.subject, "local user pinned to the provider's person at their first single sign-on");
                Ok(())
            }
        }
    }

    /// Removes the pin of the local `adfs_enabled` user `username` (kept as a record without
    /// issuer, which the store cannot delete); whether there was one. 404 for anyone else.
    pub async fn sso_unpin(&self, username: &str) -> Result<bool, Error> {
        let Some(local) = self.users.by_name(username).filter(|u| u.adfs_enabled) else {
            return Err(Error::NotFound(format!(
                "No local user {username:?} who signs in through the provider."
            )));
        };
        let pin_id = users::local_pin_id(&local.id);
        let pinned = self
            .store
            .federated_user_get(pin_id)
            .await?
            .is_some_and(|pin| !pin.issuer.is_empty());
        if pinned {
            let cleared = FederatedUser {
                id: pin_id,
                issuer: String::new(),
                subject: String::new(),
                username: local.username.clone(),
                groups: Vec::new(),
                admin: false,
                updated_ms: now_ms(),
            };
            self.store.federated_user_put(&cleared).await?;
        }
        Ok(pinned)
    }

    /// `auth_sso_code`: the portal's one-time code, exchanged once for the user to sign in (or
    /// the one-time code challenge still due). Unknown, used or expired: 401, counted.
    pub async fn sso_exchange(&self, code: &str, peer: IpAddr) -> Result<Arc<User>, Error> {
        self.sso()?;
        self.lockout.sso_check(peer).await?;
        if code.is_empty() {
            // No code at all (a page opened at /?sso=1 without one): nothing was guessed.
            return Err(Error::InvalidSsoCode);
        }
        let taken = match code.len() {
            1..=64 => self.store.sso_take(&sso::key("portal", code)).await?,
            _ => None,
        };
        let Some(outcome) = taken else {
            return self
                .refused(peer, "an unknown, used or expired portal code")
                .await;
        };
        let outcome: SsoOutcome = serde_json::from_str(&outcome).map_err(Error::internal)?;
        let result = self.outcome_user(outcome).await;
        self.record(result)
    }

    /// A thin client's hand-off, taken if done (once): the user to sign in, or the one-time
    /// code challenge still due. `None` while the person has not signed in. The hand-off's
    /// count against the client's address (`peer`) is given back.
    pub async fn sso_redeem(&self, key: &str, peer: IpAddr) -> Result<Option<Arc<User>>, Error> {
        let Some(outcome) = self.store.handoff_take(key).await? else {
            return Ok(None);
        };
        self.lockout.sso_give_back(peer).await?;
        let result = self.outcome_user(outcome).await;
        self.record(result).map(Some)
    }

    async fn outcome_user(&self, outcome: SsoOutcome) -> Result<Arc<User>, Error> {
        let user = self
            .users
            .resolve(&outcome.user_id)
            .await?
            .ok_or(Error::InvalidSsoCode)?;
        if user.disabled {
            return Err(Error::Disabled);
        }
        if outcome.otp_due {
            return Err(Error::MfaRequired {
                kind: MfaKind::Otp,
                mfa_token: Some(self.mfa.issue(&user, true).await?),
            });
        }
        Ok(user)
    }
}

/// Who waits for a hand-off (a socket of an instance, a REST client by the digest of its
/// `device_code`) and the address it asked from, as the store keeps them (one text:
/// `"{who} from {address}"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub who: String,
    pub from: IpAddr,
}

impl Waiter {
    pub fn new(who: &str, from: IpAddr) -> Self {
        Waiter {
            who: who.to_owned(),
            from,
        }
    }

    /// The waiter of a stored hand-off (one stored without an address reads as from `::`).
    pub fn parse(text: &str) -> Self {
        match text.rsplit_once(" from ") {
            Some((who, from)) => Waiter {
                who: who.to_owned(),
                from: from
                    .parse()
                    .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
            },
            None => Waiter {
                who: text.to_owned(),
                from: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            },
        }
    }
}

impl std::fmt::Display for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} from {}", self.who, self.from)
    }
}

/// What the hand-off's confirmation page tells the person about the device that asked.
pub struct HandoffSeen {
    pub from: IpAddr,
    pub asked_ms: u64,
}

/// Who waits for a REST client's hand-off: the digest of its `device_code`.
fn rest_waiter(device_code: &str) -> String {
    format!("rest {}", sso::key("device", device_code))
}

/// A provider fault: remembered for `/healthz`, logged (rate-limited), 503.
fn provider_fault(sso: &Sso, error: &OidcError) -> Error {
    sso.faulted(error);
    static LOG: LazyLock<RateLimitedLog> = LazyLock::new(|| RateLimitedLog::new(REFUSED_LOG_EVERY));
    if let Some(failed) = LOG.hit() {
        tracing::warn!(error = %error, also_failed_since_last_line = failed - 1, "sign-in provider unavailable: a single sign-on was answered 503");
    }
    Error::SsoUnavailable
}

fn log_refused(peer: IpAddr, what: &str) {
    static LOG: LazyLock<RateLimitedLog> = LazyLock::new(|| RateLimitedLog::new(REFUSED_LOG_EVERY));
    if let Some(refused) = LOG.hit() {
        tracing::warn!(%peer, why = what, also_refused_since_last_line = refused - 1, "single sign-on refused");
    }
}

/// Whether a provider's username can be a poolgate username: printable (no control
/// characters: it goes into logs and pages), without spaces around it, and without `:` (the
/// Guacamole hand-off names directory users `ldap:NAME`; a provider's `ldap:alice` must not
/// pass for one).
fn check_provider_username(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.chars().any(char::is_control) {
        return Err("it holds control characters");
    }
    if name.trim() != name {
        return Err("it begins or ends with a space");
    }
    if name.contains(':') {
        return Err("it holds a colon");
    }
    {
        use unicode_normalization::UnicodeNormalization;
        // Fullwidth letters, ligatures and the like would pass for another name.
        if name.nfkc().ne(name.chars()) {
            return Err("it is not in Unicode normal form NFKC");
        }
    }
    Ok(())
}

/// An error's message as a sentence.
fn capitalised(error: &OidcError) -> String {
    let text = error.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str()),
        None => text,
    }
}
