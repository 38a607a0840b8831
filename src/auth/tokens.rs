//! Session tokens and MFA challenge tokens.
//!
//! A token is 256 bits from the OS CSPRNG followed by a 64-bit tag (an HMAC of those bits under
//! a key derived from the server's secret), shown to the client once as `pgt_<base64url>` and
//! kept only as its SHA-256 digest, in the state store. The tag lets the server tell, without
//! storing anything, a token it once issued (now expired or revoked: a client's stale saved
//! token, not a guess) from a made-up one (a guess, counted by the lockout). A session dies after `ttl` without a
//! successful authenticated message; each such message slides the window with one atomic store
//! on the session the connection already holds — no map, no lock, no I/O on the hot path. The
//! new activity reaches the store lazily (`flush`, every few seconds), so the stored
//! last-activity is never ahead of the truth: after a crash a token may expire a little early,
//! never late. An instance that finds a session idle asks the store before declaring it dead,
//! since another instance may have kept it alive.
//!
//! Revocation reaches every socket on every instance: the bus flips each instance's copy at
//! once, and each flush also learns from the store which of the sessions it holds are gone (on
//! a shared store every cached one is checked, so a bus message lost in a Redis reconnect
//! costs at most one `session_flush`). For that, the one copy of a session that sockets hold
//! stays in the cache as long as any socket holds it — even while this instance sees it idle
//! and another keeps it alive — and the store keeps a record `2 × session_flush` past its
//! TTL, so a live session whose activity is not yet flushed is never missing from it. A user
//! holds at most `max_sessions_per_user` sessions: signing in past that revokes the least
//! recently active ones. However active, a session ends `session_max_age` after its sign-in
//! (`created_ms`, which re-authentication with the token keeps): it is then refused, and the
//! sockets holding it are closed with the reason ([`TokenStore::end_aged`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::users::{User, UserDirectory};
use crate::store::{BusEvent, MfaRecord, SessionRecord, Store, StoreResult, now_ms};

const SESSION_PREFIX: &str = "pgt_";
const MFA_PREFIX: &str = "pgm_";

/// SHA-256 of a presented token: the only form in which tokens are stored.
pub use crate::domain::TokenHash;

/// Random bytes in a token; the tag follows them.
const RANDOM_BYTES: usize = 32;
const TAG_BYTES: usize = 8;

/// The portal's device cookie values (see [`TagKey::new_device_cookie`]).
const DEVICE_COOKIE_PREFIX: &str = "pgd_";

/// The key that tags tokens as issued by this deployment.
#[derive(Clone)]
pub struct TagKey([u8; 32]);

impl TagKey {
    /// Derived from the server's secret with a label, so it is never the secret itself.
    pub fn derive(secret: &[u8]) -> Self {
        TagKey(mac(secret, b"poolgate session-token tag v1"))
    }

    fn tag(&self, random: &[u8]) -> [u8; TAG_BYTES] {
        let full = mac(&self.0, random);
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&full[..TAG_BYTES]);
        tag
    }

    /// A new token with `prefix`, and its digest.
    pub(crate) fn new_token(&self, prefix: &str) -> (String, TokenHash) {
        let mut bytes = [0u8; RANDOM_BYTES + TAG_BYTES];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes[..RANDOM_BYTES])
            .expect("the OS random number generator is unavailable");
        let tag = self.tag(&bytes[..RANDOM_BYTES]);
        bytes[RANDOM_BYTES..].copy_from_slice(&tag);
        let token = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes));
        let hash = hash_token(&token);
        (token, hash)
    }

    /// A new value for the portal's device cookie: random and tagged, so that a browser
    /// can be known only by a cookie this deployment handed out.
    pub fn new_device_cookie(&self) -> String {
        self.new_token(DEVICE_COOKIE_PREFIX).0
    }

    /// Whether a device cookie's value was handed out by this deployment.
    pub fn device_cookie_ok(&self, value: &str) -> bool {
        self.issued_here(DEVICE_COOKIE_PREFIX, value)
    }

    /// Whether `token` (with `prefix`) was issued by a server holding this key — live or
    /// not. Compared in constant time.
    pub fn issued_here(&self, prefix: &str, token: &str) -> bool {
        let Some(body) = token.strip_prefix(prefix) else {
            return false;
        };
        let mut bytes = [0u8; RANDOM_BYTES + TAG_BYTES + 1];
        match URL_SAFE_NO_PAD.decode_slice(body, &mut bytes) {
            Ok(n) if n == RANDOM_BYTES + TAG_BYTES => {
                let tag = self.tag(&bytes[..RANDOM_BYTES]);
                bool::from(tag.ct_eq(&bytes[RANDOM_BYTES..n]))
            }
            _ => false,
        }
    }
}

