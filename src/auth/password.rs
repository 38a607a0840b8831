//! Password hashing with argon2id. Hashing is CPU-bound for tens of milliseconds, so it runs on
//! the blocking pool behind a semaphore: a login storm queues instead of stalling the sockets.
//!
//! Two lanes, each `max_concurrent_hashes` wide: sign-ins from a source the user signed in from
//! (see src/auth/lockout.rs) never queue behind strangers' verifications, however many
//! addresses send those. Strangers queue fairly: each address (IPv6 /64) may have at most
//! [`IN_FLIGHT_PER_ADDRESS`] verifications waiting or running, and the whole lane at most
//! [`STRANGERS_QUEUED_PER_PERMIT`] per permit; beyond either, the attempt is refused at once
//! (429) and nothing is verified.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use tokio::sync::{OnceCell, Semaphore};

use crate::error::Error;

/// The fewest characters a new password may have (NIST SP 800-63B §5.1.1.2).
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Whether a new password for `username` may be set (`poolgate user add` / `passwd`), after
/// NIST SP 800-63B: at least [`MIN_PASSWORD_CHARS`] characters, and not one an attacker tries
/// early — a common or breached password, a word with digits, a keyboard walk, the username —
/// as zxcvbn (Dropbox's estimator, with its lists of common passwords, names and words)
/// judges it: refused when it would fall within about a million guesses (score 0 or 1). No
/// composition rules. The reason, with zxcvbn's suggestion, when refused.
pub fn check_new_password(password: &str, username: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password has {chars} characters; use at least {MIN_PASSWORD_CHARS} (a few \
             unrelated words make a good one)"
        ));
    }
    let estimate = zxcvbn::zxcvbn(password, &[username]);
    if estimate.score() < zxcvbn::Score::Two {
        let mut why = "the password is among the first a guesser tries (a common or \
                       breached password, a word with a few changes, a pattern or the \
                       username)"
            .to_owned();
        if let Some(feedback) = estimate.feedback() {
            if let Some(warning) = feedback.warning() {
                why.push_str(&format!(": {warning}"));
            }
            if let Some(tip) = feedback.suggestions().first() {
                why.push_str(&format!("; {tip}"));
            }
        }
        return Err(why);
    }
    Ok(())
}

/// Hashes a password into a PHC string with argon2id's default (OWASP) parameters.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))
}

/// OWASP's argon2id configurations (Password Storage Cheat Sheet), as the least memory in KiB
/// for each number of passes: all equally strong, trading memory for time. More passes than
/// the last row need its memory.
const OWASP_ARGON2ID: [(u32, u32); 5] = [
    (1, 47_104),
    (2, 19_456),
    (3, 12_288),
    (4, 9_216),
    (5, 7_168),
];

/// Whether a stored hash is argon2id at OWASP's minimum or above; the reason when not. A
/// verification costs what the hash's own parameters say, so a weak hash in the users file
/// would make that user's password cheap to guess offline and cheap to check online.
pub fn check_strength(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|e| format!("not a PHC string: {e}"))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "{} is not argon2id; rehash it with `poolgate hash-password`",
            hash.algorithm
        ));
    }
    let params = argon2::Params::try_from(&hash).map_err(|e| format!("argon2 parameters: {e}"))?;
    let (t, m) = (params.t_cost(), params.m_cost());
    let needed = OWASP_ARGON2ID
        .iter()
        .rev()
        .find(|(passes, _)| t >= *passes)
        .map(|(_, memory)| *memory);
    match needed {
        Some(memory) if m >= memory => Ok(()),
        _ => Err(format!(
            "argon2id with m={m} KiB, t={t} is below OWASP's minimum (m=19456, t=2, p=1, or an \
             equivalent); rehash it with `poolgate hash-password`"
        )),
    }
}

