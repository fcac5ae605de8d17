//! Events forwarded with their typed fields and event id, each outcome's
//! answer, and balancing over several sync-services.

use clerk_sync_api::v1::{EventMeta, Outcome, UserCreated, UserDeleted, UserUpdated};
use clerk_sync_gateway::clerk::UserEvent;
use http::StatusCode;

use crate::{
    fake_sync::{FakeSync, Received},
    helpers::{SECRET, TestApp, USER_CREATED, fixture, now, replaced, signed_headers, ts},
};

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
