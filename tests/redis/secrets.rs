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
    drop(app);
    stop_redis(&mut redis, port).await;
}

/// The cases of this file, for `cases()` in main.rs.
pub(crate) fn cases() -> Vec<(&'static str, crate::Needs, crate::harness::Case)> {
    use crate::Needs::*;
    vec![(
        "secrets::the_redis_password_comes_from_a_file_and_is_required",
        RedisServer,
        || Box::pin(the_redis_password_comes_from_a_file_and_is_required()),
    )]
}
