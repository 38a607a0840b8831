//! Pool policies: from where and when a pool may be used, how many desktops a user may hold,
//! and how long a desktop stays (protocol/pools.md, "Policies"; docs/policies.md).
//!
//! Requests are checked here ([`Policy::check_address`], [`Pools::refusal`]); desktops
//! already held are watched by [`Pools::enforce_policies`], which one instance runs at a time
//! (a lease on shared stores): it warns a desktop's user `warn_before` (and again a minute)
//! before the desktop is taken away — the schedule closing the pool, `max_session`, the lease
//! — and gives it back when the time comes; it gives back the desktops of users who have had
//! no socket for `idle_release`. Time is the server's clock, which tests set.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use super::calendar::{Calendar, Openness};
use super::config::{Balance, EndAction, PoolConfig};
use super::{Pool, Pools};
use crate::auth::users::User;
use crate::domain::TaskKind;
use crate::error::Error;
use crate::store::{Assignment, BusEvent};

/// The second warning, this long before the end (when `warn_before` is longer).
const LAST_WARNING: Duration = Duration::from_secs(60);

/// How often the instances mark who has a socket (the sweep's longest period).
const PRESENCE_EVERY: Duration = super::sweeps::POLICY_TICK;

/// How long a presence record is kept (longer than any sensible `idle_release`).
const PRESENCE_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long an instance's turn at enforcing lasts without renewal (shared stores).
const ENFORCER_LEASE: Duration = Duration::from_secs(30);

/// A pool's policies, as configured.
#[derive(Debug, Clone)]
pub(super) struct Policy {
    pub allow_from: Vec<ipnet::IpNet>,
    pub schedule: Calendar,
    pub end_action: EndAction,
    pub warn_before: Duration,
    pub max_session: Option<Duration>,
    pub idle_release: Option<Duration>,
    pub balance: Balance,
}

impl Policy {
    pub fn from_config(p: &PoolConfig) -> Policy {
        Policy {
            allow_from: p.allow_from.clone(),
            schedule: Calendar(p.schedule.iter().map(|w| w.window()).collect()),
            end_action: p.end_action,
            warn_before: p.warn_before,
            max_session: p.max_session,
            idle_release: p.idle_release,
            balance: p.balance,
        }
    }

    /// Whether what a user may see of the pool depends on where or when they ask.
    pub fn is_conditional(&self) -> bool {
        !self.allow_from.is_empty() || !self.schedule.is_empty()
    }

    /// The client's address is in `allow_from` (any address when it is empty). An IPv4
    /// address a dual-stack socket shows as `::ffff:a.b.c.d` counts as the IPv4 one.
    pub fn admits_address(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow_from.is_empty() || self.allow_from.iter().any(|n| n.contains(&ip))
    }

    pub fn check_address(&self, ip: IpAddr) -> Result<(), Error> {
        if self.admits_address(ip) {
            Ok(())
        } else {
            Err(Error::PoolNotFromHere)
        }
    }
}

/// What a pool listing says of a pool's availability to the caller now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Availability {
    pub available: bool,
    /// The next opening, when the schedule has the pool closed (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opens_at: Option<String>,
    /// When the schedule closes the pool, if within a week (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closes_at: Option<String>,
    /// Why the pool cannot be asked for now: `schedule` or `network`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<&'static str>,
}

impl Availability {
    pub const OPEN: Availability = Availability {
        available: true,
        opens_at: None,
        closes_at: None,
        unavailable: None,
    };

    pub(super) fn of(policy: &Policy, from: IpAddr, now_ms: u64) -> Availability {
        let when = policy.schedule.at(now_ms);
        let rfc = crate::domain::clock::rfc3339;
        if !policy.admits_address(from) {
            return Availability {
                available: false,
                unavailable: Some("network"),
                ..Availability::default()
            };
        }
        match when {
            Openness::Open { closes_at } => Availability {
                available: true,
                closes_at: closes_at.map(rfc),
                ..Availability::default()
            },
            Openness::Closed { opens_at } => Availability {
                available: false,
                opens_at: opens_at.map(rfc),
                unavailable: Some("schedule"),
                ..Availability::default()
            },
        }
    }
}

/// Why a held desktop is taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The schedule closes the pool (`end_action = "release"`).
    Schedule,
    /// `max_session` since it was assigned.
    MaxSession,
    /// `assignment_ttl`.
    Lease,
}

impl Ending {
    /// The `reason` of the warning and `machine` events (protocol/pools.md).
    fn reason(self) -> &'static str {
        match self {
            Ending::Schedule => "schedule closes the pool",
            Ending::MaxSession => "max_session reached",
            Ending::Lease => "lease expired",
        }
    }
}

