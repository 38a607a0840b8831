//! Envelopes, hostile frames, limits and shutdown.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::helpers::*;

#[tokio::test]
async fn identify_answers_before_sign_in() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    let reply = c.rpc("identify", json!({})).await;
    assert_eq!(reply["name"], "response");
    assert_eq!(reply["namespace"], "rpc");
    assert_eq!(reply["args"]["type"], "server");
    assert_eq!(reply["args"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(reply["args"]["hostname"].is_string());
}

#[tokio::test]
async fn other_methods_before_sign_in_are_401() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    let reply = c.call("events", "subscribe", json!("task")).await;
    assert_eq!(error_code(&reply), 401);
    assert_eq!(reply["namespace"], "events");
}

#[tokio::test]
async fn unknown_method_and_namespace_are_404_with_the_id() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    let reply = c.rpc("no_such_method", json!({})).await;
    assert_eq!(error_code(&reply), 404);
    let reply = c.call("nope", "auth", json!({})).await;
    assert_eq!(error_code(&reply), 404);
    assert_eq!(reply["namespace"], "nope");
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_socket_stays_usable() {
    let app = TestApp::spawn_with(|c| {
        c.max_frame_bytes = 256 * 1024;
        c.max_message_bytes_pre_auth = 256 * 1024;
    })
    .await;
    let mut c = app.connect().await;
    let cases: &[(&str, Value)] = &[
        ("{not json", Value::Null),
        ("[1,2,3]", Value::Null),
        ("\"just a string\"", Value::Null),
        ("42", Value::Null),
        (r#"{"namespace":"rpc","name":"identify"}"#, Value::Null),
        (
            r#"{"namespace":"rpc","name":"identify","id":{"a":1}}"#,
            Value::Null,
        ),
        (
            r#"{"namespace":"rpc","name":"identify","id":[1]}"#,
            Value::Null,
        ),
        (r#"{"namespace":5,"name":"identify","id":"a"}"#, json!("a")),
        (r#"{"namespace":"rpc","name":null,"id":7}"#, json!(7)),
        (
            r#"{"namespace":"rpc","name":"auth","id":8,"args":{"username":1,"password":"x"}}"#,
            json!(8),
        ),
        (
            r#"{"namespace":"rpc","name":"auth","id":9,"args":[]}"#,
            json!(9),
        ),
        (
            r#"{"namespace":"rpc","name":"auth_token","id":"z","args":{}}"#,
            json!("z"),
        ),
        (
            r#"{"namespace":"rpc","name":"otp_verify","id":1e400,"args":{}}"#,
            Value::Null,
        ),
    ];
    for (text, id) in cases {
        c.send_text(*text).await;
        let reply = c.recv().await;
        assert_eq!(error_code(&reply), 400, "for {text}: {reply}");
        assert_eq!(&reply["id"], id, "for {text}");
        assert!(reply["args"]["message"].as_str().unwrap().len() > 5);
    }
    c.send_text("[".repeat(100_000)).await;
    assert_eq!(error_code(&c.recv().await), 400);
    let reply = c.rpc("identify", json!({})).await;
    assert_eq!(reply["name"], "response");
}

#[tokio::test]
async fn envelope_without_args_is_its_own_args_and_numeric_ids_are_echoed() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    c.send_text(
        json!({"namespace":"rpc","name":"auth","id":12,"username":"astravdi","password":PASSWORD})
            .to_string(),
    )
    .await;
    let reply = c.recv().await;
    assert_eq!(reply["name"], "response", "{reply}");
    assert_eq!(reply["id"], 12);
}

#[tokio::test]
async fn binary_frames_get_400_and_the_socket_stays_usable() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    c.send(Message::Binary(vec![0u8, 1, 2, 255].into())).await;
    let reply = c.recv().await;
    assert_eq!(error_code(&reply), 400);
    assert!(
        reply["args"]["message"]
            .as_str()
            .unwrap()
            .contains("Binary")
    );
    assert_eq!(c.rpc("identify", json!({})).await["name"], "response");
}

#[tokio::test]
async fn oversized_frames_get_413_and_the_socket_stays_usable() {
    let app = TestApp::spawn_with(|c| c.max_frame_bytes = 1024).await;
    // Signed in: before, a message over 64 KiB would close the socket.
    let (mut c, _) = app.login("astravdi").await;
    let big = json!({"namespace":"rpc","name":"identify","id":1,"args":"x".repeat(2000)});
    c.send_text(big.to_string()).await;
    let reply = c.recv().await;
    assert_eq!(error_code(&reply), 413);
    assert!(reply["args"]["message"].as_str().unwrap().contains("1024"));
    // A 1 MiB frame, well under the transport ceiling, too.
    c.send_text("y".repeat(1 << 20)).await;
    assert_eq!(error_code(&c.recv().await), 413);
    assert_eq!(c.rpc("identify", json!({})).await["name"], "response");
}

#[tokio::test]
async fn frames_beyond_the_transport_ceiling_are_refused_and_closed_1009() {
    let app = TestApp::spawn_with(|c| {
        c.max_frame_bytes = 1024;
        c.max_message_bytes = 64 * 1024;
    })
    .await;
    let mut c = app.connect().await;
    c.send_text("z".repeat(100 * 1024)).await;
    assert_eq!(error_code(&c.recv().await), 413);
    let (code, _) = c.expect_close(REPLY_TIMEOUT).await;
    assert_eq!(code, 1009);
    // The server itself is fine.
    let mut other = app.connect().await;
    assert_eq!(other.rpc("identify", json!({})).await["name"], "response");
}

#[tokio::test]
async fn invalid_utf8_gets_an_error_then_a_1007_close() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    let bytes = vec![b'{', 0xff, 0xfe, b'}'];
    c.send(Message::Frame(Frame::message(
        bytes,
        OpCode::Data(Data::Text),
        true,
    )))
    .await;
    let reply = c.recv().await;
    assert_eq!(error_code(&reply), 400);
    assert!(reply["args"]["message"].as_str().unwrap().contains("UTF-8"));
    let (code, _) = c.expect_close(REPLY_TIMEOUT).await;
    assert_eq!(code, 1007);
}

