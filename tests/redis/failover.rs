//! What a Redis outage or failover under a running task must not do: turn a task another
//! instance has ended back into a running or completed one, or shut a user out of a pool
//! because the machine could not be recorded.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use poolgate::domain::{ConnectionData, Machine};
use poolgate::provision::{Progress, Provisioner, StepError, StepRequest};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;
use crate::redis_server::{persistent, redis_url, spawn_redis_with, stop_redis};
use crate::routing::{CutOff, drain};

/// Instance A is cut off from Redis mid-task, long enough for its lease to lapse: instance B
/// takes A for dead and ends the task CANCELLED, and the client is told so. A comes back and
/// its step goes on: its writes must not undo that end (before, A wrote RUNNING and then
/// COMPLETED over it, and a client that had obeyed "ask again" ran a second step 1). The
/// task stays CANCELLED, nothing more is pushed about it, and the next request starts anew.
pub async fn a_task_ended_elsewhere_while_its_instance_was_cut_off_stays_ended() {
    let prefix = format!("failover-end-{}", Uuid::new_v4().simple());
    let cut = Partition::start(&redis_url()).await;
    // Instances sharing a store sign JWTs with one key (else the second refuses to start).
    let key = poolgate::config::SecretString("failover-test-jwt-key-".repeat(2));
    let a = TestApp::spawn_with(|c| {
        c.state = cut.url().parse().unwrap();
        c.state_prefix = prefix.clone();
        c.jwt_secret = Some(key.clone());
        c.task_lease = Duration::from_secs(1);
        let slow: toml::Value =
            toml::from_str("kind = \"simulated\"\npending = 0.05\nrunning = [4, 4]").unwrap();
        c.provisioners
            .insert("simulated".into(), slow.try_into().unwrap());
    })
    .await;
    let b = TestApp::spawn_with(|c| {
        c.state = redis_url().parse().unwrap();
        c.state_prefix = prefix.clone();
        c.jwt_secret = Some(key.clone());
        c.task_lease = Duration::from_secs(1);
    })
    .await;
    let (mut on_a, _) = a.login("astravdi").await;
    let (mut on_b, _) = b.login("astravdi").await;
    let id = on_a
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await["args"]["task"]["id"]
        .clone();
    loop {
        let event = on_b.next_event().await;
        if event["id"] == id && event["status"] == "RUNNING" {
            break;
        }
    }
    cut.cut();
    let (seen, task) = on_b.follow(&id).await;
    assert_eq!(seen.last().unwrap(), "CANCELLED", "B ended it: {task}");
    cut.restore();
    // A's step ends 4 s after it began; whatever A makes of it comes by then.
    let after = drain(&mut on_b, Duration::from_secs(4)).await;
    let about: Vec<_> = after
        .iter()
        .filter(|f| f["args"]["id"] == id || f["id"] == id)
        .collect();
    assert!(
        about.is_empty(),
        "nothing more about the ended task: {about:?}"
    );
    let stored = on_b.rpc("task", json!({"task_id": id})).await;
    assert_eq!(stored["args"]["status"], "CANCELLED", "{stored}");
    let next = on_b
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_ne!(next["args"]["task"]["id"], id, "a new step 1: {next}");
    assert_eq!(next["args"]["task"]["status"], "PENDING", "{next}");
}

