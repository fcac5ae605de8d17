//! Slow and hostile clients: a silent connection, a stalled head, a stalled
//! body, thousands of idle connections, and more connections or webhooks than
//! the caps allow. Each is closed or refused in time while real webhooks keep
//! being answered, and the process's memory is printed.

use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    fake_sync::FakeSync,
    helpers::{SECRET, TestApp, fixture, now, signed_headers},
};

/// Short limits, so each test takes a second or two.
fn short_limits(config: &mut clerk_sync_gateway::Config) {
    config.limits.header_timeout = Duration::from_millis(400);
    config.limits.idle_timeout = Duration::from_millis(400);
    config.limits.body_timeout = Duration::from_millis(400);
}

async fn spawn_short() -> TestApp {
    TestApp::spawn_with(FakeSync::start().await, short_limits).await
}

/// Waits for the server to close `stream`; returns what it sent before and
/// how long that took. Fails if it stays open for `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "connection still open after {limit:?}");
    (received, started.elapsed())
}

/// The resident set size of this process (gateway and test client), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn webhook_is_answered(app: &TestApp, msg_id: &str) {
    let response = app.deliver(msg_id, fixture("user.created.json")).await;
    assert_eq!(response.status, StatusCode::OK, "{msg_id}");
}

#[tokio::test]
async fn a_silent_connection_is_closed_in_time() {
    let app = spawn_short().await;
    let mut silent = TcpStream::connect(app.addr).await.unwrap();

    webhook_is_answered(&app, "msg_beside_silent").await;
    let (sent, took) = closed_within(&mut silent, Duration::from_secs(3)).await;

    assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));
    assert!(
        took >= Duration::from_millis(300),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn a_stalled_head_is_closed_in_time_even_when_it_trickles() {
    let app = spawn_short().await;
    // A few bytes of the protocol preface only: detection must be timed too.
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    stalled.write_all(b"PO").await.unwrap();
    // Slowloris: a byte every 100 ms, never finishing the head.
    let mut trickling = TcpStream::connect(app.addr).await.unwrap();
    trickling
        .write_all(b"POST /clerk HTTP/1.1\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        while trickling.write_all(b"x").await.is_ok() {
            if started.elapsed() > Duration::from_secs(5) {
                return Err("still open after 5 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(started.elapsed())
    });

    webhook_is_answered(&app, "msg_beside_stalled_head").await;
    closed_within(&mut stalled, Duration::from_secs(3)).await;
    let took = trickle.await.unwrap().unwrap();
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_closed() {
    let app = spawn_short().await;
    let body = fixture("user.created.json");
    let headers = signed_headers(SECRET, "msg_stalled_body", now(), &body);
    let mut head = String::from("POST /clerk HTTP/1.1\r\nHost: gateway\r\n");
    for (name, value) in &headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    // Declares a body far larger than what it sends: no memory is reserved
    // for it, and the deadline ends the wait.
    head.push_str("Content-Length: 1000000\r\n\r\n");
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&body[..10]).await.unwrap();

    webhook_is_answered(&app, "msg_beside_stalled_body").await;
    let (sent, _) = closed_within(&mut stalled, Duration::from_secs(3)).await;

    let sent = String::from_utf8_lossy(&sent);
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(app.upstream.received().len() == 1, "only the real webhook");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_answer() {
    let app = spawn_short().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();

    let (sent, took) = closed_within(&mut stream, Duration::from_secs(3)).await;

    assert!(String::from_utf8_lossy(&sent).starts_with("HTTP/1.1 200"));
    assert!(
        took >= Duration::from_millis(300),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn two_thousand_idle_connections_are_closed_while_webhooks_are_answered() {
    let app = TestApp::spawn_with(FakeSync::start().await, |config| {
        config.limits.header_timeout = Duration::from_secs(2);
        config.limits.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let before = rss_kib();
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let opened = rss_kib();

    for i in 0..20 {
        webhook_is_answered(&app, &format!("msg_beside_idle_{i}")).await;
    }
    let started = Instant::now();
    for stream in &mut idle {
        closed_within(stream, Duration::from_secs(6)).await;
    }
    println!(
        "2000 idle connections: RSS {before} KiB before, {opened} KiB with them open, {} KiB after \
         they were closed ({:?} after the webhooks)",
        rss_kib(),
        started.elapsed()
    );
    webhook_is_answered(&app, "msg_after_idle").await;
}

#[tokio::test]
async fn connections_past_the_cap_are_answered_503() {
    let app = TestApp::spawn_with(FakeSync::start().await, |config| {
        config.limits.max_connections = 3;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        // A complete request makes sure the server counted the connection.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0u8; 512];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
        held.push(stream);
    }

    let mut extra = TcpStream::connect(app.addr).await.unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .unwrap();
    let (sent, took) = closed_within(&mut extra, Duration::from_secs(2)).await;
    let sent = String::from_utf8_lossy(&sent);
    assert!(sent.starts_with("HTTP/1.1 503"), "{sent}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // A place frees up once a connection closes.
    drop(held.pop());
    let mut answered = false;
    for _ in 0..50 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        if response.starts_with(b"HTTP/1.1 200") {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered);
}

#[tokio::test]
async fn webhooks_past_the_in_flight_cap_are_answered_503_at_once() {
    let app = TestApp::spawn_with(FakeSync::start().await, |config| {
        config.limits.max_in_flight = 1;
    })
    .await;
    let (mut arrived, release) = app.upstream.hold_calls();
    let held = app.deliver_in_background("msg_held", fixture("user.created.json"));
    arrived
        .recv()
        .await
        .expect("the first webhook is in flight");

    let started = Instant::now();
    let response = app.deliver("msg_shed", fixture("user.created.json")).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.error(), "gateway busy, retry later");
    assert!(started.elapsed() < Duration::from_secs(1));

    release.send(true).unwrap();
    assert_eq!(held.await.unwrap(), StatusCode::OK);
    webhook_is_answered(&app, "msg_after_shed").await;
}

/// Opens a connection and sends a signed webhook's head with a body that
/// stops after its first byte.
async fn stalled_body(app: &TestApp, msg_id: &str) -> TcpStream {
    let body = fixture("user.created.json");
    let mut head = String::from("POST /clerk HTTP/1.1\r\nHost: gateway\r\n");
    for (name, value) in signed_headers(SECRET, msg_id, now(), &body) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..1]).await.unwrap();
    stream
}

#[tokio::test]
async fn stalled_bodies_hold_no_place_among_the_webhooks_in_flight() {
    let app = TestApp::spawn_with(FakeSync::start().await, |config| {
        config.limits.max_in_flight = 4;
        config.limits.body_timeout = Duration::from_secs(30);
    })
    .await;
    let mut stalled = Vec::new();
    for n in 0..20 {
        stalled.push(stalled_body(&app, &format!("msg_stalled_{n}")).await);
    }
    // Let the gateway read every head and start waiting for the bodies.
    tokio::time::sleep(Duration::from_millis(200)).await;

    for n in 0..10 {
        webhook_is_answered(&app, &format!("msg_real_{n}")).await;
    }
    assert_eq!(app.upstream.received().len(), 10, "only the real webhooks");
    drop(stalled);
}

#[tokio::test]
async fn one_connection_cannot_hold_more_bodies_than_its_share() {
    use bytes::Bytes;
    use futures::StreamExt as _;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    let app = TestApp::spawn_with(FakeSync::start().await, |config| {
        config.limits.max_bodies_per_connection = 4;
        config.limits.body_timeout = Duration::from_secs(30);
    })
    .await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);

    // Twelve streams whose bodies never finish, on one connection.
    let body = fixture("user.created.json");
    let mut calls = Vec::new();
    for n in 0..12 {
        let never_ends = futures::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
            Bytes::copy_from_slice(&body[..1]),
        ))])
        .chain(futures::stream::pending());
        let mut request = http::Request::post(format!("http://{}/clerk", app.addr));
        for (name, value) in signed_headers(SECRET, &format!("msg_h2_{n}"), now(), &body) {
            request = request.header(name, value);
        }
        let request = request.body(StreamBody::new(never_ends)).unwrap();
        let mut sender = sender.clone();
        calls.push(tokio::spawn(async move {
            sender.ready().await.unwrap();
            sender.send_request(request).await.map(|r| r.status())
        }));
    }
    // Past the connection's share, streams are answered 503 at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut refused = 0;
    let mut waiting = 0;
    for call in &calls {
        if call.is_finished() {
            refused += 1;
        } else {
            waiting += 1;
        }
    }
    assert_eq!((refused, waiting), (8, 4));
    for call in calls.into_iter().filter(|call| call.is_finished()) {
        assert_eq!(
            call.await.unwrap().unwrap(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    // Other clients are answered meanwhile.
    webhook_is_answered(&app, "msg_beside_h2").await;
}
