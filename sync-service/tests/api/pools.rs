//! Reads and writes on their own connections: a writer stuck on a lock
//! holds up no query, and a query-only read pool never writes.

use std::time::Duration;

use clerk_sync_api::v1::{self, FindUserByEmailRequest, ListUsersRequest, Outcome};
use clerk_sync_service::Config;
use sea_orm::{ConnectionTrait, TransactionTrait};

use crate::helpers::{Backend, TestApp, TestDb, connect_sql, meta, user};

crate::on_both_backends!(reads_never_wait_behind_a_blocked_writer);

async fn reads_never_wait_behind_a_blocked_writer(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = Config::with_database(&db.url);
    // Every read goes to the database.
    config.user_cache_capacity = 0;
    // Long enough that the writer is still waiting when the reads are done.
    config.database_timeout_ms = 30_000;
    config.database_lock_timeout_ms = 30_000;
    let app = TestApp::spawn_with(config).await;
    app.created("msg_a", user("user_a", 100)).await;
    app.created("msg_b", user("user_b", 100)).await;

    // Another client holds the lock every batch takes last (SQLite's write
    // lock; PostgreSQL's row lock on the change log's head).
    let other = connect_sql(&db.url).await;
    let blocking = other.begin().await.unwrap();
    blocking
        .execute_unprepared(r#"UPDATE feed_head SET "position" = "position" WHERE id = 1"#)
        .await
        .unwrap();
    let mut sync = app.sync.clone();
    let write = tokio::spawn(async move {
        sync.apply_user_updated(v1::ApplyUserUpdatedRequest {
            event: Some(v1::UserUpdated {
                meta: Some(meta("msg_a2", 0)),
                user: Some(user("user_a", 200)),
            }),
        })
        .await
        .map(|response| response.into_inner().outcome())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!write.is_finished(), "the write did not wait for the lock");

    let got = app.get("user_b").await.unwrap();
    assert_eq!(got.first_name.as_deref(), Some("v100"));
    let mut directory = app.directory.clone();
    let found = directory
        .find_user_by_email(FindUserByEmailRequest {
            email_address: "user_b@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.user.unwrap().id, "user_b");
    let page = directory
        .list_users(ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.users.len(), 2);
    assert!(
        !write.is_finished(),
        "the reads were answered only once the write was through"
    );

    blocking.rollback().await.unwrap();
    assert_eq!(write.await.unwrap().unwrap(), Outcome::Applied);
    let got = app.get("user_a").await.unwrap();
    assert_eq!(got.first_name.as_deref(), Some("v200"));
}
