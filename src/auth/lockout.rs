//! Brute-force limits that cannot be raced past nor turned against real users.
//!
//! Every password or one-time-code verification is *reserved* in the state store before it
//! runs (an atomic increment), so parallel guesses cannot all slip in before the first failure
//! is counted. Three counters, over `window` (fixed, from the first attempt):
//!
//! * **(username, address)**: a hard lock after `pair_attempts` verifications that did not
//!   succeed — the guesser is stopped, the same user elsewhere is not. A known browser is
//!   counted as (username, browser) instead, and not against its address: a neighbour behind
//!   the same NAT can lock the (user, address) pair, not the user's own browser.
//! * **username alone**: no lock (anyone could lock anyone out with it), but an exponential
//!   back-off once it has `pair_attempts` failures: further verifications for that username
//!   *from strangers* are spaced 1 s, 2 s, 4 s … apart (at most `backoff_max`), one at a time
//!   across every address and instance. The back-off slows only the attempts it was raised
//!   for: a *known source* — an address this user signed in from (by password, code or saved
//!   token) within `known_for`, or a browser whose portal device cookie (issued and tagged by
//!   this server) signed in as this user by password or code — is never queued behind
//!   strangers' guesses. An attempt from
//!   elsewhere whose turn is further away than `backoff_max` is refused and told to retry in
//!   at most `backoff_max`. (No promise of a later turn is made to it: the queue is what holds
//!   a botnet to one guess per spacing, and a promise that skips the queue would be given to
//!   the guessers at every address too. docs/security.md says what that means for a real user.)
//! * **address** (IPv6 per /64): a hard lock after `address_attempts` (default 100), against
//!   spraying many usernames from one place while staying far above a NAT'd office's typos.
//!   The mock's password-less first step (a 428 for a second-factor user) counts here too.
//!
//! A success clears only what it proves: its own pair's counter, its own reservation of the
//! address's and the username's (and that of a password-less first step that led to it) —
//! never the address's count of others' failures, so one employee's own sign-ins cannot
//! launder their spraying of everybody else. It makes its address known for the user. A
//! reservation that turned out not to be a guess (a disabled account's right password) is
//! taken back. A second-factor challenge counts whether its password was right or not —
//! otherwise the lockout would tell someone without the code which password was right — and
//! its completion (by `otp_verify`, or by the password again with the code, as the v2 login's
//! second call does) takes the challenge's count back too. Refused attempts run no
//! verification and count nothing. Tokens are not passwords: a valid saved token is never
//! refused for its address's failures, an unknown token counts against its address only, and
//! a token this server once issued (a stale saved one) counts nothing. NIST SP 800-63B
//! §5.2.2 and the OWASP Authentication Cheat Sheet are the references; docs/security.md says which
//! numbers and why, and what an attacker can and cannot do.
//!
//! Known sources and password-less first steps are kept as counters of the same store
//! primitive (`failures_*`): a counter that exists is a mark that lasts its window.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::store::{Store, now_ms};
use crate::telemetry::RateLimitedLog;

/// How often a refused sign-in may be logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// Back-off spacing after the first `pair_attempts` failures of a username: this, doubling.
const BACKOFF_BASE: Duration = Duration::from_secs(1);

pub struct Lockout {
    store: Arc<dyn Store>,
    pair_attempts: u32,
    address_attempts: u32,
    window: Duration,
    backoff_max: Duration,
    /// How long a successful sign-in keeps its address known for the user.
    known_for: Duration,
    refusals: RateLimitedLog,
}

/// Clients are counted as the connection caps count them: IPv4 as is, IPv6 by its /64.
use crate::domain::address_key;

/// The name a lockout counts under: [`super::folded_name`], so that none of the forms a
/// directory takes for one name is a fresh counter.
fn counted_name(username: &str) -> String {
    super::folded_name(username)
}

fn user_key(username: &str) -> String {
    format!("user:{}", counted_name(username))
}

fn addr_key(addr: IpAddr) -> String {
    format!("addr:{}", address_key(addr))
}

fn passkey_key(addr: IpAddr) -> String {
    format!("passkey:{}", address_key(addr))
}

fn sso_key(addr: IpAddr) -> String {
    format!("sso:{}", address_key(addr))
}

/// A key of one (address, username) pair under `kind`. The username is the last part: it may
/// contain anything, the address cannot.
fn pair_kind_key(kind: &str, username: &str, addr: IpAddr) -> String {
    format!("{kind}:{}/{}", address_key(addr), counted_name(username))
}

