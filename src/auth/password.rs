//! Password hashing with argon2id. Hashing is CPU-bound for tens of milliseconds, so it runs on
//! the blocking pool behind a semaphore: a login storm queues instead of stalling the sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use tokio::sync::{OnceCell, Semaphore};

use crate::error::Error;

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

#[derive(Clone)]
pub struct PasswordChecker {
    permits: Arc<Semaphore>,
    /// A hash of a random password, checked for unknown users so that "no such user" costs
    /// the same time as "wrong password".
    dummy: Arc<OnceCell<String>>,
    /// argon2 verifications run so far (metrics; tests prove which paths do the work).
    verifications: Arc<AtomicU64>,
}

impl PasswordChecker {
    pub fn new(max_concurrent: usize) -> Self {
        PasswordChecker {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            dummy: Arc::new(OnceCell::new()),
            verifications: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Verifies `password` against `phc` off the async workers.
    pub async fn verify(&self, phc: &str, password: &str) -> Result<bool, Error> {
        let _permit = self.permits.acquire().await.map_err(Error::internal)?;
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let (phc, password) = (phc.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || verify_blocking(&phc, &password))
            .await
            .map_err(Error::internal)
    }

    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Spends the time of a real verification and always fails.
    pub async fn verify_dummy(&self, password: &str) -> Result<bool, Error> {
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
        self.verify(dummy, password).await.map(|_| false)
    }
}

#[cfg(test)]
mod strength_tests {
    use super::*;

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
