//! Directory users' records, TOTP secrets, names and re-check claims: keys used alone.

use super::*;

#[async_trait]
impl Directory for RedisStore {
    async fn directory_user_put(&self, user: &DirectoryUser) -> StoreResult<()> {
        self.con()
            .set::<_, _, ()>(
                self.k(&["directory_user", &user.id.to_string()]),
                serde_json::to_string(user)?,
            )
            .await?;
        Ok(())
    }

    async fn directory_user_get(&self, id: Uuid) -> StoreResult<Option<DirectoryUser>> {
        let body: Option<String> = self
            .con()
            .get(self.k(&["directory_user", &id.to_string()]))
            .await?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn directory_users(&self) -> StoreResult<Vec<DirectoryUser>> {
        let keys = self.keys_matching(&["directory_user", "*"]).await?;
        let mut out = Vec::with_capacity(keys.len());
        // MGET in pages (on a cluster the client splits each page by slot).
        for page in keys.chunks(500) {
            let bodies: Vec<Option<String>> = self.con().mget(page).await?;
            for body in bodies.into_iter().flatten() {
                out.push(serde_json::from_str(&body)?);
            }
        }
        Ok(out)
    }

    async fn directory_totp_put(&self, id: Uuid, secret: Option<&str>) -> StoreResult<()> {
        let key = self.k(&["directory_totp", &id.to_string()]);
        match secret {
            Some(secret) => self.con().set::<_, _, ()>(key, secret).await?,
            None => self.con().del::<_, ()>(key).await?,
        }
        Ok(())
    }

    async fn directory_totp_get(&self, id: Uuid) -> StoreResult<Option<String>> {
        Ok(self
            .con()
            .get(self.k(&["directory_totp", &id.to_string()]))
            .await?)
    }

    async fn directory_name_put(&self, name: &str, id: Uuid) -> StoreResult<()> {
        self.con()
            .set::<_, _, ()>(self.k(&["directory_name", name]), id.to_string())
            .await?;
        Ok(())
    }

    async fn directory_name_get(&self, name: &str) -> StoreResult<Option<Uuid>> {
        let id: Option<String> = self.con().get(self.k(&["directory_name", name])).await?;
        Ok(id.and_then(|id| Uuid::parse_str(&id).ok()))
    }

    async fn directory_recheck_claim(
        &self,
        user: Uuid,
        now_ms: u64,
        period: Duration,
    ) -> StoreResult<Result<(), u64>> {
        // A key alone (no tag): SET NX with the claim's expiry is the atomic claim.
        let key = self.k(&["directory_recheck", &user.to_string()]);
        let taken: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(now_ms)
            .arg("NX")
            .arg("PX")
            .arg(period.as_millis().max(1) as u64)
            .query_async(&mut self.con())
            .await?;
        if taken.is_some() {
            return Ok(Ok(()));
        }
        // Whose claim covers it is for the caller's bookkeeping only: one that lapsed in
        // between reads as made now.
        let at: Option<u64> = self.con().get(&key).await?;
        Ok(Err(at.unwrap_or(now_ms)))
    }
}
