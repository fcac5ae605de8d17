//! The gateway over real HTTP: every row of the status table, each fixture
//! forwarded with its typed fields, upstream failures and recovery, graceful
//! shutdown, and (in `metrics`) the metrics endpoint and log settings. One
//! test binary; each test starts its own gateway and fake sync-service on
//! port 0.

mod fake_sync;
mod helpers;
mod logs;
mod metrics;
mod properties;
mod slow_clients;

use std::time::Duration;

use clerk_sync_api::v1::{EventMeta, Outcome, UserCreated, UserDeleted, UserUpdated};
use clerk_sync_gateway::clerk::UserEvent;
use http::{Method, StatusCode, header};
use prost_types::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use fake_sync::{FakeSync, Received};
use helpers::{SECRET, TestApp, fixture, now, signed_headers};

const USER_CREATED: &str = "user.created.json";

fn ts(seconds: i64, millis: i32) -> Option<Timestamp> {
    Some(Timestamp {
        seconds,
        nanos: millis * 1_000_000,
    })
}

fn without(headers: &[(&'static str, String)], name: &str) -> Vec<(&'static str, String)> {
    headers
        .iter()
        .filter(|(n, _)| *n != name)
        .cloned()
        .collect()
}

fn replaced(
    headers: &[(&'static str, String)],
    name: &'static str,
    value: &str,
) -> Vec<(&'static str, String)> {
    let mut headers = without(headers, name);
    headers.push((name, value.to_owned()));
    headers
}

// ---- forwarded events -------------------------------------------------------

#[tokio::test]
async fn user_created_is_forwarded_with_typed_fields_and_event_id() {
    let app = TestApp::spawn().await;

    let response = app.deliver("msg_created", fixture(USER_CREATED)).await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json(), serde_json::json!({}));
    let received = app.upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].event_id.as_deref(), Some("msg_created"));
    let UserEvent::Created(UserCreated {
        meta: Some(meta),
        user: Some(user),
    }) = &received[0].event
    else {
        panic!("not ApplyUserCreated: {received:?}");
    };
    assert_eq!(
        meta,
        &EventMeta {
            event_id: "msg_created".into(),
            occurred_at: ts(1_654_012_591, 835),
        }
    );
    assert_eq!(user.id, "user_29w83sxmDNGwOuEthce5gg56FcC");
    assert_eq!(
        user.primary_email_address.as_deref(),
        Some("example@example.org")
    );
    assert_eq!(user.email_addresses.len(), 1);
    assert_eq!(user.email_addresses[0].address, "example@example.org");
    assert!(user.email_addresses[0].verified);
    assert_eq!(user.display_name, "Example Example");
    assert_eq!(
        user.image_url.as_deref(),
        Some("https://img.clerk.com/xxxxxx")
    );
    assert_eq!(user.external_id.as_deref(), Some("567772"));
    assert_eq!(user.created_at, ts(1_654_012_591, 514));
    assert_eq!(user.updated_at, ts(1_654_012_591, 835));
    assert_eq!(user.last_sign_in_at, ts(1_654_012_591, 514));
}

#[tokio::test]
async fn primary_email_not_first_and_unicode_names_are_forwarded_intact() {
    let app = TestApp::spawn().await;

    let response = app
        .deliver(
            "msg_unicode",
            fixture("user.created.multi-email-unicode.json"),
        )
        .await;

    assert_eq!(response.status, StatusCode::OK);
    let received = app.upstream.received();
    let UserEvent::Created(UserCreated {
        user: Some(user), ..
    }) = &received[0].event
    else {
        panic!("{received:?}");
    };
    assert_eq!(
        user.primary_email_address.as_deref(),
        Some("Primary.Person@Example.COM")
    );
    assert_eq!(
        user.email_addresses
            .iter()
            .map(|e| e.address.as_str())
            .collect::<Vec<_>>(),
        ["old.address@example.net", "Primary.Person@Example.COM"]
    );
    assert_eq!(user.display_name, "Zoë Ångström-Ñúñez 😀");
}

#[tokio::test]
async fn phone_only_user_is_forwarded_without_email() {
    let app = TestApp::spawn().await;

    let response = app
        .deliver("msg_phone", fixture("user.created.phone-only.json"))
        .await;

    assert_eq!(response.status, StatusCode::OK);
    let received = app.upstream.received();
    let UserEvent::Created(UserCreated {
        user: Some(user), ..
    }) = &received[0].event
    else {
        panic!("{received:?}");
    };
    assert_eq!(user.primary_email_address, None);
    assert_eq!(user.primary_phone_number.as_deref(), Some("+15555550100"));
    assert_eq!(user.display_name, "+15555550100");
}

#[tokio::test]
async fn user_updated_is_forwarded_to_apply_user_updated() {
    let app = TestApp::spawn().await;

    let response = app
        .deliver("msg_updated", fixture("user.updated.json"))
        .await;

    assert_eq!(response.status, StatusCode::OK);
    let received = app.upstream.received();
    assert_eq!(received[0].event_id.as_deref(), Some("msg_updated"));
    let UserEvent::Updated(UserUpdated {
        meta: Some(meta),
        user: Some(user),
    }) = &received[0].event
    else {
        panic!("not ApplyUserUpdated: {received:?}");
    };
    assert_eq!(meta.occurred_at, ts(1_654_012_824, 306));
    assert_eq!(user.last_name, None);
    assert_eq!(user.display_name, "Example");
    assert_eq!(user.updated_at, ts(1_654_012_824, 306));
}

#[tokio::test]
async fn user_deleted_is_forwarded_with_the_event_time() {
    let app = TestApp::spawn().await;

    let response = app
        .deliver("msg_deleted", fixture("user.deleted.json"))
        .await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        app.upstream.received(),
        [Received {
            event_id: Some("msg_deleted".into()),
            event: UserEvent::Deleted(UserDeleted {
                meta: Some(EventMeta {
                    event_id: "msg_deleted".into(),
                    occurred_at: ts(1_661_861_640, 0),
                }),
                user_id: "user_29w83sxmDNGwOuEthce5gg56FcC".into(),
            }),
        }]
    );
}