/// What one round of [`Pools::enforce_policies`] did (the tests read it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Enforced {
    /// False when another instance holds the turn (nothing was done here).
    pub ran: bool,
    /// Warnings sent: (user, pool, seconds left).
    pub warned: Vec<(Uuid, Uuid, u64)>,
    /// Desktops given back: (user, pool, reason).
    pub released: Vec<(Uuid, Uuid, String)>,
}

impl Pools {
    /// What refuses a new step-1 task for `user` in `pool` now, if anything: the schedule
    /// has the pool closed, or the user holds `max_desktops_per_user` desktops elsewhere.
    /// (A repeated request for a task under way, or a desktop held, is answered before this
    /// is asked.)
    pub(super) async fn refusal(&self, user: &User, pool: &Pool) -> Result<Option<Error>, Error> {
        if let Openness::Closed { opens_at } = pool.policy.schedule.at(self.clock.now_ms()) {
            return Ok(Some(Error::PoolClosed { opens_at }));
        }
        if let Some(limit) = self.timings.max_desktops_per_user
            && self.desktops_held(user.id, Some(pool.view.id)).await? >= limit
        {
            return Ok(Some(Error::DesktopLimit { limit }));
        }
        Ok(None)
    }

    /// The desktops `user` holds or is being given, across the configured pools other than
    /// `except`: an assignment, or a step 1 under way. Read pool by pool (each key's latest
    /// task and the assignment), so nothing the user does elsewhere hides one.
    pub(super) async fn desktops_held(
        &self,
        user: Uuid,
        except: Option<Uuid>,
    ) -> Result<usize, Error> {
        let mut held = 0;
        for &pool in self.order.iter().filter(|p| Some(**p) != except) {
            if self.store.assignment_get(user, pool).await?.is_some() {
                held += 1;
                continue;
            }
            let latest = self
                .store
                .task_latest((user, pool, TaskKind::PoolExpand))
                .await?;
            if latest.is_some_and(|t| t.status.is_active()) {
                held += 1;
            }
        }
        Ok(held)
    }

    /// The pool's availability to a caller at `from` now (listings).
    pub(super) fn availability(&self, pool: &Pool, from: IpAddr) -> Availability {
        if !pool.policy.is_conditional() {
            return Availability::OPEN;
        }
        Availability::of(&pool.policy, from, self.clock.now_ms())
    }

    /// When a held desktop is taken away and why: the earliest of its lease, `max_session`
    /// after it was assigned, and the schedule's next closing (`end_action = "release"`).
    fn ending(&self, pool: &Pool, a: &Assignment, now_ms: u64) -> (u64, Ending) {
        let mut end = (a.lease_until_ms, Ending::Lease);
        if let Some(max) = pool.policy.max_session
            && a.since_ms > 0
        {
            let at = a.since_ms.saturating_add(millis(max));
            if at <= end.0 {
                end = (at, Ending::MaxSession);
            }
        }
        if pool.policy.end_action == EndAction::Release {
            match pool.policy.schedule.at(now_ms) {
                Openness::Open {
                    closes_at: Some(at),
                } if at < end.0 => end = (at, Ending::Schedule),
                // Closed now (the desktop was had while it was open): give it back.
                Openness::Closed { .. } => end = (now_ms, Ending::Schedule),
                Openness::Open { .. } => {}
            }
        }
        end
    }

