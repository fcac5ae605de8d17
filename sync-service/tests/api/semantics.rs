//! The sync semantics: idempotency, last write wins, update-before-create,
//! final deletes, and order independence.

use clerk_sync_api::v1::Outcome;
use tonic::Code;

use crate::helpers::{Backend, TestApp, TestDatabase, TestDb, ts, user};

crate::on_both_backends!(
    created_user_is_served_with_every_field,
    duplicate_event_ids_change_nothing,
    older_and_equal_versions_are_stale,
    update_before_create_creates_the_user,
    deletes_are_final_and_erase_personal_data,
    every_order_of_created_updated_deleted_ends_the_same,
    every_order_of_versions_ends_on_the_newest,
    state_and_deduplication_survive_a_restart,
);

async fn state_and_deduplication_survive_a_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    app.created("msg_1", user("user_1", 100)).await;
    app.created("msg_2", user("user_2", 100)).await;
    app.deleted("msg_3", "user_2", 200).await;
    app.stop().await;

    // Migrations run again on an up-to-date schema, and nothing was lost.
    let app = TestApp::spawn(&db.url).await;
    assert_eq!(app.get("user_1").await.unwrap(), user("user_1", 100));
    assert_eq!(app.get("user_2").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        app.created("msg_1", user("user_1", 100)).await,
        Outcome::Duplicate
    );
}

async fn created_user_is_served_with_every_field(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let sent = user("user_1", 1_654_012_591_835);

    assert_eq!(app.created("msg_1", sent.clone()).await, Outcome::Applied);

    assert_eq!(app.get("user_1").await.unwrap(), sent);
}

pub(crate) async fn duplicate_event_ids_change_nothing(db: impl TestDatabase) {
    let db = db.open().await;
    let app = TestApp::spawn(&db.url).await;
    assert_eq!(
        app.created("msg_1", user("user_1", 100)).await,
        Outcome::Applied
    );

    // The same id again, even carrying a newer version, is a no-op.
    assert_eq!(
        app.created("msg_1", user("user_1", 100)).await,
        Outcome::Duplicate
    );
    assert_eq!(
        app.updated("msg_1", user("user_1", 999)).await,
        Outcome::Duplicate
    );
    assert_eq!(
        app.deleted("msg_1", "user_1", 5000).await,
        Outcome::Duplicate
    );

    assert_eq!(app.get("user_1").await.unwrap(), user("user_1", 100));
}

pub(crate) async fn older_and_equal_versions_are_stale(db: impl TestDatabase) {
    let db = db.open().await;
    let app = TestApp::spawn(&db.url).await;
    assert_eq!(
        app.updated("msg_new", user("user_1", 200)).await,
        Outcome::Applied
    );

    assert_eq!(
        app.updated("msg_old", user("user_1", 100)).await,
        Outcome::Stale
    );
    assert_eq!(
        app.created("msg_created", user("user_1", 150)).await,
        Outcome::Stale
    );
    let mut same_version = user("user_1", 200);
    same_version.first_name = Some("changed".into());
    assert_eq!(app.updated("msg_same", same_version).await, Outcome::Stale);

    assert_eq!(app.get("user_1").await.unwrap(), user("user_1", 200));
}

async fn update_before_create_creates_the_user(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;

    assert_eq!(
        app.updated("msg_upd", user("user_1", 200)).await,
        Outcome::Applied
    );
    assert_eq!(app.get("user_1").await.unwrap(), user("user_1", 200));
    // The late create is older than what the update brought.
    assert_eq!(
        app.created("msg_create", user("user_1", 100)).await,
        Outcome::Stale
    );
    assert_eq!(app.get("user_1").await.unwrap(), user("user_1", 200));
}

pub(crate) async fn deletes_are_final_and_erase_personal_data(db: impl TestDatabase) {
    let db = db.open().await;
    let app = TestApp::spawn(&db.url).await;
    app.created("msg_1", user("user_1", 100)).await;

    assert_eq!(
        app.deleted("msg_del", "user_1", 150).await,
        Outcome::Applied
    );

    let status = app.get("user_1").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "user user_1 not found");
    // Later versions, and a second delete, are ignored.
    assert_eq!(
        app.updated("msg_2", user("user_1", 9_999)).await,
        Outcome::UserDeleted
    );
    assert_eq!(
        app.created("msg_3", user("user_1", 9_999)).await,
        Outcome::UserDeleted
    );
    assert_eq!(
        app.deleted("msg_del2", "user_1", 9_999).await,
        Outcome::UserDeleted
    );
    assert_eq!(app.get("user_1").await.unwrap_err().code(), Code::NotFound);

    // The tombstone holds nothing personal: the address no longer finds anyone.
    let found = app
        .directory
        .clone()
        .find_user_by_email(clerk_sync_api::v1::FindUserByEmailRequest {
            email_address: "user_1@example.com".into(),
        })
        .await;
    assert_eq!(found.unwrap_err().code(), Code::NotFound);
    let row = personal_columns_of_tombstone(&db.url, "user_1").await;
    assert_eq!(row, (None, None, None, None, Some(150)));
}

/// Reads the tombstone straight from the database.
async fn personal_columns_of_tombstone(
    url: &str,
    id: &str,
) -> (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
) {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let db = Database::connect(url).await.unwrap();
    let backend = db.get_database_backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => {
            "SELECT primary_email_address, email_addresses, first_name, display_name, deleted_at FROM users WHERE id = $1"
        }
        _ => {
            "SELECT primary_email_address, email_addresses, first_name, display_name, deleted_at FROM users WHERE id = ?"
        }
    };
    let row = db
        .query_one_raw(Statement::from_sql_and_values(backend, sql, [id.into()]))
        .await
        .unwrap()
        .expect("tombstone row exists");
    row.try_get_many_by_index().unwrap()
}

async fn every_order_of_created_updated_deleted_ends_the_same(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;

    for (n, order) in permutations(&[0, 1, 2]).into_iter().enumerate() {
        let id = format!("user_perm_{n}");
        for step in order {
            match step {
                0 => app.created(&format!("{id}_c"), user(&id, 100)).await,
                1 => app.updated(&format!("{id}_u"), user(&id, 200)).await,
                _ => app.deleted(&format!("{id}_d"), &id, 300).await,
            };
        }
        assert_eq!(
            app.get(&id).await.unwrap_err().code(),
            Code::NotFound,
            "{id}"
        );
    }

    // Without the delete, every order ends on the update.
    for (n, order) in permutations(&[0, 1]).into_iter().enumerate() {
        let id = format!("user_pair_{n}");
        for step in order {
            match step {
                0 => app.created(&format!("{id}_c"), user(&id, 100)).await,
                _ => app.updated(&format!("{id}_u"), user(&id, 200)).await,
            };
        }
        // Deliveries repeat: replay everything once more.
        assert_eq!(
            app.created(&format!("{id}_c"), user(&id, 100)).await,
            Outcome::Duplicate
        );
        assert_eq!(app.get(&id).await.unwrap(), user(&id, 200), "{id}");
    }
}

async fn every_order_of_versions_ends_on_the_newest(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let versions = [100, 200, 300, 400];
    for (n, order) in permutations(&versions).into_iter().enumerate() {
        let id = format!("user_v{n}");
        for version in order {
            app.updated(&format!("{id}_{version}"), user(&id, version))
                .await;
        }
        let stored = app.get(&id).await.unwrap();
        assert_eq!(stored.updated_at, Some(ts(400)), "{id}");
        assert_eq!(stored, user(&id, 400));
    }
}

fn permutations<T: Copy>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut all = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first);
            all.push(tail);
        }
    }
    all
}