/// A TCP relay between one instance and Redis that the test can cut (every connection
/// dropped, new ones refused) and restore: a network partition of that instance, which its
/// Redis client rides out by reconnecting (a refused authentication is another path, taken by
/// `a_connection_refused_by_authentication_is_made_anew`).
struct Partition {
    addr: std::net::SocketAddr,
    open: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Partition {
    async fn start(redis: &str) -> Partition {
        let target = redis
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let cut = Arc::new(cut);
        let (accepting, cuts) = (open.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accepting.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let target = target.clone();
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Partition { addr, open, cut }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A step 1 whose `expand` waits for the test before it returns its machine.
struct Gated(Arc<tokio::sync::Notify>);

#[async_trait]
impl Provisioner for Gated {
    async fn expand(&self, _: &StepRequest, progress: Progress) -> Result<Machine, StepError> {
        progress.running();
        self.0.notified().await;
        Ok(Machine {
            id: Uuid::new_v4(),
            verbose_name: "vm".into(),
            host: "10.0.0.1".into(),
            port: 3389,
            protocol_id: 1,
            permissions: vec![],
        })
    }
    async fn connect(&self, _: &StepRequest, _: Progress) -> Result<ConnectionData, StepError> {
        Err(StepError::Failed("not here".into()))
    }
    async fn release(&self, _: &StepRequest, _: Progress) -> Result<(), StepError> {
        Ok(())
    }
}

/// Redis goes away for a second just as step 1 gets its machine (a restart, a failover): the
/// assignment is written once Redis is back and the task COMPLETES. Before, the first failed
/// write ended it FAILED ("the provisioner failed"), which held the pool back from the user
/// for `failed_step_retry`.
pub async fn a_store_outage_as_the_machine_is_assigned_is_ridden_out() {
    let port = free_port();
    let redis_dir = tempfile::tempdir().unwrap();
    let persist = persistent(redis_dir.path());
    let mut redis = spawn_redis_with(port, &persist);
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut config = demo_config();
    config.seed_tasks.clear();
    config.state = format!("redis://127.0.0.1:{port}").parse().unwrap();
    config.pools[0].provisioner = "gated".into();
    let extra = std::collections::HashMap::from([(
        "gated".to_owned(),
        Arc::new(Gated(gate.clone())) as Arc<dyn Provisioner>,
    )]);
    let app = TestApp::spawn_with_provisioners(config, extra).await;
    let (mut c, token) = app.login("astravdi").await;
    let id =
        c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await["args"]["task"]["id"].clone();
    loop {
        let event = c.next_event().await;
        if event["id"] == id && event["status"] == "RUNNING" {
            break;
        }
    }
    // Redis stops; the step returns its machine meanwhile; Redis is back a second later.
    stop_redis(&mut redis, port).await;
    gate.notify_one();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut redis = spawn_redis_with(port, &persist);
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let mut d = app.connect().await;
        last = d.rpc("auth_token", json!({"token": token})).await;
        if last["name"] == "response" {
            last = d.rpc("task", json!({"task_id": id})).await;
            let status = &last["args"]["status"];
            if status != "RUNNING" && status != "PENDING" && status.is_string() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["args"]["status"], "COMPLETED", "{last}");
    // The machine is the user's: asking again answers the same finished step 1.
    let mut d = app.connect().await;
    d.rpc("auth_token", json!({"token": token})).await;
    let again = d.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(again["args"]["task"]["id"], id, "{again}");
    stop_redis(&mut redis, port).await;
}

/// Redis refuses the instance's reconnection for a while (its ACL user switched off, then on
/// again): the Redis client never retries a reconnection refused by authentication, so before
/// this the instance answered 503 until it was restarted. The store makes its connection anew:
/// requests succeed within seconds of the restore, and a socket signed in before the outage
/// gets its events again (its subscription was made again on the new connection).
pub async fn a_connection_refused_by_authentication_is_made_anew() {
    let cut = CutOff::new();
    let app = TestApp::spawn_with(|c| {
        c.state = cut.url.parse().unwrap();
        c.state_prefix = format!("failover-auth-{}", Uuid::new_v4().simple());
        fast_sim(c, OK, OK);
    })
    .await;
    let (mut listener, token) = app.login("astravdi").await;
    cut.cut();
    // Long enough for the client's own reconnection attempts to be refused and given up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    cut.restore();
    let restored = std::time::Instant::now();
    loop {
        let mut c = app.connect().await;
        let reply = c.rpc("auth_token", json!({"token": token})).await;
        if reply["name"] == "response" && c.rpc("tasks", json!({})).await["name"] == "response" {
            break;
        }
        assert!(
            restored.elapsed() < Duration::from_secs(20),
            "still refused 20 s after the restore: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut actor, _) = app.login("astravdi").await;
    let id = actor
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await["args"]["task"]["id"]
        .clone();
    let frames = drain(&mut listener, Duration::from_secs(5)).await;
    assert!(
        frames.iter().any(|f| f["args"]["id"] == id),
        "the socket from before the outage gets the new task's events: {frames:?}"
    );
}

/// The cases of this file, for `cases()` in main.rs.
pub(crate) fn cases() -> Vec<(&'static str, crate::Needs, crate::harness::Case)> {
    use crate::Needs::*;
    vec![
        (
            "failover::a_task_ended_elsewhere_while_its_instance_was_cut_off_stays_ended",
            Redis,
            || Box::pin(a_task_ended_elsewhere_while_its_instance_was_cut_off_stays_ended()),
        ),
        (
            "failover::a_connection_refused_by_authentication_is_made_anew",
            Redis,
            || Box::pin(a_connection_refused_by_authentication_is_made_anew()),
        ),
        (
            "failover::a_store_outage_as_the_machine_is_assigned_is_ridden_out",
            RedisServer,
            || Box::pin(a_store_outage_as_the_machine_is_assigned_is_ridden_out()),
        ),
    ]
}
