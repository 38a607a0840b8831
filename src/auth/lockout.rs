//! Brute-force limits that cannot be raced past nor turned against real users.
//!
//! Every password or one-time-code verification is *reserved* in the state store before it
//! runs (an atomic increment), so parallel guesses cannot all slip in before the first failure
//! is counted. Three counters, over `window` (fixed, from the first attempt):
//!
//! * **(username, address)**: a hard lock after `pair_attempts` verifications that did not
//!   succeed — the guesser is stopped, the same user elsewhere is not.
//! * **username alone**: no lock (anyone could lock anyone out with it), but an exponential
//!   back-off once it has `pair_attempts` failures: further verifications for that username
//!   are spaced 1 s, 2 s, 4 s … apart (at most `backoff_max`), one at a time across every
//!   address and instance. An attempt whose turn is further away than `backoff_max` is refused
//!   with the time to retry. Distributed guessing stays slow; the real user waits seconds.
//! * **address** (IPv6 per /64): a hard lock after `address_attempts` (default 100), against
//!   spraying many usernames from one place while staying far above a NAT'd office's typos.
//!
//! A success resets its pair's and its address's counters and takes back its own reservation
//! of the username's; a reservation that turned out not to be a guess (a disabled account's
//! right password) is taken back. A second-factor challenge counts whether its password was
//! right or not — otherwise the lockout would tell someone without the code which password
//! was right — and its completion (by `otp_verify`, or by the password again with the code,
//! as the v2 login's second call does) takes the challenge's count back too. Refused
//! attempts run no verification and count nothing. Tokens are not passwords: an unknown token
//! counts against its address only, and a token this server once issued (a stale saved one)
//! counts nothing. NIST SP 800-63B §5.2.2 and the OWASP Authentication Cheat Sheet are the
//! references; README.rst says which numbers and why.

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

fn pair_key(username: &str, addr: IpAddr) -> String {
    // The username is the last part: it may contain anything, the address cannot.
    format!("pair:{}/{}", address_key(addr), counted_name(username))
}

/// A verification reserved by [`Lockout::begin`]; say how it ended.
#[must_use = "an attempt must end with failed(), succeeded() or not_a_guess()"]
pub struct Attempt<'a> {
    lockout: &'a Lockout,
    pair: String,
    addr: String,
    user: String,
}

impl Attempt<'_> {
    /// A wrong password or code: the reservation stands as a failure.
    pub fn failed(self) {}

    /// Right credentials: the pair and the address start afresh; the username's counter keeps
    /// the failures of others (resetting it would hand a distributed guesser a fresh start).
    pub async fn succeeded(self) -> Result<(), Error> {
        let store = &self.lockout.store;
        store.failures_reset(&self.pair).await?;
        store.failures_reset(&self.addr).await?;
        store.failures_undo(&self.user).await?;
        Ok(())
    }

    /// A second-factor challenge completed (or a sign-in with the code, which follows one):
    /// besides this attempt's own reservation, the username's counter gives back the one its
    /// first step left (a challenge counts whether
    /// its password was right or not, so that the lockout never tells them apart; a real
    /// user who completes it must not pay for it).
    pub async fn challenge_completed(self) -> Result<(), Error> {
        let store = &self.lockout.store;
        store.failures_undo(&self.user).await?;
        self.succeeded().await
    }

    /// Nothing was guessed (e.g. a disabled account's right password).
    pub async fn not_a_guess(self) -> Result<(), Error> {
        let store = &self.lockout.store;
        store.failures_undo(&self.pair).await?;
        store.failures_undo(&self.addr).await?;
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
    ) -> Self {
        Lockout {
            store,
            pair_attempts,
            address_attempts,
            window,
            backoff_max,
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

    /// Spacing of the username back-off once it has `failures` failures.
    fn spacing(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(self.pair_attempts + 1).min(20);
        (BACKOFF_BASE * 2u32.pow(doublings)).min(self.backoff_max)
    }

    /// Reserves one verification of `username`'s password or code from `addr`, waiting for
    /// the username's back-off turn if it has one; 429 when a limit is reached (nothing is
    /// then counted and nothing should be verified).
    pub async fn begin(&self, username: &str, addr: IpAddr) -> Result<Attempt<'_>, Error> {
        let attempt = Attempt {
            lockout: self,
            pair: pair_key(username, addr),
            addr: addr_key(addr),
            user: user_key(username),
        };
        let store = &self.store;
        let pair = store.failures_add(&attempt.pair, self.window).await?;
        let at_addr = store.failures_add(&attempt.addr, self.window).await?;
        if pair > self.pair_attempts || at_addr > self.address_attempts {
            store.failures_undo(&attempt.pair).await?;
            store.failures_undo(&attempt.addr).await?;
            let why = if pair > self.pair_attempts {
                "username and address"
            } else {
                "address"
            };
            return Err(self.locked(why, addr));
        }
        let failures = store.failures_add(&attempt.user, self.window).await?;
        if failures > self.pair_attempts {
            let now = now_ms();
            let turn = store
                .backoff_slot(
                    &attempt.user,
                    now,
                    self.spacing(failures),
                    self.backoff_max,
                    self.window,
                )
                .await?;
            match turn {
                Ok(slot) => {
                    tokio::time::sleep(Duration::from_millis(slot.saturating_sub(now))).await;
                }
                Err(slot) => {
                    attempt.not_a_guess().await?;
                    self.log_refusal("username back-off", addr);
                    return Err(Error::RateLimited(format!(
                        "Too many failed sign-in attempts for this user; try again in {} seconds.",
                        Duration::from_millis(slot.saturating_sub(now))
                            .as_secs()
                            .max(1)
                    )));
                }
            }
        }
        Ok(attempt)
    }

    /// Refuses an address that has used up its attempts (before a token lookup).
    pub async fn check_address(&self, addr: IpAddr) -> Result<(), Error> {
        if self.store.failures_get(&addr_key(addr)).await? >= self.address_attempts {
            return Err(self.locked("address", addr));
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
