//! Concurrent and conflicting deliveries: from many connections to one
//! instance (group commit), and to two instances sharing one PostgreSQL.

use std::collections::HashMap;

use clerk_sync_api::v1::Outcome;
use futures::future::join_all;
use tonic::Code;

use crate::helpers::{Backend, TestApp, TestDb, user};

crate::on_both_backends!(concurrent_conflicting_events_end_in_the_dictated_state);

/// A deterministic shuffle of the events of `users` users: each gets versions
/// 1..=versions, some get a delete in the middle, and every event is sent
/// twice.
fn conflicting_events(users: usize, versions: i64) -> Vec<(String, String, Option<i64>)> {
    let mut events = Vec::new();
    for u in 0..users {
        let id = format!("user_{u}");
        for v in 1..=versions {
            events.push((format!("msg_{u}_{v}"), id.clone(), Some(v * 10)));
        }
        if u % 4 == 0 {
            events.push((format!("msg_{u}_del"), id.clone(), None));
        }
    }
    let copies = events.clone();
    events.extend(copies);
    // Linear congruential shuffle: the same order on every run.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for i in (1..events.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        events.swap(i, (state >> 33) as usize % (i + 1));
    }
    events
}

async fn send(
    app: &TestApp,
    (event_id, user_id, version): (String, String, Option<i64>),
) -> Outcome {
    match version {
        Some(v) if v == 10 => app.created(&event_id, user(&user_id, v)).await,
        Some(v) => app.updated(&event_id, user(&user_id, v)).await,
        None => app.deleted(&event_id, &user_id, 1_000).await,
    }
}

async fn assert_dictated_state(app: &TestApp, users: usize, versions: i64) {
    for u in 0..users {
        let id = format!("user_{u}");
        let stored = app.get(&id).await;
        if u % 4 == 0 {
            assert_eq!(
                stored.unwrap_err().code(),
                Code::NotFound,
                "{id} was deleted"
            );
        } else {
            assert_eq!(
                stored.unwrap(),
                user(&id, versions * 10),
                "{id} ends on its newest version"
            );
        }
    }
}

fn count(outcomes: &[Outcome]) -> HashMap<Outcome, usize> {
    let mut counts = HashMap::new();
    for outcome in outcomes {
        *counts.entry(*outcome).or_default() += 1;
    }
    counts
}

async fn concurrent_conflicting_events_end_in_the_dictated_state(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let (users, versions) = (12, 6);
    let events = conflicting_events(users, versions);
    let total = events.len();

    let outcomes = join_all(events.into_iter().map(|event| send(&app, event))).await;

    assert_dictated_state(&app, users, versions).await;
    // Every event was delivered twice: exactly half are duplicates.
    assert_eq!(count(&outcomes)[&Outcome::Duplicate], total / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgres_end_in_the_dictated_state() {
    let db = TestDb::new(Backend::Postgres).await;
    let first = TestApp::spawn(&db.url).await;
    let second = TestApp::spawn(&db.url).await;
    let (users, versions) = (10, 8);
    let events = conflicting_events(users, versions);
    let total = events.len();

    // Alternate instances, so each event and its copy usually race on both.
    let outcomes = join_all(events.into_iter().enumerate().map(|(i, event)| {
        let app = if i % 2 == 0 { &first } else { &second };
        send(app, event)
    }))
    .await;

    assert_dictated_state(&first, users, versions).await;
    assert_dictated_state(&second, users, versions).await;
    assert_eq!(count(&outcomes)[&Outcome::Duplicate], total / 2);
}
