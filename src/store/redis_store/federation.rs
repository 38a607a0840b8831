//! Single sign-on: keys used alone, each expiring by itself. A hand-off's outcome is a key of
//! its own beside the hand-off (`SET … NX`: written once), so no script decodes JSON.

use super::*;

#[async_trait]
impl Federation for RedisStore {
    async fn sso_put(&self, key: &str, value: &str, expires_ms: u64) -> StoreResult<()> {
        redis::cmd("SET")
            .arg(self.k(&["sso", key]))
            .arg(value)
            .arg("PXAT")
            .arg(expires_ms)
            .query_async::<()>(&mut self.con())
            .await?;
        Ok(())
    }

    async fn sso_take(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(redis::cmd("GETDEL")
            .arg(self.k(&["sso", key]))
            .query_async(&mut self.con())
            .await?)
    }

    async fn handoff_put(&self, key: &str, handoff: &Handoff) -> StoreResult<()> {
        let mut handoff = handoff.clone();
        handoff.done = None;
        let mut con = self.con();
        redis::cmd("DEL")
            .arg(self.k(&["handoff_done", key]))
            .query_async::<()>(&mut con)
            .await?;
        redis::cmd("SET")
            .arg(self.k(&["handoff", key]))
            .arg(serde_json::to_string(&handoff)?)
            .arg("PXAT")
            .arg(handoff.expires_ms)
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    async fn handoff_get(&self, key: &str) -> StoreResult<Option<Handoff>> {
        let mut con = self.con();
        let body: Option<String> = con.get(self.k(&["handoff", key])).await?;
        let Some(body) = body else {
            return Ok(None);
        };
        let mut handoff: Handoff = serde_json::from_str(&body)?;
        let done: Option<String> = con.get(self.k(&["handoff_done", key])).await?;
        handoff.done = done.map(|d| serde_json::from_str(&d)).transpose()?;
        Ok(Some(handoff))
    }

    async fn handoff_complete(&self, key: &str, outcome: &SsoOutcome) -> StoreResult<bool> {
        let Some(handoff) = self.handoff_get(key).await? else {
            return Ok(false);
        };
        if handoff.done.is_some() {
            return Ok(false);
        }
        // Written once, and gone with the hand-off.
        let set: Option<String> = redis::cmd("SET")
            .arg(self.k(&["handoff_done", key]))
            .arg(serde_json::to_string(outcome)?)
            .arg("NX")
            .arg("PXAT")
            .arg(handoff.expires_ms)
            .query_async(&mut self.con())
            .await?;
        Ok(set.is_some())
    }

    async fn handoff_take(&self, key: &str) -> StoreResult<Option<SsoOutcome>> {
        let mut con = self.con();
        let done: Option<String> = redis::cmd("GETDEL")
            .arg(self.k(&["handoff_done", key]))
            .query_async(&mut con)
            .await?;
        let Some(done) = done else {
            return Ok(None);
        };
        con.del::<_, ()>(self.k(&["handoff", key])).await?;
        Ok(Some(serde_json::from_str(&done)?))
    }

    async fn federated_user_put(&self, user: &FederatedUser) -> StoreResult<()> {
        self.con()
            .set::<_, _, ()>(
                self.k(&["federated_user", &user.id.to_string()]),
                serde_json::to_string(user)?,
            )
            .await?;
        Ok(())
    }

    async fn federated_user_get(&self, id: Uuid) -> StoreResult<Option<FederatedUser>> {
        let body: Option<String> = self
            .con()
            .get(self.k(&["federated_user", &id.to_string()]))
            .await?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }
}