#[tokio::test]
async fn duplicate_stale_and_deleted_outcomes_are_all_200() {
    let app = TestApp::spawn().await;
    for (index, outcome) in [Outcome::Duplicate, Outcome::Stale, Outcome::UserDeleted]
        .into_iter()
        .enumerate()
    {
        app.upstream.answer_outcome(outcome);
        let response = app
            .deliver(&format!("msg_outcome_{index}"), fixture(USER_CREATED))
            .await;
        assert_eq!(response.status, StatusCode::OK, "{outcome:?}");
        assert_eq!(response.json(), serde_json::json!({}));
    }
    assert_eq!(app.upstream.received().len(), 3);
}

#[tokio::test]
async fn unspecified_outcome_is_not_acknowledged() {
    let app = TestApp::spawn().await;
    app.upstream.answer_outcome(Outcome::Unspecified);

    let response = app.deliver("msg_unspecified", fixture(USER_CREATED)).await;

    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn unknown_event_type_is_acknowledged_and_not_forwarded() {
    let app = TestApp::spawn().await;

    let response = app
        .deliver("msg_session", fixture("session.created.unknown-type.json"))
        .await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json(), serde_json::json!({}));
    assert!(app.upstream.received().is_empty());
}

#[tokio::test]
async fn webhook_headers_are_accepted_like_svix_headers() {
    let app = TestApp::spawn().await;
    let body = fixture(USER_CREATED);
    let headers: Vec<_> = signed_headers(SECRET, "msg_std", now(), &body)
        .into_iter()
        .map(|(name, value)| match name.strip_prefix("svix-") {
            Some("id") => ("webhook-id", value),
            Some("timestamp") => ("webhook-timestamp", value),
            Some("signature") => ("webhook-signature", value),
            _ => (name, value),
        })
        .collect();

    let response = app.post_clerk(&headers, body).await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        app.upstream.received()[0].event_id.as_deref(),
        Some("msg_std")
    );
}

