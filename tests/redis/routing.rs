//! Per-user bus routing: an instance hears only the users with a socket on it, and what it
//! does not hear it must not get wrong. A token signed out on another instance is refused at
//! once where its user has no socket (a session of a user not heard here is checked against
//! the store), and a task that ended while the bus was cut off is not caught up as still
//! running (a watch confirmed again after a lost connection catches its user's sockets up from
//! the store). Also the tools the other cases use to cut an instance off ([`CutOff`]) and to
//! run a second instance's store ([`other_instance`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use poolgate::domain::{Task, TaskKind, TaskStatus};
use poolgate::store::{self, BusEvent, Store};
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::helpers::*;
use crate::redis_server::*;

/// `redis-cli` against the test Redis.
fn cli(url: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-u")
        .arg(url)
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An ACL user of its own on the shared test Redis, so one instance can be cut off (its
/// connection killed and refused) while the others carry on: a network partition of one
/// instance, a Redis proxy failing over, `CLIENT KILL` by an operator.
pub struct CutOff {
    admin_url: String,
    user: String,
    pub url: String,
}

impl CutOff {
    pub fn new() -> CutOff {
        let admin_url = redis_url();
        let user = format!("pg-cutoff-{}", Uuid::new_v4().simple());
        let password = "cutoff-pw";
        cli(
            &admin_url,
            &[
                "ACL",
                "SETUSER",
                &user,
                "on",
                &format!(">{password}"),
                "~*",
                "&*",
                "+@all",
            ],
        );
        let hostport = admin_url
            .trim_start_matches("redis://")
            .trim_end_matches('/');
        let url = format!("redis://{user}:{password}@{hostport}");
        CutOff {
            admin_url,
            user,
            url,
        }
    }

    /// Kills the instance's connections and refuses new ones.
    pub fn cut(&self) {
        cli(&self.admin_url, &["ACL", "SETUSER", &self.user, "off"]);
        cli(&self.admin_url, &["CLIENT", "KILL", "USER", &self.user]);
    }

    pub fn restore(&self) {
        cli(&self.admin_url, &["ACL", "SETUSER", &self.user, "on"]);
    }
}

impl Drop for CutOff {
    fn drop(&mut self) {
        let _ = std::process::Command::new("redis-cli")
            .args(["-u", &self.admin_url, "ACL", "DELUSER", &self.user])
            .output();
    }
}

/// A bare store on the shared Redis or cluster at `url`: "another instance" that writes and
/// publishes (announces its writes).
pub async fn other_instance(url: &str, prefix: &str) -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (sink, bus) = mpsc::unbounded_channel();
    std::mem::forget(bus);
    let s = store::open(&url.parse().unwrap(), None, prefix, dir.path(), sink)
        .await
        .unwrap();
    (s, dir)
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every frame a client receives within `window`.
pub async fn drain(client: &mut Client, window: Duration) -> Vec<serde_json::Value> {
    let mut frames = Vec::new();
    let deadline = Instant::now() + window;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return frames;
        }
        match tokio::time::timeout(left, client.recv()).await {
            Ok(frame) => frames.push(frame),
            Err(_) => return frames,
        }
    }
}

/// A session signed out on B (`auth_clear`: "the token is revoked server-side, so it is
/// refused on every connection") is still accepted by A, for up to `session_flush` (10 s
/// here, the maximum the config allows), when A holds the session in its token cache but has
/// no socket of the user: the `SessionRevoked` event now goes to the user's channel only, and A
/// does not hear it. Before routing every instance heard it on the global channel at once.
/// A's cache keeps the session for `token_ttl` after its last socket there closed, so this is
/// the ordinary case of a user who moved from one instance to another (a reconnect through the
/// load balancer), or a stolen token replayed on another instance after the victim signs out.
pub async fn a_session_signed_out_on_one_instance_is_refused_at_once_on_another() {
    let prefix = format!("revoked-{}", Uuid::new_v4().simple());
    let edit = |c: &mut poolgate::Config| {
        c.state = redis_url().parse().unwrap();
        c.state_prefix = prefix.clone();
        // Instances sharing a store sign JWTs with one key (else the second refuses to start).
        c.jwt_secret = Some(poolgate::config::SecretString(
            "routing-test-jwt-key-".repeat(2),
        ));
        c.session_flush = Duration::from_secs(10);
    };
    let a = TestApp::spawn_with(edit).await;
    let b = TestApp::spawn_with(edit).await;
    let router_a = a.state.store.router().expect("Redis routes per user");

    // The user signs in on A, then leaves A (the session stays in A's token cache).
    let (on_a, token) = a.login("user-2").await;
    drop(on_a);
    wait_until("A stops watching user-2", Duration::from_secs(5), || {
        router_a.counts().watched == 0
    })
    .await;
    assert_eq!(a.state.auth.tokens.cached(), 1, "A still holds the session");

    // On B: resume, then sign out.
    let mut on_b = b.connect().await;
    let reply = on_b.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(reply["name"], "response", "{reply}");
    let reply = on_b.rpc("auth_clear", json!({})).await;
    assert_eq!(reply["name"], "response", "{reply}");
    // More than the bus needs to carry an event between two processes on one host.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut again = a.connect().await;
    let reply = again.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(
        reply["name"], "error",
        "a token signed out on B 300 ms ago is still accepted on A: {reply}"
    );
    assert_eq!(error_code(&reply), 401, "{reply}");
}

