//! Warm sets over real sockets, on every backend (`backend_cases!`): the set fills to its
//! target, step 1 completes at once from it without the provisioner, `warm_schedule` raises
//! and shrinks it by the server's clock (set by the test, never slept for), it survives a
//! restart, and a failing provisioner is not hammered. The race of two instances for the last
//! warm machine is in tests/redis/warm.rs, on Redis and on the Cluster; it uses the
//! [`Recorder`] provisioner and the helpers here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use poolgate::Config;
use poolgate::domain::{ConnectionData, Machine};
use poolgate::pools::WarmLook;
use poolgate::provision::{Progress, Provisioner, StepError, StepRequest};
use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

use crate::helpers::*;

/// A provisioner that records every call — each expand's request (a warm set's fills have
/// `warm`), each release's — and makes a new machine per expand: at once for the first
/// `free` ones, the later ones only once [`Recorder::open`] was called; or fails them all.
pub struct Recorder {
    expands: Mutex<Vec<StepRequest>>,
    releases: watch::Sender<Vec<StepRequest>>,
    calls: AtomicUsize,
    free: usize,
    gate: watch::Sender<bool>,
    fail: bool,
}

impl Recorder {
    fn with(free: usize, fail: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            expands: Mutex::new(Vec::new()),
            releases: watch::Sender::new(Vec::new()),
            calls: AtomicUsize::new(0),
            free,
            gate: watch::Sender::new(false),
            fail,
        })
    }

    /// Every expand completes at once.
    pub fn new() -> Arc<Recorder> {
        Self::with(usize::MAX, false)
    }

    /// The first `free` expands complete at once; the others wait for [`Recorder::open`].
    pub fn gated(free: usize) -> Arc<Recorder> {
        Self::with(free, false)
    }

    /// Every expand fails.
    pub fn failing() -> Arc<Recorder> {
        Self::with(usize::MAX, true)
    }

    /// Lets the waiting expands (and every later one) complete.
    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    pub fn expands(&self) -> Vec<StepRequest> {
        self.expands.lock().unwrap().clone()
    }

    pub fn releases(&self) -> Vec<StepRequest> {
        self.releases.borrow().clone()
    }

    /// The release of `machine`, once the provisioner has been asked for it (releases run in
    /// the background); a panic after [`REPLY_TIMEOUT`].
    pub async fn released(&self, machine: Uuid) -> StepRequest {
        let mut releases = self.releases.subscribe();
        let of = |r: &StepRequest| r.machine.as_ref().is_some_and(|m| m.id == machine);
        let seen = tokio::time::timeout(REPLY_TIMEOUT, releases.wait_for(|all| all.iter().any(of)))
            .await
            .unwrap_or_else(|_| panic!("machine {machine} was not released"))
            .unwrap();
        seen.iter().find(|r| of(r)).unwrap().clone()
    }
}

#[async_trait]
impl Provisioner for Recorder {
    async fn expand(&self, req: &StepRequest, _: Progress) -> Result<Machine, StepError> {
        self.expands.lock().unwrap().push(req.clone());
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err(StepError::Failed("No capacity left (test).".into()));
        }
        if n >= self.free {
            let mut gate = self.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
        }
        Ok(Machine {
            id: Uuid::new_v4(),
            verbose_name: format!("{}-{n}", req.pool_name),
            host: "10.0.2.1".into(),
            port: 3389,
            protocol_id: 1,
            permissions: vec![],
        })
    }

    async fn connect(&self, req: &StepRequest, _: Progress) -> Result<ConnectionData, StepError> {
        let machine = req.machine.as_ref().expect("step 2 names the machine");
        Ok(ConnectionData::for_machine(machine))
    }

    async fn release(&self, req: &StepRequest, _: Progress) -> Result<(), StepError> {
        self.releases.send_modify(|r| r.push(req.clone()));
        Ok(())
    }
}

pub fn pool() -> Uuid {
    POOL_WIN_1.parse().unwrap()
}

/// The demo config on `state`, with pool-win-1 served by the provisioner `recorder` and a
/// warm set of `warm`.
pub fn warm_config(state: &str, warm: u32) -> Config {
    let mut c = demo_config();
    c.state = state.parse().expect("a state URL");
    fast_sim(&mut c, OK, OK);
    c.pools[0].provisioner = "recorder".into();
    c.pools[0].warm = warm;
    c
}