#[tokio::test]
async fn charset_parameter_is_accepted() {
    let app = TestApp::spawn().await;
    let body = fixture(USER_CREATED);
    let headers = replaced(
        &signed_headers(SECRET, "msg_charset", now(), &body),
        "content-type",
        "application/json; charset=utf-8",
    );

    let response = app.post_clerk(&headers, body).await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(app.upstream.received().len(), 1);
}

#[tokio::test]
async fn events_are_balanced_over_several_sync_services() {
    let first = FakeSync::start().await;
    let mut second = FakeSync::start().await;
    let second_url = second.url();
    let app = TestApp::spawn_with(first, |config| {
        config.sync_service.urls.push(second_url);
    })
    .await;

    for index in 0..20 {
        let response = app
            .deliver(&format!("msg_balanced_{index}"), fixture(USER_CREATED))
            .await;
        assert_eq!(response.status, StatusCode::OK);
    }

    let total = app.upstream.received().len() + second.received().len();
    assert_eq!(total, 20);
    second.stop().await;
}

// ---- 400 / 401: verification and payload --------------------------------------

#[tokio::test]
async fn tampered_body_is_401_and_not_forwarded() {
    let app = TestApp::spawn().await;
    let body = fixture(USER_CREATED);
    let headers = signed_headers(SECRET, "msg_tampered", now(), &body);
    let tampered = String::from_utf8(body)
        .unwrap()
        .replace("example@example.org", "attacker@example.org");

    let response = app.post_clerk(&headers, tampered).await;

    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.error(), "invalid signature");
    assert!(app.upstream.received().is_empty());
}

#[tokio::test]
async fn wrong_secret_is_401_and_not_forwarded() {
    let app = TestApp::spawn().await;
    let body = fixture(USER_CREATED);
    let headers = signed_headers(
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "msg_wrong_secret",
        now(),
        &body,
    );

    let response = app.post_clerk(&headers, body).await;

    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert!(app.upstream.received().is_empty());
}

#[tokio::test]
async fn rotated_secrets_are_both_accepted() {
    let old = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let app = TestApp::spawn_with(FakeSync::start().await, |config| {
        config.webhook_secrets = Some(format!("{SECRET} {old}").parse().unwrap());
    })
    .await;
    for (index, secret) in [SECRET, old].into_iter().enumerate() {
        let body = fixture(USER_CREATED);
        let id = format!("msg_rotation_{index}");
        let response = app
            .post_clerk(&signed_headers(secret, &id, now(), &body), body)
            .await;
        assert_eq!(response.status, StatusCode::OK, "{secret}");
    }
    assert_eq!(app.upstream.received().len(), 2);
}

#[tokio::test]
async fn timestamps_outside_the_window_are_401_and_not_forwarded() {
    let app = TestApp::spawn().await;
    for offset in [-301, 301, -86_400] {
        let body = fixture(USER_CREATED);
        let headers = signed_headers(SECRET, "msg_stale", now() + offset, &body);

        let response = app.post_clerk(&headers, body).await;

        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{offset}");
        assert_eq!(response.error(), "timestamp outside the tolerance window");
    }
    assert!(app.upstream.received().is_empty());
}

#[tokio::test]
async fn each_missing_svix_header_is_400_naming_it() {
    let app = TestApp::spawn().await;
    for name in ["svix-id", "svix-timestamp", "svix-signature"] {
        let body = fixture(USER_CREATED);
        let headers = without(&signed_headers(SECRET, "msg_missing", now(), &body), name);

        let response = app.post_clerk(&headers, body).await;

        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{name}");
        assert_eq!(response.error(), format!("missing header {name}"));
    }
    assert!(app.upstream.received().is_empty());
}