fn pair_key(username: &str, addr: IpAddr) -> String {
    pair_kind_key("pair", username, addr)
}

/// The mark of an address this user signed in from.
fn known_key(username: &str, addr: IpAddr) -> String {
    pair_kind_key("known", username, addr)
}

/// The mark of a browser (the portal's device cookie) this user signed in from.
fn known_device_key(username: &str, device: &DeviceId) -> String {
    format!(
        "known-device:{}/{}",
        hex::encode(device),
        counted_name(username)
    )
}

/// A browser, as the portal's device cookie names it (a digest of the cookie: the cookie
/// itself is never stored).
pub type DeviceId = [u8; 16];

/// A password-less first step from this pair, counted against the address until a sign-in
/// of the pair completes.
/// The pair of a browser known for the user: counted instead of (username, address).
fn device_pair_key(username: &str, device: &DeviceId) -> String {
    format!(
        "pair-device:{}/{}",
        hex::encode(device),
        counted_name(username)
    )
}

fn first_step_key(username: &str, addr: IpAddr) -> String {
    pair_kind_key("first", username, addr)
}

/// A verification reserved by [`Lockout::begin`]; say how it ended.
#[must_use = "an attempt must end with failed(), succeeded() or not_a_guess()"]
pub struct Attempt<'a> {
    lockout: &'a Lockout,
    username: String,
    peer: IpAddr,
    device: Option<DeviceId>,
    pair: String,
    /// The address's counter; `None` for a browser known for the user (its failures are
    /// counted per (user, browser) instead: a neighbour at the same address cannot lock it).
    addr: Option<String>,
    user: String,
    known: bool,
}

impl Attempt<'_> {
    /// Whether this attempt comes from a source the user signed in from (an address within
    /// `known_for`, or a browser): its verification is not queued behind strangers'.
    pub fn known(&self) -> bool {
        self.known
    }

    async fn undo_addr(&self) -> Result<(), Error> {
        if let Some(addr) = &self.addr {
            self.lockout.store.failures_undo(addr).await?;
        }
        Ok(())
    }

    /// A wrong password or code: the reservation stands as a failure.
    pub fn failed(self) {}

    /// Right credentials: the pair starts afresh, and this attempt's own reservations of the
    /// address and the username are taken back (the address's count of other failures stays:
    /// a success proves nothing about the other names tried from there; the username's stays,
    /// or a distributed guesser would get a fresh start). The address becomes known for the
    /// user; a password-less first step of this pair is given back to the address.
    pub async fn succeeded(self) -> Result<(), Error> {
        let lockout = self.lockout;
        let store = &lockout.store;
        store.failures_reset(&self.pair).await?;
        self.undo_addr().await?;
        store.failures_undo(&self.user).await?;
        let first = first_step_key(&self.username, self.peer);
        if store.failures_get(&first).await? > 0 {
            store.failures_reset(&first).await?;
            // The first step was counted against the address whoever took it.
            store.failures_undo(&addr_key(self.peer)).await?;
        }
        lockout
            .remember(&self.username, self.peer, self.device.as_ref())
            .await
    }

    /// A second-factor challenge completed (or a sign-in with the code, which follows one):
    /// besides this attempt's own reservation, the address's and the username's counters give
    /// back the ones its first step left (a challenge counts whether its password was right or
    /// not, so that the lockout never tells them apart; a real user who completes it must not
    /// pay for it).
    pub async fn challenge_completed(self) -> Result<(), Error> {
        let store = &self.lockout.store;
        store.failures_undo(&self.user).await?;
        // A first step without a password was counted against the address by
        // [`Lockout::first_step`], and `succeeded` gives that back; one with a password was
        // reserved by `begin`, given back here.
        if store
            .failures_get(&first_step_key(&self.username, self.peer))
            .await?
            == 0
        {
            self.undo_addr().await?;
        }
        self.succeeded().await
    }

    /// Nothing was guessed (e.g. a disabled account's right password).
    pub async fn not_a_guess(self) -> Result<(), Error> {
        let store = &self.lockout.store;
        store.failures_undo(&self.pair).await?;
        self.undo_addr().await?;
        store.failures_undo(&self.user).await?;
        Ok(())
    }
}

impl Lockout {
    pub fn new(
        store: Arc<dyn Store>,
        pair_attempts: u32,
        address_attempts: u32,
        window: Duration,
        backoff_max: Duration,
        known_for: Duration,
    ) -> Self {
        Lockout {
            store,
            pair_attempts,
            address_attempts,
            window,
            backoff_max,
            known_for,
            refusals: RateLimitedLog::new(REFUSAL_LOG_EVERY),
        }
    }

