//! Pools and the two-step connect flow: the one implementation of the rules, called by the
//! WebSocket RPCs and by the REST shim alike.
//!
//! Tasks are keyed by (user, pool, kind). Deciding what a request gets — the running task, the
//! finished one, or a new one — ends in one compare-and-set on the key's latest task in the
//! state store, so concurrent requests (on any instance) always agree on one task. Every task
//! is driven by one runner, holding the task's lease, under a deadline; whatever happens to
//! the provisioner (error, panic, hang) or to the instance driving it, the task ends.
//!
//! Giving a machine back never runs on the caller's task: the assignment is removed at once
//! (that is what decides who holds the machine), and the provisioner's `release` runs on the
//! tracker under `release_deadline`, a few at a time, and is dropped at shutdown — so a hanging
//! release stalls neither a socket (`admin_release`), nor the lease sweep, nor a SIGTERM.
//!
//! This file holds the [`Pools`] handle and its wiring; each concern has its own file, all
//! of them `impl Pools` blocks over the same state:
//!
//! | file | owns |
//! |---|---|
//! | `config.rs` | `[[pools]]`, seed tasks, [`Timings`] |
//! | `wire.rs` | what clients send and get ([`PoolView`], [`ConnectParams`], [`ConnectOutcome`]) |
//! | `steps.rs` | the step 1 / step 2 rules and the compare-and-set that starts a task |
//! | `policy.rs` | pool policies: who may ask from where and when, limits per user, warning of and ending held desktops |
//! | `calendar.rs` | weekly windows in IANA time zones (`schedule`) |
//! | `queries.rs` | read-only answers: pool lists, tasks, assignments, the launcher file |
//! | `launcher.rs` | the `.rdp` / `.vv` file a desktop client opens ([`Launcher`]) |
//! | `guacamole.rs` | the link into a desktop through a Guacamole gateway ([`GuacamoleLink`]) |
//! | `runner.rs` | driving one task to an end under its deadline and lease |
//! | `release.rs` | taking a machine away and giving it back to its provisioner |
//! | `recovery.rs` | start-up: what a previous run left, seed tasks, reconciliation |
//! | `sweeps.rs` | background: expired assignments, old tasks, orphaned tasks |
//! | `warm.rs` | warm sets: machines made ahead of demand, taken by step 1, filled and shrunk |

pub mod calendar;
mod config;
mod guacamole;
mod launcher;
mod policy;
mod queries;
mod recovery;
mod release;
mod runner;
mod steps;
mod sweeps;
mod warm;
mod wire;

pub use config::{
    Balance, EndAction, GuacamoleConfig, MAX_WARM, PoolConfig, ScheduleWindow, SeedTask, Timings,
    WarmWindow,
};
pub use guacamole::{Gateway, GuacamoleLink};
pub use launcher::Launcher;
pub use policy::{Availability, Enforced};
pub use queries::ListedPool;
pub use warm::WarmLook;
pub use wire::{ConnectOutcome, ConnectParams, Discarded, PoolView};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, bail};
use dashmap::DashSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::auth::users::{User, UserDirectory};
use crate::domain::Machine;
use crate::events::EventHub;
use crate::provision::{Provisioner, ProvisionerConfig, SimulatedConfig, StepRequest};
use crate::store::Store;

/// A configured pool: what clients see, who may use it, and the provisioner serving it.
struct Pool {
    view: PoolView,
    users: HashSet<Uuid, IdHasher>,
    /// Directory groups whose members may use the pool.
    groups: Vec<String>,
    provisioner: Arc<dyn Provisioner>,
    guacamole: Option<guacamole::Gateway>,
    policy: policy::Policy,
}

impl Pool {
    /// Whether `user` may use the pool: named in `users`, or a member of one of `groups`
    /// (as the directory said at the user's last sign-in).
    fn admits(&self, user: &User) -> bool {
        self.users.contains(&user.id) || self.admits_groups(&user.groups)
    }

    /// Whether one of `groups` (DNs, as the directory gave them) is one of the pool's.
    fn admits_groups(&self, groups: &[String]) -> bool {
        groups.iter().any(|g| {
            self.groups
                .iter()
                .any(|pg| crate::auth::directory::same_dn(pg, g))
        })
    }
}