#[tokio::test]
async fn malformed_timestamps_are_400() {
    let app = TestApp::spawn().await;
    for timestamp in ["yesterday", "-1700000000", "1.5"] {
        let body = fixture(USER_CREATED);
        let headers = replaced(
            &signed_headers(SECRET, "msg_bad_ts", now(), &body),
            "svix-timestamp",
            timestamp,
        );

        let response = app.post_clerk(&headers, body).await;

        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{timestamp}");
        assert!(
            response.error().contains("svix-timestamp"),
            "{}",
            response.error()
        );
    }
    assert!(app.upstream.received().is_empty());
}

#[tokio::test]
async fn verified_invalid_json_is_quarantined_and_acknowledged() {
    let app = TestApp::spawn().await;
    let body = "{\"type\": \"user.created\", ";

    let response = app.deliver("msg_not_json", body).await;

    // Svix would retry a 4xx for 28 hours and then drop it: keep it instead.
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json(), serde_json::json!({}));
    assert!(app.upstream.received().is_empty());
    let quarantined = app.upstream.quarantined();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].event_id, "msg_not_json");
    assert_eq!(quarantined[0].body, body.as_bytes());
    assert_eq!(quarantined[0].event_type, "");
    assert!(
        quarantined[0].reason.starts_with("invalid JSON payload"),
        "{}",
        quarantined[0].reason
    );
    assert!(quarantined[0].delivered_at.unwrap().seconds > 0);
}

#[tokio::test]
async fn user_event_without_needed_fields_is_quarantined_naming_the_field() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            r#"{"type":"user.created","timestamp":1,"data":{"object":"user","updated_at":5}}"#,
            "data.id is missing",
        ),
        (
            r#"{"type":"user.updated","timestamp":1,"data":{"id":"user_1","object":"user"}}"#,
            "data.updated_at is missing",
        ),
        (
            r#"{"type":"user.deleted","timestamp":1,"data":{"object":"user","deleted":true}}"#,
            "data.id is missing",
        ),
    ];
    for (index, (body, _)) in cases.iter().enumerate() {
        let response = app.deliver(&format!("msg_incomplete_{index}"), *body).await;
        assert_eq!(response.status, StatusCode::OK, "{body}");
    }
    assert!(app.upstream.received().is_empty());
    let quarantined = app.upstream.quarantined();
    for (index, (stored, (body, reason))) in quarantined.iter().zip(cases).enumerate() {
        assert_eq!(stored.event_id, format!("msg_incomplete_{index}"));
        assert_eq!(stored.reason, reason);
        assert_eq!(stored.body, body.as_bytes());
        assert!(stored.event_type.starts_with("user."));
    }
}

#[tokio::test]
async fn metadata_too_deep_for_protobuf_is_quarantined_not_forwarded() {
    let app = TestApp::spawn().await;
    let mut metadata = serde_json::json!("leaf");
    for _ in 0..40 {
        metadata = serde_json::json!({ "deeper": metadata });
    }
    let body = serde_json::json!({
        "type": "user.updated",
        "data": {"id": "user_deep", "updated_at": 5, "public_metadata": metadata},
    })
    .to_string();

    let response = app.deliver("msg_deep", body.clone()).await;

    assert_eq!(response.status, StatusCode::OK);
    assert!(app.upstream.received().is_empty());
    let quarantined = app.upstream.quarantined();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].event_type, "user.updated");
    assert!(
        quarantined[0]
            .reason
            .contains("public_metadata is nested 40 levels"),
        "{}",
        quarantined[0].reason
    );
}

#[tokio::test]
async fn a_poisoned_delivery_is_503_while_the_quarantine_is_unavailable() {
    let app = TestApp::spawn().await;
    app.upstream.fail_quarantine_with(Some(Code::Unavailable));

    let response = app.deliver("msg_poison", "{not json").await;

    // Not stored yet, so not acknowledged: Svix retries.
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    app.upstream.fail_quarantine_with(None);
    let response = app.deliver("msg_poison", "{not json").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(app.upstream.quarantined().len(), 1);
}