fn mac(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A signed-in session. Connections keep an `Arc` to it; revocation flips `revoked` so every
/// holder sees it at its next message.
pub struct Session {
    pub user: Arc<User>,
    pub hash: TokenHash,
    /// Wall-clock milliseconds of issue: the sign-in, kept through `auth_token`.
    pub created_ms: u64,
    /// When `session_max_age` ends it, however active it is.
    ends_ms: u64,
    /// When a directory user's account was last confirmed for this session (`auth::recheck`).
    checked_ms: AtomicU64,
    last_active_ms: AtomicU64,
    /// Set by `touch`, cleared by the flush that persists it.
    dirty: AtomicBool,
    revoked: AtomicBool,
}

impl Session {
    fn new(user: Arc<User>, rec: &SessionRecord, max_age: Duration) -> Self {
        Session {
            user,
            hash: rec.hash,
            created_ms: rec.created_ms,
            ends_ms: rec.created_ms.saturating_add(max_age.as_millis() as u64),
            checked_ms: AtomicU64::new(rec.created_ms),
            last_active_ms: AtomicU64::new(rec.last_active_ms),
            dirty: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
        }
    }

    /// True while the session is neither revoked, nor idle for longer than `ttl` (as far as
    /// this instance knows), nor past `session_max_age`.
    pub fn is_live(&self, ttl: Duration) -> bool {
        let now = now_ms();
        !self.revoked.load(Ordering::Acquire)
            && now < self.ends_ms
            && now.saturating_sub(self.last_active_ms.load(Ordering::Relaxed))
                < ttl.as_millis() as u64
    }

    /// Whether `session_max_age` has ended it.
    pub fn is_aged(&self) -> bool {
        now_ms() >= self.ends_ms
    }

    /// When a directory user's account was last confirmed for it (its sign-in at first).
    pub fn checked_ms(&self) -> u64 {
        self.checked_ms.load(Ordering::Relaxed)
    }

    /// Records a confirmation of a directory user's account made at `at_ms`.
    pub fn set_checked(&self, at_ms: u64) {
        self.checked_ms.fetch_max(at_ms, Ordering::Relaxed);
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Slides the inactivity window.
    pub fn touch(&self) {
        self.last_active_ms.fetch_max(now_ms(), Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
    }

    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }

    fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }
}

pub struct TokenStore {
    store: Arc<dyn Store>,
    tags: TagKey,
    /// Sessions this instance has seen, by digest: at most one copy per session, and every
    /// copy a socket holds is here (so revocation can find it).
    cache: DashMap<TokenHash, Arc<Session>>,
    ttl: Duration,
    /// How long past `ttl` the store keeps a record: twice the flush interval, so a record is
    /// never gone while its activity may still be waiting for a flush.
    grace: Duration,
    /// Sessions one user may hold; signing in past it revokes the least recently active.
    max_per_user: usize,
    /// `session_max_age`: a session ends this long after its sign-in.
    max_age: Duration,
    metrics: Arc<crate::metrics::Metrics>,
}

/// The reason logged, counted and told to the sockets when `session_max_age` ends a session.
pub const MAX_AGE_REASON: &str = "session_max_age";

impl TokenStore {
    pub fn new(
        store: Arc<dyn Store>,
        tags: TagKey,
        ttl: Duration,
        session_flush: Duration,
        max_per_user: usize,
        max_age: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        TokenStore {
            store,
            tags,
            cache: DashMap::new(),
            ttl,
            grace: session_flush * 2,
            max_per_user,
            max_age,
            metrics,
        }
    }

    /// How long the store keeps a session record after its last (stored) activity.
    fn kept(&self) -> Duration {
        self.ttl + self.grace
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether this server once issued `token`: a stale saved token is not a guess.
    pub fn issued_here(&self, token: &str) -> bool {
        self.tags.issued_here(SESSION_PREFIX, token)
    }

    /// Issues a new token for `user`; the plaintext is returned once and never stored.
    pub async fn issue(&self, user: Arc<User>, peer: &str) -> StoreResult<(String, Arc<Session>)> {
        // A cluster takes only a digest in the user's bucket (~1 in 1 024 draws).
        let (token, hash) = loop {
            let (token, hash) = self.tags.new_token(SESSION_PREFIX);
            if self.store.token_fits(user.id, &hash) {
                break (token, hash);
            }
        };
        let now = now_ms();
        let rec = SessionRecord {
            hash,
            user_id: user.id,
            created_ms: now,
            last_active_ms: now,
            peer: peer.to_owned(),
        };
        let evicted = self
            .store
            .session_put(&rec, self.kept(), self.max_per_user)
            .await?;
        if !evicted.is_empty() {
            tracing::info!(
                user = %user.username,
                revoked = evicted.len(),
                max_sessions_per_user = self.max_per_user,
                "signed in past max_sessions_per_user: the least recently active sessions are revoked"
            );
        }
        for h in &evicted {
            self.revoke_local(h);
            self.store.publish(BusEvent::SessionRevoked {
                hash: *h,
                user_id: user.id,
            });
        }
        let session = Arc::new(Session::new(user, &rec, self.max_age));
        self.cache.insert(hash, session.clone());
        Ok((token, session))
    }

    /// The live session for a presented token. Unknown, revoked and expired all answer `None`.
    pub async fn lookup(
        &self,
        token: &str,
        users: &UserDirectory,
    ) -> StoreResult<Option<Arc<Session>>> {
        if !token.starts_with(SESSION_PREFIX) {
            return Ok(None);
        }
        let hash = hash_token(token);
        let cached = self.cache.get(&hash).map(|s| s.clone());
        let session = match cached {
            // A copy of a user this instance does not hear (no socket of theirs here, with
            // per-user routing): a revocation elsewhere may not have reached it, so the store
            // is asked first.
            Some(s) if !self.hears(&s) => {
                if self.store.session_get(&hash).await?.is_none() {
                    self.revoke_local(&hash);
                    return Ok(None);
                }
                s
            }
            Some(s) => s,
            None => {
                let Some(rec) = self.store.session_get(&hash).await? else {
                    return Ok(None);
                };
                let Some(user) = users.resolve(&rec.user_id).await? else {
                    return Ok(None);
                };
                let session = Arc::new(Session::new(user, &rec, self.max_age));
                self.cache.entry(hash).or_insert(session).clone()
            }
        };
        // The map matched on the digest; confirm in constant time all the same.
        if !bool::from(session.hash.ct_eq(&hash)) {
            return Ok(None);
        }
        if self.still_live(&session).await? {
            Ok(Some(session))
        } else {
            Ok(None)
        }
    }

    /// After a socket started hearing `session`'s user (per-user routing): a revocation
    /// published before that was not heard here, so the store is asked once whether the
    /// session still stands; if not, it is revoked here too.
    pub async fn recheck(&self, session: &Session) -> StoreResult<()> {
        if self.store.router().is_some() && self.store.session_get(&session.hash).await?.is_none() {
            self.revoke_local(&session.hash);
            session.revoke();
        }
        Ok(())
    }

    /// Whether this instance hears the revocations of `session`'s user: always, unless the
    /// store routes events per user and no socket of the user is here.
    fn hears(&self, session: &Session) -> bool {
        self.store
            .router()
            .is_none_or(|router| router.epoch(session.user.id).is_some())
    }

    /// Whether a session holds, asking the store when this instance thinks it has expired
    /// (another instance may have kept it alive). A dead session is removed everywhere.
    pub async fn still_live(&self, session: &Arc<Session>) -> StoreResult<bool> {
        if session.is_live(self.ttl) {
            return Ok(true);
        }
        if session.is_revoked() {
            return Ok(false);
        }
        if session.is_aged() {
            self.end_aged(session).await?;
            return Ok(false);
        }
        if let Some(rec) = self.store.session_get(&session.hash).await? {
            session
                .last_active_ms
                .fetch_max(rec.last_active_ms, Ordering::Relaxed);
            if session.is_live(self.ttl) {
                // Revived: make sure revocation can find it here (the sweep keeps held
                // sessions, so this is the same copy unless something dropped it).
                let cached = self
                    .cache
                    .entry(session.hash)
                    .or_insert_with(|| session.clone());
                if !Arc::ptr_eq(&cached, session) && cached.is_revoked() {
                    session.revoke();
                    return Ok(false);
                }
                return Ok(true);
            }
        }
        self.revoke(session.user.id, &session.hash).await?;
        Ok(false)
    }

    /// Revokes a session everywhere: this instance, the store, and (by the bus) the others.
    pub async fn revoke(&self, user: uuid::Uuid, hash: &TokenHash) -> StoreResult<()> {
        self.revoke_local(hash);
        self.store.session_delete(hash).await?;
        self.store.publish(BusEvent::SessionRevoked {
            hash: *hash,
            user_id: user,
        });
        Ok(())
    }

    /// Ends a session that `session_max_age` ended, everywhere: revoked as any other, then
    /// every instance closes the sockets holding it (`BusEvent::SessionsEnded`). Logged and
    /// counted once: by the instance that finds its record still stored (or, on a store of
    /// one process, by the one caller that flips it).
    pub async fn end_aged(&self, session: &Session) -> StoreResult<()> {
        if session.revoked.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let first = self.store.session_get(&session.hash).await?.is_some();
        self.revoke(session.user.id, &session.hash).await?;
        if first {
            tracing::info!(
                user = %session.user.username,
                reason = MAX_AGE_REASON,
                signed_in_secs_ago = now_ms().saturating_sub(session.created_ms) / 1000,
                "session ended"
            );
            self.metrics.session_ended(MAX_AGE_REASON);
            self.store.publish(BusEvent::SessionsEnded {
                user_id: session.user.id,
                reason: MAX_AGE_REASON.into(),
                before_ms: None,
            });
        }
        Ok(())
    }

    /// Ends the sessions held here that `session_max_age` ended (run by the session sweep, so
    /// that a socket that says nothing is closed on time too). Returns how many.
    pub async fn end_aged_held(&self) -> StoreResult<usize> {
        let aged: Vec<Arc<Session>> = self
            .cache
            .iter()
            .filter(|s| s.is_aged() && !s.is_revoked())
            .map(|s| s.clone())
            .collect();
        for session in &aged {
            self.end_aged(session).await?;
        }
        Ok(aged.len())
    }

    /// Flips this instance's copies of a user's sessions signed in at or before `before_ms`
    /// (a `BusEvent::SessionsEnded` from another instance).
    pub fn revoke_user_local(&self, user_id: uuid::Uuid, before_ms: u64) {
        let hashes: Vec<TokenHash> = self
            .cache
            .iter()
            .filter(|s| s.user.id == user_id && s.created_ms <= before_ms)
            .map(|s| *s.key())
            .collect();
        for h in &hashes {
            self.revoke_local(h);
        }
    }

    /// Flips this instance's copy (on a bus message from another instance).
    pub fn revoke_local(&self, hash: &TokenHash) {
        if let Some((_, session)) = self.cache.remove(hash) {
            session.revoke();
        }
    }

    /// Revokes every session of a user; returns how many there were.
    pub async fn revoke_user(&self, user_id: &uuid::Uuid) -> StoreResult<usize> {
        let hashes = self.store.session_delete_user(*user_id).await?;
        let local: Vec<TokenHash> = self
            .cache
            .iter()
            .filter(|s| s.user.id == *user_id)
            .map(|s| *s.key())
            .collect();
        for h in hashes.iter().chain(local.iter()) {
            self.revoke_local(h);
            self.store.publish(BusEvent::SessionRevoked {
                hash: *h,
                user_id: *user_id,
            });
        }
        Ok(hashes.len().max(local.len()))
    }

    /// Persists recent activity, and revokes this instance's copy of every session the store
    /// no longer has. Run every `session_flush`; the interval bounds how stale the stored
    /// last-activity can be. On a shared store every cached session is checked (a revocation
    /// published by another instance may have been lost in a reconnect); on a single-process
    /// store the bus is in-process and loses nothing, so only the active ones are written.
    pub async fn flush(&self) -> StoreResult<usize> {
        let every = self.store.is_shared();
        let mut dirty = Vec::new();
        let touches: Vec<(TokenHash, u64)> = self
            .cache
            .iter()
            .filter(|s| {
                let was = s.dirty.swap(false, Ordering::Relaxed);
                if was {
                    dirty.push(*s.key());
                }
                was || every
            })
            .map(|s| (*s.key(), s.last_active_ms()))
            .collect();
        if touches.is_empty() {
            return Ok(0);
        }
        match self.store.session_touch(&touches, self.kept()).await {
            Ok(gone) => {
                for h in &gone {
                    self.revoke_local(h);
                }
                if !gone.is_empty() {
                    tracing::debug!(
                        gone = gone.len(),
                        "sessions gone from the store: revoked here"
                    );
                }
                Ok(dirty.len())
            }
            Err(e) => {
                // Try again next time.
                for h in &dirty {
                    if let Some(s) = self.cache.get(h) {
                        s.dirty.store(true, Ordering::Relaxed);
                    }
                }
                Err(e)
            }
        }
    }

    /// Drops expired sessions from this instance's memory (the store sweeps its own records:
    /// `Store::sweep_expired`). A session some socket still holds stays in memory even when
    /// it looks idle here: another instance may be keeping it alive, and a revocation must
    /// still find this copy.
    pub fn sweep(&self) {
        let ttl = self.ttl;
        self.cache
            .retain(|_, s| s.is_live(ttl) || Arc::strong_count(s) > 1);
    }

    /// Sessions this instance holds in memory.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// Wrong codes one challenge tolerates before it is burnt.
const MFA_MAX_ATTEMPTS: u32 = 3;

/// Pending second factors: the user passed step one of `auth` and must send a code.
pub struct MfaStore {
    store: Arc<dyn Store>,
    tags: TagKey,
    ttl: Duration,
}

/// A live challenge.
pub struct MfaChallenge {
    pub user: Arc<User>,
    /// Whether the password given with the first step was right. A wrong password still gets
    /// a challenge (the mock checks MFA before the password), but can never complete it.
    pub password_ok: bool,
}

impl MfaStore {
    pub fn new(store: Arc<dyn Store>, tags: TagKey, ttl: Duration) -> Self {
        MfaStore { store, tags, ttl }
    }

    /// Whether this server once issued `token` (it may have expired or been used since).
    pub fn issued_here(&self, token: &str) -> bool {
        self.tags.issued_here(MFA_PREFIX, token)
    }

    pub async fn issue(&self, user: &User, password_ok: bool) -> StoreResult<String> {
        let (token, hash) = self.tags.new_token(MFA_PREFIX);
        let rec = MfaRecord {
            user_id: user.id,
            password_ok,
            expires_ms: now_ms() + self.ttl.as_millis() as u64,
            attempts: 0,
        };
        self.store.mfa_put(&hash, &rec).await?;
        Ok(token)
    }

    /// Finds a live challenge without consuming it.
    pub async fn get(
        &self,
        token: &str,
        users: &UserDirectory,
    ) -> StoreResult<Option<MfaChallenge>> {
        if !token.starts_with(MFA_PREFIX) {
            return Ok(None);
        }
        let hash = hash_token(token);
        let Some(rec) = self.store.mfa_get(&hash).await? else {
            return Ok(None);
        };
        if now_ms() >= rec.expires_ms || rec.attempts >= MFA_MAX_ATTEMPTS {
            self.store.mfa_take(&hash).await?;
            return Ok(None);
        }
        Ok(users.resolve(&rec.user_id).await?.map(|user| MfaChallenge {
            user,
            password_ok: rec.password_ok,
        }))
    }

    /// Consumes the challenge (it is one-use). False if another request took it first.
    pub async fn take(&self, token: &str) -> StoreResult<bool> {
        self.store.mfa_take(&hash_token(token)).await
    }

    /// Counts a wrong code; the challenge is burnt after a few.
    pub async fn fail(&self, token: &str) -> StoreResult<()> {
        let hash = hash_token(token);
        if self.store.mfa_fail(&hash).await? >= MFA_MAX_ATTEMPTS {
            self.store.mfa_take(&hash).await?;
        }
        Ok(())
    }
}
/// The cost of drawing a session token on a Redis Cluster (until its digest falls in its user's
/// bucket): a figure, not a check. `cargo test --release --lib token_draw_cost -- --ignored
/// --nocapture`
#[cfg(test)]
mod token_draw_cost {
    #[test]
    #[ignore = "a timing, run by hand with --release"]
    fn token_draw_cost() {
        let tags = super::TagKey::derive(b"a secret of the right length, for a test");
        let user = uuid::Uuid::new_v4();
        let tokens = 500u32;
        let start = std::time::Instant::now();
        let mut draws = 0u32;
        for _ in 0..tokens {
            loop {
                draws += 1;
                let (_, hash) = tags.new_token(super::SESSION_PREFIX);
                if crate::store::redis_store::in_users_bucket(user, &hash) {
                    break;
                }
            }
        }
        let spent = start.elapsed();
        println!(
            "{:?} per token on a cluster ({} draws on average, {:?} each)",
            spent / tokens,
            draws / tokens,
            spent / draws
        );
    }
}
