//! Two instances on one store racing for the last warm machine: exactly one step 1 gets it,
//! the other a machine of its own, and no machine is held twice — on one Redis and on a
//! Redis Cluster.

use std::collections::HashSet;

use futures_util::future::{Either, select};
use poolgate::config::SecretString;
use serde_json::json;
use uuid::Uuid;

use crate::cluster_server::cluster_url;
use crate::helpers::*;
use crate::redis_server::redis_url;
use poolgate_test_common::warm::*;

/// Two instances (in this process, on `state` under one `state_prefix`) whose pool-win-1 keeps
/// one warm machine; a provisioner shared by both that makes the first machine at once and
/// holds every later one back (refills too) until told. Users `racer-a` and `racer-b` ask at
/// once, one on each instance.
async fn two_instances_race_for_the_last_warm_machine(state: &str) {
    let recorder = Recorder::gated(1);
    let prefix = format!("warm-race-{}", Uuid::new_v4().simple());
    let config = || {
        let mut c = warm_config(state, 1);
        c.state_prefix = prefix.clone();
        c.jwt_secret = Some(SecretString("w".repeat(40)));
        let plain = c
            .users
            .iter()
            .find(|u| u.username == "user-2")
            .unwrap()
            .clone();
        for name in ["racer-a", "racer-b"] {
            let mut u = plain.clone();
            u.username = name.into();
            // The same ids on both instances: one user each, whichever instance they use.
            u.id = Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes());
            c.users.push(u);
            c.pools[0].users.push(name.into());
        }
        c
    };
    let a = spawn_warm(config(), &recorder).await;
    let b = spawn_warm(config(), &recorder).await;
    settle(&a).await;
    settle(&b).await;
    let warm = warm_held(&a).await;
    assert_eq!(warm.len(), 1, "{warm:?}");
    assert_eq!(recorder.expands().len(), 1, "one fill for both instances");

    let (mut ca, _) = a.login("racer-a").await;
    let (mut cb, _) = b.login("racer-b").await;
    let ask = json!({"pool_id": POOL_WIN_1});
    let (ra, rb) = tokio::join!(
        ca.rpc("pool_request", ask.clone()),
        cb.rpc("pool_request", ask.clone())
    );
    let (ta, tb) = (
        ra["args"]["task"]["id"].clone(),
        rb["args"]["task"]["id"].clone(),
    );
    let follow_a = tokio::spawn(async move { ca.follow(&ta).await.0 });
    let follow_b = tokio::spawn(async move { cb.follow(&tb).await.0 });
    // The winner completes from the warm set while every expand is held back.
    let (first, second) = match select(follow_a, follow_b).await {
        Either::Left((first, second)) | Either::Right((first, second)) => (first, second),
    };
    assert_eq!(first.unwrap(), ["COMPLETED"], "the warm machine, at once");
    recorder.open();
    assert_eq!(
        second.await.unwrap().last().unwrap(),
        "COMPLETED",
        "a machine of its own"
    );

    let mut given = Vec::new();
    for name in ["racer-a", "racer-b"] {
        let user = Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes());
        let held = a.state.store.assignment_get(user, pool()).await.unwrap();
        given.push(held.expect("both hold a machine").machine.id);
    }
    assert_eq!(
        given.iter().filter(|id| **id == warm[0].id).count(),
        1,
        "exactly one got the warm machine: {given:?}"
    );
    let for_users: Vec<String> = recorder
        .expands()
        .iter()
        .filter(|r| !r.warm)
        .map(|r| r.username.clone())
        .collect();
    assert_eq!(for_users.len(), 1, "one expand for a user: {for_users:?}");

    // The refill (held back until now) lands; nothing is anywhere twice.
    settle(&a).await;
    settle(&b).await;
    let refilled = warm_held(&a).await;
    assert_eq!(refilled.len(), 1);
    let everywhere: Vec<Uuid> = given
        .iter()
        .copied()
        .chain(refilled.iter().map(|m| m.id))
        .collect();
    assert_eq!(
        everywhere.iter().collect::<HashSet<_>>().len(),
        everywhere.len(),
        "no machine held twice: {everywhere:?}"
    );
}

pub async fn two_instances_on_one_redis_race_for_the_last_warm_machine() {
    two_instances_race_for_the_last_warm_machine(&redis_url()).await
}

pub async fn two_instances_on_a_cluster_race_for_the_last_warm_machine() {
    two_instances_race_for_the_last_warm_machine(&cluster_url()).await
}

pub(crate) fn cases() -> Vec<(&'static str, crate::Needs, crate::harness::Case)> {
    use crate::Needs::*;
    vec![
        (
            "warm::two_instances_on_one_redis_race_for_the_last_warm_machine",
            Redis,
            || Box::pin(two_instances_on_one_redis_race_for_the_last_warm_machine()),
        ),
        (
            "warm::two_instances_on_a_cluster_race_for_the_last_warm_machine",
            RedisCluster,
            || Box::pin(two_instances_on_a_cluster_race_for_the_last_warm_machine()),
        ),
    ]
}
