//! MFA challenges (one row each, a user's earlier one of a kind replaced) and TOTP steps.

use super::*;

#[async_trait]
impl Mfa for SqliteStore {
    async fn mfa_put(&self, hash: &TokenHash, rec: &MfaRecord) -> StoreResult<()> {
        self.with(|c| {
            // One statement each, under the connection's one writer: the user's earlier
            // challenge of this kind goes with the new one's arrival.
            let tx = c.transaction()?;
            tx.prepare_cached("DELETE FROM mfa WHERE user_id = ?1 AND password_ok = ?2")?
                .execute(params![rec.user_id.to_string(), rec.password_ok])?;
            tx.prepare_cached("INSERT OR REPLACE INTO mfa VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![
                    &hash[..],
                    rec.user_id.to_string(),
                    rec.password_ok,
                    rec.expires_ms as i64,
                    rec.attempts
                ])?;
            tx.commit()
        })
    }

    async fn mfa_get(&self, hash: &TokenHash) -> StoreResult<Option<MfaRecord>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT user_id, password_ok, expires_ms, attempts FROM mfa
                 WHERE hash = ?1 AND expires_ms > ?2",
            )?
            .query_row(params![&hash[..], now_ms() as i64], |r| {
                Ok(MfaRecord {
                    user_id: r.get::<_, String>(0)?.parse().unwrap_or_default(),
                    password_ok: r.get(1)?,
                    expires_ms: r.get::<_, i64>(2)? as u64,
                    attempts: r.get(3)?,
                })
            })
            .optional()
        })
    }

    async fn mfa_take(&self, hash: &TokenHash) -> StoreResult<bool> {
        self.with(|c| {
            let live: Option<bool> = c
                .query_row(
                    "DELETE FROM mfa WHERE hash = ?1 RETURNING expires_ms > ?2",
                    params![&hash[..], now_ms() as i64],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(live == Some(true))
        })
    }

    async fn mfa_fail(&self, hash: &TokenHash) -> StoreResult<u32> {
        self.with(|c| {
            c.query_row(
                "UPDATE mfa SET attempts = attempts + 1 WHERE hash = ?1 AND expires_ms > ?2
                 RETURNING attempts",
                params![&hash[..], now_ms() as i64],
                |r| r.get(0),
            )
            .optional()
            .map(|a| a.unwrap_or(u32::MAX))
        })
    }

    async fn totp_advance(&self, user: Uuid, step: u64) -> StoreResult<bool> {
        self.with(|c| {
            // One statement: insert, or raise the step only if the new one is later.
            let changed = c.execute(
                "INSERT INTO totp VALUES (?1, ?2) ON CONFLICT(user_id) DO UPDATE
                 SET step = excluded.step WHERE excluded.step > totp.step",
                params![user.to_string(), step as i64],
            )?;
            Ok(changed == 1)
        })
    }
}