    /// One round of the policies over every held desktop: warns of an end within
    /// `warn_before` (once, and once more a minute before), gives back what has ended, and
    /// the desktops of users without a socket for `idle_release`. On a shared store, one
    /// instance at a time does it (`ran` false elsewhere). Called by the background sweep
    /// every `lease_sweep`; tests call it after moving the clock.
    pub async fn enforce_policies(&self) -> Result<Enforced, Error> {
        let mut done = Enforced::default();
        let _round = self.enforcing.lock().await;
        if self.store.is_shared()
            && !self
                .store
                .lease_acquire(enforcer_lease_id(), &self.instance, ENFORCER_LEASE)
                .await?
        {
            return Ok(done);
        }
        done.ran = true;
        let now = self.clock.now_ms();
        self.enforcing_since.get_or_init(|| now);
        let assignments = self.store.assignments().await?;
        let mut warned_now = HashMap::new();
        for a in assignments {
            let Some(pool) = self.pools.get(&a.pool_id).cloned() else {
                // A pool no longer configured: only its lease ends it.
                if a.lease_until_ms <= now {
                    self.end(&a, Ending::Lease.reason(), &mut done).await;
                }
                continue;
            };
            if let Some(idle) = pool.policy.idle_release {
                let seen = self.last_seen(a.user_id).await?.max(a.since_ms);
                if seen > 0 && now.saturating_sub(seen) >= millis(idle) {
                    let reason = "idle_release: no socket";
                    self.end(&a, reason, &mut done).await;
                    continue;
                }
            }
            let (end, why) = self.ending(&pool, &a, now);
            if end <= now {
                self.end(&a, why.reason(), &mut done).await;
                continue;
            }
            let left = Duration::from_millis(end - now);
            let stage = if left <= LAST_WARNING && pool.policy.warn_before > LAST_WARNING {
                2
            } else if left <= pool.policy.warn_before {
                1
            } else {
                continue;
            };
            let key = (a.user_id, a.pool_id, a.machine.id);
            warned_now.insert(key, stage);
            if self.warned.get(&key).is_some_and(|s| *s >= stage) {
                continue;
            }
            let ends_in = left.as_secs_f64().ceil() as u64;
            self.store.publish(BusEvent::Ending {
                user_id: a.user_id,
                pool_id: a.pool_id,
                machine_id: a.machine.id,
                ends_at_ms: end,
                ends_in,
                reason: why.reason().to_owned(),
            });
            done.warned.push((a.user_id, a.pool_id, ends_in));
        }
        // Departures are asked about for the longest idle_release (a round's margin beside).
        let longest_idle = self
            .pools
            .values()
            .filter_map(|p| p.policy.idle_release)
            .max()
            .unwrap_or_default();
        self.events.forget_left_before(
            now.saturating_sub(millis(longest_idle.saturating_add(PRESENCE_EVERY))),
        );
        // Only what is still under warning is remembered.
        self.warned.clear();
        for (key, stage) in warned_now {
            self.warned.insert(key, stage);
        }
        Ok(done)
    }

    /// Gives a held desktop back for `reason`; a store error is logged and the round goes on
    /// (the next round tries again).
    async fn end(&self, a: &Assignment, reason: &str, done: &mut Enforced) {
        match self.release(a.user_id, a.pool_id, reason).await {
            Ok(_) => done.released.push((a.user_id, a.pool_id, reason.into())),
            Err(e) => {
                tracing::warn!(user = %a.user_id, pool = %a.pool_id, reason, error = %e, "cannot give a desktop back; the next round tries again")
            }
        }
    }

    /// When `user` last had a signed-in socket on any instance (0: not since this store
    /// started keeping it): now, when they have one here.
    ///
    /// Here, the moment their last socket closed; elsewhere (shared stores), their last
    /// presence mark plus a round, since a socket seen then may have lived until the next
    /// mark — so a desktop is given back between `idle_release` and a round after it, never
    /// before. Sockets before this instance's first round are not known: nobody is idle since
    /// earlier.
    async fn last_seen(&self, user: Uuid) -> Result<u64, Error> {
        let now = self.clock.now_ms();
        if self.events.has_sockets(user) {
            return Ok(now);
        }
        let since = self.enforcing_since.get().copied().unwrap_or(now);
        let here = self.events.left_at(user).unwrap_or(0);
        let elsewhere = match self.store.presence_get(user).await? {
            Some(at) => at.saturating_add(PRESENCE_EVERY.as_millis() as u64),
            None => 0,
        };
        Ok(here.max(elsewhere).max(since))
    }

    /// Records that the users with a socket here are present now, for the `idle_release` of
    /// other instances (shared stores; a single instance asks its own sockets). Only the
    /// users holding a desktop in a pool with `idle_release` are written.
    pub async fn mark_presence(&self) -> Result<(), Error> {
        if !self.store.is_shared() || !self.pools.values().any(|p| p.policy.idle_release.is_some())
        {
            return Ok(());
        }
        let here: HashSet<Uuid> = self.events.user_ids().into_iter().collect();
        if here.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let mut marked = HashSet::new();
        for a in self.store.assignments().await? {
            let idle = self
                .pools
                .get(&a.pool_id)
                .is_some_and(|p| p.policy.idle_release.is_some());
            if idle && here.contains(&a.user_id) && marked.insert(a.user_id) {
                self.store
                    .presence_put(a.user_id, now, PRESENCE_KEPT)
                    .await?;
            }
        }
        Ok(())
    }
}

/// The lease id of the enforcer's turn (one for the whole deployment).
fn enforcer_lease_id() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"poolgate:policy-enforcer")
}

/// A duration in whole milliseconds, saturating (a configured `max_session` of 10^20 s is
/// "never", not a wrapped few ms).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
