//! The metrics endpoint after real traffic: events by type and outcome, batch
//! sizes and commit times, gRPC calls by method and code (made-up methods
//! folded into `unknown`), the database pool and the build, on both backends.
//! Every scrape also passes `promtool check metrics` when `PROMTOOL` is set.

use std::time::Duration;

use clerk_sync_api::v1::{
    self, DropQuarantinedRequest, Outcome, QuarantineRequest,
    quarantine_service_client::QuarantineServiceClient,
};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::helpers::{Backend, Scrape, TestApp, TestDb, meta, ts, user};

crate::on_both_backends!(
    events_calls_and_batches_are_counted_exactly,
    the_quarantine_size_follows_the_table,
    the_change_feed_head_follows_commits,
);

const EVENTS: &str = "clerk_sync_service_events_total";
const CALLS: &str = "clerk_sync_service_grpc_requests_total";
const DURATIONS: &str = "clerk_sync_service_grpc_request_duration_seconds_count";
const SYNC: &str = "clerk.sync.v1.UserSyncService";
const DIRECTORY: &str = "clerk.sync.v1.UserDirectoryService";

fn events(event_type: &str, outcome: &str) -> String {
    format!(r#"{EVENTS}{{event_type="{event_type}",outcome="{outcome}"}}"#)
}

fn calls(service: &str, method: &str, code: &str) -> String {
    format!(r#"{CALLS}{{service="{service}",method="{method}",code="{code}"}}"#)
}

fn durations(service: &str, method: &str) -> String {
    format!(r#"{DURATIONS}{{service="{service}",method="{method}"}}"#)
}

async fn events_calls_and_batches_are_counted_exactly(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let before = app.scrape().await;

    // Five events, one at a time, so each commits in a batch of its own.
    assert_eq!(
        app.created("msg_1", user("user_1", 100)).await,
        Outcome::Applied
    );
    assert_eq!(
        app.created("msg_1", user("user_1", 100)).await,
        Outcome::Duplicate
    );
    assert_eq!(
        app.updated("msg_2", user("user_1", 50)).await,
        Outcome::Stale
    );
    assert_eq!(app.deleted("msg_3", "user_1", 200).await, Outcome::Applied);
    assert_eq!(
        app.created("msg_4", user("user_1", 300)).await,
        Outcome::UserDeleted
    );
    // Refused before the store: an event without an id.
    let invalid = app
        .sync
        .clone()
        .apply_user_created(v1::ApplyUserCreatedRequest {
            event: Some(v1::UserCreated {
                meta: Some(meta("", 0)),
                user: Some(user("user_2", 100)),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    // Queries: one hit, one miss.
    app.created("msg_5", user("user_3", 100)).await;
    app.get("user_3").await.unwrap();
    assert_eq!(app.get("user_1").await.unwrap_err().code(), Code::NotFound);
    // A method this server does not have, on a path a client made up.
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.unwrap();
    let made_up = grpc
        .unary(
            tonic::Request::new(HealthCheckRequest::default()),
            http::uri::PathAndQuery::from_static("/made.up.Service/user_1"),
            tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(made_up.code(), Code::Unimplemented);

    let after = app.scrape().await;
    let expected = [
        (events("user.created", "applied"), 2.0),
        (events("user.created", "duplicate"), 1.0),
        (events("user.created", "user_deleted"), 1.0),
        (events("user.updated", "stale"), 1.0),
        (events("user.deleted", "applied"), 1.0),
        (events("user.created", "error"), 0.0),
        (
            "clerk_sync_service_commit_batch_events_count".to_owned(),
            6.0,
        ),
        ("clerk_sync_service_commit_batch_events_sum".to_owned(), 6.0),
        (
            r#"clerk_sync_service_commit_batch_events_bucket{le="1"}"#.to_owned(),
            6.0,
        ),
        (
            "clerk_sync_service_commit_duration_seconds_count".to_owned(),
            6.0,
        ),
        (calls(SYNC, "ApplyUserCreated", "OK"), 4.0),
        (calls(SYNC, "ApplyUserCreated", "INVALID_ARGUMENT"), 1.0),
        (calls(SYNC, "ApplyUserUpdated", "OK"), 1.0),
        (calls(SYNC, "ApplyUserDeleted", "OK"), 1.0),
        (calls(DIRECTORY, "GetUser", "OK"), 1.0),
        (calls(DIRECTORY, "GetUser", "NOT_FOUND"), 1.0),
        (calls("unknown", "unknown", "UNIMPLEMENTED"), 1.0),
        (durations(SYNC, "ApplyUserCreated"), 5.0),
        (durations(DIRECTORY, "GetUser"), 2.0),
    ];
    for (series, delta) in expected {
        assert_eq!(
            after.delta(&before, &series),
            delta,
            "{series}\n{}",
            after.text
        );
    }
    // Nothing else was counted for the apply path.
    let events_counted: f64 = after
        .text
        .lines()
        .filter(|line| line.starts_with(EVENTS))
        .map(|line| line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(events_counted, 6.0, "{}", after.text);
    // A made-up path never becomes a label value.
    assert!(!after.text.contains("made.up"), "{}", after.text);
    assert!(!after.text.contains("msg_"), "{}", after.text);

    // The pools (sampled every health-check interval): at least the one
    // connection each keeps open, never more than configured: the one
    // writer and one more, and the five readers.
    for (pool, most) in [("write", 2.0), ("read", 5.0)] {
        let gauge = |state| {
            after.present(&format!(
                r#"clerk_sync_service_db_pool_connections{{pool="{pool}",state="{state}"}}"#
            ))
        };
        let open = gauge("in_use") + gauge("idle");
        assert!((1.0..=most).contains(&open), "{pool}: {}", after.text);
    }
    assert_eq!(
        after.present(&format!(
            r#"clerk_sync_service_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
}

const QUARANTINED: &str = "clerk_sync_service_quarantined_events";

/// Scrapes until the sampled quarantine size reads `expected`, and returns
/// that scrape.
async fn scrape_until_quarantined(app: &TestApp, expected: f64) -> Scrape {
    scrape_until(app, QUARANTINED, expected).await
}

/// Scrapes until the gauge `series` (sampled by the database watcher, every
/// 50 ms in tests) reads `expected`, and returns that scrape.
async fn scrape_until(app: &TestApp, series: &str, expected: f64) -> Scrape {
    let mut scrape = app.scrape().await;
    for _ in 0..100 {
        if scrape.value(series) == expected && scrape.text.contains(series) {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        scrape = app.scrape().await;
    }
    panic!("{series} never read {expected}:\n{}", scrape.text);
}

async fn the_change_feed_head_follows_commits(backend: Backend) {
    const HEAD: &str = "clerk_sync_service_change_feed_head";
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    scrape_until(&app, HEAD, 0.0).await;
    for id in ["user_1", "user_2", "user_3"] {
        app.created(&format!("msg_{id}"), user(id, 100)).await;
    }
    // One position per committed change.
    scrape_until(&app, HEAD, 3.0).await;
    app.deleted("msg_del", "user_2", 200).await;
    // A stale event commits no change and moves nothing.
    app.updated("msg_stale", user("user_1", 50)).await;
    scrape_until(&app, HEAD, 4.0).await;
}

async fn the_quarantine_size_follows_the_table(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let before = scrape_until_quarantined(&app, 0.0).await;

    let mut quarantine = QuarantineServiceClient::new(app.channel.clone());
    let request = |event_id: &str| QuarantineRequest {
        event_id: event_id.into(),
        event_type: "user.updated".into(),
        reason: "invalid JSON payload".into(),
        body: b"{not json".to_vec(),
        delivered_at: Some(ts(1_700_000_000_000)),
    };
    for event_id in ["msg_q1", "msg_q2", "msg_q1"] {
        quarantine.quarantine(request(event_id)).await.unwrap();
    }
    // Two events (one delivered twice).
    scrape_until_quarantined(&app, 2.0).await;

    quarantine
        .drop_quarantined(DropQuarantinedRequest {
            event_id: "msg_q2".into(),
        })
        .await
        .unwrap();
    let after = scrape_until_quarantined(&app, 1.0).await;
    let quarantine_calls = r#"clerk_sync_service_grpc_requests_total{service="clerk.sync.v1.QuarantineService",method="Quarantine",code="OK"}"#;
    assert_eq!(
        after.delta(&before, quarantine_calls),
        3.0,
        "{}",
        after.text
    );
}
