//! How long a connection may say nothing, and how many a client may hold: the header timeout
//! (silent sockets, dripped headers, idle keep-alive, TLS handshakes, late bodies), the caps on
//! all connections and per client address, and a socket that notices shutdown mid-request.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// The header timeout the tests configure.
const HEADER_TIMEOUT: Duration = Duration::from_millis(500);

async fn app_with_header_timeout() -> TestApp {
    TestApp::spawn_with(|c| c.http_header_timeout = HEADER_TIMEOUT).await
}

/// Reads until the server closes the connection (EOF or reset); returns what it sent and when
/// it closed, or panics after `within`.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> (String, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closed the connection in time");
    (String::from_utf8_lossy(&got).into_owned(), Instant::now())
}

/// Reads one HTTP response whose body is `Content-Length` framed; returns it whole.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(REPLY_TIMEOUT, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
    }
}

/// A connection from a given loopback source address.
async fn tcp_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// The first response the server sends on a fresh connection without being asked, if any
/// within a short while: refused connections are answered at once.
async fn unasked_answer(stream: &mut TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Ok(Err(e)) => Some(format!("error: {e}")),
        Err(_) => None,
    }
}

/// A connection that is admitted: it answers a health check.
async fn is_served(stream: &mut TcpStream) -> bool {
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = vec![0u8; 1024];
    match tokio::time::timeout(REPLY_TIMEOUT, stream.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        _ => false,
    }
}

#[tokio::test]
async fn a_silent_tcp_connection_is_closed_after_the_header_timeout() {
    let app = app_with_header_timeout().await;
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let opened = Instant::now();
    let (sent, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    let lived = closed - opened;
    assert!(
        lived >= HEADER_TIMEOUT - Duration::from_millis(50),
        "not before the timeout: {lived:?}"
    );
    assert!(lived < Duration::from_secs(3), "lived {lived:?}");
    assert!(!sent.contains("200"), "{sent}");
}

#[tokio::test]
async fn headers_dripped_slower_than_the_header_timeout_are_cut_off() {
    let app = app_with_header_timeout().await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let opened = Instant::now();
    // A request line, then one header byte every 50 ms: each byte "makes progress", the whole
    // never ends. Reads are not what the timeout counts; the complete head is.
    let dripper = tokio::spawn(async move {
        write
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if write.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let (sent, closed) = read_until_closed(&mut read, Duration::from_secs(5)).await;
    let lived = closed - opened;
    assert!(
        lived < Duration::from_secs(3),
        "cut off near the timeout, not when the client stops: {lived:?}"
    );
    assert!(!sent.contains("200"), "{sent}");
    dripper.abort();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let app = app_with_header_timeout().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // Keep-alive works: requests spaced by less than the timeout share one connection.
    for _ in 0..3 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        tokio::time::sleep(HEADER_TIMEOUT / 3).await;
    }
    let idle_since = Instant::now();
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let idle = closed - idle_since;
    assert!(idle < Duration::from_secs(3), "idle for {idle:?}");
}

#[tokio::test]
async fn a_tls_handshake_or_request_that_never_comes_is_closed_after_the_header_timeout() {
    let cert = crate::tls::make_cert();
    let app = TestApp::spawn_with(|c| {
        c.tls_cert = Some(cert.cert.clone());
        c.tls_key = Some(cert.key.clone());
        c.http_header_timeout = HEADER_TIMEOUT;
    })
    .await;
    // No handshake at all.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let opened = Instant::now();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(closed - opened < Duration::from_secs(3));
    // A handshake, then no request.
    let mut tls = crate::tls::tls_connect(app.addr, Some(&cert.der), rustls::DEFAULT_VERSIONS)
        .await
        .unwrap();
    let opened = Instant::now();
    let (_, closed) = read_until_closed(&mut tls, Duration::from_secs(5)).await;
    assert!(closed - opened < Duration::from_secs(3));
}

#[tokio::test]
async fn a_request_body_that_does_not_arrive_in_time_is_answered_408() {
    let app = app_with_header_timeout().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"POST /api/v2/users/login/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"username\":",
        )
        .await
        .unwrap();
    let sent = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("not received"), "{answer}");
    assert!(closed - sent < Duration::from_secs(3));
}