/// The app on `config`, with `recorder` as the provisioner `recorder`.
pub async fn spawn_warm(config: Config, recorder: &Arc<Recorder>) -> TestApp {
    let extra: HashMap<String, Arc<dyn Provisioner>> = HashMap::from([(
        "recorder".to_owned(),
        recorder.clone() as Arc<dyn Provisioner>,
    )]);
    TestApp::spawn_with_provisioners(config, extra).await
}

/// Looks at the warm sets now (as the background loop does every few seconds) and waits for
/// the rounds to end; returns pool-win-1's look.
pub async fn settle(app: &TestApp) -> WarmLook {
    let looks = app.state.pools.warm_tick().await;
    tokio::time::timeout(REPLY_TIMEOUT, app.state.pools.warm_settled())
        .await
        .expect("the warm sets' rounds end");
    looks
        .into_iter()
        .find(|l| l.pool == "pool-win-1")
        .expect("pool-win-1 has a warm set")
}

pub async fn warm_held(app: &TestApp) -> Vec<Machine> {
    app.state.store.warm_list(pool()).await.unwrap()
}

async fn scrape(app: &TestApp) -> String {
    reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The set fills to `warm` by expands for nobody; a step 1 then completes at once with its
/// oldest machine, the provisioner's `expand` never asked for the user, and the set refills.
pub async fn a_warm_set_fills_and_step_1_completes_at_once_from_it(state: &str) {
    let recorder = Recorder::new();
    let app = spawn_warm(warm_config(state, 2), &recorder).await;
    let look = settle(&app).await;
    assert_eq!(look.target, 2);
    let warm = warm_held(&app).await;
    assert_eq!(warm.len(), 2);
    let fills = recorder.expands();
    assert_eq!(fills.len(), 2, "{fills:?}");
    for fill in &fills {
        assert!(fill.warm, "{fill:?}");
        assert_eq!(
            (fill.user_id, fill.username.as_str(), fill.task_id),
            (Uuid::nil(), "", None),
            "for nobody"
        );
        assert_eq!(
            (fill.pool_id, fill.pool_name.as_str()),
            (pool(), "pool-win-1")
        );
    }
    assert_eq!(serde_json::to_value(&fills[0]).unwrap()["warm"], true);

    let (mut c, _) = app.login("astravdi").await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    let (seen, _) = c.follow(&id).await;
    assert_eq!(seen, ["COMPLETED"], "straight from PENDING");
    let user: Uuid = ASTRAVDI_ID.parse().unwrap();
    let given = app
        .state
        .store
        .assignment_get(user, pool())
        .await
        .unwrap()
        .expect("assigned")
        .machine;
    assert_eq!(*given, warm[0], "the oldest warm machine");
    assert!(
        recorder.expands().iter().all(|r| r.warm),
        "no expand for the user"
    );

    // The take asked for a replacement.
    tokio::time::timeout(REPLY_TIMEOUT, app.state.pools.warm_settled())
        .await
        .unwrap();
    let refilled = warm_held(&app).await;
    assert_eq!(refilled.len(), 2);
    assert_eq!(refilled[0], warm[1]);
    assert!(refilled.iter().all(|m| m.id != given.id));
    assert_eq!(recorder.expands().len(), 3);
    let look = settle(&app).await;
    assert_eq!((look.held, look.target, look.started), (2, 2, false));
    let metrics = scrape(&app).await;
    for line in [
        "poolgate_warm_machines{pool=\"pool-win-1\"} 2",
        "poolgate_warm_target{pool=\"pool-win-1\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }

    // Step 2 runs on the warm machine, for the user.
    let task =
        c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    assert_eq!(c.follow(&task).await.0.last().unwrap(), "COMPLETED");
    let ready = c.rpc("connect_info", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(
        ready["args"]["connection"]["id"],
        json!(given.id),
        "{ready}"
    );
}

/// 2026-12-07T05:00:00Z: Monday, 08:00 in Moscow.
const MONDAY_0800_MSK: u64 = 1_796_619_600_000;
const MINUTE: u64 = 60_000;

/// `warm_schedule` raises the set at `at` and shrinks it back to `warm` at `until` (in the
/// window's zone, by the server's clock): the surplus, oldest first, goes back to the
/// provisioner with the reason `warm set shrunk`.
pub async fn a_warm_schedule_raises_the_set_at_its_time_and_shrinks_it_after(state: &str) {
    let recorder = Recorder::new();
    let mut config = warm_config(state, 1);
    config.pools[0].warm_schedule = vec![
        toml::from_str(
            "days = \"Mon-Fri\"\nat = \"08:30\"\nuntil = \"09:00\"\ncount = 3\n\
             timezone = \"Europe/Moscow\"",
        )
        .unwrap(),
    ];
    let app = spawn_warm(config, &recorder).await;
    let clock = &app.state.audit.clock;
    clock.set_ms(MONDAY_0800_MSK);
    assert_eq!(settle(&app).await.target, 1);
    assert_eq!(warm_held(&app).await.len(), 1);

    clock.set_ms(MONDAY_0800_MSK + 30 * MINUTE);
    assert_eq!(settle(&app).await.target, 3, "08:30 in Moscow");
    let three = warm_held(&app).await;
    assert_eq!(three.len(), 3);

    clock.set_ms(MONDAY_0800_MSK + 60 * MINUTE - 1);
    assert_eq!(settle(&app).await.target, 3, "until 09:00");
    clock.set_ms(MONDAY_0800_MSK + 60 * MINUTE);
    assert_eq!(settle(&app).await.target, 1);
    assert_eq!(
        warm_held(&app).await,
        [three[2].clone()],
        "the newest is kept"
    );
    for machine in &three[..2] {
        let release = recorder.released(machine.id).await;
        assert_eq!(release.reason.as_deref(), Some("warm set shrunk"));
        assert!(release.warm);
        assert_eq!(
            (release.user_id, release.task_id, release.pool_id),
            (Uuid::nil(), None, pool())
        );
    }
    assert!(
        recorder
            .releases()
            .iter()
            .all(|r| r.machine.as_ref().unwrap().id != three[2].id),
        "the one kept is not released"
    );

    // Saturday at 08:30 is outside Mon-Fri.
    clock.set_ms(MONDAY_0800_MSK + 5 * 24 * 60 * MINUTE + 30 * MINUTE);
    assert_eq!(settle(&app).await.target, 1);
}

/// A failing provisioner's fills are each logged and counted once (step `warm`), and no new
/// fill starts while they back off; step 1 still asks the provisioner.
pub async fn a_failing_provisioner_is_not_hammered_to_fill_a_warm_set(state: &str) {
    let recorder = Recorder::failing();
    let app = spawn_warm(warm_config(state, 3), &recorder).await;
    settle(&app).await;
    let tried = recorder.expands().len();
    assert_eq!(tried, 3, "one round's fills, at once");
    let look = settle(&app).await;
    assert_eq!((look.held, look.target, look.started), (0, 3, false));
    assert_eq!(recorder.expands().len(), tried, "backing off");
    let metrics = scrape(&app).await;
    let failures = "poolgate_provisioner_failures_total{pool=\"pool-win-1\",step=\"warm\",outcome=\"failed\"} 3";
    assert!(
        metrics.lines().any(|l| l == failures),
        "{failures} in:\n{metrics}"
    );

    let (mut c, _) = app.login("astravdi").await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    assert_eq!(c.follow(&id).await.0.last().unwrap(), "FAILED");
    let asked = recorder.expands();
    assert_eq!(asked.len(), tried + 1);
    assert!(!asked[tried].warm && asked[tried].username == "astravdi");
}

/// Warm machines are kept across a restart, in order, and nothing is released at shutdown;
/// started again without a warm set, the pool gives them back.
pub async fn warm_machines_survive_a_restart_and_go_back_when_the_pool_drops_its_set(state: &str) {
    let recorder = Recorder::new();
    let app = spawn_warm(warm_config(state, 2), &recorder).await;
    settle(&app).await;
    let before = warm_held(&app).await;
    assert_eq!(before.len(), 2);
    let config = app.stop_keeping_data().await;
    let app = spawn_warm(config, &recorder).await;
    assert_eq!(settle(&app).await.held, 2);
    assert_eq!(warm_held(&app).await, before, "the same machines, in order");
    assert_eq!(recorder.expands().len(), 2, "none made again");
    assert!(recorder.releases().is_empty(), "nothing given back");

    let mut config = app.stop_keeping_data().await;
    config.pools[0].warm = 0;
    let app = spawn_warm(config, &recorder).await;
    for machine in &before {
        let release = recorder.released(machine.id).await;
        assert_eq!(release.reason.as_deref(), Some("warm set shrunk"));
    }
    assert!(warm_held(&app).await.is_empty());
}
