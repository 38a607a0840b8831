//! JWTs for the v2 REST shim: HS256 only, `exp` required, revocable by `jti`.
//!
//! The signing secret comes from `POOLGATE_JWT_SECRET`, `jwt_secret_file` or `jwt_secret`
//! (in that order); with none, a random one is generated once and kept (0600) in the data
//! directory. Well-known and short secrets are refused at start-up.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use dashmap::DashMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::users::User;
use crate::store::{BusEvent, Store, StoreResult};

/// Secrets published in examples and mocks (the reference mock signs with `super-secret`).
const KNOWN_SECRETS: &[&str] = &[
    "super-secret",
    "secret",
    "changeme",
    "change-me",
    "jwt-secret",
    "password",
    "your-256-bit-secret",
];
/// Shortest secret accepted, in bytes (HS256 wants at least its output size).
const MIN_SECRET: usize = 32;
pub const SECRET_ENV: &str = "POOLGATE_JWT_SECRET";
pub const SECRET_FILE: &str = "jwt-secret";

/// Where the signing secret may come from, besides `POOLGATE_JWT_SECRET` (see the module doc
/// for the order): the settings' `jwt_secret` and `jwt_secret_file`, and the data directory
/// that keeps a generated one.
#[derive(Debug, Clone, Copy)]
pub struct SecretSources<'a> {
    pub value: Option<&'a str>,
    pub file: Option<&'a Path>,
    pub data_dir: &'a Path,
}

/// What [`JwtKeys::with_tag_key`] does when no secret is configured and none is kept in the
/// data directory yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Generate one and keep it (0600) in the data directory: serving.
    Generate,
    /// Use a random one that lives as long as the keys, writing nothing: checking a config
    /// (`check-config`), which must build everything serving builds without writing.
    Throwaway,
}

/// The claims the mock's clients read, plus `jti`/`iat` for revocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub username: String,
    pub roles: Vec<String>,
    pub client_id: String,
    pub domain: Option<String>,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
}

pub struct JwtKeys {
    /// A short digest of the secret (never the secret): instances sharing a store compare it
    /// (see [`JwtKeys::fingerprint`]).
    fingerprint: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    /// Revoked token ids and when they would have expired anyway (for sweeping).
    revoked: DashMap<String, i64, Hasher>,
    /// Per user: tokens issued at or before this unix second are revoked (admin revoke).
    user_before: DashMap<Uuid, i64, Hasher>,
    /// Tokens whose signature was checked, by their signature (see [`JwtKeys::verify`]).
    verified: DashMap<Box<str>, Verified, Hasher>,
}

/// How the three tables every REST request looks in are hashed: foldhash (seeded per
/// process) rather than SipHash, ~150 instructions a look-up cheaper. Nothing a client
/// chooses is inserted — only signatures the key made, the server's own token ids and user
/// ids — so the flooding SipHash guards against has no way in.
type Hasher = foldhash::fast::RandomState;

/// A token whose signature was checked, and its claims.
struct Verified {
    token: Box<str>,
    claims: Arc<Claims>,
}

/// Whether two byte strings are equal, in a time that depends on their lengths only. (subtle's
/// `ct_eq` does the same with an optimisation barrier per byte, a tenth of a REST request for a
/// 300-byte token; one barrier on the folded difference does for a comparison this simple.)
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y))) == 0
}

/// Verified tokens kept before the cache is emptied (a JWT is ~300 bytes: ~60 MiB at most).
const VERIFIED_MAX: usize = 100_000;
/// Seconds past `exp` a token is still accepted (clock skew between instances).
const LEEWAY: u64 = 5;

