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
