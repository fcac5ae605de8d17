//! 400 / 401: signature and timestamp verification, and verified payloads no
//! retry can fix, which are quarantined and acknowledged.

use http::StatusCode;
use tonic::Code;

use crate::{
    fake_sync::FakeSync,
    helpers::{SECRET, TestApp, USER_CREATED, fixture, now, replaced, signed_headers, without},
};

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

fn banned_with_deep_private_metadata() -> String {
    let mut metadata = serde_json::json!("leaf");
    for _ in 0..40 {
        metadata = serde_json::json!({ "deeper": metadata });
    }
    serde_json::json!({
        "type": "user.updated",
        "data": {"id": "user_banned", "updated_at": 5, "banned": true, "private_metadata": metadata},
    })
    .to_string()
}

#[tokio::test]
async fn private_metadata_the_sync_service_does_not_keep_never_blocks_an_event() {
    let app = TestApp::spawn().await;

    let response = app
        .deliver("msg_banned", banned_with_deep_private_metadata())
        .await;

    // Forwarded without it: the ban is applied.
    assert_eq!(response.status, StatusCode::OK);
    assert!(app.upstream.quarantined().is_empty());
    let received = app.upstream.received();
    let [received] = received.as_slice() else {
        panic!("{received:?}")
    };
    let clerk_sync_gateway::clerk::UserEvent::Updated(updated) = &received.event else {
        panic!("{received:?}")
    };
    let user = updated.user.as_ref().unwrap();
    assert!(user.banned);
    assert_eq!(user.private_metadata, None);
}

#[tokio::test]
async fn private_metadata_too_deep_is_quarantined_when_it_is_forwarded() {
    let app = TestApp::spawn_with(FakeSync::start().await, |config| {
        config.sync_service.private_metadata = true;
    })
    .await;

    let response = app
        .deliver("msg_banned", banned_with_deep_private_metadata())
        .await;

    assert_eq!(response.status, StatusCode::OK);
    assert!(app.upstream.received().is_empty());
    let quarantined = app.upstream.quarantined();
    assert_eq!(quarantined.len(), 1);
    assert!(
        quarantined[0]
            .reason
            .contains("private_metadata is nested 40 levels"),
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
