//! The gRPC port under clients that connect and then do nothing, hold
//! connections open, declare large messages or stall a call: each attack
//! from the hardening issue, reproduced against the real server. These are
//! properties of the port, not of the database, so they run on SQLite.

use std::{net::SocketAddr, time::Duration};

use clerk_sync_api::v1::{
    GetUserRequest, GetUserResponse, user_directory_service_client::UserDirectoryServiceClient,
    watch_users_request::Start, watch_users_response::Event,
};
use clerk_sync_service::Config;
use futures::future::join_all;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};
use tonic::{Code, transport::Endpoint};

use crate::{
    feed::{next, watch},
    helpers::{Backend, TestApp, TestCerts, TestDb, user},
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const OPEN: &str = "clerk_sync_service_grpc_connections";
const REFUSED: &str = "clerk_sync_service_grpc_connections_refused_total";

fn config(db: &TestDb) -> Config {
    Config::with_database(&db.url)
}

/// Checks that a client on `channel` is served (a point read answers).
async fn answers(channel: tonic::transport::Channel) {
    let status = UserDirectoryServiceClient::new(channel)
        .get_user(GetUserRequest {
            id: "user_x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

/// Reads until the server closes `stream` (end of stream or an error), and
/// returns when that happened; panics if it is still open after `limit`.
async fn closed_by_server(mut stream: TcpStream, limit: Duration) -> Instant {
    let mut sink = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closes the connection in time")
}

async fn connect_many(address: SocketAddr, count: usize, send: &'static [u8]) -> Vec<TcpStream> {
    join_all((0..count).map(|_| async move {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(send).await.unwrap();
        stream
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_preface_only_connections_are_closed_at_the_handshake_timeout() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = config(&db);
    // Long enough that opening the 200 connections on a loaded machine (it
    // took over 800 ms once) ends well before the first deadline.
    config.limits.handshake_timeout = Duration::from_secs(2);
    let app = TestApp::spawn_with(config).await;

    let started = Instant::now();
    let mut sockets = connect_many(app.address, 100, b"").await;
    sockets.extend(connect_many(app.address, 100, PREFACE).await);
    let connected = started.elapsed();
    // The server holds them for now...
    let mut seen = vec![(connected, -1.0)];
    while started.elapsed() < Duration::from_millis(1800) {
        seen.push((started.elapsed(), app.scrape().await.value(OPEN)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let holding = seen.iter().map(|(_, open)| *open).fold(0.0, f64::max);
    assert!(holding >= 200.0, "connections open over time: {seen:?}");

    // ...and closes every one at its deadline, not later.
    let closed = join_all(
        sockets
            .into_iter()
            .map(|socket| closed_by_server(socket, Duration::from_secs(5))),
    )
    .await;
    let last = closed.iter().max().unwrap().duration_since(started);
    assert!(last < Duration::from_secs(5), "last closed after {last:?}");
    let first = closed.iter().min().unwrap().duration_since(started);
    assert!(
        first >= Duration::from_millis(1900),
        "first closed after {first:?}"
    );

    // Real clients were never in the way.
    answers(app.channel.clone()).await;
    let open = app.scrape().await.value(OPEN);
    assert!(open <= 2.0, "{open} connections still open");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_once_and_counted() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = config(&db);
    config.limits.max_connections = 4;
    config.limits.handshake_timeout = Duration::from_secs(30);
    let app = TestApp::spawn_with(config).await;
    let before = app.scrape().await;

    // The test's own channel holds one connection: three more fill the cap.
    let held = connect_many(app.address, 3, PREFACE).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = TcpStream::connect(app.address).await.unwrap();
    closed_by_server(refused, Duration::from_secs(2)).await;
    let after = app.scrape().await;
    assert_eq!(after.delta(&before, REFUSED), 1.0);
    assert_eq!(after.value(OPEN), 4.0);

    // The connection already open keeps working; freed slots are reused.
    answers(app.channel.clone()).await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fresh = Endpoint::from_shared(format!("http://{}", app.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    answers(fresh).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_but_a_change_feed_stream_is_never_idle() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = config(&db);
    config.limits.idle_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(config).await;

    let mut stream = watch(&app, Start::Now(())).await;
    assert!(matches!(
        next(&mut stream).await.event,
        Some(Event::CaughtUp(_))
    ));
    // Longer than the idle timeout, with nothing on the stream.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.created("msg_idle_1", user("user_idle", 100)).await;
    let message = next(&mut stream).await;
    assert!(
        matches!(&message.event, Some(event) if format!("{event:?}").contains("user_idle")),
        "{message:?}"
    );

    // Without the stream, nothing is in flight: the connection is closed
    // (the channel reconnects for the next call).
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.scrape().await.value(OPEN) > 0.0 {
        assert!(Instant::now() < deadline, "an idle connection stayed open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answers(app.channel.clone()).await;
    app.stop().await;
}

/// The server's HTTP/2 SETTINGS, read off a raw connection.
async fn server_settings(address: SocketAddr) -> Vec<(u16, u32)> {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(PREFACE).await.unwrap();
    // An empty SETTINGS frame of our own.
    stream
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    loop {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await.unwrap();
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).await.unwrap();
        let (kind, ack) = (header[3], header[4] & 1 == 1);
        if kind == 4 && !ack {
            return payload
                .chunks_exact(6)
                .map(|s| {
                    (
                        u16::from_be_bytes([s[0], s[1]]),
                        u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                    )
                })
                .collect();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_are_capped() {
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = config(&db);
    config.limits.http2_max_streams = 7;
    let app = TestApp::spawn_with(config).await;
    let settings = server_settings(app.address).await;
    assert!(
        settings.contains(&(MAX_CONCURRENT_STREAMS, 7)),
        "{settings:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_services_refuse_large_messages_and_writes_keep_their_room() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db.url).await;

    // Health takes no token: a name, nothing more.
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "s".repeat(8 * 1024),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    // A point read is a few ids.
    let status = app
        .directory
        .clone()
        .get_user(GetUserRequest {
            id: "u".repeat(100 * 1024),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // A profile with 200 KB of metadata is still taken.
    let mut big = user("user_big", 100);
    big.public_metadata = Some(clerk_sync_api::json::struct_from_json(
        serde_json::json!({ "notes": "n".repeat(200 * 1024) })
            .as_object()
            .unwrap()
            .clone(),
    ));
    assert_eq!(
        app.created("msg_big", big).await,
        clerk_sync_api::v1::Outcome::Applied
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_request_never_arrives_is_ended_at_the_request_timeout() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = config(&db);
    config.limits.request_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(config).await;

    // A unary call whose one message never comes: the headers arrive, the
    // body stalls.
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.unwrap();
    let started = Instant::now();
    let call = grpc.client_streaming::<_, GetUserRequest, GetUserResponse, _>(
        tonic::Request::new(futures::stream::pending::<GetUserRequest>()),
        http::uri::PathAndQuery::from_static("/clerk.sync.v1.UserDirectoryService/GetUser"),
        tonic_prost::ProstCodec::default(),
    );
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the server ends the call");
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_port_closes_sockets_that_never_start_the_handshake() {
    let db = TestDb::new(Backend::Sqlite).await;
    let certs = TestCerts::new();
    let mut config = config(&db);
    config.tls_cert = Some(certs.path("server.pem"));
    config.tls_key = Some(certs.path("server-key.pem"));
    config.limits.handshake_timeout = Duration::from_secs(1);
    let ca = std::fs::read(certs.path("ca.pem")).unwrap();
    let app = TestApp::spawn_reached_by(config, |address| {
        Endpoint::from_shared(format!("https://{address}"))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )
            .unwrap()
    })
    .await;

    let started = Instant::now();
    let sockets = connect_many(app.address, 100, b"").await;
    let closed = join_all(
        sockets
            .into_iter()
            .map(|socket| closed_by_server(socket, Duration::from_secs(5))),
    )
    .await;
    let last = closed.iter().max().unwrap().duration_since(started);
    assert!(last < Duration::from_secs(4), "last closed after {last:?}");

    answers(app.channel.clone()).await;
    app.stop().await;
}