#[tokio::test]
async fn svix_ids_longer_than_256_bytes_are_400() {
    let app = TestApp::spawn().await;

    let response = app.deliver(&"m".repeat(257), fixture(USER_CREATED)).await;

    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(response.error().contains("svix-id"), "{}", response.error());
    assert!(app.upstream.received().is_empty());
    assert!(app.upstream.quarantined().is_empty());
}

// ---- 404 / 405 / 413 / 415: routing and framing -----------------------------

#[tokio::test]
async fn unknown_path_is_404() {
    let app = TestApp::spawn().await;
    let body = fixture(USER_CREATED);
    let headers = signed_headers(SECRET, "msg_404", now(), &body);

    let response = app
        .request(Method::POST, "/webhooks/clerk", &headers, body)
        .await;

    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert!(app.upstream.received().is_empty());
}

#[tokio::test]
async fn other_methods_on_clerk_are_405_with_allow_post() {
    let app = TestApp::spawn().await;
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
        let response = app.request(method.clone(), "/clerk", &[], "").await;

        assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(response.headers[header::ALLOW], "POST", "{method}");
    }
    assert!(app.upstream.received().is_empty());
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415_and_not_forwarded() {
    let app = TestApp::spawn().await;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let body = fixture(USER_CREATED);
        let signed = signed_headers(SECRET, "msg_415", now(), &body);
        let headers = match content_type {
            Some(value) => replaced(&signed, "content-type", value),
            None => without(&signed, "content-type"),
        };

        let response = app.post_clerk(&headers, body).await;

        assert_eq!(
            response.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
    }
    assert!(app.upstream.received().is_empty());
}

/// A signed `user.created` padded with trailing spaces to exactly `size` bytes.
fn padded_event(size: usize) -> Vec<u8> {
    let mut body = fixture(USER_CREATED);
    assert!(body.len() <= size);
    body.resize(size, b' ');
    body
}

#[tokio::test]
async fn body_over_the_limit_is_413_and_not_forwarded() {
    let app = TestApp::spawn_with(FakeSync::start().await, |config| config.body_limit = 4096).await;

    let response = app.deliver("msg_big", padded_event(4097)).await;
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(app.upstream.received().is_empty());

    // The limit itself is allowed.
    let response = app.deliver("msg_at_limit", padded_event(4096)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(app.upstream.received().len(), 1);
}

#[tokio::test]
async fn default_limit_is_one_mebibyte() {
    let app = TestApp::spawn().await;

    let response = app.deliver("msg_huge", padded_event(1024 * 1024 + 1)).await;

    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(app.upstream.received().is_empty());
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let app = TestApp::spawn_with(FakeSync::start().await, |config| config.body_limit = 4096).await;
    let body = padded_event(8192);
    let headers = signed_headers(SECRET, "msg_chunked", now(), &body);

    // No Content-Length: the limit must hold while the body streams in.
    let mut request =
        String::from("POST /clerk HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n");
    for (name, value) in &headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Transfer-Encoding: chunked\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    for chunk in body.chunks(1000) {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        // The gateway may answer and close before the whole body is sent.
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;

    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(app.upstream.received().is_empty());
}

// ---- 5xx: the sync-service ---------------------------------------------------

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
    let addr = app.addr;
    let body = fixture(USER_CREATED);
    let headers = signed_headers(SECRET, "msg_cut", now(), &body);
    let in_flight = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let mut request = http::Request::post(format!("http://{addr}/clerk"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        client.request(request).await.unwrap().status()
    });
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

// ---- health, readiness, shutdown ------------------------------------------------

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
    let in_flight = {
        let body = fixture(USER_CREATED);
        let headers = signed_headers(SECRET, "msg_in_flight", now(), &body);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let mut request = http::Request::post(format!("http://{addr}/clerk"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        tokio::spawn(async move { client.request(request).await.unwrap().status() })
    };
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
