//! How a store in front of another (the read cache, [`super::cache`]) passes a concern it does
//! not handle straight through: it says once what it wraps ([`Wraps`]) and then one line per
//! concern, `impl Forward<dyn Sessions> for CachedStore {}`; the impls here do the rest. So
//! the wrapper's file holds only what it does itself, and a method added to a concern it
//! passes through is written here once, beside its signature.

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::{
    Audit, Directory, DirectoryUser, FederatedUser, Federation, Handoff, Inventory, JwtRevocations,
    KeyRemoval, Lockout, Mfa, MfaRecord, SecurityKey, SecurityKeys, SessionRecord, Sessions,
    SsoOutcome, Store, StoreCounts, StoreResult, Upkeep, Warm,
};
use crate::domain::{AuditEvent, AuditQuery, Machine, TokenHash};

/// A store in front of `inner`.
pub trait Wraps: Send + Sync + 'static {
    fn inner(&self) -> &dyn Store;
}

/// Marks a concern `C` (`dyn Sessions`, …) that a wrapper passes through to what it wraps.
pub trait Forward<C: ?Sized>: Wraps {}

/// One pass-through impl per concern: each `async fn` (and plain `fn`) listed calls the same
/// method on the wrapped store.
macro_rules! forward {
    ($concern:ident {
        $(async fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;)*
        $(fn $plain:ident(&self $(, $parg:ident: $pty:ty)* $(,)?) -> $pret:ty;)*
    }) => {
        #[async_trait]
        impl<T: Forward<dyn $concern>> $concern for T {
            $(async fn $name(&self $(, $arg: $ty)*) -> $ret {
                self.inner().$name($($arg),*).await
            })*
            $(fn $plain(&self $(, $parg: $pty)*) -> $pret {
                self.inner().$plain($($parg),*)
            })*
        }
    };
}

