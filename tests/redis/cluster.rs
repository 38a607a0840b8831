//! The cases on a Redis Cluster beyond the backend suite: two `poolgate serve` processes on one
//! cluster, a master killed mid-task (a replica takes over), an instance killed mid-task.

use std::time::Duration;

use serde_json::json;

use crate::cluster_server::{Cluster, cluster_url};
use crate::helpers::*;
use crate::instances::{
    act_as_one, taken_over_when_killed, task_on_a_heard_on_b, tasks_load, two_instances_on,
};
use crate::redis_server::LoginRetrying;

pub async fn two_instances_on_a_cluster_act_as_one() {
    let (_dir, a, b) = two_instances_on(&cluster_url(), "two", 20.0, "task_lease = 1", |c| c).await;
    act_as_one(a, b).await;
}

pub async fn an_instance_killed_mid_task_is_taken_over_on_a_cluster() {
    // Slow steps: the task is still running when its instance dies.
    let (_dir, a, b) = two_instances_on(&cluster_url(), "kill", 0.2, "task_lease = 1", |c| c).await;
    let (_on_a, mut on_b, id) = task_on_a_heard_on_b(&a, &b).await;
    // B ends it within two task_lease periods (plus the sweep's half period and a margin).
    taken_over_when_killed(a, &mut on_b, &id, Duration::from_secs(4)).await;
}

