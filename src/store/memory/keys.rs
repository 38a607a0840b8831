//! Security keys and their ceremonies' values, in the one lock's maps.

use super::*;

#[async_trait]
impl SecurityKeys for MemoryStore {
    async fn webauthn_put(&self, key: &str, value: &str, expires_ms: u64) -> StoreResult<()> {
        self.lock()
            .webauthn
            .insert(key.to_owned(), (value.to_owned(), expires_ms));
        Ok(())
    }

    async fn webauthn_get(&self, key: &str) -> StoreResult<Option<String>> {
        let now = now_ms();
        Ok(self
            .lock()
            .webauthn
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(value, _)| value.clone()))
    }

    async fn webauthn_take(&self, key: &str) -> StoreResult<Option<String>> {
        let now = now_ms();
        Ok(self
            .lock()
            .webauthn
            .remove(key)
            .filter(|(_, until)| *until > now)
            .map(|(value, _)| value))
    }

    async fn key_add(&self, key: &SecurityKey) -> StoreResult<bool> {
        let mut inner = self.lock();
        if inner.key_owners.contains_key(&key.id) {
            return Ok(false);
        }
        inner.key_owners.insert(key.id.clone(), key.user_id);
        inner.keys.entry(key.user_id).or_default().push(key.clone());
        Ok(true)
    }

    async fn keys_of(&self, user: Uuid) -> StoreResult<Vec<SecurityKey>> {
        Ok(self.lock().keys.get(&user).cloned().unwrap_or_default())
    }

    async fn key_owner(&self, id: &str) -> StoreResult<Option<Uuid>> {
        Ok(self.lock().key_owners.get(id).copied())
    }

    async fn key_update(&self, key: &SecurityKey) -> StoreResult<bool> {
        let mut inner = self.lock();
        let stored = inner
            .keys
            .get_mut(&key.user_id)
            .and_then(|keys| keys.iter_mut().find(|k| k.id == key.id));
        match stored {
            Some(stored) => {
                stored.credential = key.credential.clone();
                stored.last_used_ms = key.last_used_ms;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn key_remove(&self, user: Uuid, id: &str) -> StoreResult<bool> {
        let mut inner = self.lock();
        let Some(keys) = inner.keys.get_mut(&user) else {
            return Ok(false);
        };
        let before = keys.len();
        keys.retain(|k| k.id != id);
        let removed = keys.len() < before;
        if removed {
            inner.key_owners.remove(id);
        }
        Ok(removed)
    }

    async fn key_remove_unless_last(&self, user: Uuid, id: &str) -> StoreResult<KeyRemoval> {
        let mut inner = self.lock();
        let Some(keys) = inner.keys.get_mut(&user) else {
            return Ok(KeyRemoval::NotFound);
        };
        if !keys.iter().any(|k| k.id == id) {
            return Ok(KeyRemoval::NotFound);
        }
        if keys.len() == 1 {
            return Ok(KeyRemoval::Last);
        }
        keys.retain(|k| k.id != id);
        inner.key_owners.remove(id);
        Ok(KeyRemoval::Removed)
    }
}
