//! What a Redis Cluster keeps of a single Redis and what it changes: key names on one Redis
//! are as before the cluster layout, `state_prefix` spreads users over the masters, the admin
//! RPCs that scan every master work, and a cluster URL never shows its password.

use poolgate::domain::{Task, TaskKind};
use poolgate::store::{self, StateUrl};
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::cluster_server::{Cluster, cluster_url};
use crate::helpers::*;
use crate::routing::other_instance;

/// A cluster URL whose password has a `/` or `?` in it unencoded (base64 secrets do) does not
/// parse — and its error must not name the seed node with the password in clear
/// (`invalid seed node redis://app:Zm9v/YmFy@a:1`): a redaction that cuts the authority at the
/// first `/` or `?` finds no `@` and masks nothing, while the node list is split on the last
/// `@` and so builds exactly such a node URL. The same mistake with
/// `redis://` says "invalid redis URL" without the URL. (The error goes to the log and to the
/// terminal of `check-config`.)
pub async fn a_cluster_url_that_does_not_parse_never_shows_its_password() {
    for (url, secret) in [
        (
            "redis-cluster://app:Zm9v/YmFy@10.0.0.5:7000,10.0.0.6:7000",
            "Zm9v/YmFy",
        ),
        ("redis-cluster://app:pa?ss@10.0.0.5:7000", "pa?ss"),
        ("redis://app:Zm9v/YmFy@10.0.0.5:7000", "Zm9v/YmFy"),
    ] {
        match url.parse::<StateUrl>() {
            Ok(parsed) => {
                for shown in [parsed.to_string(), format!("{parsed:?}")] {
                    assert!(!shown.contains(secret), "{url}: shown as {shown}");
                }
            }
            Err(e) => {
                let shown = format!("{e:#}");
                assert!(
                    !shown.contains(secret),
                    "the error for {url} shows the password: {shown}"
                );
            }
        }
    }
}

