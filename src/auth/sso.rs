//! Single sign-on's moving parts: the provider (discovered on first use, again after a fault),
//! whether it is at fault now (for `/healthz`), and the records a sign-in keeps in the state
//! store on its way — the sign-in under way by its `state`, the thin clients' hand-offs by
//! their user code, the portal's one-time codes — each under a digest of its secret, never
//! the secret itself.
//!
//! The sign-in rules themselves (who is who, the lockout, MFA on top) are the
//! [`super::Authenticator`]'s ([`super::federated`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::oidc::{OidcClient, OidcError, OidcSettings, PendingLogin};
use crate::error::SsoHandoff;

/// Where the person types (or opens) a thin client's user code.
pub const DEVICE_PATH: &str = "/oidc/device";

/// The cookie that carries the portal's one-time code from the provider's callback to the
/// page's socket (whose upgrade carries it).
pub const PORTAL_CODE_COOKIE: &str = "pg_sso_code";

/// How long the portal's one-time code may wait to be exchanged for a token.
pub const PORTAL_CODE_TTL: Duration = Duration::from_secs(60);

/// How often a waiting socket asks the store whether its hand-off was done (a sign-in that
/// finished on this instance wakes it at once; one on another instance is seen at the next
/// check).
pub const HANDOFF_CHECK_EVERY: Duration = Duration::from_secs(3);

/// After a provider fault, how long before discovery is tried again.
const REDISCOVER_AFTER: Duration = Duration::from_secs(5);

/// What a sign-in under way keeps (by its `state`) until the provider sends the browser back.
#[derive(Serialize, Deserialize)]
pub struct Pending {
    pub login: PendingLogin,
    /// The hand-off (its key) this sign-in completes; none for the portal.
    pub handoff: Option<String>,
    /// The address that began it (its single sign-on count is given back to it).
    #[serde(default)]
    pub from: Option<std::net::IpAddr>,
}

/// The provider people sign in at, and what single sign-on keeps in this process.
pub struct Sso {
    pub settings: OidcSettings,
    pub public_url: String,
    client: tokio::sync::Mutex<Option<Arc<OidcClient>>>,
    /// The last provider fault and when it was seen; cleared by the next success.
    fault: Mutex<Option<(Instant, String)>>,
    /// Sockets here waiting for a hand-off, by its key: woken when it is done here.
    waiters: DashMap<String, Arc<Notify>>,
    /// The last poll of each REST hand-off here (RFC 8628's `slow_down`), ms.
    polls: DashMap<String, u64>,
}

impl Sso {
    pub fn new(settings: OidcSettings, public_url: String) -> Self {
        Sso {
            settings,
            public_url: public_url.trim_end_matches('/').to_owned(),
            client: tokio::sync::Mutex::new(None),
            fault: Mutex::new(None),
            waiters: DashMap::new(),
            polls: DashMap::new(),
        }
    }

    /// The provider, discovered now if not yet (each request to it ends within
    /// `oidc.timeout`); a fault is remembered for `/healthz`.
    pub async fn client(&self) -> Result<Arc<OidcClient>, OidcError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = &*slot {
            return Ok(client.clone());
        }
        if let Some((at, why)) = &*self.fault.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < REDISCOVER_AFTER
        {
            return Err(OidcError::Unreachable {
                what: "discovery",
                reason: format!("{why} (tried again {} s after)", REDISCOVER_AFTER.as_secs()),
            });
        }
        match OidcClient::discover(&self.settings, &self.public_url).await {
            Ok(client) => {
                let client = Arc::new(client);
                *slot = Some(client.clone());
                self.healthy();
                Ok(client)
            }
            Err(e) => {
                self.faulted(&e);
                Err(e)
            }
        }
    }

    /// Notes a provider fault (discovery, keys, token endpoint unreachable); the provider is
    /// discovered again after it.
    pub fn faulted(&self, error: &OidcError) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), error.to_string()));
        if let Ok(mut slot) = self.client.try_lock() {
            *slot = None;
        }
    }

    /// The provider answered.
    pub fn healthy(&self) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// For `/healthz`: the provider's last fault, if no success came after it.
    pub fn fault(&self) -> Option<String> {
        self.fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, why)| why.clone())
    }

    /// What a 428 tells a thin client about its new hand-off.
    pub fn handoff_fields(&self, user_code: &str) -> SsoHandoff {
        let shown = super::oidc::user_code::display(user_code);
        SsoHandoff {
            verification_uri: format!("{}{DEVICE_PATH}", self.public_url),
            verification_uri_complete: format!(
                "{}{DEVICE_PATH}?user_code={shown}",
                self.public_url
            ),
            user_code: shown,
            expires_in: self.settings.handoff.expires_in.as_secs(),
            interval: self.settings.handoff.interval.as_secs(),
        }
    }

    /// A socket here waits for the hand-off `key`: what wakes it.
    pub fn wait(&self, key: &str) -> Arc<Notify> {
        self.waiters.entry(key.to_owned()).or_default().clone()
    }

    /// The socket stopped waiting.
    pub fn unwait(&self, key: &str) {
        self.waiters.remove(key);
    }

    /// The hand-off `key` was done here: wakes its socket if it is here too.
    pub fn wake(&self, key: &str) {
        if let Some(notify) = self.waiters.get(key) {
            notify.notify_one();
        }
    }

    /// Records a REST poll of `key` at `now_ms`; whether it came sooner than `interval` after
    /// the one before (RFC 8628 `slow_down`).
    pub fn poll_too_soon(&self, key: &str, now_ms: u64) -> bool {
        let interval = self.settings.handoff.interval.as_millis() as u64;
        // Forget the polls of hand-offs long gone.
        let horizon = self.settings.handoff.expires_in.as_millis() as u64;
        if self.polls.len() > 10_000 {
            self.polls
                .retain(|_, at| now_ms.saturating_sub(*at) < horizon);
        }
        let before = self.polls.insert(key.to_owned(), now_ms);
        // A little slack for the client's timer.
        before.is_some_and(|at| now_ms.saturating_sub(at) + 200 < interval)
    }
}

/// The store key of a secret (a `state`, a user code, a portal code): a digest, with what kind
/// of secret it is.
pub fn key(kind: &str, secret: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(kind.as_bytes());
    digest.update(b"\n");
    digest.update(secret.as_bytes());
    format!("{kind}:{}", hex::encode(digest.finalize()))
}

/// A new portal code: 256 random bits, URL-safe.
pub fn new_portal_code() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
