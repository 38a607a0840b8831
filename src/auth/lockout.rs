//! Brute-force limits: after `attempts` failed sign-ins (password, one-time code or token) in
//! `window`, per username and per client address, further attempts get 429 until the window
//! passes — answered before any argon2 work. A successful sign-in resets the username's
//! counter. Counters live in the state store, so they hold across restarts and instances.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::store::Store;

pub struct Lockout {
    store: Arc<dyn Store>,
    attempts: u32,
    window: Duration,
}

fn user_key(username: &str) -> String {
    format!("user:{username}")
}

fn addr_key(addr: IpAddr) -> String {
    format!("addr:{addr}")
}

impl Lockout {
    pub fn new(store: Arc<dyn Store>, attempts: u32, window: Duration) -> Self {
        Lockout {
            store,
            attempts,
            window,
        }
    }

    fn limited(&self) -> Error {
        Error::RateLimited(format!(
            "Too many failed sign-in attempts; try again in up to {} minutes.",
            self.window.as_secs().div_ceil(60)
        ))
    }

    /// Refuses when the username or the address has used up its attempts.
    pub async fn check(&self, username: Option<&str>, addr: IpAddr) -> Result<(), Error> {
        let mut locked = self.store.failures_get(&addr_key(addr)).await? >= self.attempts;
        if !locked && let Some(username) = username {
            locked = self.store.failures_get(&user_key(username)).await? >= self.attempts;
        }
        if locked {
            tracing::warn!(%addr, user = username.unwrap_or(""), "sign-in refused: locked out");
            return Err(self.limited());
        }
        Ok(())
    }

    /// Counts a failure against the username (if known) and the address.
    pub async fn failed(&self, username: Option<&str>, addr: IpAddr) -> Result<(), Error> {
        self.store
            .failures_add(&addr_key(addr), self.window)
            .await?;
        if let Some(username) = username {
            self.store
                .failures_add(&user_key(username), self.window)
                .await?;
        }
        Ok(())
    }

    pub async fn succeeded(&self, username: &str) -> Result<(), Error> {
        Ok(self.store.failures_reset(&user_key(username)).await?)
    }
}
