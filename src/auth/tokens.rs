//! Session tokens and MFA challenge tokens.
//!
//! A token is 256 bits from the OS CSPRNG, shown to the client once as `pgt_<base64url>` and
//! kept only as its SHA-256 digest. A session dies after `ttl` without a successful
//! authenticated message; each such message slides the window with one atomic store on the
//! session the connection already holds, so the hot path touches no map and no lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::users::User;

const SESSION_PREFIX: &str = "pgt_";
const MFA_PREFIX: &str = "pgm_";

/// SHA-256 of a presented token: the only form in which tokens are stored.
pub type TokenHash = [u8; 32];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn new_token(prefix: &str) -> (String, TokenHash) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random number generator is unavailable");
    let token = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash_token(&token);
    (token, hash)
}

pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A signed-in session. Connections keep an `Arc` to it; revocation flips `revoked` so every
/// holder sees it at its next message.
pub struct Session {
    pub user: Arc<User>,
    pub hash: TokenHash,
    /// Wall-clock milliseconds of issue.
    pub created_ms: u64,
    last_active_ms: AtomicU64,
    revoked: AtomicBool,
}

impl Session {
    /// True while the session is neither revoked nor idle for longer than `ttl`.
    pub fn is_live(&self, ttl: Duration) -> bool {
        !self.revoked.load(Ordering::Acquire)
            && now_ms().saturating_sub(self.last_active_ms.load(Ordering::Relaxed))
                < ttl.as_millis() as u64
    }

    /// Slides the inactivity window.
    pub fn touch(&self) {
        self.last_active_ms.fetch_max(now_ms(), Ordering::Relaxed);
    }

    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }

    fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }
}

pub struct TokenStore {
    sessions: DashMap<TokenHash, Arc<Session>>,
    ttl: Duration,
}

impl TokenStore {
    pub fn new(ttl: Duration) -> Self {
        TokenStore {
            sessions: DashMap::new(),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a new token for `user`; the plaintext is returned once and never stored.
    pub fn issue(&self, user: Arc<User>) -> (String, Arc<Session>) {
        let (token, hash) = new_token(SESSION_PREFIX);
        let now = now_ms();
        let session = Arc::new(Session {
            user,
            hash,
            created_ms: now,
            last_active_ms: AtomicU64::new(now),
            revoked: AtomicBool::new(false),
        });
        self.sessions.insert(hash, session.clone());
        (token, session)
    }

    /// The live session for a presented token. Unknown, revoked and expired all answer `None`.
    pub fn lookup(&self, token: &str) -> Option<Arc<Session>> {
        if !token.starts_with(SESSION_PREFIX) {
            return None;
        }
        let hash = hash_token(token);
        let session = self.sessions.get(&hash).map(|s| s.clone())?;
        // The map matched on the digest; confirm in constant time all the same.
        if !bool::from(session.hash.ct_eq(&hash)) {
            return None;
        }
        if session.is_live(self.ttl) {
            Some(session)
        } else {
            self.revoke(&hash);
            None
        }
    }

    /// Revokes a session everywhere: removed from the map and flagged for current holders.
    pub fn revoke(&self, hash: &TokenHash) {
        if let Some((_, session)) = self.sessions.remove(hash) {
            session.revoke();
        }
    }

    /// Revokes every session of a user; returns how many there were.
    pub fn revoke_user(&self, user_id: &uuid::Uuid) -> usize {
        let hashes: Vec<TokenHash> = self
            .sessions
            .iter()
            .filter(|s| s.user.id == *user_id)
            .map(|s| *s.key())
            .collect();
        hashes.iter().for_each(|h| self.revoke(h));
        hashes.len()
    }

    /// Drops expired sessions; run periodically so dead tokens do not accumulate.
    pub fn sweep(&self) -> usize {
        let before = self.sessions.len();
        self.sessions.retain(|_, s| {
            let live = s.is_live(self.ttl);
            if !live {
                s.revoke();
            }
            live
        });
        before - self.sessions.len()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// A pending second factor: the user has passed step one of `auth` and must send a code.
pub struct MfaChallenge {
    pub user: Arc<User>,
    /// Whether the password given with the first step was right. A wrong password still gets
    /// a challenge (the mock checks MFA before the password), but can never complete it.
    pub password_ok: bool,
    expires_ms: u64,
    attempts: AtomicU32,
}

/// Wrong codes one challenge tolerates before it is burnt.
const MFA_MAX_ATTEMPTS: u32 = 3;

pub struct MfaStore {
    challenges: DashMap<TokenHash, Arc<MfaChallenge>>,
    ttl: Duration,
}

/// What became of a presented MFA token.
pub enum MfaLookup {
    Valid(Arc<MfaChallenge>),
    Invalid,
}

impl MfaStore {
    pub fn new(ttl: Duration) -> Self {
        MfaStore {
            challenges: DashMap::new(),
            ttl,
        }
    }

    pub fn issue(&self, user: Arc<User>, password_ok: bool) -> String {
        let (token, hash) = new_token(MFA_PREFIX);
        self.challenges.insert(
            hash,
            Arc::new(MfaChallenge {
                user,
                password_ok,
                expires_ms: now_ms() + self.ttl.as_millis() as u64,
                attempts: AtomicU32::new(0),
            }),
        );
        token
    }

    /// Finds a live challenge without consuming it.
    pub fn get(&self, token: &str) -> MfaLookup {
        let hash = hash_token(token);
        let Some(c) = self.challenges.get(&hash).map(|c| c.clone()) else {
            return MfaLookup::Invalid;
        };
        if now_ms() >= c.expires_ms {
            self.challenges.remove(&hash);
            return MfaLookup::Invalid;
        }
        MfaLookup::Valid(c)
    }

    /// Consumes the challenge (it is one-use). Returns false if another request took it first.
    pub fn take(&self, token: &str) -> bool {
        self.challenges.remove(&hash_token(token)).is_some()
    }

    /// Counts a wrong code; the challenge is burnt after a few.
    pub fn fail(&self, token: &str, challenge: &MfaChallenge) {
        if challenge.attempts.fetch_add(1, Ordering::AcqRel) + 1 >= MFA_MAX_ATTEMPTS {
            self.take(token);
        }
    }

    pub fn sweep(&self) {
        let now = now_ms();
        self.challenges.retain(|_, c| now < c.expires_ms);
    }
}