fn verify_blocking(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        // The argon2 crate compares the digests in constant time.
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// Verifications one address may have waiting or running at once (strangers' lane).
pub const IN_FLIGHT_PER_ADDRESS: usize = 4;

/// Strangers' verifications waiting or running at once, per permit of the lane.
pub const STRANGERS_QUEUED_PER_PERMIT: usize = 32;

/// Whose verification this is: the lane it waits in.
#[derive(Debug, Clone, Copy)]
pub enum Lane {
    /// A source the user signed in from (a known address or browser).
    Known,
    /// Anyone else, from this address.
    Stranger(IpAddr),
}

#[derive(Clone)]
pub struct PasswordChecker {
    /// The known sources' lane.
    known: Arc<Semaphore>,
    /// The strangers' lane, and its waiting or running verifications: in all and per address.
    permits: Arc<Semaphore>,
    strangers: Arc<AtomicUsize>,
    strangers_max: usize,
    per_address: Arc<DashMap<IpAddr, usize>>,
    /// A hash of a random password, checked for unknown users so that "no such user" costs
    /// the same time as "wrong password".
    dummy: Arc<OnceCell<String>>,
    /// argon2 verifications run so far (metrics; tests prove which paths do the work).
    verifications: Arc<AtomicU64>,
}

impl PasswordChecker {
    pub fn new(max_concurrent: usize) -> Self {
        PasswordChecker {
            known: Arc::new(Semaphore::new(max_concurrent)),
            permits: Arc::new(Semaphore::new(max_concurrent)),
            strangers: Arc::new(AtomicUsize::new(0)),
            strangers_max: max_concurrent.max(1) * STRANGERS_QUEUED_PER_PERMIT,
            per_address: Arc::new(DashMap::new()),
            dummy: Arc::new(OnceCell::new()),
            verifications: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Verifies `password` against `phc` off the async workers, in `lane`; a stranger over
    /// its address's or the lane's share is refused (429) without verifying.
    pub async fn verify(&self, phc: &str, password: &str, lane: Lane) -> Result<bool, Error> {
        let _place = match lane {
            Lane::Known => None,
            Lane::Stranger(addr) => Some(self.queue(addr)?),
        };
        let lane = match lane {
            Lane::Known => &self.known,
            Lane::Stranger(_) => &self.permits,
        };
        let _permit = lane.acquire().await.map_err(Error::internal)?;
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let (phc, password) = (phc.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || verify_blocking(&phc, &password))
            .await
            .map_err(Error::internal)
    }

    /// A place in the strangers' lane for `addr`, if its address and the lane have room.
    fn queue(&self, addr: IpAddr) -> Result<Place, Error> {
        let key = crate::domain::address::address_key(addr);
        let place = Place {
            checker: self.clone(),
            key,
        };
        let mine = {
            let mut n = self.per_address.entry(key).or_insert(0);
            *n += 1;
            *n
        };
        let all = self.strangers.fetch_add(1, Ordering::SeqCst) + 1;
        if mine > IN_FLIGHT_PER_ADDRESS {
            return Err(Error::RateLimited(
                "Too many sign-ins at once from your address; wait for the answers and try \
                 again."
                    .into(),
            ));
        }
        if all > self.strangers_max {
            return Err(Error::RateLimited(
                "The server is busy checking sign-ins; try again in a few seconds.".into(),
            ));
        }
        Ok(place)
    }

    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Spends the time of a real verification and always fails.
    pub async fn verify_dummy(&self, password: &str, lane: Lane) -> Result<bool, Error> {
        let dummy = self
            .dummy
            .get_or_try_init(|| async {
                let random = hex::encode(rand::random::<[u8; 16]>());
                tokio::task::spawn_blocking(move || hash_password(&random))
                    .await
                    .map_err(Error::internal)?
                    .map_err(Error::Internal)
            })
            .await?;
        self.verify(dummy, password, lane).await.map(|_| false)
    }
}

/// A stranger's place in the lane, given back when its verification ends (or is refused).
struct Place {
    checker: PasswordChecker,
    key: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.checker.strangers.fetch_sub(1, Ordering::SeqCst);
        if let dashmap::Entry::Occupied(mut n) = self.checker.per_address.entry(self.key) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }
}

#[cfg(test)]
mod strength_tests {
    use super::*;

    #[test]
    fn new_passwords_follow_nist_length_and_blocklist_rules() {
        for weak in [
            "short1!",
            "password1",
            "P@ssw0rd123",
            "qwertyuiop",
            "alice2024",
            "aliceALICE",
        ] {
            assert!(check_new_password(weak, "alice").is_err(), "{weak}");
        }
        // No composition rules: long lowercase passphrases are fine.
        for strong in [
            "correct horse battery staple",
            "tangerine-volcano-87",
            "mellow ferret lamp",
        ] {
            assert!(check_new_password(strong, "alice").is_ok(), "{strong}");
        }
        let why = check_new_password("abc", "alice").unwrap_err();
        assert!(
            why.contains("3 characters") && why.contains("at least 8"),
            "{why}"
        );
    }

    #[test]
    fn hashes_below_owasps_minimum_are_refused_and_ours_pass() {
        assert_eq!(check_strength(&hash_password("pw").unwrap()), Ok(()));
        let with = |alg: &str, m: u32, t: u32| {
            let params = argon2::Params::new(m, t, 1, None).unwrap();
            let alg = match alg {
                "argon2id" => argon2::Algorithm::Argon2id,
                _ => argon2::Algorithm::Argon2i,
            };
            let salt = SaltString::generate(&mut OsRng);
            Argon2::new(alg, argon2::Version::V0x13, params)
                .hash_password(b"pw", &salt)
                .unwrap()
                .to_string()
        };
        assert_eq!(check_strength(&with("argon2id", 47_104, 1)), Ok(()));
        assert_eq!(check_strength(&with("argon2id", 7_168, 6)), Ok(()));
        let weak = check_strength(&with("argon2id", 19_455, 2)).unwrap_err();
        assert!(weak.contains("m=19455 KiB, t=2"), "{weak}");
        assert!(check_strength(&with("argon2id", 8, 1)).is_err());
        assert!(check_strength(&with("argon2id", 47_103, 1)).is_err());
        assert!(
            check_strength(&with("argon2i", 19_456, 2))
                .unwrap_err()
                .contains("not argon2id")
        );
        assert!(check_strength("plain").is_err());
    }
}