#[tokio::test]
async fn a_websocket_protocol_error_closes_the_rpc_and_the_status_socket_alike_with_1002() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = TestApp::spawn().await;
    let (rpc, _) = app.login("astravdi").await;
    let jwt = app.jwt("astravdi").await;
    let mut req = format!(
        "ws://{}/api/v2/pools/ws/7e1459c2-3e19-4c3d-98f5-8344d44ae6f4/",
        app.addr
    )
    .into_client_request()
    .unwrap();
    req.headers_mut()
        .insert("cookie", format!("JWT {jwt}").parse().unwrap());
    let (status, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    for (socket, mut c) in [("rpc", rpc), ("status", Client::from(status))] {
        // A reserved bit set without an extension that defines it (RFC 6455 §5.2).
        let mut frame = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
        frame.header_mut().rsv1 = true;
        c.send(Message::Frame(frame)).await;
        let (code, reason) = c.expect_close(REPLY_TIMEOUT).await;
        assert_eq!(code, 1002, "{socket}: {reason}");
        assert!(reason.contains("protocol error"), "{socket}: {reason}");
    }
}

#[tokio::test]
async fn a_flood_of_hostile_frames_does_not_disturb_another_client() {
    let app = TestApp::spawn().await;
    let (mut good, _) = app.login("astravdi").await;
    let mut bad = app.connect().await;
    let hostile = [
        "{".to_owned(),
        "null".to_owned(),
        r#"{"namespace":"rpc","name":"auth","id":1,"args":{"username":[],"password":{}}}"#
            .to_owned(),
        "9".repeat(5000),
        r#"{"namespace":"rpc","name":"auth_token","id":2,"args":{"token":""}}"#.to_owned(),
    ];
    for i in 0..2000 {
        bad.send_text(hostile[i % hostile.len()].clone()).await;
    }
    for _ in 0..2000 {
        assert_eq!(bad.recv().await["name"], "error");
    }
    let reply = good.call("events", "subscribe", json!(["task"])).await;
    assert_eq!(reply["name"], "response", "{reply}");
    assert_eq!(reply["args"], json!({"subscribe": ["task"]}));
}