#[tokio::test]
async fn connections_past_the_total_cap_are_refused_with_503_http_and_websocket_alike() {
    let app = TestApp::spawn_with(|c| c.max_connections = Some(3)).await;
    // One of each kind holds a slot: a WebSocket, a keep-alive HTTP connection, a silent one.
    let _ws = app.connect().await;
    let mut keep_alive = TcpStream::connect(app.addr).await.unwrap();
    assert!(is_served(&mut keep_alive).await);
    let silent = TcpStream::connect(app.addr).await.unwrap();

    let mut fourth = TcpStream::connect(app.addr).await.unwrap();
    let answer = unasked_answer(&mut fourth).await.expect("refused at once");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("max_connections = 3"), "{answer}");
    match tokio_tungstenite::connect_async(app.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503 for a WebSocket too, got {other:?}"),
    }

    // A slot frees as soon as its connection closes.
    drop(silent);
    let mut served = false;
    for _ in 0..50 {
        let mut again = TcpStream::connect(app.addr).await.unwrap();
        if is_served(&mut again).await {
            served = true;
            // Counted, and visible to monitoring.
            again
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let metrics = read_response(&mut again).await;
            assert!(
                metrics
                    .contains("poolgate_connections_refused_total{reason=\"max_connections\"} 2"),
                "{metrics}"
            );
            assert!(
                metrics.contains("poolgate_accepted_connections_open 3"),
                "{metrics}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "a slot frees up after a client leaves");
}

#[tokio::test]
async fn connections_past_the_per_address_cap_are_refused_with_429_and_other_addresses_are_not() {
    let app = TestApp::spawn_with(|c| c.max_connections_per_address = 2).await;
    let mut first = tcp_from([127, 0, 0, 1], app.addr).await;
    let _second = tcp_from([127, 0, 0, 1], app.addr).await;

    let mut third = tcp_from([127, 0, 0, 1], app.addr).await;
    let answer = unasked_answer(&mut third).await.expect("refused at once");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains("max_connections_per_address = 2"),
        "{answer}"
    );
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    match tokio_tungstenite::client_async(app.ws_url(), stream).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("expected HTTP 429 for a WebSocket too, got {other:?}"),
    }

    // Another address is not affected.
    let mut other = tcp_from([127, 0, 0, 2], app.addr).await;
    assert!(is_served(&mut other).await);

    // The address gets its slot back when one of its connections closes.
    assert!(
        is_served(&mut first).await,
        "admitted connections are served"
    );
    drop(first);
    let mut served = false;
    for _ in 0..50 {
        let mut again = tcp_from([127, 0, 0, 1], app.addr).await;
        if is_served(&mut again).await {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served);
}

#[tokio::test]
async fn ipv4_clients_of_a_dual_stack_listener_are_counted_per_address_not_as_one_ipv6_prefix() {
    // On `[::]`, IPv4 clients arrive as ::ffff:a.b.c.d, all in one IPv6 /64 (and ::1 in the
    // same ::/64): each must still count as its own IPv4 address.
    let app = TestApp::spawn_with(|c| {
        c.listen = "[::]:0".parse().unwrap();
        c.max_connections_per_address = 1;
    })
    .await;
    let v4 = SocketAddr::from(([127, 0, 0, 1], app.addr.port()));
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, app.addr.port()));
    let _held = tcp_from([127, 0, 0, 1], v4).await;
    let mut other_v4 = tcp_from([127, 0, 0, 2], v4).await;
    assert!(
        is_served(&mut other_v4).await,
        "127.0.0.2 is another client"
    );
    let mut same_v4 = tcp_from([127, 0, 0, 1], v4).await;
    let answer = unasked_answer(&mut same_v4).await.expect("refused");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    let mut v6_client = TcpStream::connect(v6).await.unwrap();
    assert!(is_served(&mut v6_client).await, "::1 is another client");
    let mut same_v6 = TcpStream::connect(v6).await.unwrap();
    let answer = unasked_answer(&mut same_v6).await.expect("refused");
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
}

#[tokio::test]
async fn a_flood_of_refused_connections_is_logged_once_with_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), 1.0, "max_connections_per_address = 1");
    let server = ServerProcess::serve(&config, &dir.path().join("data")).await;
    let addr: SocketAddr = server.addr.parse().unwrap();
    let _held = TcpStream::connect(addr).await.unwrap();
    for _ in 0..100 {
        let mut refused = TcpStream::connect(addr).await.unwrap();
        let answer = unasked_answer(&mut refused).await.expect("refused");
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    }
    let log = server.log.lock().unwrap().clone();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connections refused"))
        .collect();
    assert_eq!(lines.len(), 1, "one line, not one per connection:\n{log}");
    assert!(
        lines[0].contains("max_connections_per_address"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("refused=1"), "{}", lines[0]);
}

#[tokio::test]
async fn a_socket_notices_shutdown_while_a_request_runs() {
    // A sign-in that must wait its turn in a username's back-off is a request that cannot
    // finish for tens of seconds: one failure starts the back-off, five more attempts in
    // flight take the next turns (1 + 2 + 4 + 8 + 16 s apart), the test's own waits ~31 s.
    let app = TestApp::spawn_with(|c| {
        c.lockout_attempts = 1;
        c.lockout_backoff_max = Duration::from_secs(60);
    })
    .await;
    let mut first = app.connect_from([127, 0, 30, 1]).await;
    let wrong = json!({"username": "user-2", "password": "wrong"});
    assert_eq!(error_code(&first.rpc("auth", wrong.clone()).await), 401);
    let mut waiting = Vec::new();
    for i in 0..5u8 {
        let mut w = app.connect_from([127, 0, 30, 10 + i]).await;
        w.send_text(
            json!({"namespace": "rpc", "name": "auth", "id": "w", "args": wrong}).to_string(),
        )
        .await;
        waiting.push(w);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = app.connect_from([127, 0, 30, 99]).await;
    c.send_text(
        json!({"namespace": "rpc", "name": "auth", "id": "r",
               "args": {"username": "user-2", "password": PASSWORD}})
        .to_string(),
    )
    .await;
    use futures_util::StreamExt;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), c.ws.next())
            .await
            .is_err(),
        "the request is still running"
    );

    let state = app.state.clone();
    let stopping = Instant::now();
    let stop = tokio::spawn(app.stop());
    let (code, reason) = c.expect_close(Duration::from_secs(3)).await;
    assert_eq!(code, 1001);
    assert!(reason.contains("shutting down"), "{reason}");
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "closed promptly: {:?}",
        stopping.elapsed()
    );
    stop.await.unwrap();
    assert!(state.shutdown.is_cancelled());
}
