//! End-to-end: Clerk payloads signed by Svix's own library go through the real
//! gateway and sync-service into SQLite or PostgreSQL, and are read back over
//! gRPC; `operability` checks the metrics and logs of the same traffic;
//! `backfill*` fill the directory from a fake Clerk Backend API.

mod backfill;
mod backfill_organizations;
mod backfill_safety;
mod backfill_schedule;
mod fake_clerk;
mod helpers;
mod hostile;
mod operability;
mod organizations;
mod traces;
mod trust;

use bytes::Bytes;
use futures::future::join_all;
use http::{Method, StatusCode};
use tonic::Code;

use helpers::{Backend, SECRET, Stack, TcpProxy, TestDb, fixture, now, signed_headers};

/// What a rejected request sends: label, method, headers, body, expected status.
type Case = (
    &'static str,
    Method,
    Vec<(&'static str, String)>,
    Vec<u8>,
    StatusCode,
);

const USER: &str = "user_29w83sxmDNGwOuEthce5gg56FcC";

crate::on_both_backends!(
    every_fixture_lands_in_the_directory,
    repeated_reordered_and_concurrent_deliveries_end_the_same,
    rejected_requests_write_nothing,
    sync_service_outage_is_503_and_the_retry_succeeds,
);

async fn every_fixture_lands_in_the_directory(backend: Backend) {
    let stack = Stack::start(backend).await;

    for (msg_id, name) in [
        ("msg_created", "user.created.json"),
        ("msg_unicode", "user.created.multi-email-unicode.json"),
        ("msg_phone", "user.created.phone-only.json"),
        ("msg_session", "session.created.unknown-type.json"),
    ] {
        let answer = stack.deliver(msg_id, &fixture(name)).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "{}"),
            "{name}"
        );
    }

    let user = stack.get_user(USER).await.unwrap();
    assert_eq!(
        user.primary_email_address.as_deref(),
        Some("example@example.org")
    );
    assert_eq!(user.display_name, "Example Example");
    assert_eq!(user.external_id.as_deref(), Some("567772"));
    assert_eq!(
        user.image_url.as_deref(),
        Some("https://img.clerk.com/xxxxxx")
    );
    assert_eq!(user.updated_at.unwrap().seconds, 1_654_012_591);

    let unicode = stack
        .get_user("user_2multiEmailPrimarySecond")
        .await
        .unwrap();
    assert_eq!(
        unicode.primary_email_address.as_deref(),
        Some("Primary.Person@Example.COM")
    );
    assert_eq!(
        unicode
            .email_addresses
            .iter()
            .map(|e| (e.address.as_str(), e.verified, e.primary))
            .collect::<Vec<_>>(),
        [
            ("old.address@example.net", true, false),
            ("Primary.Person@Example.COM", true, true)
        ]
    );
    assert_eq!(unicode.display_name, "Zoë Ångström-Ñúñez 😀");

    let phone_only = stack
        .get_user("user_2phoneOnlyNoEmailNoName")
        .await
        .unwrap();
    assert_eq!(phone_only.primary_email_address, None);
    assert_eq!(
        phone_only.primary_phone_number.as_deref(),
        Some("+15555550100")
    );
    assert!(!phone_only.display_name.contains("null"));
    assert!(!phone_only.display_name.is_empty());

    // The unknown event type was acknowledged and not stored: three users.
    assert_eq!(stack.all_users().await.len(), 3);

    // The update drops the last name: no "null" appears.
    let answer = stack
        .deliver("msg_updated", &fixture("user.updated.json"))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let user = stack.get_user(USER).await.unwrap();
    assert_eq!(user.display_name, "Example");
    assert_eq!(user.last_name, None);
    assert_eq!(user.updated_at.unwrap().seconds, 1_654_012_824);

    let answer = stack
        .deliver("msg_deleted", &fixture("user.deleted.json"))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        stack.get_user(USER).await.unwrap_err().code(),
        Code::NotFound
    );
    stack.stop().await;
}

