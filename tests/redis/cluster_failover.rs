//! What a Redis Cluster's failures cost: a planned failover (`CLUSTER FAILOVER`, for
//! maintenance or a node upgrade) keeps a user's events coming and the read cache right, and
//! a dead master costs only the requests for its slots.

use std::time::{Duration, Instant};

use poolgate::domain::{Task, TaskKind};

use serde_json::json;
use uuid::Uuid;

use crate::cluster_server::Cluster;
use crate::helpers::*;
use crate::routing::other_instance;

/// The port of a replica of the master on `master`.
fn replica_of(master: u16) -> u16 {
    let id = Cluster::cli(master, &["cluster", "myid"]).trim().to_owned();
    let nodes = Cluster::cli(master, &["cluster", "nodes"]);
    let line = nodes
        .lines()
        .find(|l| l.split(' ').nth(3) == Some(id.as_str()) && l.contains("slave"))
        .unwrap_or_else(|| panic!("a replica of {master} in:\n{nodes}"));
    let addr = line.split(' ').nth(1).unwrap();
    addr.split(['@'])
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A planned failover (`CLUSTER FAILOVER` on the replica, as for maintenance or a rolling
/// upgrade of the nodes): waits until the replica is master and every node says ok.
fn planned_failover(master: u16) -> u16 {
    let replica = replica_of(master);
    let answer = Cluster::cli(replica, &["cluster", "failover"]);
    assert!(answer.contains("OK"), "CLUSTER FAILOVER: {answer}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let promoted = Cluster::cli(replica, &["info", "replication"]).contains("role:master");
        let demoted = Cluster::cli(master, &["info", "replication"]).contains("role:slave");
        let ok = [replica, master]
            .iter()
            .all(|p| Cluster::cli(*p, &["cluster", "info"]).contains("cluster_state:ok"));
        if promoted && demoted && ok {
            return replica;
        }
        assert!(
            Instant::now() < deadline,
            "the planned failover did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The next task event for `id` within `within`, skipping others (None if none came).
pub(crate) async fn event_for(
    client: &mut Client,
    id: &serde_json::Value,
    within: Duration,
) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, client.recv()).await.ok()?;
        if frame["namespace"] == "events" && &frame["args"]["id"] == id {
            return frame["args"]["status"].as_str().map(str::to_owned);
        }
    }
}

/// A planned failover of the master holding a user's slot (`CLUSTER FAILOVER` on its replica:
/// maintenance, a node upgrade) keeps the user's events coming. It drops no connection, so no
/// `Disconnection` push reaches the store; but the demoted master *unsubscribes* every client
/// from the sharded channels of the slots it lost (Redis 7 sends `sunsubscribe` pushes), and
/// the redis crate's subscription tracker drops the channel on that push (so it is not
/// re-subscribed on the new master either). A push loop that ignored `SUnsubscribe` left the
/// watch confirmed, and the user's sockets on this instance got no event until they all
/// disconnected.
pub async fn a_planned_failover_keeps_a_users_events_coming() {
    let cluster = Cluster::start(3, 1);
    let app = TestApp::spawn_with(|c| {
        c.state = cluster.url().parse().unwrap();
        fast_sim(c, OK, OK);
    })
    .await;
    let astravdi = app.state.auth.users.by_name("astravdi").unwrap().id;
    let router = app.state.store.router().unwrap();
    let (mut listener, _) = app.login("astravdi").await;
    assert!(router.epoch(astravdi).is_some(), "watched and confirmed");

    // Before: events arrive.
    let (mut actor, _) = app.login("astravdi").await;
    let id = actor
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await["args"]["task"]["id"]
        .clone();
    assert!(
        event_for(&mut listener, &id, Duration::from_secs(5))
            .await
            .is_some(),
        "an event before the failover"
    );

    let master = cluster
        .master_holding(&format!("*user_sessions*{astravdi}"))
        .expect("a master holds astravdi's session set");
    let promoted = tokio::task::spawn_blocking(move || planned_failover(master))
        .await
        .unwrap();
    // Give the client time to follow (MOVED, slot refresh, re-subscriptions).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // After: the same user's socket gets the events of a new task.
    let (mut actor, _) = app.login("astravdi").await;
    let reply = actor
        .rpc("pool_request", json!({"pool_id": POOL_WIN_2}))
        .await;
    let id = reply["args"]["task"]["id"].clone();
    assert!(id.is_string(), "a task: {reply}");
    let seen = event_for(&mut listener, &id, Duration::from_secs(5)).await;
    assert!(
        seen.is_some(),
        "no event reached the socket signed in before a planned failover of its user's master \
         (watch still confirmed: {:?}; sharded channels subscribed on the new master: {:?})",
        router.epoch(astravdi),
        Cluster::cli(promoted, &["pubsub", "shardchannels", "*"]),
    );
    drop(cluster);
}

/// The same planned failover, seen by the read cache: another instance writes a task of a user
/// whose recent tasks this instance has cached. Were the write's announcement (SPUBLISH from
/// the script, on the new master) not heard here while the watch stayed confirmed, the cache
/// would serve the list without the new task (until `MAX_AGE`, 60 s), and "a write on one
/// instance is never read stale on another once announced" would not hold.
pub async fn a_planned_failover_does_not_leave_the_read_cache_serving_stale_lists() {
    read_after_another_instance_wrote(true).await
}

/// The control for the case above — the same steps without the failover.
pub async fn without_a_failover_the_read_cache_follows_another_instances_write() {
    read_after_another_instance_wrote(false).await
}

async fn read_after_another_instance_wrote(failover: bool) {
    let cluster = Cluster::start(3, 1);
    let url = cluster.url();
    let prefix = format!("stale-{}", Uuid::new_v4().simple());
    let app = TestApp::spawn_with(|c| {
        c.state = url.parse().unwrap();
        c.state_prefix = prefix.clone();
        fast_sim(c, OK, OK);
    })
    .await;
    let (b, _dir) = other_instance(&url, &prefix).await;
    let user = app.state.auth.users.by_name("astravdi").unwrap().id;
    let (mut client, _) = app.login("astravdi").await;
    let listed = client.rpc("tasks", json!({})).await;
    assert_eq!(listed["name"], "response", "{listed}");

    let master = cluster
        .master_holding(&format!("*user_sessions*{user}"))
        .expect("a master holds the user's session set");
    if failover {
        tokio::task::spawn_blocking(move || planned_failover(master))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Fill the cache after the failover (this read goes to the new master).
    let before = client.rpc("tasks", json!({})).await;
    assert_eq!(before["name"], "response", "{before}");

    // Another instance writes a task of the user (announced by its script).
    let mut task = Task::new(
        TaskKind::PoolExpand,
        user,
        Uuid::parse_str(POOL_ASTRA_2).unwrap(),
    );
    task.start();
    assert!(b.task_create(None, &task).await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let after = client.rpc("tasks", json!({})).await;
    let text = after.to_string();
    assert!(
        text.contains(&task.id.to_string()),
        "a task written (and announced) by another instance 500 ms ago is missing from the \
         list served after a planned failover: {after}"
    );
    drop(cluster);
}

/// A master killed: requests for its slots answer 503 within the
/// client's timeouts rather than hanging, and a user on another master is served meanwhile.
pub async fn a_request_to_a_dead_master_answers_503_in_seconds_and_others_are_served() {
    let cluster = Cluster::start(3, 1);
    let app = TestApp::spawn_with(|c| {
        c.state = cluster.url().parse().unwrap();
        fast_sim(c, OK, OK);
        // Users with random ids (so some are on another master than astravdi).
        let template = c
            .users
            .iter()
            .find(|u| u.username == "user-2")
            .unwrap()
            .clone();
        for i in 0..8 {
            let mut u = template.clone();
            u.username = format!("probe-{i}");
            u.id = Uuid::new_v4();
            c.users.push(u);
        }
    })
    .await;
    let astravdi = app.state.auth.users.by_name("astravdi").unwrap().id;
    let (_a, _) = app.login("astravdi").await;
    let victim = cluster
        .master_holding(&format!("*user_sessions*{astravdi}"))
        .unwrap();
    // A user whose slot is on another master (signed in to find out).
    let mut live_user = None;
    let names: Vec<String> = (0..8).map(|i| format!("probe-{i}")).collect();
    for name in names {
        let id = app.state.auth.users.by_name(&name).unwrap().id;
        let mut c = app.connect().await;
        if c.rpc("auth", json!({"username": name, "password": PASSWORD}))
            .await["name"]
            != "response"
        {
            continue;
        }
        if cluster.master_holding(&format!("*user_sessions*{id}")) != Some(victim) {
            live_user = Some(name);
            break;
        }
    }
    let live_user = live_user.expect("a demo user on another master");
    let (mut on_dead, _) = app.login("astravdi").await;
    let (mut on_live, _) = app.login(&live_user).await;
    cluster.kill_node(victim);
    let (dead, live) = tokio::join!(
        async {
            let mut out = Vec::new();
            for _ in 0..2 {
                let started = Instant::now();
                let reply =
                    tokio::time::timeout(Duration::from_secs(30), on_dead.rpc("tasks", json!({})))
                        .await
                        .expect("an answer within 30 s");
                out.push((
                    started.elapsed(),
                    reply["name"] == "response" || error_code(&reply) == 503,
                ));
            }
            out
        },
        async {
            let started = Instant::now();
            let reply = on_live.rpc("tasks", json!({})).await;
            (started.elapsed(), reply)
        }
    );
    eprintln!("dead master: {dead:?}; live master: {:?}", live.0);
    for (took, ok) in &dead {
        assert!(*ok, "a response or 503");
        assert!(*took < Duration::from_secs(8), "took {took:?}");
    }
    assert_eq!(live.1["name"], "response", "{}", live.1);
    assert!(
        live.0 < Duration::from_secs(2),
        "a user on a live master waited {:?}",
        live.0
    );
    drop(cluster);
}

/// The cases of this file, for `cases()` in main.rs.
pub(crate) fn cases() -> Vec<(&'static str, crate::Needs, crate::harness::Case)> {
    use crate::Needs::*;
    vec![
        (
            "cluster_failover::a_request_to_a_dead_master_answers_503_in_seconds_and_others_are_served",
            RedisClusterServers,
            || Box::pin(a_request_to_a_dead_master_answers_503_in_seconds_and_others_are_served()),
        ),
        (
            "cluster_failover::a_planned_failover_keeps_a_users_events_coming",
            RedisClusterServers,
            || Box::pin(a_planned_failover_keeps_a_users_events_coming()),
        ),
        (
            "cluster_failover::a_planned_failover_does_not_leave_the_read_cache_serving_stale_lists",
            RedisClusterServers,
            || Box::pin(a_planned_failover_does_not_leave_the_read_cache_serving_stale_lists()),
        ),
        (
            "cluster_failover::without_a_failover_the_read_cache_follows_another_instances_write",
            RedisClusterServers,
            || Box::pin(without_a_failover_the_read_cache_follows_another_instances_write()),
        ),
    ]
}
