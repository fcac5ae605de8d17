//! Group commit at the store level: one batch holding duplicates, several
//! versions of a user, and a delete racing updates gets the same outcomes and
//! the same final state as applying its events one by one.

use clerk_sync_api::v1;
use clerk_sync_service::{
    Store,
    domain::{Event, Outcome, UserId},
    store::StoreOptions,
};

use crate::helpers::{Backend, TestDb, meta, user};

crate::on_both_backends!(one_batch_decides_like_events_applied_one_by_one);

fn upsert(event_id: &str, id: &str, version: i64) -> Event {
    Event::try_from(v1::ApplyUserUpdatedRequest {
        event: Some(v1::UserUpdated {
            meta: Some(meta(event_id, 0)),
            user: Some(user(id, version)),
        }),
    })
    .unwrap()
}

fn delete(event_id: &str, id: &str) -> Event {
    Event::try_from(v1::ApplyUserDeletedRequest {
        event: Some(v1::UserDeleted {
            meta: Some(meta(event_id, 5_000)),
            user_id: id.into(),
        }),
    })
    .unwrap()
}

async fn one_batch_decides_like_events_applied_one_by_one(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::connect(&StoreOptions {
        database_url: db.url.clone(),
        max_connections: 2,
        write_connections: 1,
        acquire_timeout: std::time::Duration::from_secs(5),
        statement_timeout: std::time::Duration::from_secs(30),
        lock_timeout: std::time::Duration::from_secs(5),
        user_cache_capacity: 1000,
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let first = store
        .apply_batch([
            upsert("msg_old", "user_stored", 100),
            upsert("msg_t0", "user_tomb", 1),
        ])
        .await;
    assert!(
        first
            .iter()
            .all(|o| *o.as_ref().unwrap() == Outcome::Applied)
    );
    assert_eq!(
        store.apply_batch([delete("msg_t1", "user_tomb")]).await[0]
            .as_ref()
            .unwrap(),
        &Outcome::Applied
    );

    let batch = [
        upsert("msg_a1", "user_a", 100),
        upsert("msg_a2", "user_a", 300),
        upsert("msg_a2", "user_a", 300), // the same delivery twice in one batch
        upsert("msg_a3", "user_a", 200),
        upsert("msg_b1", "user_b", 100),
        delete("msg_b2", "user_b"),
        upsert("msg_b3", "user_b", 900),
        upsert("msg_s1", "user_stored", 50),
        upsert("msg_old", "user_stored", 999), // applied in an earlier batch
        upsert("msg_t2", "user_tomb", 999),
        delete("msg_t3", "user_tomb"),
    ];
    let outcomes: Vec<Outcome> = store
        .apply_batch(batch.as_slice())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    use Outcome::*;
    assert_eq!(
        outcomes,
        [
            Stale,
            Applied,
            Duplicate,
            Stale, // user_a ends on version 300
            UserDeleted,
            Applied,
            UserDeleted, // user_b: the delete wins
            Stale,
            Duplicate, // user_stored keeps version 100
            UserDeleted,
            UserDeleted, // user_tomb was deleted before
        ]
    );
    let id = |s: &str| UserId::parse(s.into(), "id").unwrap();
    assert_eq!(store.get_user(&id("user_a")).await.unwrap().updated_at, 300);
    assert!(store.get_user(&id("user_b")).await.is_err());
    assert_eq!(
        store.get_user(&id("user_stored")).await.unwrap().updated_at,
        100
    );
    assert!(store.get_user(&id("user_tomb")).await.is_err());
    let found = store.find_by_email("user_a@example.com").await.unwrap();
    assert_eq!(found.id, id("user_a"));
    assert!(store.find_by_email("user_b@example.com").await.is_err());
}
