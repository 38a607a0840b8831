//! A Redis that would lose writes on a restart (no append-only file) is warned about when
//! serving and named by `check-config --connect`, on one Redis and on every cluster node.

use std::time::Duration;

use crate::cluster_server::Cluster;
use crate::helpers::*;
use crate::redis_server::*;

/// `config_file` pointed at `state`, its data directory under `dir`.
pub fn config_on(dir: &std::path::Path, state: &str) -> std::path::PathBuf {
    let path = config_file(dir, 1.0, &format!("state = {state:?}"));
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "data_dir = \"poolgate-data\"",
        &format!("data_dir = {:?}", dir.join("data")),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `poolgate check-config --connect`: whether it passed, and what it said on stderr.
pub fn check_config_connect(config: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_poolgate"))
        .args(["check-config", "--connect"])
        .arg(config)
        .env_remove("POOLGATE_JWT_SECRET")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A Redis that keeps no append-only file loses what it acknowledged since its last snapshot
/// when it restarts: `check-config --connect` warns of it (naming the `state` line, and still
/// passing) and `serve` logs it once at start; a Redis with `appendonly yes` gets neither.
pub async fn a_redis_without_an_append_only_file_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let (volatile, durable) = (free_port(), free_port());
    let mut volatile_redis = spawn_redis_with(volatile, "--save '' --appendonly no");
    let mut durable_redis = spawn_redis_with(
        durable,
        &format!("--save '' --appendonly yes --dir {}", dir.path().display()),
    );
    for (port, warned) in [(volatile, true), (durable, false)] {
        let here = dir.path().join(port.to_string());
        std::fs::create_dir(&here).unwrap();
        let config = config_on(&here, &format!("redis://127.0.0.1:{port}"));
        let (ok, err) = check_config_connect(&config);
        assert!(ok, "a warning does not fail the check: {err}");
        let line = std::fs::read_to_string(&config)
            .unwrap()
            .lines()
            .position(|l| l.starts_with("state = "))
            .unwrap()
            + 1;
        let expected = format!(
            "warning: {}:{line}:1: state: redis://127.0.0.1:{port} keeps no append-only file",
            config.display()
        );
        assert_eq!(err.contains(&expected), warned, "{expected}\nin:\n{err}");
        assert_eq!(err.contains("append-only"), warned, "{err}");

        let server = ServerProcess::start(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .await;
        let mut seen = Vec::new();
        for _ in 0..50 {
            seen = server.log_lines("append-only");
            if !seen.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if warned {
            assert_eq!(seen.len(), 1, "{seen:?}");
            assert!(
                seen[0].contains("WARN")
                    && seen[0].contains(&format!("redis://127.0.0.1:{port} keeps no append-only"))
                    && seen[0].contains("appendonly yes"),
                "{seen:?}"
            );
        } else {
            assert!(seen.is_empty(), "{seen:?}");
        }
    }
    stop_redis(&mut volatile_redis, volatile).await;
    stop_redis(&mut durable_redis, durable).await;
}

/// On a cluster, `check-config --connect` names every node — masters and replicas, since a
/// replica becomes a master on failover — that keeps no append-only file, and only those; and
/// a seed node that does not answer.
pub async fn check_config_names_every_cluster_node_without_an_append_only_file() {
    let cluster = Cluster::start(3, 1);
    let durable = cluster.ports[0];
    Cluster::cli(durable, &["config", "set", "appendonly", "yes"]);
    // The nodes checked are those CLUSTER SLOTS lists, as whichever node the client asks sees
    // them: a replica is listed once that node has heard its replication offset (some seconds
    // after the cluster is created), so wait until every node lists all six.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cluster.ports.iter().all(|asked| {
        let slots = Cluster::cli(*asked, &["cluster", "slots"]);
        cluster
            .ports
            .iter()
            .all(|p| slots.lines().any(|l| l.trim() == p.to_string()))
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "replicas listed in CLUSTER SLOTS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    // One seed more, where nothing listens: said too, and not a failure either.
    let silent = free_port();
    let config = config_on(dir.path(), &format!("{},127.0.0.1:{silent}", cluster.url()));
    let (ok, err) = check_config_connect(&config);
    assert!(ok, "a warning does not fail the check: {err}");
    assert!(
        err.lines().any(|l| l.starts_with("warning:")
            && l.contains(&format!("seed node 127.0.0.1:{silent} did not answer"))),
        "{err}"
    );
    let warning = err
        .lines()
        .find(|l| l.starts_with("warning:") && l.contains("append-only"))
        .unwrap_or_else(|| panic!("a warning in:\n{err}"));
    assert_eq!(cluster.ports.len(), 6);
    for port in &cluster.ports {
        assert_eq!(
            warning.contains(&format!("127.0.0.1:{port}")),
            *port != durable,
            "{port}: {warning}"
        );
    }
    drop(cluster);
}

/// The cases of this file, for `cases()` in main.rs.
pub(crate) fn cases() -> Vec<(&'static str, crate::Needs, crate::harness::Case)> {
    use crate::Needs::*;
    vec![
        (
            "durability::a_redis_without_an_append_only_file_is_warned_about",
            RedisServer,
            || Box::pin(a_redis_without_an_append_only_file_is_warned_about()),
        ),
        (
            "durability::check_config_names_every_cluster_node_without_an_append_only_file",
            RedisClusterServers,
            || Box::pin(check_config_names_every_cluster_node_without_an_append_only_file()),
        ),
    ]
}
