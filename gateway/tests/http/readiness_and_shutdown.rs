//! Health, readiness and graceful shutdown.

use std::time::Duration;

use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    fake_sync::FakeSync,
    helpers::{SECRET, TestApp, USER_CREATED, fixture, now, signed_headers},
};

#[tokio::test]
async fn healthz_is_200_even_without_upstream() {
    let app = TestApp::spawn_with(FakeSync::reserve().await, |_| {}).await;

    let response = app.request(Method::GET, "/healthz", &[], "").await;

    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn readyz_follows_the_sync_service_health() {
    let mut app = TestApp::spawn().await;

    let response = app.request(Method::GET, "/readyz", &[], "").await;
    assert_eq!(response.status, StatusCode::OK);

    app.upstream.set_serving(false).await;
    let response = app.request(Method::GET, "/readyz", &[], "").await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);

    app.upstream.set_serving(true).await;
    let response = app.request(Method::GET, "/readyz", &[], "").await;
    assert_eq!(response.status, StatusCode::OK);

    app.upstream.stop().await;
    let response = app.request(Method::GET, "/readyz", &[], "").await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut app = TestApp::spawn().await;
    let (mut arrived, release) = app.upstream.hold_calls();
    let addr = app.addr;
    let in_flight = app.deliver_in_background("msg_in_flight", fixture(USER_CREATED));
    arrived
        .recv()
        .await
        .expect("the event reached the sync-service");

    app.request_shutdown();
    // Shutdown has begun once new connections are refused.
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        tokio::task::yield_now().await;
    }
    // While the call is held, run keeps waiting for it (this can only pass
    // wrongly, never fail wrongly, on a slow machine).
    assert!(app.still_running_after(Duration::from_millis(100)).await);
    assert!(!in_flight.is_finished());
    release.send(true).unwrap();

    assert_eq!(in_flight.await.unwrap(), StatusCode::OK);
    app.stopped().await.unwrap();
    assert_eq!(app.upstream.received().len(), 1);
}

#[tokio::test]
async fn shutdown_cuts_off_requests_after_the_grace_period() {
    let mut app = TestApp::spawn_with(FakeSync::start().await, |config| {
        config.shutdown_timeout = Duration::from_millis(100);
    })
    .await;
    // The call is held for ever: only the grace period lets run return.
    let (mut arrived, _release) = app.upstream.hold_calls();
    let addr = app.addr;
    let body = fixture(USER_CREATED);
    let headers = signed_headers(SECRET, "msg_stuck", now(), &body);
    let _in_flight = tokio::spawn(async move {
        let mut request = String::from("POST /clerk HTTP/1.1\r\nHost: gateway\r\n");
        for (name, value) in &headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
    });
    arrived
        .recv()
        .await
        .expect("the event reached the sync-service");

    app.request_shutdown();

    app.stopped().await.unwrap();
}