async fn repeated_reordered_and_concurrent_deliveries_end_the_same(backend: Backend) {
    let stack = Stack::start(backend).await;
    let created = fixture("user.created.json");
    let updated = fixture("user.updated.json");

    // Out of order, then each again.
    for (msg_id, body) in [
        ("msg_u", &updated),
        ("msg_c", &created),
        ("msg_u", &updated),
        ("msg_c", &created),
    ] {
        assert_eq!(stack.deliver(msg_id, body).await.status, StatusCode::OK);
    }
    let after_sequential = stack.get_user(USER).await.unwrap();
    assert_eq!(after_sequential.display_name, "Example");

    // Svix retrying in parallel: ten copies of each at once.
    let deliveries = (0..10).flat_map(|_| {
        [
            stack.deliver("msg_c", &created),
            stack.deliver("msg_u", &updated),
        ]
    });
    for answer in join_all(deliveries).await {
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert_eq!(stack.get_user(USER).await.unwrap(), after_sequential);

    // The delete wins over everything, whenever the others arrive.
    let deleted = fixture("user.deleted.json");
    let answers = join_all([
        stack.deliver("msg_d", &deleted),
        stack.deliver("msg_u", &updated),
        stack.deliver("msg_c2", &created),
        stack.deliver("msg_d", &deleted),
    ])
    .await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
    assert_eq!(
        stack.get_user(USER).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        stack.deliver("msg_u_late", &updated).await.status,
        StatusCode::OK
    );
    assert_eq!(
        stack.get_user(USER).await.unwrap_err().code(),
        Code::NotFound
    );
}

async fn rejected_requests_write_nothing(backend: Backend) {
    let stack = Stack::start(backend).await;
    let body = fixture("user.created.json");
    let signed = |msg_id: &str| signed_headers(SECRET, msg_id, now(), &body);
    let without = |name: &str| -> Vec<(&'static str, String)> {
        signed("msg_x")
            .into_iter()
            .filter(|(n, _)| *n != name)
            .collect()
    };
    let with = |name: &'static str, value: &str| -> Vec<(&'static str, String)> {
        let mut headers: Vec<_> = signed("msg_x")
            .into_iter()
            .filter(|(n, _)| *n != name)
            .collect();
        headers.push((name, value.to_owned()));
        headers
    };
    let mut tampered = body.clone();
    let at = tampered.len() - 3;
    tampered[at] ^= 1;
    let too_big = vec![b' '; 1024 * 1024 + 1];

    let cases: Vec<Case> = vec![
        (
            "tampered body",
            Method::POST,
            signed("msg_x"),
            tampered,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "wrong secret",
            Method::POST,
            signed_headers(
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "msg_x",
                now(),
                &body,
            ),
            body.clone(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "stale timestamp",
            Method::POST,
            signed_headers(SECRET, "msg_x", now() - 301, &body),
            body.clone(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "missing svix-id",
            Method::POST,
            without("svix-id"),
            body.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing svix-timestamp",
            Method::POST,
            without("svix-timestamp"),
            body.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing svix-signature",
            Method::POST,
            without("svix-signature"),
            body.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong method",
            Method::PUT,
            signed("msg_x"),
            body.clone(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "wrong content type",
            Method::POST,
            with("content-type", "text/plain"),
            body.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "oversized body",
            Method::POST,
            signed_headers(SECRET, "msg_x", now(), &too_big),
            too_big.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "svix-id over 256 bytes",
            Method::POST,
            signed_headers(SECRET, &"m".repeat(257), now(), &body),
            body.clone(),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, method, headers, body, expected) in cases {
        let answer = stack
            .request(method, "/clerk", &headers, Bytes::from(body))
            .await;
        assert_eq!(answer.status, expected, "{what}: {}", answer.body);
        if expected != StatusCode::METHOD_NOT_ALLOWED && expected != StatusCode::PAYLOAD_TOO_LARGE {
            let error: serde_json::Value = serde_json::from_str(&answer.body)
                .unwrap_or_else(|_| panic!("{what}: body is not JSON: {}", answer.body));
            assert!(
                error["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{what}"
            );
            assert!(
                !answer.body.contains(&SECRET[6..]),
                "{what} leaks the secret"
            );
        }
    }
    assert_eq!(
        stack
            .request(
                Method::POST,
                "/nope",
                &signed("msg_x"),
                Bytes::from(body.clone())
            )
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    assert!(
        stack.all_users().await.is_empty(),
        "a rejected request wrote a user"
    );
    // msg_x was never recorded as applied: its genuine delivery now applies.
    assert_eq!(stack.deliver("msg_x", &body).await.status, StatusCode::OK);
    assert_eq!(stack.all_users().await.len(), 1);
}

async fn sync_service_outage_is_503_and_the_retry_succeeds(backend: Backend) {
    let mut stack = Stack::start(backend).await;
    stack.stop_sync().await;

    let body = fixture("user.created.json");
    let answer = stack.deliver("msg_outage", &body).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
    assert_eq!(
        stack
            .request(Method::GET, "/readyz", &[], Bytes::new())
            .await
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Svix retries the same delivery once the sync-service is back.
    stack.restart_sync().await;
    assert_eq!(
        stack.deliver("msg_outage", &body).await.status,
        StatusCode::OK
    );
    assert_eq!(stack.get_user(USER).await.unwrap().id, USER);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_503_and_the_retry_succeeds() {
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = proxy.route(&db.url);
    let stack = Stack::start_on(db, url).await;

    proxy.cut().await;
    let body = fixture("user.created.json");
    let answer = stack.deliver("msg_db_down", &body).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
    assert!(
        !answer.body.contains("postgres"),
        "internals leaked: {}",
        answer.body
    );

    proxy.restore().await;
    stack.wait_until_ready().await;
    assert_eq!(
        stack.deliver("msg_db_down", &body).await.status,
        StatusCode::OK
    );
    assert_eq!(stack.get_user(USER).await.unwrap().id, USER);
}
