//! Defaults that fit the machine: the connection limit follows the open-file limit.

use std::time::Duration;

use crate::helpers::*;

fn serve_args(data: &std::path::Path) -> Vec<String> {
    ["serve", "--listen", "127.0.0.1:0", "--data-dir"]
        .into_iter()
        .map(String::from)
        .chain([data.to_str().unwrap().to_owned()])
        .collect()
}

/// The soft and hard open-file limits of a running process, from /proc.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[tokio::test]
async fn without_a_setting_a_20000_file_limit_gives_room_for_more_than_15000_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let args = serve_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server =
        ServerProcess::start_command(with_file_limit(server_command(&args), 1024, 20_000)).await;
    // The soft limit was raised to the hard one, and the figure was logged once.
    let pid = server.child.id().unwrap();
    assert_eq!(open_file_limits(pid), (20_000, 20_000));
    let log = server.log.lock().unwrap().clone();
    let line = log
        .lines()
        .find(|l| l.contains("connection limit from the open-file limit"))
        .unwrap_or_else(|| panic!("no connection-limit line in:\n{log}"));
    assert!(line.contains("max_connections=18976"), "{line}");
    assert!(line.contains("raised_from=1024"), "{line}");
}

#[tokio::test]
async fn a_small_file_limit_gives_503_past_its_connections_not_a_failing_accept() {
    let dir = tempfile::tempdir().unwrap();
    let args = serve_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // 200 files: a quarter kept for the store and friends, 150 connections.
    let server =
        ServerProcess::start_command(with_file_limit(server_command(&args), 200, 200)).await;
    let url = format!("ws://{}/", server.addr);
    let mut open = Vec::new();
    for _ in 0..150 {
        open.push(tokio_tungstenite::connect_async(&url).await.unwrap().0);
    }
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503 for connection 151, got {other:?}"),
    }
    // The server still works: a freed slot is taken again.
    open.pop();
    let mut ok = false;
    for _ in 0..50 {
        if tokio_tungstenite::connect_async(&url).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a slot frees up after a client leaves");
}

#[tokio::test]
async fn asking_for_more_connections_than_the_file_limit_allows_stops_start_up_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = serve_args(dir.path());
    args.extend(["--max-connections".into(), "5000".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = with_file_limit(server_command(&args), 2000, 2000)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_connections = 5000 needs 5500 open files")
            && err.contains("may open 2000")
            && err.contains("at most 1500"),
        "{err}"
    );
    // A lower setting is kept as it is.
    let mut args = serve_args(dir.path());
    args.extend(["--max-connections".into(), "1000".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server =
        ServerProcess::start_command(with_file_limit(server_command(&args), 2000, 2000)).await;
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("max_connections=1000"), "{log}");
}