    /// One line per second at most, with the count: a flood of refused guesses must not become
    /// a flood of log lines. The username is never logged (it may be a mistyped password).
    fn log_refusal(&self, reason: &'static str, addr: IpAddr) {
        if let Some(refused) = self.refusals.hit() {
            tracing::warn!(
                reason,
                peer = %address_key(addr),
                also_refused_since_last_line = refused - 1,
                "sign-in refused: locked out"
            );
        }
    }

    fn locked(&self, why: &'static str, addr: IpAddr) -> Error {
        self.log_refusal(why, addr);
        Error::RateLimited(format!(
            "Too many failed sign-in attempts; try again in up to {} minutes.",
            self.window.as_secs().div_ceil(60)
        ))
    }

    fn backed_off(&self, addr: IpAddr, wait: Duration) -> Error {
        self.log_refusal("username back-off", addr);
        Error::RateLimited(format!(
            "Too many failed sign-in attempts for this user; try again in {} seconds.",
            wait.as_secs().max(1)
        ))
    }

    /// Spacing of the username back-off once it has `failures` failures.
    fn spacing(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(self.pair_attempts + 1).min(20);
        (BACKOFF_BASE * 2u32.pow(doublings)).min(self.backoff_max)
    }

    /// Reserves one verification of `username`'s password or code from `addr`, waiting for
    /// the username's back-off turn if it has one; 429 when a limit is reached (nothing is
    /// then counted and nothing should be verified).
    pub async fn begin(
        &self,
        username: &str,
        addr: IpAddr,
        device: Option<&DeviceId>,
    ) -> Result<Attempt<'_>, Error> {
        let store = &self.store;
        let known_device = match device {
            Some(d) => store.failures_get(&known_device_key(username, d)).await? > 0,
            None => false,
        };
        let known = known_device || store.failures_get(&known_key(username, addr)).await? > 0;
        let attempt = Attempt {
            lockout: self,
            username: username.to_owned(),
            peer: addr,
            device: device.copied(),
            // A browser the user signed in from has its own pair and is not held to its
            // address's count: whoever shares the address cannot lock it out.
            pair: match device {
                Some(d) if known_device => device_pair_key(username, d),
                _ => pair_key(username, addr),
            },
            addr: (!known_device).then(|| addr_key(addr)),
            user: user_key(username),
            known,
        };
        let pair = store.failures_add(&attempt.pair, self.window).await?;
        let at_addr = match &attempt.addr {
            Some(key) => store.failures_add(key, self.window).await?,
            None => 0,
        };
        if pair > self.pair_attempts || at_addr > self.address_attempts {
            store.failures_undo(&attempt.pair).await?;
            attempt.undo_addr().await?;
            let why = if pair > self.pair_attempts {
                "username and address"
            } else {
                "address"
            };
            return Err(self.locked(why, addr));
        }
        let failures = store.failures_add(&attempt.user, self.window).await?;
        if failures > self.pair_attempts
            && !known
            && let Err(refused) = self.turn(username, addr, failures).await
        {
            attempt.not_a_guess().await?;
            return Err(refused);
        }
        Ok(attempt)
    }

    /// Waits for this attempt's turn under the username's back-off, or refuses it with the
    /// time to retry (never more than `backoff_max`). Only strangers wait: a known source
    /// has no back-off.
    async fn turn(&self, username: &str, addr: IpAddr, failures: u32) -> Result<(), Error> {
        let store = &self.store;
        let now = now_ms();
        let turn = store
            .backoff_slot(
                &user_key(username),
                now,
                self.spacing(failures),
                self.backoff_max,
                self.window,
            )
            .await?;
        match turn {
            Ok(slot) => {
                tokio::time::sleep(Duration::from_millis(slot.saturating_sub(now))).await;
                Ok(())
            }
            Err(slot) => {
                // Never told to wait longer than the longest spacing (the queue's tail may be
                // a spacing beyond the longest wait).
                let wait = Duration::from_millis(slot.saturating_sub(now)).min(self.backoff_max);
                Err(self.backed_off(addr, wait))
            }
        }
    }

    /// Marks `addr` (and the browser `device`) as known for `username` for `known_for` from
    /// now: a successful sign-in from there (a saved token's re-authentication marks only
    /// its address: fresh device cookies cost nothing to get, so a mark per token use would
    /// let a signed-in user grow the store at will).
    pub async fn remember(
        &self,
        username: &str,
        addr: IpAddr,
        device: Option<&DeviceId>,
    ) -> Result<(), Error> {
        let keys = [
            Some(known_key(username, addr)),
            device.map(|d| known_device_key(username, d)),
        ];
        for key in keys.iter().flatten() {
            self.store.failures_reset(key).await?;
            self.store.failures_add(key, self.known_for).await?;
        }
        Ok(())
    }

    /// Refuses an address that has used up its attempts (before a lookup of something that
    /// is not yet known to be real: a challenge, an unknown token).
    pub async fn check_address(&self, addr: IpAddr) -> Result<(), Error> {
        if self.store.failures_get(&addr_key(addr)).await? >= self.address_attempts {
            return Err(self.locked("address", addr));
        }
        Ok(())
    }

    /// The mock's password-less first step of `username` (a 428 for a second-factor user):
    /// refused from a locked address, else counted against it until a sign-in of this pair
    /// completes (so that a flood of them is held to the address's limit, while a real
    /// two-call sign-in costs nothing).
    pub async fn first_step(&self, username: &str, addr: IpAddr) -> Result<(), Error> {
        self.check_address(addr).await?;
        let store = &self.store;
        let key = first_step_key(username, addr);
        if store.failures_get(&key).await? == 0 {
            store.failures_add(&key, self.window).await?;
            store.failures_add(&addr_key(addr), self.window).await?;
        } else {
            // Repeated first steps of one pair count each against the address; the one a
            // completed sign-in gives back is the first.
            store.failures_add(&addr_key(addr), self.window).await?;
        }
        Ok(())
    }

    /// Counts a made-up token or challenge against the address.
    pub async fn unknown_token(&self, addr: IpAddr) -> Result<(), Error> {
        self.store
            .failures_add(&addr_key(addr), self.window)
            .await?;
        Ok(())
    }

    /// Single sign-on's own count of an address, apart from the passwords': sign-ins begun
    /// at `/oidc/login`, hand-offs waiting, and codes or `state`s that were refused. Any page
    /// a person visits can make their browser open those URLs, so they must never lock the
    /// address's password sign-ins; at `address_attempts` in `window` only the address's new
    /// single sign-ons are refused.
    pub async fn sso_check(&self, addr: IpAddr) -> Result<(), Error> {
        if self.store.failures_get(&sso_key(addr)).await? >= self.address_attempts {
            self.log_refusal("single sign-on count", addr);
            return Err(Error::RateLimited(format!(
                "Too many single sign-ons begun or codes tried from this address; try again \
                 in up to {} minutes.",
                self.window.as_secs().div_ceil(60)
            )));
        }
        Ok(())
    }

    /// Counts one against the address's single sign-on count ([`Lockout::sso_check`]).
    pub async fn sso_count(&self, addr: IpAddr) -> Result<(), Error> {
        self.store.failures_add(&sso_key(addr), self.window).await?;
        Ok(())
    }

    /// Reserves one of the address's passkey sign-ins without a username (`webauthn_begin`):
    /// each keeps a ceremony in the state store until it is answered or expires, so an address
    /// holds at most `address_attempts` unanswered ones in `window` (429 past that, its
    /// password sign-ins untouched); an answer gives its count back
    /// ([`Lockout::passkey_answered`]). Reserved atomically: parallel begins cannot slip past.
    pub async fn passkey_begin(&self, addr: IpAddr) -> Result<(), Error> {
        let key = passkey_key(addr);
        if self.store.failures_add(&key, self.window).await? > self.address_attempts {
            self.store.failures_undo(&key).await?;
            self.log_refusal("passkey sign-ins begun", addr);
            return Err(Error::RateLimited(format!(
                "Too many passkey sign-ins begun from this address and not answered; try again \
                 in up to {} minutes.",
                self.window.as_secs().div_ceil(60)
            )));
        }
        Ok(())
    }

    /// Gives back the count of a passkey sign-in begun at `addr` once its ceremony was answered
    /// (and so taken from the store), whatever the answer.
    pub async fn passkey_answered(&self, addr: IpAddr) -> Result<(), Error> {
        self.store.failures_undo(&passkey_key(addr)).await?;
        Ok(())
    }

    /// Takes back one count of the address's single sign-on count: a sign-in begun or a
    /// hand-off came to an end (used, or given up).
    pub async fn sso_give_back(&self, addr: IpAddr) -> Result<(), Error> {
        self.store.failures_undo(&sso_key(addr)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
