//! Read-only answers about pools, tasks and assignments: what the listing methods and the
//! admin views need, kept apart from the rules that change anything.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use uuid::Uuid;

use super::{Availability, GuacamoleLink, Launcher, Pool, PoolView, Pools, launcher};
use crate::auth::users::User;
use crate::domain::{ConnectionData, Machine, Task, TaskKind, TaskStatus};
use crate::error::Error;

/// Tasks listed by `tasks`.
const RECENT_PER_USER: usize = crate::store::RECENT_TASKS;

/// Rendered listings kept before the cache is emptied (one per user and flag).
const LIST_REPLIES_MAX: usize = 100_000;

impl Pools {
    /// The user's pools, in config order, with their availability to a caller at `from` now;
    /// `favorites_only` keeps the favourites.
    pub fn list(&self, user: &User, from: IpAddr, favorites_only: bool) -> Vec<ListedPool> {
        self.listed(user, favorites_only)
            .map(|p| ListedPool {
                view: p.view.clone(),
                availability: self.availability(p, from),
            })
            .collect()
    }

    fn listed(&self, user: &User, favorites_only: bool) -> impl Iterator<Item = &Arc<Pool>> {
        self.order
            .iter()
            .map(|id| &self.pools[id])
            .filter(move |p| p.admits(user))
            .filter(move |p| !favorites_only || p.view.is_favorite)
    }

    /// [`Pools::list`] rendered as JSON, once per user, flag, group set and — for pools
    /// whose `allow_from` or `schedule` make it depend on the caller's address or the time —
    /// what they say now: pools are fixed for the life of the process (a directory user whose
    /// groups changed at a sign-in gets a listing of their own).
    pub fn list_reply(
        &self,
        user: &User,
        from: IpAddr,
        favorites_only: bool,
    ) -> Result<Arc<RawValue>, Error> {
        self.with_listing(user, from, favorites_only, |json, _| json.clone())
    }

