//! The pools' settings: the `[[pools]]` tables, the seed tasks, and the timings of the work
//! around tasks. Plain data that `config` (a layer above) composes into the settings file and
//! `Pools::new` consumes, so the settings format of pools lives with the pools.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use uuid::Uuid;

use super::calendar::{self, Days, Hours, TimeOfDay, Window, Zone};
use crate::domain::{TaskKind, TaskStatus, secs};
pub use crate::provision::Balance;

/// A `[[pools]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub id: Uuid,
    pub name: String,
    #[serde(default = "active")]
    pub status: String,
    #[serde(default)]
    pub is_favorite: bool,
    pub pool_type: String,
    pub os_type: String,
    pub connection_types: Vec<String>,
    /// Usernames assigned to the pool.
    #[serde(default)]
    pub users: Vec<String>,
    /// Directory groups (DNs) whose members may use the pool, beside `users`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Name of a `[provisioners.NAME]` table; `simulated` works without one.
    #[serde(default = "simulated")]
    pub provisioner: String,
    /// A Guacamole gateway in front of the pool's desktops: `connect_info` and the portal then
    /// also hand out a link into the desktop through guacamole-auth-json.
    #[serde(default)]
    pub guacamole: Option<GuacamoleConfig>,

    // Policies (protocol/pools.md, docs/policies.md). All optional: a pool without them is
    // open to its users at all times, from anywhere.
    /// Client networks the pool may be used from (the address poolgate sees, after
    /// `trusted_proxies` and the PROXY protocol); empty: any.
    #[serde(default, deserialize_with = "crate::domain::address::networks")]
    pub allow_from: Vec<ipnet::IpNet>,
    /// When the pool may be used; empty: always.
    #[serde(default)]
    pub schedule: Vec<ScheduleWindow>,
    /// What happens to a desktop still held when the schedule closes the pool.
    #[serde(default)]
    pub end_action: EndAction,
    /// How long before a desktop is taken away (the schedule closing, `max_session`, the
    /// lease) its user's sockets are warned.
    #[serde(default = "warn_before", with = "secs")]
    pub warn_before: Duration,
    /// Longest a desktop stays assigned (seconds); `assignment_ttl` bounds it in any case.
    #[serde(default, with = "secs::option")]
    pub max_session: Option<Duration>,
    /// A desktop whose user has had no signed-in socket (on any instance) this long is given
    /// back.
    #[serde(default, with = "secs::option")]
    pub idle_release: Option<Duration>,
    /// How a static pool's provisioner picks among its free machines.
    #[serde(default)]
    pub balance: Balance,

    /// Machines kept provisioned and unassigned (a warm set), so that step 1 completes at once
    /// from them instead of waiting for the provisioner (docs/warm-sets.md). 0: none.
    #[serde(default)]
    pub warm: u32,
    /// Raises the warm set ahead of known peaks: the target at an instant is the largest of
    /// `warm` and the `count` of every window open then.
    #[serde(default)]
    pub warm_schedule: Vec<WarmWindow>,
}

/// One `schedule` entry: `{ days = "Mon-Fri", hours = "07:00-19:00", timezone = "Europe/Moscow" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleWindow {
    /// Every day when absent.
    #[serde(default)]
    pub days: Days,
    pub hours: Hours,
    /// UTC when absent.
    #[serde(default)]
    pub timezone: Option<Zone>,
}

/// The most machines a warm set may hold: a bound on what one line of config can make a
/// provisioner create.
pub const MAX_WARM: u32 = 1000;

/// An entry of a pool's `warm_schedule`: `count` machines warm on `days` from `at` until
/// `until`, in `timezone`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmWindow {
    /// Every day unless given (`"Mon-Fri"`, `"Sat,Sun"`).
    #[serde(default)]
    pub days: Days,
    /// When the set is raised (`"08:30"`).
    pub at: TimeOfDay,
    /// When it may shrink again; the end of the day (`24:00`) unless given. Not after `at`:
    /// the window runs over midnight.
    #[serde(default)]
    pub until: Option<TimeOfDay>,
    /// Machines warm while the window is open.
    pub count: u32,
    /// The zone `at` and `until` are in (an IANA name); UTC unless given.
    #[serde(default)]
    pub timezone: Option<Zone>,
}

