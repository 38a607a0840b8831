//! Token expiry, idle timeout and the sign-in grace period, with sub-second settings.

use std::time::Duration;

use serde_json::json;
use tokio::time::sleep;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[tokio::test]
async fn a_token_dies_after_the_ttl_without_activity() {
    let app = TestApp::spawn_with(|c| c.token_ttl = Duration::from_millis(600)).await;
    let (mut c, token) = app.login("astravdi").await;
    sleep(Duration::from_millis(900)).await;
    let reply = c.call("events", "subscribe", json!("task")).await;
    assert_eq!(error_code(&reply), 401);
    assert!(
        reply["args"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    // Now unauthenticated: the next call is a plain 401 and the token is dead everywhere.
    let mut other = app.connect().await;
    assert_eq!(
        error_code(&other.rpc("auth_token", json!({"token": token})).await),
        401
    );
    // Signing in again works on the same socket.
    c.auth("astravdi", PASSWORD).await;
}

#[tokio::test]
async fn every_successful_message_slides_the_window() {
    let app = TestApp::spawn_with(|c| c.token_ttl = Duration::from_millis(800)).await;
    let (mut c, _) = app.login("astravdi").await;
    for _ in 0..6 {
        sleep(Duration::from_millis(300)).await;
        let reply = c.call("events", "subscribe", json!("task")).await;
        assert_eq!(reply["name"], "response", "{reply}");
    }
}

#[tokio::test]
async fn failing_messages_do_not_slide_the_window() {
    let app = TestApp::spawn_with(|c| c.token_ttl = Duration::from_millis(1500)).await;
    let (mut c, _) = app.login("astravdi").await;
    for _ in 0..3 {
        sleep(Duration::from_millis(400)).await;
        let reply = c.call("events", "subscribe", json!("bogus")).await;
        assert_eq!(error_code(&reply), 400);
    }
    sleep(Duration::from_millis(500)).await;
    let reply = c.call("events", "subscribe", json!("task")).await;
    assert_eq!(error_code(&reply), 401);
}

#[tokio::test]
async fn a_silent_connection_is_closed_with_4000_naming_the_idle_timeout() {
    let app = TestApp::spawn_with(|c| c.idle_timeout = Duration::from_millis(500)).await;
    let (mut c, _) = app.login("astravdi").await;
    let (code, reason) = c.expect_close(Duration::from_secs(3)).await;
    assert_eq!(code, 4000);
    assert!(reason.contains("idle timeout"), "{reason}");
}

#[tokio::test]
async fn client_pings_count_as_activity() {
    let app = TestApp::spawn_with(|c| c.idle_timeout = Duration::from_millis(600)).await;
    let (mut c, _) = app.login("astravdi").await;
    for _ in 0..5 {
        sleep(Duration::from_millis(250)).await;
        c.send(Message::Ping(vec![1].into())).await;
    }
    assert_eq!(c.rpc("identify", json!({})).await["name"], "response");
}

#[tokio::test]
async fn a_connection_that_never_signs_in_is_closed_after_the_grace_period() {
    let app = TestApp::spawn_with(|c| c.auth_grace = Duration::from_millis(500)).await;
    let mut c = app.connect().await;
    // identify does not count as signing in.
    assert_eq!(c.rpc("identify", json!({})).await["name"], "response");
    let (code, reason) = c.expect_close(Duration::from_secs(3)).await;
    assert_eq!(code, 4001);
    assert!(reason.contains("authentication timeout"), "{reason}");
}

#[tokio::test]
async fn a_signed_in_connection_is_not_closed_by_the_grace_period() {
    let app = TestApp::spawn_with(|c| c.auth_grace = Duration::from_millis(300)).await;
    let (mut c, _) = app.login("astravdi").await;
    sleep(Duration::from_millis(700)).await;
    assert_eq!(c.rpc("identify", json!({})).await["name"], "response");
}