    /// Calls `f` with the user's rendered listing (see [`Pools::list_reply`]) as the cache
    /// holds it, and how many pools it holds, without copying it.
    pub fn with_listing<R>(
        &self,
        user: &User,
        from: IpAddr,
        favorites_only: bool,
        f: impl FnOnce(&Arc<RawValue>, usize) -> R,
    ) -> Result<R, Error> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = |v: &dyn Fn(&mut DefaultHasher)| {
            let mut h = BuildHasherDefault::<DefaultHasher>::default().build_hasher();
            v(&mut h);
            std::hash::Hasher::finish(&h)
        };
        let groups = if user.groups.is_empty() {
            0
        } else {
            hash(&|h| std::hash::Hash::hash(&user.groups, h))
        };
        // What the conditional pools say to this caller now (0 when there are none).
        let conditions = if self.conditional {
            let now: Vec<Availability> = self
                .listed(user, favorites_only)
                .filter(|p| p.policy.is_conditional())
                .map(|p| self.availability(p, from))
                .collect();
            hash(&|h| std::hash::Hash::hash(&now, h))
        } else {
            0
        };
        let key = (user.id, favorites_only, groups ^ conditions.rotate_left(1));
        if let Some(hit) = self.list_replies.get(&key) {
            return Ok(f(&hit.0, hit.1));
        }
        let list = self.list(user, from, favorites_only);
        let reply = crate::envelope::shared_json(&list)?;
        let out = f(&reply, list.len());
        if self.list_replies.len() >= LIST_REPLIES_MAX {
            self.list_replies.clear();
        }
        self.list_replies.insert(key, (reply, list.len()));
        Ok(out)
    }

    /// The launcher file for the user's desktop in the pool: step 2 must have completed for
    /// the machine the user holds now (404 otherwise; this never starts a step). It holds the
    /// connection data, so `allow_from` applies as to step 2.
    pub async fn launcher(
        &self,
        user: &User,
        from: IpAddr,
        pool_id: Uuid,
    ) -> Result<Launcher, Error> {
        let pool = self.pool_for(user, pool_id)?;
        pool.policy.check_address(from)?;
        let Some(assignment) = self.store.assignment_get(user.id, pool_id).await? else {
            return Err(Error::NoEligibleMachine);
        };
        let latest = self
            .store
            .task_latest((user.id, pool_id, TaskKind::GlintStart))
            .await?;
        match latest.as_ref().and_then(|t| {
            t.connection
                .as_ref()
                .filter(|_| t.status == TaskStatus::Completed)
        }) {
            Some(c) if c.id == assignment.machine.id => {
                Ok(launcher::render(&pool.view, c, &user.username))
            }
            _ => Err(Error::NotFound(
                "No connection is ready in this pool: call connect_info until it answers with \
                 the connection."
                    .into(),
            )),
        }
    }

    /// A link into `conn`, the user's connection in the pool, through the pool's Guacamole
    /// gateway; `None` when the pool has none. Made afresh on every call: each link is
    /// single-use and expires (see `guacamole.rs`).
    pub fn guacamole_link(
        &self,
        user: &User,
        pool_id: Uuid,
        conn: &ConnectionData,
    ) -> Result<Option<GuacamoleLink>, Error> {
        let pool = self.pool_for(user, pool_id)?;
        let Some(gateway) = &pool.guacamole else {
            return Ok(None);
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Ok(Some(gateway.link(
            &gateway.username(&user.username, user.dn.is_some()),
            &pool.view.name,
            conn,
            now_ms,
        )))
    }

    /// The ids of a pool's users (admin resets of a whole pool): those its `users` name, and
    /// the directory users in one of its `groups` as their last sign-in said (a directory user
    /// who never signed in has no task to reset). `None` for an unknown pool.
    pub async fn pool_users(&self, pool_id: Uuid) -> Result<Option<Vec<Uuid>>, Error> {
        let Some(pool) = self.pools.get(&pool_id) else {
            return Ok(None);
        };
        let mut ids: Vec<Uuid> = pool.users.iter().copied().collect();
        if !pool.groups.is_empty() {
            ids.extend(
                self.store
                    .directory_users()
                    .await?
                    .into_iter()
                    .filter(|u| !pool.users.contains(&u.id) && pool.admits_groups(&u.groups))
                    .map(|u| u.id),
            );
        }
        Ok(Some(ids))
    }

    /// A pool's name (for the audit log), or its id when it is no pool of this config.
    pub fn pool_name(&self, id: Uuid) -> String {
        self.pools
            .get(&id)
            .map_or_else(|| id.to_string(), |p| p.view.name.clone())
    }

    /// A pool's id from its id or its name (admin methods take either).
    pub fn pool_id_by_name_or_id(&self, pool: &str) -> Option<Uuid> {
        match pool.parse::<Uuid>() {
            Ok(id) => self.pools.contains_key(&id).then_some(id),
            Err(_) => self
                .order
                .iter()
                .find(|id| self.pools[*id].view.name == pool)
                .copied(),
        }
    }

    /// One of the user's tasks; someone else's is "not found".
    pub async fn task(&self, user: &User, id: Uuid) -> Result<Task, Error> {
        self.store
            .task_get(user.id, id)
            .await?
            .ok_or_else(|| Error::NotFound("Task not found.".into()))
    }

    /// The user's recent tasks, newest first.
    pub async fn recent_tasks(&self, user: &User) -> Result<Vec<Task>, Error> {
        Ok(self.store.tasks_of_user(user.id, RECENT_PER_USER).await?)
    }

    /// Every PENDING or RUNNING task (admin view).
    pub async fn all_active_tasks(&self) -> Result<Vec<Task>, Error> {
        Ok(self.store.tasks_active().await?)
    }

    /// The machine a user holds in a pool, if any.
    pub async fn assignment(&self, user_id: Uuid, pool_id: Uuid) -> Result<Option<Machine>, Error> {
        Ok(self
            .store
            .assignment_get(user_id, pool_id)
            .await?
            .map(|a| Arc::unwrap_or_clone(a.machine)))
    }

    /// How long a provisioner release may take before it is abandoned (and its program killed).
    pub fn release_deadline(&self) -> Duration {
        self.timings.release_deadline
    }
}

/// A pool in a listing: what clients see of it, and whether they may ask for it now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListedPool {
    #[serde(flatten)]
    pub view: PoolView,
    #[serde(flatten)]
    pub availability: Availability,
}