forward!(Upkeep {
    async fn ping(&self) -> StoreResult<()>;
    async fn health(&self) -> StoreResult<Option<String>>;
    async fn sweep_expired(&self) -> StoreResult<usize>;
    async fn counts(&self) -> StoreResult<StoreCounts>;
    async fn mark(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<Option<String>>;
    async fn presence_put(&self, user: Uuid, seen_ms: u64, ttl: Duration) -> StoreResult<()>;
    async fn presence_get(&self, user: Uuid) -> StoreResult<Option<u64>>;
});

forward!(Sessions {
    async fn session_put(
        &self,
        rec: &SessionRecord,
        ttl: Duration,
        max_per_user: usize,
    ) -> StoreResult<Vec<TokenHash>>;
    async fn session_get(&self, hash: &TokenHash) -> StoreResult<Option<SessionRecord>>;
    async fn session_touch(
        &self,
        touches: &[(TokenHash, u64)],
        ttl: Duration,
    ) -> StoreResult<Vec<TokenHash>>;
    async fn session_delete(&self, hash: &TokenHash) -> StoreResult<()>;
    async fn session_delete_user(&self, user: Uuid) -> StoreResult<Vec<TokenHash>>;
    async fn sessions_all(&self) -> StoreResult<Vec<SessionRecord>>;
    fn token_fits(&self, user: Uuid, hash: &TokenHash) -> bool;
});

forward!(Mfa {
    async fn mfa_put(&self, hash: &TokenHash, rec: &MfaRecord) -> StoreResult<()>;
    async fn mfa_get(&self, hash: &TokenHash) -> StoreResult<Option<MfaRecord>>;
    async fn mfa_take(&self, hash: &TokenHash) -> StoreResult<bool>;
    async fn mfa_fail(&self, hash: &TokenHash) -> StoreResult<u32>;
    async fn totp_advance(&self, user: Uuid, step: u64) -> StoreResult<bool>;
});

forward!(Directory {
    async fn directory_user_put(&self, user: &DirectoryUser) -> StoreResult<()>;
    async fn directory_user_get(&self, id: Uuid) -> StoreResult<Option<DirectoryUser>>;
    async fn directory_users(&self) -> StoreResult<Vec<DirectoryUser>>;
    async fn directory_totp_put(&self, id: Uuid, secret: Option<&str>) -> StoreResult<()>;
    async fn directory_totp_get(&self, id: Uuid) -> StoreResult<Option<String>>;
    async fn directory_name_put(&self, name: &str, id: Uuid) -> StoreResult<()>;
    async fn directory_name_get(&self, name: &str) -> StoreResult<Option<Uuid>>;
    async fn directory_recheck_claim(
        &self,
        user: Uuid,
        now_ms: u64,
        period: Duration,
    ) -> StoreResult<Result<(), u64>>;
});

forward!(JwtRevocations {
    async fn jwt_revoke(&self, jti: &str, exp: i64) -> StoreResult<()>;
    async fn jwt_revocations(&self) -> StoreResult<Vec<(String, i64)>>;
    async fn jwt_revoke_user(&self, user: Uuid, before: i64) -> StoreResult<()>;
    async fn jwt_user_revocations(&self) -> StoreResult<Vec<(Uuid, i64)>>;
});

forward!(Inventory {
    async fn machine_claim(&self, inventory: &str, machine: Uuid) -> StoreResult<bool>;
    async fn machine_release(&self, inventory: &str, machine: Uuid) -> StoreResult<()>;
    async fn machines_claimed(&self, inventory: &str) -> StoreResult<Vec<Uuid>>;
    async fn machine_count_use(&self, inventory: &str, machine: Uuid) -> StoreResult<u64>;
    async fn machine_uses(&self, inventory: &str) -> StoreResult<Vec<(Uuid, u64)>>;
});

forward!(Warm {
    async fn warm_add(&self, pool: Uuid, machine: &Machine) -> StoreResult<bool>;
    async fn warm_take(&self, pool: Uuid) -> StoreResult<Option<Machine>>;
    async fn warm_list(&self, pool: Uuid) -> StoreResult<Vec<Machine>>;
    async fn warm_remove(&self, pool: Uuid, machine: Uuid) -> StoreResult<bool>;
});

forward!(Lockout {
    async fn failures_add(&self, key: &str, window: Duration) -> StoreResult<u32>;
    async fn failures_get(&self, key: &str) -> StoreResult<u32>;
    async fn failures_reset(&self, key: &str) -> StoreResult<()>;
    async fn failures_undo(&self, key: &str) -> StoreResult<()>;
    async fn backoff_slot(
        &self,
        key: &str,
        now_ms: u64,
        spacing: Duration,
        max_wait: Duration,
        window: Duration,
    ) -> StoreResult<Result<u64, u64>>;
});

forward!(Federation {
    async fn sso_put(&self, key: &str, value: &str, expires_ms: u64) -> StoreResult<()>;
    async fn sso_take(&self, key: &str) -> StoreResult<Option<String>>;
    async fn handoff_put(&self, key: &str, handoff: &Handoff) -> StoreResult<()>;
    async fn handoff_get(&self, key: &str) -> StoreResult<Option<Handoff>>;
    async fn handoff_complete(&self, key: &str, outcome: &SsoOutcome) -> StoreResult<bool>;
    async fn handoff_take(&self, key: &str) -> StoreResult<Option<SsoOutcome>>;
    async fn federated_user_put(&self, user: &FederatedUser) -> StoreResult<()>;
    async fn federated_user_get(&self, id: Uuid) -> StoreResult<Option<FederatedUser>>;
});

forward!(SecurityKeys {
    async fn webauthn_put(&self, key: &str, value: &str, expires_ms: u64) -> StoreResult<()>;
    async fn webauthn_get(&self, key: &str) -> StoreResult<Option<String>>;
    async fn webauthn_take(&self, key: &str) -> StoreResult<Option<String>>;
    async fn key_add(&self, key: &SecurityKey) -> StoreResult<bool>;
    async fn keys_of(&self, user: Uuid) -> StoreResult<Vec<SecurityKey>>;
    async fn key_owner(&self, id: &str) -> StoreResult<Option<Uuid>>;
    async fn key_update(&self, key: &SecurityKey) -> StoreResult<bool>;
    async fn key_remove(&self, user: Uuid, id: &str) -> StoreResult<bool>;
    async fn key_remove_unless_last(&self, user: Uuid, id: &str) -> StoreResult<KeyRemoval>;
});

forward!(Audit {
    async fn audit_append(&self, event: &AuditEvent) -> StoreResult<()>;
    async fn audit_query(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>>;
    async fn audit_sweep(&self, cutoff_ms: u64) -> StoreResult<usize>;
});
