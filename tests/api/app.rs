//! `Application` and `ServerHandle` themselves: what main and every `TestApp` rely on.

use std::time::Duration;

use poolgate::Application;

use crate::helpers::*;

#[tokio::test]
async fn a_stopped_application_returns_from_its_run_and_frees_its_port() {
    let app = Application::build(demo_config()).await.unwrap();
    let (server, data) = (app.handle(), app.state().config.data_dir.clone());
    assert_eq!(server.local_addr(), app.local_addr());
    assert_ne!(
        server.local_addr().port(),
        0,
        "the bound port, not the asked one"
    );
    let run = tokio::spawn(app.run_until_stopped());
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", server.local_addr()))
        .await
        .unwrap();
    let mut signed_in = Client::from(ws);
    signed_in.auth("astravdi", PASSWORD).await;
    server.stop();
    server.stop(); // stopping twice is stopping once
    tokio::time::timeout(REPLY_TIMEOUT, server.stopped())
        .await
        .expect("stopped resolves");
    let (code, _) = signed_in.expect_close(REPLY_TIMEOUT).await;
    assert_eq!(code, 1001, "its sockets were closed on the way");
    tokio::time::timeout(REPLY_TIMEOUT, run)
        .await
        .expect("the run returns")
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_millis(100), server.stopped())
        .await
        .expect("and keeps resolving at once");
    std::net::TcpListener::bind(server.local_addr()).expect("the port is free again");
    let _ = std::fs::remove_dir_all(data);
}

#[tokio::test]
async fn an_application_dropped_unrun_stops_what_building_started() {
    let app = Application::build(demo_config()).await.unwrap();
    let (server, state) = (app.handle(), app.state().clone());
    drop(app);
    assert!(state.shutdown.is_cancelled());
    tokio::time::timeout(REPLY_TIMEOUT, server.stopped())
        .await
        .expect("the background work ends");
    std::net::TcpListener::bind(server.local_addr()).expect("the port is free again");
    let _ = std::fs::remove_dir_all(&state.config.data_dir);
}

#[tokio::test]
async fn a_config_is_validated_before_anything_is_bound() {
    // The same non-zero port twice: validation says why, before a bind could fail on it.
    let port = free_port();
    let mut config = demo_config();
    config.listen = ([127, 0, 0, 1], port).into();
    config.metrics_listen = Some(config.listen);
    let data = config.data_dir.clone();
    let err = Application::build(config).await.err().expect("refused");
    assert!(
        format!("{err:#}").contains("metrics_listen: must differ from listen"),
        "{err:#}"
    );
    assert!(!data.exists(), "nothing written either");
}