/// `state_prefix` is put in front of every key, and Redis hashes
/// the *first* `{…}` of a key: with `"{poolgate}"` every key would sit in one slot (the
/// cluster spreading nothing, silently), with an unbalanced `"pool{gate"` every script failed
/// with CROSSSLOT. A brace in the prefix is now refused on a cluster (by the config's
/// validation and by the store itself), and a plain prefix spreads users over the masters.
pub async fn a_state_prefix_with_a_brace_is_refused_and_a_plain_one_spreads() {
    let cluster = Cluster::start(3, 0);
    let url = cluster.url();
    for prefix in ["pool{gate", "{poolgate}", "pool}gate"] {
        let mut config = demo_config();
        config.state = url.parse().unwrap();
        config.state_prefix = prefix.to_owned();
        let err = config.validate().expect_err(prefix).to_string();
        assert!(err.contains("state_prefix"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let (sink, _bus) = mpsc::unbounded_channel();
        let opened = store::open(&url.parse().unwrap(), None, prefix, dir.path(), sink).await;
        assert!(opened.is_err(), "the store refuses state_prefix {prefix:?}");
    }
    // On one Redis a brace harms nothing: still taken (existing deployments keep working).
    let mut config = demo_config();
    config.state = "redis://127.0.0.1:6379".parse().unwrap();
    config.state_prefix = "{poolgate}".into();
    config.validate().unwrap();

    // A plain prefix: 64 users' tasks land on more than one master.
    let prefix = format!("pg-{}", Uuid::new_v4().simple());
    let (s, _dir) = other_instance(&url, &prefix).await;
    for _ in 0..64 {
        let task = Task::new(TaskKind::PoolExpand, Uuid::new_v4(), Uuid::new_v4());
        assert!(s.task_create(None, &task).await.unwrap());
    }
    let holding: Vec<u16> = cluster
        .masters()
        .into_iter()
        .filter(|p| {
            !Cluster::cli(*p, &["--scan", "--pattern", &format!("{prefix}:task:*")])
                .trim()
                .is_empty()
        })
        .collect();
    assert_eq!(
        holding.len(),
        3,
        "64 users' tasks spread over the three masters"
    );
    drop(cluster);
}

/// The admin RPCs that scan every master or touch a user's bucket —
/// `admin_sessions`, `admin_tasks`, `admin_revoke` — answer on a cluster (no CROSSSLOT), and a
/// revoked token is refused.
pub async fn admin_listing_and_revoking_work_on_a_cluster() {
    let app = TestApp::spawn_with(|c| {
        c.state = cluster_url().parse().unwrap();
        fast_sim(c, OK, OK);
    })
    .await;
    let (mut admin, _) = app.login("astravdi").await;
    let (_u1, token) = app.login("user-2").await;
    let (_u2, _) = app.login("user-2").await;
    let sessions = admin.rpc("admin_sessions", json!({})).await;
    assert_eq!(sessions["name"], "response", "{sessions}");
    let of_user2 = sessions["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["username"] == "user-2")
        .count();
    assert_eq!(of_user2, 2, "{sessions}");
    let tasks = admin.rpc("admin_tasks", json!({})).await;
    assert_eq!(tasks["name"], "response", "{tasks}");
    let revoked = admin
        .rpc("admin_revoke", json!({"username": "user-2"}))
        .await;
    assert_eq!(revoked["args"]["revoked_sessions"], 2, "{revoked}");
    let mut again = app.connect().await;
    let reply = again.rpc("auth_token", json!({"token": token})).await;
    assert_eq!(error_code(&reply), 401, "{reply}");
}

/// On one Redis the key names are those from before the cluster layout, so an existing deployment finds its records after the upgrade.
pub async fn single_redis_key_names_are_unchanged() {
    let url = crate::redis_server::redis_url();
    let prefix = format!("layout-{}", Uuid::new_v4().simple());
    let (s, _dir) = other_instance(&url, &prefix).await;
    let (user, pool) = (Uuid::new_v4(), Uuid::new_v4());
    let mut task = Task::new(TaskKind::PoolExpand, user, pool);
    assert!(s.task_create(None, &task).await.unwrap());
    task.start();
    s.task_update(&task).await.unwrap();
    let out = std::process::Command::new("redis-cli")
        .args(["-u", &url, "--scan", "--pattern", &format!("{prefix}:*")])
        .output()
        .unwrap();
    let mut keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches(&format!("{prefix}:")).to_owned())
        .collect();
    keys.sort();
    let mut expected = vec![
        "active_tasks".to_owned(),
        format!("latest:{user}:{pool}:{}", task.kind.as_str()),
        format!("task:{}", task.id),
        format!("user_tasks:{user}"),
    ];
    expected.sort();
    assert_eq!(keys, expected);
}

/// The cases of this file, for `cases()` in main.rs.
pub(crate) fn cases() -> Vec<(&'static str, crate::Needs, crate::harness::Case)> {
    use crate::Needs::*;
    vec![
        (
            "cluster_keys::single_redis_key_names_are_unchanged",
            // redis-cli lists the keys.
            RedisServer,
            || Box::pin(single_redis_key_names_are_unchanged()),
        ),
        (
            "cluster_keys::admin_listing_and_revoking_work_on_a_cluster",
            RedisCluster,
            || Box::pin(admin_listing_and_revoking_work_on_a_cluster()),
        ),
        (
            "cluster_keys::a_state_prefix_with_a_brace_is_refused_and_a_plain_one_spreads",
            RedisClusterServers,
            || Box::pin(a_state_prefix_with_a_brace_is_refused_and_a_plain_one_spreads()),
        ),
        (
            "cluster_keys::a_cluster_url_that_does_not_parse_never_shows_its_password",
            RedisCluster,
            || Box::pin(a_cluster_url_that_does_not_parse_never_shows_its_password()),
        ),
    ]
}
