//! What the server lets others see: its state files (private whatever the umask).

use serde_json::json;

use crate::helpers::*;

#[cfg(unix)]
#[tokio::test]
async fn state_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A data directory and a secret left world-readable (by hand, or by an older version).
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let secret = data.join("jwt-secret");
    std::fs::write(&secret, hex::encode([7u8; 32])).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();

    // umask 000: everything created without an explicit mode would be 0666 / 0777.
    let mut command = tokio::process::Command::new("sh");
    command
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_poolgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stderr(std::process::Stdio::piped())
        .env("RUST_LOG", "poolgate=info")
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    let server = ServerProcess::start_command(command).await;
    // Write to the store: sessions and tasks go through the WAL.
    let mut c = server.connect().await;
    c.auth("astravdi", PASSWORD).await;
    let reply = c.rpc("pool_request", json!({"pool_id": POOL_WIN_1})).await;
    assert_eq!(reply["name"], "response", "{reply}");

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    let mut names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for expected in [
        "jwt-secret",
        "poolgate.lock",
        "poolgate.sqlite3",
        "poolgate.sqlite3-shm",
        "poolgate.sqlite3-wal",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    for name in &names {
        assert_eq!(mode(&data.join(name)), 0o600, "{name} (of {names:?})");
    }
}
