//! Property: any permutation, with any duplicates, of any set of creates,
//! updates and deletes ends in the state in-order delivery gives. Checked on
//! SQLite and on PostgreSQL with two sync-service instances taking the
//! deliveries concurrently. Case counts stay modest so the suite stays fast.

use futures::future::join_all;
use proptest::{
    prelude::*,
    test_runner::{Config as ProptestConfig, TestCaseError, TestRunner},
};
use tonic::Code;

use crate::helpers::{Backend, TestApp, TestDb, user};

/// One delivery: which user, and a version (`Some`) or a delete (`None`).
#[derive(Clone, Debug)]
struct Delivery {
    event_id: String,
    user: usize,
    version: Option<i64>,
}

/// The history of up to three users (one to four versions each, maybe a
/// delete), every event delivered one to three times, in any order.
fn histories() -> impl Strategy<Value = (Vec<(u8, bool)>, Vec<Delivery>)> {
    prop::collection::vec((1u8..=4, any::<bool>()), 1..=3).prop_flat_map(|users| {
        let mut events = Vec::new();
        for (u, &(versions, deleted)) in users.iter().enumerate() {
            for v in 1..=i64::from(versions) {
                events.push((u, Some(v * 10)));
            }
            if deleted {
                events.push((u, None));
            }
        }
        let copies = prop::collection::vec(1usize..=3, events.len());
        (Just(users), Just(events), copies).prop_flat_map(|(users, events, copies)| {
            let mut deliveries = Vec::new();
            for (index, ((user, version), copies)) in events.iter().zip(copies).enumerate() {
                for _ in 0..copies {
                    deliveries.push(Delivery {
                        event_id: format!("e{index}"),
                        user: *user,
                        version: *version,
                    });
                }
            }
            (Just(users), Just(deliveries).prop_shuffle())
        })
    })
}

async fn deliver(app: &TestApp, case: u32, delivery: &Delivery) {
    let user_id = format!("user_{case}_{}", delivery.user);
    let event_id = format!("msg_{case}_{}_{}", delivery.user, delivery.event_id);
    match delivery.version {
        Some(10) => app.created(&event_id, user(&user_id, 10)).await,
        Some(version) => app.updated(&event_id, user(&user_id, version)).await,
        None => app.deleted(&event_id, &user_id, 1_000).await,
    };
}

/// Runs `cases` histories against `apps` (deliveries alternate between them,
/// all at once) and checks each user ends as in-order delivery leaves it.
async fn check(apps: &[&TestApp], cases: u32) {
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let handle = tokio::runtime::Handle::current();
    let counter = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&histories(), |(users, deliveries)| {
        // Fresh user ids per case: one database serves every case.
        let case = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                join_all(
                    deliveries
                        .iter()
                        .enumerate()
                        .map(|(i, delivery)| deliver(apps[i % apps.len()], case, delivery)),
                )
                .await;
                for (u, &(versions, deleted)) in users.iter().enumerate() {
                    let id = format!("user_{case}_{u}");
                    let stored = apps[0].get(&id).await;
                    if deleted {
                        prop_assert_eq!(stored.map_err(|s| s.code()), Err(Code::NotFound));
                    } else {
                        let expected = user(&id, i64::from(versions) * 10);
                        prop_assert_eq!(stored.map_err(|s| s.code()), Ok(expected));
                    }
                }
                Ok::<(), TestCaseError>(())
            })
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_permutation_with_duplicates_ends_in_order_on_sqlite() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db.url).await;
    check(&[&app], 24).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_permutation_with_duplicates_ends_in_order_on_postgres_with_two_instances() {
    let db = TestDb::new(Backend::Postgres).await;
    let first = TestApp::spawn(&db.url).await;
    let second = TestApp::spawn(&db.url).await;
    check(&[&first, &second], 24).await;
}