impl JwtKeys {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY;
        validation.set_required_spec_claims(&["exp", "sub"]);
        use sha2::{Digest, Sha256};
        let digest =
            Sha256::digest([b"poolgate jwt key fingerprint\n".as_slice(), secret].concat());
        JwtKeys {
            fingerprint: hex::encode(&digest[..8]),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
            revoked: DashMap::with_hasher(Hasher::default()),
            user_before: DashMap::with_hasher(Hasher::default()),
            verified: DashMap::with_hasher(Hasher::default()),
        }
    }

    /// Finds the secret per the module's rules; `missing` says what to do when none is
    /// configured or kept.
    /// The keys and the tag key of session tokens, both from the one configured secret (so
    /// instances that share the JWT secret recognise each other's tokens).
    pub fn with_tag_key(
        sources: SecretSources<'_>,
        ttl: Duration,
        missing: Missing,
    ) -> anyhow::Result<(Self, super::tokens::TagKey)> {
        let secret = resolve_secret(sources, missing)?;
        Ok((
            Self::new(&secret, ttl),
            super::tokens::TagKey::derive(&secret),
        ))
    }

    /// 16 hex digits of a digest of the signing secret, under a label of its own: what shows
    /// that two instances sign with the same key, and reveals nothing of it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn issue(&self, user: &User) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user.id,
            username: user.username.clone(),
            roles: user.roles.clone(),
            client_id: user.id.hyphenated().to_string(),
            domain: None,
            exp: now + self.ttl.as_secs() as i64,
            iat: now,
            jti: Uuid::new_v4().simple().to_string(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Claims of a valid, unexpired, unrevoked token.
    ///
    /// A token whose signature was checked once is kept, by its signature, with its claims: a
    /// client sends the same JWT with every request, and the check and the claims' parsing are
    /// most of what a REST request costs. A kept token is only one the key signed, and is taken
    /// only when the whole token is the same (compared in constant time); its expiry and
    /// revocation are checked on every request, as for a token checked afresh.
    pub fn verify(&self, token: &str) -> Option<Arc<Claims>> {
        self.verify_at(token, chrono::Utc::now().timestamp())
    }

    /// [`JwtKeys::verify`] with a kept token's expiry judged at `now` (a token checked afresh
    /// is judged by the clock).
    fn verify_at(&self, token: &str, now: i64) -> Option<Arc<Claims>> {
        let signature = token.rsplit_once('.')?.1;
        if let Some(kept) = self.verified.get(signature)
            && same_bytes(kept.token.as_bytes(), token.as_bytes())
        {
            let live = kept.claims.exp >= now - LEEWAY as i64;
            return (live && !self.is_claims_revoked(&kept.claims)).then(|| kept.claims.clone());
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        let claims = Arc::new(data.claims);
        if self.verified.len() >= VERIFIED_MAX {
            self.verified.clear();
        }
        self.verified.insert(
            signature.into(),
            Verified {
                token: token.into(),
                claims: claims.clone(),
            },
        );
        (!self.is_claims_revoked(&claims)).then_some(claims)
    }

    /// Revokes a token here, in the store, and (by the bus) on every other instance.
    pub async fn revoke(&self, store: &dyn Store, claims: &Claims) -> StoreResult<()> {
        store.jwt_revoke(&claims.jti, claims.exp).await?;
        self.revoke_local(&claims.jti, claims.exp);
        store.publish(BusEvent::JwtRevoked {
            jti: claims.jti.clone(),
            exp: claims.exp,
        });
        Ok(())
    }

    /// Records a revocation made elsewhere (bus message, or the store at start-up).
    pub fn revoke_local(&self, jti: &str, exp: i64) {
        self.revoked.insert(jti.to_owned(), exp);
    }

    /// Loads the revocations already in the store.
    pub async fn load_revocations(&self, store: &dyn Store) -> StoreResult<()> {
        for (jti, exp) in store.jwt_revocations().await? {
            self.revoke_local(&jti, exp);
        }
        for (user, before) in store.jwt_user_revocations().await? {
            self.revoke_user_local(user, before);
        }
        Ok(())
    }

    /// Revokes every JWT of a user issued until now, everywhere.
    pub async fn revoke_user(&self, store: &dyn Store, user: Uuid) -> StoreResult<()> {
        let before = chrono::Utc::now().timestamp();
        store.jwt_revoke_user(user, before).await?;
        self.revoke_user_local(user, before);
        store.publish(BusEvent::JwtUserRevoked {
            user_id: user,
            before,
        });
        Ok(())
    }

    pub fn revoke_user_local(&self, user: Uuid, before: i64) {
        let mut entry = self.user_before.entry(user).or_insert(before);
        *entry = (*entry).max(before);
    }

    /// Whether a token's claims have been revoked (by `jti`, or all of its user's).
    pub fn is_claims_revoked(&self, claims: &Claims) -> bool {
        self.revoked.contains_key(&claims.jti)
            || self
                .user_before
                .get(&claims.sub)
                .is_some_and(|b| claims.iat <= *b)
    }

    /// Forgets revocations of tokens that have expired anyway, and the expired tokens kept
    /// as verified.
    pub fn sweep(&self) {
        let now = chrono::Utc::now().timestamp();
        self.revoked.retain(|_, exp| *exp + 60 > now);
        self.verified
            .retain(|_, kept| kept.claims.exp >= now - LEEWAY as i64);
    }
}

fn check_secret(secret: &[u8], source: &str) -> anyhow::Result<()> {
    let text = String::from_utf8_lossy(secret);
    if secret.is_empty() {
        bail!(
            "the JWT secret from {source} is empty: set {SECRET_ENV} to at least {MIN_SECRET} random bytes, or configure none and poolgate generates one in its data directory"
        );
    }
    if KNOWN_SECRETS
        .iter()
        .any(|k| k.eq_ignore_ascii_case(text.trim()))
    {
        bail!(
            "the JWT secret from {source} is a well-known default ({:?}): anyone could forge tokens. Set {SECRET_ENV} to at least {MIN_SECRET} random bytes (e.g. `openssl rand -base64 48`), or configure none and poolgate generates one",
            text.trim()
        );
    }
    if secret.len() < MIN_SECRET {
        bail!(
            "the JWT secret from {source} is {} bytes; use at least {MIN_SECRET} random bytes (e.g. `openssl rand -base64 48`)",
            secret.len()
        );
    }
    Ok(())
}

fn resolve_secret(sources: SecretSources<'_>, missing: Missing) -> anyhow::Result<Vec<u8>> {
    if let Ok(s) = crate::process::var(SECRET_ENV) {
        check_secret(s.as_bytes(), SECRET_ENV)?;
        return Ok(s.into_bytes());
    }
    if let Some(path) = sources.file {
        let s = std::fs::read(path)
            .with_context(|| format!("cannot read jwt_secret_file {}", path.display()))?;
        let s = s.trim_ascii().to_vec();
        check_secret(&s, &format!("jwt_secret_file {}", path.display()))?;
        return Ok(s);
    }
    if let Some(s) = sources.value {
        check_secret(s.as_bytes(), "jwt_secret in the config")?;
        return Ok(s.as_bytes().to_vec());
    }
    match missing {
        Missing::Generate => load_or_generate(sources.data_dir),
        Missing::Throwaway => {
            // A data directory that cannot be reached is `check-config --connect`'s to report.
            let kept = match sources.data_dir.join(SECRET_FILE).exists() {
                true => load(sources.data_dir)?,
                false => None,
            };
            Ok(kept.unwrap_or_else(|| hex::encode(rand::random::<[u8; 32]>()).into_bytes()))
        }
    }
}

/// The secret kept in the data directory, if there is one.
fn load(dir: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let path = dir.join(SECRET_FILE);
    match std::fs::read(&path) {
        Ok(s) => {
            check_secret(&s, &path.display().to_string())?;
            Ok(Some(s))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn load_or_generate(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(SECRET_FILE);
    // First the directory: one this user cannot write is named with its owner, not as the
    // file's mode that could not be set.
    crate::files::data_dir(dir)?;
    crate::files::tighten(&path).with_context(|| {
        format!(
            "cannot make {} private (0600); make this user its owner",
            path.display()
        )
    })?;
    if let Some(kept) = load(dir)? {
        return Ok(kept);
    }
    let secret = hex::encode(rand::random::<[u8; 32]>()).into_bytes();
    let tmp = dir.join(format!("{SECRET_FILE}.tmp"));
    {
        use std::io::Write;
        let mut f = crate::files::open(&tmp, true)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&secret)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    tracing::info!(path = %path.display(), "generated a JWT signing secret");
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_and_token(exp_in: i64) -> (JwtKeys, String, Claims) {
        let keys = JwtKeys::new(&[b'k'; 40], Duration::from_secs(600));
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: Uuid::new_v4(),
            username: "alice".into(),
            roles: vec!["user".into()],
            client_id: "c".into(),
            domain: None,
            exp: now + exp_in,
            iat: now,
            jti: "j1".into(),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        (keys, token, claims)
    }

    #[test]
    fn a_kept_token_is_still_refused_once_expired_or_revoked() {
        let (keys, token, claims) = keys_and_token(600);
        let now = chrono::Utc::now().timestamp();
        assert!(keys.verify(&token).is_some(), "checked afresh, then kept");
        assert!(keys.verify_at(&token, now + 10).is_some(), "kept and live");
        assert!(
            keys.verify_at(&token, claims.exp + LEEWAY as i64 + 1)
                .is_none(),
            "kept but expired"
        );
        keys.revoke_local(&claims.jti, claims.exp);
        assert!(keys.verify(&token).is_none(), "kept but revoked");
    }

    #[test]
    fn a_kept_signature_under_other_claims_is_refused() {
        let (keys, token, _) = keys_and_token(600);
        assert!(keys.verify(&token).is_some());
        // The kept token's signature under a payload of the attacker's choosing.
        let (_, other, _) = keys_and_token(6000);
        let (head, signature) = token.rsplit_once('.').unwrap();
        let (_, forged_payload) = other.rsplit_once('.').unwrap().0.split_once('.').unwrap();
        let forged = format!(
            "{}.{forged_payload}.{signature}",
            head.split_once('.').unwrap().0
        );
        assert_ne!(forged, token);
        assert!(keys.verify(&forged).is_none());
        assert!(keys.verify(&token).is_some(), "the real one still is");
    }

    #[test]
    fn expired_kept_tokens_are_swept() {
        let (keys, token, _) = keys_and_token(-(LEEWAY as i64) + 2);
        assert!(keys.verify(&token).is_some());
        assert_eq!(keys.verified.len(), 1);
        keys.verified.alter_all(|_, mut kept| {
            Arc::make_mut(&mut kept.claims).exp -= 100;
            kept
        });
        keys.sweep();
        assert_eq!(keys.verified.len(), 0);
    }

    #[test]
    fn same_bytes_compares_whole_strings() {
        assert!(same_bytes(b"abc.def.ghi", b"abc.def.ghi"));
        assert!(!same_bytes(b"abc.def.ghi", b"abc.def.gh"));
        assert!(!same_bytes(b"abc.def.ghi", b"Abc.def.ghi"));
        assert!(!same_bytes(b"abc.def.ghi", b"abc.def.ghj"));
        assert!(same_bytes(b"", b""));
    }

    #[test]
    fn known_short_and_empty_secrets_are_refused() {
        assert!(check_secret(b"super-secret", "t").is_err());
        assert!(check_secret(b"", "t").is_err());
        assert!(check_secret(b"0123456789", "t").is_err());
        assert!(check_secret(&[b'x'; 40], "t").is_ok());
    }
}