/// One instance's bus connection drops (A is cut off from Redis for a moment) while a task of
/// a user with a socket on A ends on another instance. The router re-subscribes the user's
/// channel once A is back (and the cache starts over), but the event hub is never caught up:
/// `EventHub::prepare`'s snapshot is read only for a *new* watch, and `subscribe` merges a
/// snapshot by adding tasks, never by removing the ones it shows ended. So the task stays
/// RUNNING in A's hub for as long as any socket of the user stays on A: the socket from before
/// the gap is never told it ended, and every later socket of the user on A is "caught up" with
/// RUNNING for a task Redis has held COMPLETED all along.
pub async fn a_task_that_ended_during_a_bus_gap_is_not_replayed_as_running_afterwards() {
    let prefix = format!("bus-gap-{}", Uuid::new_v4().simple());
    let cut = CutOff::new();
    let a = TestApp::spawn_with(|c| {
        c.state = cut.url.parse().unwrap();
        c.state_prefix = prefix.clone();
    })
    .await;
    let (b, _dir) = other_instance(&redis_url(), &prefix).await;
    let router_a = a.state.store.router().unwrap();
    let user = a.state.auth.users.by_name("user-2").unwrap().id;

    let (mut before_gap, _) = a.login("user-2").await;
    assert!(router_a.epoch(user).is_some(), "watched and confirmed");

    // B drives a task of user-2 (holding its lease, so nobody takes it over).
    let mut task = Task::new(TaskKind::PoolExpand, user, Uuid::new_v4());
    task.start();
    assert!(b.task_create(None, &task).await.unwrap());
    assert!(
        b.lease_acquire(task.id, "b", Duration::from_secs(600))
            .await
            .unwrap()
    );
    b.publish(BusEvent::Task {
        task: Box::new(task.clone()),
        notify: true,
    });
    let event = before_gap.next_event().await;
    assert_eq!(
        (event["id"].as_str(), event["status"].as_str()),
        (Some(task.id.to_string().as_str()), Some("RUNNING"))
    );

    // A loses Redis; meanwhile B completes the task.
    cut.cut();
    wait_until(
        "A notices the lost connection",
        Duration::from_secs(5),
        || router_a.epoch(user).is_none(),
    )
    .await;
    task.finish(TaskStatus::Completed, None);
    b.task_update(&task).await.unwrap();
    b.publish(BusEvent::Task {
        task: Box::new(task.clone()),
        notify: true,
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cut.restore();
    wait_until(
        "A re-subscribes user-2's channel",
        Duration::from_secs(15),
        || router_a.epoch(user).is_some(),
    )
    .await;
    assert_eq!(
        b.task_get(task.user_id, task.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        TaskStatus::Completed
    );

    // A new socket of the user on A: its catch-up must not say RUNNING.
    let (mut after_gap, _) = a.login("user-2").await;
    let caught_up: Vec<_> = drain(&mut after_gap, Duration::from_millis(700))
        .await
        .into_iter()
        .filter(|f| f["name"] == "task" && f["args"]["id"] == task.id.to_string())
        .map(|f| f["args"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        caught_up.iter().all(|s| s != "RUNNING" && s != "PENDING"),
        "a socket opened after the gap is caught up with {caught_up:?} for a task Redis holds \
         COMPLETED (A's hub: {:?})",
        a.state
            .events
            .active_tasks(user)
            .iter()
            .map(|t| t.status)
            .collect::<Vec<_>>()
    );
    // And the socket from before the gap learns, some time, that the task ended.
    let told: Vec<_> = drain(&mut before_gap, Duration::from_secs(3))
        .await
        .into_iter()
        .filter(|f| f["name"] == "task" && f["args"]["id"] == task.id.to_string())
        .map(|f| f["args"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        told.iter().any(|s| s == "COMPLETED"),
        "the socket from before the gap was never told the task ended: {told:?}"
    );
}

/// The cases of this file, for `cases()` in main.rs.
pub(crate) fn cases() -> Vec<(&'static str, crate::Needs, crate::harness::Case)> {
    use crate::Needs::*;
    vec![
        (
            "routing::a_session_signed_out_on_one_instance_is_refused_at_once_on_another",
            Redis,
            || Box::pin(a_session_signed_out_on_one_instance_is_refused_at_once_on_another()),
        ),
        (
            "routing::a_task_that_ended_during_a_bus_gap_is_not_replayed_as_running_afterwards",
            // redis-cli (which comes with redis-server) cuts the instance off with an ACL.
            RedisServer,
            || Box::pin(a_task_that_ended_during_a_bus_gap_is_not_replayed_as_running_afterwards()),
        ),
    ]
}
