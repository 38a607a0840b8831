//! The Redis password: read from a file, never from the settings, and required by a Redis
//! that asks for one.

use crate::helpers::*;
use crate::redis_server::*;

pub async fn the_redis_password_comes_from_a_file_and_is_required() {
    let port = free_port();
    let mut redis = spawn_redis_with(
        port,
        "--save '' --appendonly no --requirepass correct-horse-battery",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis.pass");
    std::fs::write(&file, "correct-horse-battery\n").unwrap();
    let app = TestApp::spawn_with(|c| {
        c.state = format!("redis://127.0.0.1:{port}").parse().unwrap();
        c.state_password_file = Some(file.clone());
    })
    .await;
    let (_c, _) = app.login("astravdi").await;

    let mut without = demo_config();
    without.state = format!("redis://127.0.0.1:{port}").parse().unwrap();
    assert!(
        poolgate::AppState::new(without).await.is_err(),
        "no password, no service"
    );

    let empty = dir.path().join("empty.pass");
    std::fs::write(&empty, "\n").unwrap();
    let mut blank = demo_config();
    blank.state = format!("redis://127.0.0.1:{port}").parse().unwrap();
    blank.state_password_file = Some(empty);
    let err = poolgate::AppState::new(blank).await.err().expect("refused");
    assert!(err.to_string().contains("empty"), "{err}");

    // check-config --connect (and serve at start) say what to do, at the `state` line: with
    // no password, and with a wrong one.
    let wrong = dir.path().join("wrong.pass");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let config = dir.path().join("p.toml");
    let what = "Redis wants a password, or refused the one given: set the one it expects in \
                state_password_file or POOLGATE_REDIS_PASSWORD";
    for password in [String::new(), format!("state_password_file = {wrong:?}\n")] {
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nstate = \"redis://127.0.0.1:{port}\"\n{password}",
                dir.path().join("data")
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_poolgate"))
            .args(["check-config", "--connect"])
            .arg(&config)
            .env_remove("POOLGATE_REDIS_PASSWORD")
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        let at = format!(
            "{}:2:1: state: cannot reach redis://127.0.0.1:{port}: ",
            config.display()
        );
        assert!(
            err.lines().any(|l| l.starts_with(&at) && l.ends_with(what)),
            "expected {at}…{what}\nin:\n{err}"
        );
        assert!(!err.contains("not-the-password"), "never quoted: {err}");
    }
    drop(app);
    stop_redis(&mut redis, port).await;
}

/// Instances sharing a store sign REST JWTs with one key: one started with another key (a
/// data directory's own generated secret, say) refuses to start and names jwt_secret_file;
/// one with the same key starts.
pub async fn instances_sharing_a_store_must_sign_jwts_with_one_key() {
    let prefix = format!("jwtkey-{}", uuid::Uuid::new_v4().simple());
    let config = |secret: &str| {
        let mut c = demo_config();
        c.state = redis_url().parse().unwrap();
        c.state_prefix = prefix.clone();
        c.jwt_secret = Some(poolgate::config::SecretString(secret.repeat(40)));
        c
    };
    let _first = TestApp::spawn_config(config("a")).await;
    let other = poolgate::AppState::new(config("b")).await.unwrap();
    let refused = format!("{:#}", other.start().await.unwrap_err());
    assert!(
        refused.starts_with("jwt_secret_file: ") && refused.contains("fingerprint"),
        "{refused}"
    );
    other.shutdown.cancel();
    let same = poolgate::AppState::new(config("a")).await.unwrap();
    same.start().await.unwrap();
    same.shutdown.cancel();
}

/// The cases of this file, for `cases()` in main.rs.
pub(crate) fn cases() -> Vec<(&'static str, crate::Needs, crate::harness::Case)> {
    use crate::Needs::*;
    vec![
        (
            "secrets::the_redis_password_comes_from_a_file_and_is_required",
            RedisServer,
            || Box::pin(the_redis_password_comes_from_a_file_and_is_required()),
        ),
        (
            "secrets::instances_sharing_a_store_must_sign_jwts_with_one_key",
            Redis,
            || Box::pin(instances_sharing_a_store_must_sign_jwts_with_one_key()),
        ),
    ]
}