#[tokio::test]
async fn subscribe_and_unsubscribe_echo_the_names_and_reject_unknown_events() {
    let app = TestApp::spawn().await;
    let (mut c, _) = app.login("astravdi").await;
    let reply = c.call("events", "subscribe", json!("task")).await;
    assert_eq!(reply["args"], json!({"subscribe": "task"}));
    let reply = c.call("events", "unsubscribe", json!(["task"])).await;
    assert_eq!(reply["args"], json!({"unsubscribe": ["task"]}));
    let reply = c.call("events", "subscribe", json!("dispatcher")).await;
    assert_eq!(error_code(&reply), 400);
    assert!(reply["args"]["message"].as_str().unwrap().contains("task"));
    let reply = c.call("events", "subscribe", json!({"x": 1})).await;
    assert_eq!(error_code(&reply), 400);
}

#[tokio::test]
async fn connections_past_the_limit_get_503_before_the_upgrade() {
    let app = TestApp::spawn_with(|c| c.max_connections = Some(2)).await;
    let _a = app.connect().await;
    let _b = app.connect().await;
    let err = tokio_tungstenite::connect_async(app.ws_url())
        .await
        .expect_err("third connection is refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    drop(_a);
    // The permit comes back once the server notices the socket is gone.
    let mut ok = false;
    for _ in 0..50 {
        if tokio_tungstenite::connect_async(app.ws_url()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a slot frees up after a client leaves");
}

#[tokio::test]
async fn plain_http_on_the_websocket_path_explains_itself() {
    let app = TestApp::spawn().await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 426"), "{body}");
    assert!(body.contains("WebSocket"));
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001_and_run_returns() {
    let app = TestApp::spawn().await;
    let (mut c, _) = app.login("astravdi").await;
    let state = app.state.clone();
    let stopping = tokio::spawn(app.stop());
    let (code, reason) = c.expect_close(REPLY_TIMEOUT).await;
    assert_eq!(code, 1001);
    assert!(reason.contains("shutting down"));
    stopping.await.unwrap();
    assert!(state.shutdown.is_cancelled());
}

/// Writes, on the client's own TCP stream, the header of a masked text frame announcing `len`
/// bytes and the first `some` bytes of its payload (zero mask: the bytes go out as written).
async fn announce_text(c: &mut Client, len: u64, some: usize) {
    announce(c, 0x81, len, some).await;
}

/// [`announce_text`] for any frame: `first` is the header's first byte (FIN and opcode).
async fn announce(c: &mut Client, first: u8, len: u64, some: usize) {
    use tokio::io::AsyncWriteExt;
    let mut bytes = vec![first, 0x80 | 127];
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend(std::iter::repeat_n(b'a', some));
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = c.ws.get_mut() else {
        unreachable!("plain test sockets")
    };
    tcp.write_all(&bytes).await.unwrap();
}

#[tokio::test]
async fn before_sign_in_a_message_over_the_sign_in_limit_is_refused_at_its_header() {
    let app = TestApp::spawn().await;
    let mut c = app.connect().await;
    // 4 MiB − 1 byte announced, 1 KiB of it sent: refused at once, nothing waits for the rest.
    announce_text(&mut c, (4 << 20) - 1, 1024).await;
    let reply = c.recv().await;
    assert_eq!(error_code(&reply), 413, "{reply}");
    assert!(
        reply["args"]["message"].as_str().unwrap().contains("65536"),
        "{reply}"
    );
    let (code, reason) = c.expect_close(Duration::from_secs(3)).await;
    assert_eq!(code, 1009);
    assert!(reason.contains("before sign-in"), "{reason}");
    // What a sign-in needs still fits (64 KiB by default), and the server is fine.
    let mut other = app.connect().await;
    other.send_text(" ".repeat(60 * 1024)).await;
    assert_eq!(error_code(&other.recv().await), 400);
    other.auth("astravdi", PASSWORD).await;
}

#[tokio::test]
async fn after_sign_in_max_message_bytes_applies_and_after_sign_out_the_small_limit_again() {
    let app = TestApp::spawn_with(|c| c.max_message_bytes_pre_auth = 8 * 1024).await;
    let (mut c, _) = app.login("astravdi").await;
    // 1 MiB: read (over max_frame_bytes, so answered 413), and the socket stays open.
    c.send_text("y".repeat(1 << 20)).await;
    assert_eq!(error_code(&c.recv().await), 413);
    assert_eq!(c.rpc("identify", json!({})).await["name"], "response");
    // Signed out: the limit before sign-in again.
    assert_eq!(c.rpc("auth_clear", json!({})).await["name"], "response");
    c.send_text("y".repeat(10 * 1024)).await;
    assert_eq!(error_code(&c.recv().await), 413);
    let (code, reason) = c.expect_close(REPLY_TIMEOUT).await;
    assert_eq!((code, reason.contains("8192")), (1009, true), "{reason}");
}

#[tokio::test]
async fn a_flood_of_unauthenticated_4_mib_announcements_holds_no_buffers() {
    let app = TestApp::spawn().await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        let mut c = app.connect().await;
        announce_text(&mut c, (4 << 20) - 1, 64 * 1024).await;
        clients.push(c);
    }
    for c in &mut clients {
        assert_eq!(error_code(&c.recv().await), 413);
        assert_eq!(c.expect_close(Duration::from_secs(3)).await.0, 1009);
    }
    // Every one of them is gone from the server.
    tokio::time::timeout(REPLY_TIMEOUT, async {
        while app.state.metrics.connections_open.get() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the refused sockets are closed");
}

/// astravdi's status socket (`/api/v2/pools/ws/{client_id}/`), opened with its REST token.
async fn status_socket(app: &TestApp) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let jwt = app.jwt("astravdi").await;
    let mut req = format!(
        "ws://{}/api/v2/pools/ws/7e1459c2-3e19-4c3d-98f5-8344d44ae6f4/",
        app.addr
    )
    .into_client_request()
    .unwrap();
    req.headers_mut()
        .insert("cookie", format!("JWT {jwt}").parse().unwrap());
    let (status, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    Client::from(status)
}

/// The control frames, by the first byte of their header (FIN set).
const CONTROL_FRAMES: [(&str, u8); 3] = [("close", 0x88), ("ping", 0x89), ("pong", 0x8a)];

#[tokio::test]
async fn a_control_frame_over_125_bytes_is_refused_at_its_header_on_every_socket_signed_in_or_not()
{
    let app = TestApp::spawn().await;
    for (kind, first) in CONTROL_FRAMES {
        let sockets = [
            ("rpc before sign-in", app.connect().await),
            ("rpc signed in", app.login("astravdi").await.0),
            ("status", status_socket(&app).await),
        ];
        for (socket, mut c) in sockets {
            // 4 MiB − 1 byte announced (the signed-in message limit), 1 KiB of it sent:
            // closed at once, nothing waits for (or reserves) the rest.
            announce(&mut c, first, (4 << 20) - 1, 1024).await;
            let (code, reason) = c.expect_close(Duration::from_secs(2)).await;
            assert_eq!(code, 1002, "{kind} on {socket}: {reason}");
            assert!(
                reason.contains("control frame"),
                "{kind} on {socket}: {reason}"
            );
        }
    }
    // A fragmented control frame (no FIN) is refused the same way, however short.
    let mut c = app.connect().await;
    announce(&mut c, 0x09, 4, 4).await;
    let (code, reason) = c.expect_close(Duration::from_secs(2)).await;
    assert_eq!(code, 1002, "{reason}");
    // The server is fine.
    let mut other = app.connect().await;
    assert_eq!(other.rpc("identify", json!({})).await["name"], "response");
}

#[tokio::test]
async fn a_ping_of_up_to_125_bytes_still_gets_its_pong_on_every_socket() {
    let app = TestApp::spawn().await;
    let sockets = [
        ("rpc before sign-in", app.connect().await),
        ("rpc signed in", app.login("astravdi").await.0),
        ("status", status_socket(&app).await),
    ];
    for (socket, mut c) in sockets {
        let payload = vec![b'p'; 125];
        c.send(Message::Ping(payload.clone().into())).await;
        let pong = tokio::time::timeout(REPLY_TIMEOUT, async {
            loop {
                match c.ws.next().await {
                    Some(Ok(Message::Pong(p))) => return p,
                    Some(Ok(Message::Text(_) | Message::Ping(_))) => continue,
                    other => panic!("{socket}: expected a pong, got {other:?}"),
                }
            }
        })
        .await
        .expect("a pong in time");
        assert_eq!(&pong[..], &payload[..], "{socket}");
        if socket != "status" {
            assert_eq!(c.rpc("identify", json!({})).await["name"], "response");
        }
    }
}