/// The rendered `rpc/pools` listings and their counts, by (user, favourites only, groups).
type ListReplies = dashmap::DashMap<
    (Uuid, bool, u64),
    (std::sync::Arc<serde_json::value::RawValue>, usize),
    foldhash::fast::RandomState,
>;

/// The pools and everything their tasks run on; cheap to clone.
#[derive(Clone)]
pub struct Pools(Arc<Inner>);

/// What [`Pools::new`] wires the pools to: the built provisioners and the user directory the
/// config is checked against, and the services and background machinery the tasks run on.
pub struct PoolsDeps<'a> {
    /// By name, from [`Pools::build_provisioners`] (plus any a test adds).
    pub provisioners: &'a HashMap<String, Arc<dyn Provisioner>>,
    pub users: &'a UserDirectory,
    pub store: Arc<dyn Store>,
    pub events: Arc<EventHub>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Runners, releases and sweeps are spawned here, so shutdown waits for them.
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    /// Cancelled when the drain is over (`drain_timeout` after shutdown, at once without one,
    /// or on a second stop signal): running tasks and releases are cut off then.
    pub drained: CancellationToken,
    /// Where releases are recorded; its instance id also names this instance in task leases.
    pub audit: Arc<crate::audit::AuditLog>,
    /// This instance's name in task leases.
    pub instance: String,
}

/// How the pools and their users are hashed: foldhash rather than SipHash — the tables are
/// fixed at start-up (nothing a client sends is inserted), and SipHash was ~150 instructions
/// per look-up, a few of which every `connect_info` makes.
type IdHasher = foldhash::fast::RandomState;

pub struct Inner {
    pools: HashMap<Uuid, Arc<Pool>, IdHasher>,
    /// Config order, for stable listings.
    order: Vec<Uuid>,
    /// Every user's name by id: a release tells the provisioner whose machine it was.
    usernames: HashMap<Uuid, String>,
    store: Arc<dyn Store>,
    events: Arc<EventHub>,
    metrics: Arc<crate::metrics::Metrics>,
    timings: Timings,
    /// This instance's name in task leases.
    instance: String,
    /// Tasks this instance is driving.
    running: DashSet<Uuid>,
    audit: Arc<crate::audit::AuditLog>,
    /// The server's clock (the audit log's): schedules, session limits and warm sets read it.
    clock: Arc<crate::domain::clock::Clock>,
    /// `rpc/pools` replies by (user, favourites only, the user's groups): pools do not change
    /// while the process runs, so each is rendered once ([`Pools::list_reply`]).
    /// With each, how many pools it lists.
    /// Hashed with foldhash (seeded per process): the keys are the server's own, and SipHash
    /// was ~3 % of a `pools` request.
    list_replies: ListReplies,
    /// Warnings sent of desktops' ends, by (user, pool, machine): the last stage sent
    /// ([`Pools::enforce_policies`]).
    warned: dashmap::DashMap<(Uuid, Uuid, Uuid), u8>,
    /// Held by a round of the policies: rounds never overlap (the sweep's and a test's).
    enforcing: tokio::sync::Mutex<()>,
    /// When this instance first enforced the policies: no one counts as idle since before.
    enforcing_since: std::sync::OnceLock<u64>,
    /// Whether some pool's listing depends on the caller's address or the time.
    conditional: bool,
    /// Permits for provisioner releases (see [`release::CONCURRENT_RELEASES`]).
    releases: Arc<tokio::sync::Semaphore>,
    /// The pools' warm sets and the rounds filling them here.
    warm: warm::WarmSets,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    drained: CancellationToken,
}

impl std::ops::Deref for Pools {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Pools {
    /// Builds the provisioners named in config; `simulated` exists even when not defined.
    pub fn build_provisioners(
        configs: &HashMap<String, ProvisionerConfig>,
        store: &Arc<dyn Store>,
    ) -> anyhow::Result<HashMap<String, Arc<dyn Provisioner>>> {
        let mut built: HashMap<String, Arc<dyn Provisioner>> = HashMap::new();
        for (name, config) in configs {
            let provisioner = config
                .build(name, store.clone())
                .with_context(|| format!("provisioner {name:?}"))?;
            built.insert(name.clone(), provisioner);
        }
        if !built.contains_key("simulated") {
            built.insert(
                "simulated".into(),
                ProvisionerConfig::Simulated(SimulatedConfig::default())
                    .build("simulated", store.clone())?,
            );
        }
        Ok(built)
    }

