//! JWT revocations: one row per token, one per user's cut-off.

use super::*;

#[async_trait]
impl JwtRevocations for SqliteStore {
    async fn jwt_revoke(&self, jti: &str, exp: i64) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO jwt_revoked VALUES (?1, ?2)",
                params![jti, exp],
            )
            .map(drop)
        })
    }

    async fn jwt_revocations(&self) -> StoreResult<Vec<(String, i64)>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT jti, exp FROM jwt_revoked WHERE exp + ?1 > ?2")?;
            let now_s = (now_ms() / 1000) as i64;
            let rows = stmt.query_map(params![JWT_REVOCATION_MARGIN_S, now_s], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            rows.collect()
        })
    }

    async fn jwt_revoke_user(&self, user: Uuid, before: i64) -> StoreResult<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO jwt_users VALUES (?1, ?2) ON CONFLICT(user_id) DO UPDATE
                 SET before = MAX(before, excluded.before)",
                params![user.to_string(), before],
            )
            .map(drop)
        })
    }

    async fn jwt_user_revocations(&self) -> StoreResult<Vec<(Uuid, i64)>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT user_id, before FROM jwt_users")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            Ok(rows
                .filter_map(|r| r.ok())
                .filter_map(|(u, b)| Some((u.parse().ok()?, b)))
                .collect())
        })
    }
}
