//! 5xx: the sync-service down, stopped, failing, dying mid-call or past its
//! deadline, answered so that Svix retries exactly when it should.

use std::time::Duration;

use http::StatusCode;
use tonic::Code;

use crate::{
    fake_sync::FakeSync,
    helpers::{self, SECRET, TestApp, USER_CREATED, fixture, now, signed_headers},
};

#[tokio::test]
async fn upstream_down_is_503_then_the_same_delivery_succeeds_once_it_is_back() {
    let app = TestApp::spawn_with(FakeSync::reserve().await, |_| {}).await;
    let body = fixture(USER_CREATED);
    let headers = signed_headers(SECRET, "msg_retry", now(), &body);

    let response = app.post_clerk(&headers, body.clone()).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!response.error().is_empty());

    let mut app = app;
    app.upstream.resume().await;
    let response = app.post_clerk(&headers, body).await;

    assert_eq!(response.status, StatusCode::OK);
    let received = app.upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].event_id.as_deref(), Some("msg_retry"));
}

#[tokio::test]
async fn upstream_stopped_after_serving_is_503_then_recovers() {
    let mut app = TestApp::spawn().await;
    let response = app.deliver("msg_before", fixture(USER_CREATED)).await;
    assert_eq!(response.status, StatusCode::OK);

    app.upstream.stop().await;
    let response = app.deliver("msg_during", fixture(USER_CREATED)).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);

    app.upstream.resume().await;
    let response = app.deliver("msg_during", fixture(USER_CREATED)).await;
    assert_eq!(response.status, StatusCode::OK);

    let ids: Vec<_> = app
        .upstream
        .received()
        .into_iter()
        .filter_map(|received| received.event_id)
        .collect();
    assert_eq!(ids, ["msg_before", "msg_during"]);
}

#[tokio::test]
async fn grpc_errors_map_to_retryable_or_final_statuses() {
    let app = TestApp::spawn().await;
    let cases = [
        (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
        (Code::DeadlineExceeded, StatusCode::SERVICE_UNAVAILABLE),
        (Code::ResourceExhausted, StatusCode::SERVICE_UNAVAILABLE),
        (Code::Cancelled, StatusCode::SERVICE_UNAVAILABLE),
        // Quarantined, then acknowledged.
        (Code::InvalidArgument, StatusCode::OK),
        (Code::OutOfRange, StatusCode::OK),
        (Code::Internal, StatusCode::INTERNAL_SERVER_ERROR),
        (Code::Unknown, StatusCode::SERVICE_UNAVAILABLE),
    ];
    for (code, expected) in cases {
        app.upstream.fail_with(
            Some(code),
            "db at postgres://admin:hunter2@10.1.2.3 said no",
        );

        let response = app.deliver("msg_grpc_error", fixture(USER_CREATED)).await;

        assert_eq!(response.status, expected, "{code:?}");
        if expected != StatusCode::OK {
            let message = response.error();
            assert!(!message.contains("hunter2"), "{message}");
        }
    }
    assert!(app.upstream.received().is_empty());
    // INVALID_ARGUMENT and OUT_OF_RANGE: one record, seen twice.
    let quarantined = app.upstream.quarantined();
    assert_eq!(quarantined.len(), 2);
    assert!(
        quarantined[0].reason.starts_with("event rejected: "),
        "{}",
        quarantined[0].reason
    );
}

#[tokio::test]
async fn a_sync_service_dying_mid_call_is_503() {
    let upstream = FakeSync::start().await;
    let proxy = helpers::TcpProxy::start(upstream.addr).await;
    let proxy_url: http::Uri = format!("http://{}", proxy.address).parse().unwrap();
    let app = TestApp::spawn_with(upstream, |config| {
        config.sync_service.urls = vec![proxy_url];
    })
    .await;
    let (mut arrived, _release) = app.upstream.hold_calls();
    let in_flight = app.deliver_in_background("msg_cut", fixture(USER_CREATED));
    arrived
        .recv()
        .await
        .expect("the call reached the sync-service");

    // The connection to the sync-service is reset while the call is open.
    proxy.cut().await;

    assert_eq!(in_flight.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn internal_error_body_has_no_internals() {
    let app = TestApp::spawn().await;
    app.upstream.fail_with(
        Some(Code::Internal),
        "SQL: UPDATE users SET ... password=hunter2",
    );

    let response = app.deliver("msg_internal", fixture(USER_CREATED)).await;

    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        response.json(),
        serde_json::json!({"error": "internal error"})
    );
}

#[tokio::test]
async fn upstream_past_its_deadline_is_503() {
    let app = TestApp::spawn_with(FakeSync::start().await, |config| {
        config.sync_service.timeout = Duration::from_millis(200);
    })
    .await;
    // The fake never answers: only the gateway's deadline can end the request.
    let (_arrived, _release) = app.upstream.hold_calls();

    let response = app.deliver("msg_slow", fixture(USER_CREATED)).await;

    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
}