    /// The pools of the config, served by already-built provisioners, with their timings.
    pub fn new(
        pools: &[PoolConfig],
        deps: PoolsDeps<'_>,
        timings: Timings,
    ) -> anyhow::Result<Self> {
        let PoolsDeps {
            provisioners: built,
            users,
            store,
            events,
            metrics,
            tracker,
            shutdown,
            drained,
            audit,
            instance,
        } = deps;
        let mut map = HashMap::with_hasher(IdHasher::default());
        let mut order = Vec::new();
        for p in pools {
            let Some(provisioner) = built.get(&p.provisioner) else {
                bail!(
                    "pool {:?} names an undefined provisioner {:?}",
                    p.name,
                    p.provisioner
                );
            };
            let mut assigned = HashSet::with_hasher(IdHasher::default());
            for username in &p.users {
                let Some(user) = users.by_name(username) else {
                    bail!("pool {:?} lists an unknown user {username:?}", p.name);
                };
                assigned.insert(user.id);
            }
            let guacamole = p
                .guacamole
                .as_ref()
                .map(|g| guacamole::Gateway::load(g, p))
                .transpose()
                .with_context(|| format!("pool {:?}", p.name))?;
            if let Some(gateway) = &guacamole {
                for username in &p.users {
                    gateway
                        .check_local_user(username)
                        .with_context(|| format!("pool {:?}", p.name))?;
                }
            }
            let pool = Pool {
                view: PoolView {
                    id: p.id,
                    name: p.name.clone(),
                    status: p.status.clone(),
                    is_favorite: p.is_favorite,
                    pool_type: p.pool_type.clone(),
                    os_type: p.os_type.clone(),
                    connection_types: p.connection_types.clone(),
                },
                users: assigned,
                groups: p.groups.clone(),
                provisioner: provisioner.clone(),
                guacamole,
                policy: policy::Policy::from_config(p),
            };
            if map.insert(p.id, Arc::new(pool)).is_some() {
                bail!("pool id {} is used twice", p.id);
            }
            order.push(p.id);
        }
        Ok(Pools(Arc::new(Inner {
            pools: map,
            order,
            usernames: users.iter().map(|u| (u.id, u.username.clone())).collect(),
            store,
            events,
            metrics,
            timings,
            instance,
            clock: audit.clock.clone(),
            audit,
            running: DashSet::new(),
            list_replies: dashmap::DashMap::with_hasher(Default::default()),
            warned: dashmap::DashMap::new(),
            enforcing: tokio::sync::Mutex::new(()),
            enforcing_since: std::sync::OnceLock::new(),
            conditional: pools
                .iter()
                .any(|p| !p.allow_from.is_empty() || !p.schedule.is_empty()),
            releases: Arc::new(tokio::sync::Semaphore::new(release::CONCURRENT_RELEASES)),
            warm: warm::WarmSets::new(pools),
            tracker,
            shutdown,
            drained,
        })))
    }
}

impl Pools {
    /// The server's clock, which the pools' time-driven rules read (a test sets it).
    pub fn clock(&self) -> &crate::domain::clock::Clock {
        &self.clock
    }
}

/// What a provisioner is told about a step: whose, which pool, which machine. The runner
/// adds the task id; step 2 the screen size; a release the reason.
fn step_request(
    user_id: Uuid,
    username: &str,
    pool: &PoolView,
    machine: Option<Machine>,
) -> StepRequest {
    StepRequest {
        task_id: None,
        user_id,
        username: username.to_owned(),
        pool_id: pool.id,
        pool_name: pool.name.clone(),
        machine,
        previous_machine: None,
        width: None,
        height: None,
        reason: None,
        balance: Default::default(),
        warm: false,
    }
}
