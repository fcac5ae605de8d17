//! The metrics endpoint after real traffic: events by type and outcome, batch
//! sizes and commit times, gRPC calls by method and code (made-up methods
//! folded into `unknown`), the database pool and the build, on both backends.
//! Every scrape also passes `promtool check metrics` when `PROMTOOL` is set.

use clerk_sync_api::v1::{self, Outcome};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::helpers::{Backend, TestApp, TestDb, meta, user};

crate::on_both_backends!(events_calls_and_batches_are_counted_exactly);

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

    // The pool (sampled every health-check interval): at least the one
    // connection kept open, never more than the configured five.
    let in_use = after.present(r#"clerk_sync_service_db_pool_connections{state="in_use"}"#);
    let idle = after.present(r#"clerk_sync_service_db_pool_connections{state="idle"}"#);
    assert!((1.0..=5.0).contains(&(in_use + idle)), "{}", after.text);
    assert_eq!(
        after.present(&format!(
            r#"clerk_sync_service_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
}