impl ScheduleWindow {
    pub fn window(&self) -> Window {
        Window {
            days: self.days,
            hours: self.hours,
            zone: self.timezone.clone().unwrap_or_else(Zone::utc),
        }
    }
}

/// `end_action`: what the end of a schedule window does to the desktops still held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndAction {
    /// They are given back (after the warnings).
    #[default]
    Release,
    /// They stay until their lease, `max_session` or `idle_release` ends them; only new
    /// requests are refused.
    Keep,
}

fn warn_before() -> Duration {
    Duration::from_secs(600)
}

impl WarmWindow {
    /// `24:00`, where a window ends unless it says `until`.
    pub const END_OF_DAY: TimeOfDay = TimeOfDay(24 * 60);

    /// The entry as a calendar window: `at` to `until` (24:00 unless given) in its zone.
    pub fn window(&self) -> calendar::Window {
        calendar::Window {
            days: self.days,
            hours: calendar::Hours {
                start: self.at,
                end: self.until.unwrap_or(Self::END_OF_DAY),
            },
            zone: self.timezone.clone().unwrap_or_else(Zone::utc),
        }
    }
}

/// A pool's `guacamole = { url, secret_key_file }` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuacamoleConfig {
    /// The Guacamole web application, e.g. `https://gw.example.org/guacamole/`.
    pub url: String,
    /// A file holding Guacamole's `json-secret-key` (32 hex digits)...
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
    /// ...or the name of an environment variable holding it.
    #[serde(default)]
    pub secret_key_env: Option<String>,
    /// Guacamole's protocol name; `rdp` for RDP pools and `vnc` for VNC ones when unset.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Further connection parameters (`ignore-cert`, `security`, `username`, …); `hostname`
    /// and `port` are the machine's.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// How long a link is accepted after it was made.
    #[serde(default = "link_ttl", with = "secs")]
    pub link_ttl: Duration,
    /// Put before a directory user's name to make their Guacamole username (`ldap:alice`),
    /// so that no directory user is taken for the local user of the same name.
    #[serde(default = "directory_user_prefix")]
    pub directory_user_prefix: String,
    /// Put before a local user's name (none by default: Guacamole histories of existing
    /// installs stay theirs).
    #[serde(default)]
    pub local_user_prefix: String,
}

fn directory_user_prefix() -> String {
    "ldap:".into()
}

fn link_ttl() -> Duration {
    Duration::from_secs(120)
}

fn active() -> String {
    "ACTIVE".into()
}

fn simulated() -> String {
    "simulated".into()
}

/// A task present at start-up (the mock's demo dataset has two).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedTask {
    pub id: Uuid,
    pub username: String,
    pub pool_id: Uuid,
    pub kind: TaskKind,
    pub status: TaskStatus,
    #[serde(default)]
    pub message: Option<String>,
}

/// Timings of the background work around tasks and assignments.
#[derive(Debug, Clone)]
pub struct Timings {
    /// Every connect task ends within this long.
    pub deadline: Duration,
    /// How long a machine stays assigned to a user.
    pub assignment_ttl: Duration,
    /// How often expired assignments are released.
    pub lease_sweep: Duration,
    /// How long an instance's claim on a task lasts without renewal (shared stores).
    pub task_lease: Duration,
    /// How long a FAILED step 1 keeps the pool refusing the user.
    pub failed_step_retry: Duration,
    /// Every provisioner `release` (and the start-up `reconcile`) ends within this long.
    pub release_deadline: Duration,
    /// Ended tasks older than this are deleted (except each key's latest).
    pub task_retention: Duration,
    /// How often they are.
    pub sweep_interval: Duration,
    /// `max_desktops_per_user` (not a timing, but a rule every pool shares).
    pub max_desktops_per_user: Option<usize>,
}