/// A master of a 3 × 2 cluster is killed (`kill -9`) while clients work: requests that reach
/// it before a replica takes over get 503 and the same requests succeed afterwards; what was
/// accepted before (the session, a finished task and the machine it assigned, a running task)
/// is all there after; a socket signed in before gets its events after.
pub async fn a_master_killed_mid_task_costs_only_the_requests_in_flight() {
    let cluster = Cluster::start(3, 1);
    let app = TestApp::spawn_with(|c| {
        c.state = cluster.url().parse().unwrap();
        fast_sim(c, OK, OK);
    })
    .await;
    let astravdi = app.state.auth.users.by_name("astravdi").unwrap().id;

    // Accepted before the kill: a finished step 1 (an assignment), a session.
    let (mut client, token) = app.login("astravdi").await;
    let first = client
        .rpc("pool_request", json!({"pool_id": POOL_WIN_1}))
        .await["args"]["task"]["id"]
        .clone();
    let (seen, _) = client.follow(&first).await;
    assert_eq!(seen.last().unwrap(), "COMPLETED", "{seen:?}");
    let step_2 = client
        .rpc("connect_info", json!({"pool_id": POOL_WIN_1}))
        .await["args"]["task"]["id"]
        .clone();
    let (seen, _) = client.follow(&step_2).await;
    assert_eq!(seen.last().unwrap(), "COMPLETED", "{seen:?}");
    let machine = client
        .rpc("connect_info", json!({"pool_id": POOL_WIN_1}))
        .await["args"]["connection"]["id"]
        .clone();
    assert!(machine.is_string(), "a machine is assigned: {machine}");
    // Signed in before the kill and only listening: its user's channel was subscribed on the
    // master that dies, and must be subscribed again on the replica that takes over.
    let (mut listener, _) = app.login("astravdi").await;

    // The master holding astravdi's keys (their bucket) dies.
    let victim = cluster
        .master_holding(&format!("*user_sessions*{astravdi}"))
        .expect("a master holds astravdi's session set");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(app.login("astravdi").await.0);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tasks_load(clients, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Mid-task: a step 1 running (0.25 s) as the master dies.
    let running = client
        .rpc("pool_request", json!({"pool_id": POOL_ASTRA_2}))
        .await["args"]["task"]["id"]
        .clone();
    assert!(running.is_string(), "a task: {running}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.kill_node(victim);
    cluster.wait_until_ok_without(victim);

    // The same requests succeed again.
    let (mut probe, _) = app.login_retrying("astravdi").await;
    let mut back = false;
    for _ in 0..100 {
        if probe.rpc("tasks", json!({})).await["name"] == "response" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the service resumes once a replica took over");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let (mut ok, mut unavailable) = (0, 0);
    for h in load {
        let (o, u) = h.await.unwrap();
        ok += o;
        unavailable += u;
    }
    assert!(
        ok > 0 && unavailable > 0,
        "ok {ok}, unavailable {unavailable}"
    );

    // The task that was running ends (its last writes waited for the new master).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let reply = probe.rpc("task", json!({"task_id": running})).await;
        let status = reply["args"]["status"].as_str().unwrap_or("").to_owned();
        if status != "PENDING" && status != "RUNNING" && !status.is_empty()
            || std::time::Instant::now() > deadline
        {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, "COMPLETED", "the task running through the failover");

    // Nothing accepted is lost: the task, the machine, the session.
    let task = probe.rpc("task", json!({"task_id": first})).await;
    assert_eq!(task["args"]["status"], "COMPLETED", "{task}");
    let again = probe
        .rpc("connect_info", json!({"pool_id": POOL_WIN_1}))
        .await;
    assert_eq!(
        again["args"]["connection"]["id"], machine,
        "the same machine: {again}"
    );
    let mut resumed = app.connect().await;
    assert_eq!(
        resumed.rpc("auth_token", json!({"token": token})).await["name"],
        "response"
    );

    // Events resume for the socket from before the kill.
    let id = probe
        .rpc("pool_request", json!({"pool_id": POOL_WIN_2}))
        .await["args"]["task"]["id"]
        .clone();
    assert!(id.is_string(), "a task: {id}");
    let (seen, _) = listener.follow(&id).await;
    assert!(
        seen.last()
            .is_some_and(|s| s != "PENDING" && s != "RUNNING"),
        "pushed to the end after the failover: {seen:?}"
    );
    drop(cluster);
}

/// A replica is down (its master serves on) and the masters' script caches are empty (a
/// master restarted, or a replica promoted that never loaded the scripts): requests still
/// succeed. The client would load a missing script on every node of the topology, and the
/// dead replica is still in it, so the load must not be what the request waits for.
pub async fn a_dead_replica_does_not_keep_scripts_from_running() {
    let cluster = Cluster::start(3, 1);
    let app = TestApp::spawn_with(|c| {
        c.state = cluster.url().parse().unwrap();
        fast_sim(c, OK, OK);
    })
    .await;
    let (_warm, _) = app.login("astravdi").await;
    let masters = cluster.masters();
    let replica = cluster
        .ports
        .iter()
        .copied()
        .find(|p| !masters.contains(p))
        .expect("a replica");
    cluster.kill_node(replica);
    for port in &masters {
        assert!(Cluster::cli(*port, &["script", "flush"]).contains("OK"));
    }
    for name in ["astravdi", "user-2"] {
        let mut c = app.connect().await;
        let reply = c
            .rpc("auth", json!({"username": name, "password": PASSWORD}))
            .await;
        assert_eq!(reply["name"], "response", "{name}: {reply}");
        let listed = c.rpc("tasks", json!({})).await;
        assert_eq!(listed["name"], "response", "{name}: {listed}");
    }
    drop(cluster);
}

/// `state = "redis://…"` naming one node of a cluster would answer MOVED to most keys: both
/// `check-config --connect` and `serve` refuse it, saying what to write instead.
pub async fn a_redis_url_naming_a_cluster_node_is_refused_with_what_to_write() {
    let seeds = cluster_url();
    let node = seeds
        .trim_start_matches("redis-cluster://")
        .rsplit('@')
        .next()
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    let url = format!("redis://{node}");
    let dir = tempfile::tempdir().unwrap();
    let config = crate::durability::config_on(dir.path(), &url);
    let (ok, err) = crate::durability::check_config_connect(&config);
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!("state: {url} is a node of a Redis Cluster"))
            && err.contains("redis-cluster://host:port"),
        "{err}"
    );
    let mut served = demo_config();
    served.state = url.parse().unwrap();
    served.data_dir = dir.path().join("served");
    let refused = poolgate::AppState::new(served)
        .await
        .err()
        .expect("serve refuses it");
    assert!(
        format!("{refused:#}").contains("is a node of a Redis Cluster"),
        "{refused:#}"
    );
}

/// `/healthz` asks each master: with one master of three down (and the cluster serving the
/// others' slots), it answers 200 "degraded" naming it; with every master down, 503.
pub async fn healthz_says_which_masters_are_unreachable() {
    let cluster = Cluster::start(3, 0);
    for port in &cluster.ports {
        Cluster::cli(
            *port,
            &["config", "set", "cluster-require-full-coverage", "no"],
        );
    }
    let app = TestApp::spawn_with(|c| {
        c.state = cluster.url().parse().unwrap();
    })
    .await;
    let health = || async {
        let resp = reqwest::get(app.url("/healthz")).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    };
    assert_eq!(health().await, (200, "ok\n".into()));
    let dead = cluster.ports[0];
    cluster.kill_node(dead);
    let mut seen = (0, String::new());
    for _ in 0..100 {
        seen = health().await;
        if seen.1.starts_with("degraded") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.0, 200, "{seen:?}");
    assert!(
        seen.1.contains(&format!(
            "state store: 1 of 3 cluster masters unreachable (127.0.0.1:{dead})"
        )),
        "{seen:?}"
    );
    for port in &cluster.ports[1..] {
        cluster.kill_node(*port);
    }
    let mut seen = (0, String::new());
    for _ in 0..100 {
        seen = health().await;
        if seen.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, (503, "state store unreachable\n".into()));
}

/// A master is killed (`kill -9`) and started again empty (it keeps its cluster config file,
/// so it rejoins as the node it was, without its keys) while the master holding the signed-in
/// user's keys is stopped (SIGSTOP) for a few seconds — its replica takes over — and then
/// continued, with clients working throughout. A cluster client was once seen wedged for over
/// two minutes after this (commands never sent). The instance answers `pools` and
/// `pool_request` within seconds of the SIGCONT, and the socket signed in before the faults
/// gets a new task's events.
pub async fn a_master_restarted_empty_while_another_is_stopped_leaves_no_wedge() {
    let cluster = Cluster::start(3, 1);
    let app = TestApp::spawn_with(|c| {
        c.state = cluster.url().parse().unwrap();
        fast_sim(c, OK, OK);
    })
    .await;
    let astravdi = app.state.auth.users.by_name("astravdi").unwrap().id;
    let (mut listener, _) = app.login("astravdi").await;
    let (mut actor, _) = app.login("astravdi").await;
    let home = cluster
        .master_holding(&format!("*user_sessions*{astravdi}"))
        .expect("a master holds astravdi's session set");
    // Another master: the user's session outlives its emptying.
    let emptied = *cluster.masters().iter().find(|p| **p != home).unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(app.login("astravdi").await.0);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tasks_load(clients, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;

    cluster.kill_node(emptied);
    let frozen = cluster.stop_node(home);
    cluster.restart_node(emptied);
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.continue_node(&frozen);
    let continued = std::time::Instant::now();
    serves_and_pushes(&mut actor, &mut listener, continued).await;
    stop.cancel();
    for h in load {
        h.await.unwrap();
    }
    drop(cluster);
}

/// A master of three is stopped (SIGSTOP) long enough that every PING the cluster client
/// sends to the masters times out, round after round — what a wedged client looks like: the
/// store's watchdog makes the cluster connection anew (once) and subscribes everything again
/// on it. After the SIGCONT the instance serves, and a socket signed in before gets events.
pub async fn a_cluster_connection_that_keeps_timing_out_is_made_anew() {
    let cluster = Cluster::start(3, 0);
    let app = TestApp::spawn_with(|c| {
        c.state = cluster.url().parse().unwrap();
        fast_sim(c, OK, OK);
    })
    .await;
    let router = app.state.store.router().expect("a routing store");
    let (mut listener, _) = app.login("astravdi").await;
    let (mut actor, _) = app.login("astravdi").await;
    let frozen = cluster.stop_node(cluster.ports[0]);
    let stopped = std::time::Instant::now();
    while router.counts().renewed == 0 {
        if stopped.elapsed() > Duration::from_secs(15) {
            cluster.continue_node(&frozen);
            panic!("the cluster connection was not made anew within 15 s of timeouts");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("made anew {:?} after the SIGSTOP", stopped.elapsed());
    cluster.continue_node(&frozen);
    let continued = std::time::Instant::now();
    serves_and_pushes(&mut actor, &mut listener, continued).await;
    assert_eq!(
        router.counts().renewed,
        1,
        "made anew once, not again once it answers"
    );
    drop(cluster);
}

/// Within 20 s of `since`, `actor` gets answers to `pools` and `pool_request`, and `listener`
/// (the same user) gets the requested task's events. A task asked for while the bus was
/// still being subscribed again may end unheard (a socket catches up only on the tasks it
/// holds and the active ones), so each attempt asks for a new one.
async fn serves_and_pushes(actor: &mut Client, listener: &mut Client, since: std::time::Instant) {
    let within = Duration::from_secs(20);
    let pools = [POOL_WIN_1, POOL_WIN_2, POOL_ASTRA_2];
    let mut last = serde_json::Value::Null;
    for attempt in 0.. {
        assert!(
            since.elapsed() < within,
            "not serving {within:?} after the faults ended: {last}"
        );
        let listed = actor.rpc("pools", json!({})).await;
        if listed["name"] != "response" {
            last = listed;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        last = actor
            .rpc(
                "pool_request",
                json!({"pool_id": pools[attempt % pools.len()]}),
            )
            .await;
        let id = last["args"]["task"]["id"].clone();
        if !id.is_string() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if crate::cluster_failover::event_for(listener, &id, Duration::from_secs(3))
            .await
            .is_some()
        {
            eprintln!("served and pushed {:?} after the faults", since.elapsed());
            return;
        }
    }
}

/// The cases of this file, for `cases()` in main.rs.
pub(crate) fn cases() -> Vec<(&'static str, crate::Needs, crate::harness::Case)> {
    use crate::Needs::*;
    vec![
        (
            "cluster::two_instances_on_a_cluster_act_as_one",
            RedisCluster,
            || Box::pin(two_instances_on_a_cluster_act_as_one()),
        ),
        (
            "cluster::a_master_killed_mid_task_costs_only_the_requests_in_flight",
            RedisClusterServers,
            || Box::pin(a_master_killed_mid_task_costs_only_the_requests_in_flight()),
        ),
        (
            "cluster::a_master_restarted_empty_while_another_is_stopped_leaves_no_wedge",
            RedisClusterServers,
            || Box::pin(a_master_restarted_empty_while_another_is_stopped_leaves_no_wedge()),
        ),
        (
            "cluster::a_cluster_connection_that_keeps_timing_out_is_made_anew",
            RedisClusterServers,
            || Box::pin(a_cluster_connection_that_keeps_timing_out_is_made_anew()),
        ),
        (
            "cluster::a_dead_replica_does_not_keep_scripts_from_running",
            RedisClusterServers,
            || Box::pin(a_dead_replica_does_not_keep_scripts_from_running()),
        ),
        (
            "cluster::an_instance_killed_mid_task_is_taken_over_on_a_cluster",
            RedisCluster,
            || Box::pin(an_instance_killed_mid_task_is_taken_over_on_a_cluster()),
        ),
        (
            "cluster::a_redis_url_naming_a_cluster_node_is_refused_with_what_to_write",
            RedisCluster,
            || Box::pin(a_redis_url_naming_a_cluster_node_is_refused_with_what_to_write()),
        ),
        (
            "cluster::healthz_says_which_masters_are_unreachable",
            RedisClusterServers,
            || Box::pin(healthz_says_which_masters_are_unreachable()),
        ),
    ]
}
