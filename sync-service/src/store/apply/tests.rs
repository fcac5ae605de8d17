//! The batch logic exists twice, as the SQLite writer's statements and as the
//! PL/pgSQL function `clerk_sync_apply_batch`: these tests fail when the two
//! drift apart. The function's column lists are read from its SQL text and
//! compared with the entities and [`PROFILE_COLUMNS`]; then the same batches
//! go through the SQLite writer and through the function on PostgreSQL, and
//! their outcomes and every table they write must come out identical.

#[path = "../../../../tests/support/test_db.rs"]
#[allow(dead_code, unused_macros)] // Shared with the test binaries; only PostgreSQL is needed here.
mod test_db;

use std::collections::{BTreeMap, BTreeSet};

use clerk_sync_api::v1;
use clerk_sync_migrations::{APPLY_BATCH_FUNCTION, Migrator, MigratorTrait};
use sea_orm::{Database, IdenStatic, QueryOrder};

use super::*;
use crate::store::entity::{feed_head, user_changes};

/// The column names of `E`.
fn columns<E: EntityTrait>() -> BTreeSet<String> {
    E::Column::iter().map(|c| c.as_str().to_owned()).collect()
}

/// The function's text from the end of `from` to the start of the next `to`,
/// without comments.
fn between(from: &str, to: &str) -> String {
    let sql = APPLY_BATCH_FUNCTION;
    let start = sql
        .find(from)
        .unwrap_or_else(|| panic!("no {from:?} in the function"))
        + from.len();
    let end = start
        + sql[start..]
            .find(to)
            .unwrap_or_else(|| panic!("no {to:?} after {from:?}"));
    sql[start..end]
        .lines()
        .map(|line| line.split("--").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The names `alias.name` mentions of `alias` in `sql`.
fn qualified(sql: &str, alias: &str) -> BTreeSet<String> {
    let prefix = format!("{alias}.");
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|word| word.strip_prefix(&prefix))
        // `alias.*` names no column.
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_function_updates_the_profile_columns_and_the_same_guard_columns() {
    let set = between("ON CONFLICT (id) DO UPDATE SET", "WHERE stored.deleted_at");
    let mut copied = BTreeSet::new();
    let mut computed = BTreeMap::new();
    for assignment in set.split(',') {
        let (column, value) = assignment.split_once('=').expect("column = value");
        let (column, value) = (column.trim(), value.split_whitespace().collect::<Vec<_>>());
        if value == [format!("excluded.{column}")] {
            copied.insert(column.to_owned());
        } else {
            computed.insert(column.to_owned(), value.join(" "));
        }
    }
    // What `write_users` copies from the incoming row: the profile and the
    // deletion time; the version alone is computed (a tombstone keeps it).
    let mut profile: BTreeSet<String> = PROFILE_COLUMNS
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    profile.insert(users::Column::DeletedAt.as_str().to_owned());
    assert_eq!(copied, profile);
    assert_eq!(
        computed.keys().collect::<Vec<_>>(),
        [users::Column::UpdatedAt.as_str()]
    );
    // Every other column of the entity is the key or the version.
    let mut all = profile;
    all.extend([users::Column::Id, users::Column::UpdatedAt].map(|c| c.as_str().to_owned()));
    assert_eq!(all, columns::<users::Entity>());

    // The guard compares the columns the statements' guard compares.
    let guard = between("WHERE stored.deleted_at", "RETURNING");
    let guard = format!("stored.deleted_at {guard}");
    let compared = [
        users::Column::DeletedAt,
        users::Column::UpdatedAt,
        users::Column::ProfileFormat,
    ]
    .map(|c| c.as_str().to_owned());
    assert_eq!(
        qualified(&guard, "stored"),
        BTreeSet::from(compared.clone())
    );
    assert_eq!(qualified(&guard, "excluded"), BTreeSet::from(compared));
}

#[test]
fn the_function_writes_the_email_index_and_the_log_columns_of_the_entities() {
    let index = between(
        "v_written := v_upserted || v_tombstoned;",
        "UPDATE feed_head",
    );
    let mut named = qualified(&index, "n");
    named.extend(qualified(&index, "e"));
    assert_eq!(named, columns::<user_email_addresses::Entity>());

    let log = between("INSERT INTO user_changes (", ")");
    let log: BTreeSet<String> = log
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_owned())
        .collect();
    assert_eq!(log, columns::<user_changes::Entity>());
}

#[test]
fn the_rows_sent_to_the_function_are_keyed_by_column_name() {
    // `json_populate_record` matches JSON keys with column names: a field
    // serialised under another name would arrive as NULL.
    fn keys(value: impl serde::Serialize) -> BTreeSet<String> {
        match serde_json::to_value(value).unwrap() {
            serde_json::Value::Object(map) => map.into_iter().map(|(key, _)| key).collect(),
            other => panic!("not an object: {other}"),
        }
    }
    let user = user_row(&events()[0].change);
    assert_eq!(keys(&user), columns::<users::Entity>());
    assert_eq!(
        keys(ledger_row(&events()[0], 0)),
        columns::<processed_events::Entity>()
    );
    let email = user_email_addresses::Model {
        email_lower: "a@x.io".into(),
        user_id: "u".into(),
    };
    assert_eq!(keys(email), columns::<user_email_addresses::Entity>());
}

/// A reproducible stream of small numbers.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % sides
    }
}

/// Sixty deliveries over six users: creates, updates and deletes, versions
/// that tie and go backwards, addresses that move between users, differ in
/// case, are unverified, or carry a NUL.
fn events() -> Vec<Event> {
    let mut dice = Dice(7);
    let addresses = ["a@x.io", "A@X.IO", "b@y.org", "c\0@z.net", "d@w.com"];
    (0..60)
        .map(|n| {
            let meta = Some(v1::EventMeta {
                event_id: format!("msg_{n:02}"),
                occurred_at: Some(prost_types::Timestamp {
                    seconds: 1 + dice.roll(9) as i64,
                    nanos: 0,
                }),
            });
            let id = format!("user_{}", dice.roll(6));
            let event = match dice.roll(10) {
                0 => Event::try_from(v1::ApplyUserDeletedRequest {
                    event: Some(v1::UserDeleted { meta, user_id: id }),
                }),
                kind => {
                    let email_addresses = (0..dice.roll(3))
                        .map(|_| v1::EmailAddress {
                            address: addresses[dice.roll(5) as usize].into(),
                            verified: dice.roll(3) > 0,
                            primary: false,
                        })
                        .collect();
                    let user = v1::User {
                        id,
                        first_name: Some(format!("v{}\0{n}", dice.roll(4))),
                        email_addresses,
                        updated_at: Some(prost_types::Timestamp {
                            seconds: dice.roll(5) as i64,
                            nanos: 0,
                        }),
                        ..Default::default()
                    };
                    if kind < 4 {
                        Event::try_from(v1::ApplyUserCreatedRequest {
                            event: Some(v1::UserCreated {
                                meta,
                                user: Some(user),
                            }),
                        })
                    } else {
                        Event::try_from(v1::ApplyUserUpdatedRequest {
                            event: Some(v1::UserUpdated {
                                meta,
                                user: Some(user),
                            }),
                        })
                    }
                }
            };
            event.expect("a valid event")
        })
        .collect()
}

/// Every row of every table a batch writes, in key order.
#[derive(Debug, PartialEq)]
struct Tables {
    users: Vec<users::Model>,
    emails: Vec<user_email_addresses::Model>,
    ledger: Vec<processed_events::Model>,
    log: Vec<user_changes::Model>,
    head: Vec<feed_head::Model>,
}

impl Tables {
    async fn read(db: &DatabaseConnection) -> Self {
        Self {
            users: users::Entity::find()
                .order_by_asc(users::Column::Id)
                .all(db)
                .await
                .unwrap(),
            emails: user_email_addresses::Entity::find()
                .order_by_asc(user_email_addresses::Column::EmailLower)
                .order_by_asc(user_email_addresses::Column::UserId)
                .all(db)
                .await
                .unwrap(),
            ledger: processed_events::Entity::find()
                .order_by_asc(processed_events::Column::EventId)
                .all(db)
                .await
                .unwrap(),
            log: user_changes::Entity::find()
                .order_by_asc(user_changes::Column::Position)
                .all(db)
                .await
                .unwrap(),
            head: feed_head::Entity::find().all(db).await.unwrap(),
        }
    }
}

async fn migrated(url: &str) -> DatabaseConnection {
    let db = Database::connect(url).await.unwrap();
    Migrator::up(&db, None).await.unwrap();
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_writer_and_the_function_write_alike() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clerk-sync.db");
    let statements = migrated(&format!("sqlite://{}?mode=rwc", file.display())).await;
    let mut writer = rusqlite::Connection::open(&file).unwrap();
    let function = migrated(&test_db::TestDb::new(test_db::Backend::Postgres).await.url).await;
    let events = events();
    let mut dice = Dice(11);
    let mut outcomes = BTreeSet::new();
    for round in 0..40 {
        let batch: Vec<Event> = (0..1 + dice.roll(8))
            .map(|_| events[dice.roll(events.len() as u64) as usize].clone())
            .collect();
        let batch = Batch::new(&batch);
        let now = 10_000 + round;

        let txn = writer.transaction().unwrap();
        let by_statements = sqlite::apply_step_by_step(&txn, &batch, now).unwrap();
        txn.commit().unwrap();
        let by_function = apply_on_postgres(&function, &batch, now).await.unwrap();

        assert_eq!(by_statements, by_function, "round {round}");
        assert_eq!(
            Tables::read(&statements).await,
            Tables::read(&function).await,
            "round {round}"
        );
        outcomes.extend(
            batch
                .outcomes(&by_function)
                .into_iter()
                .map(|o| format!("{o:?}")),
        );
    }
    // The batches met every case the guard decides.
    let every = [
        Outcome::Applied,
        Outcome::Duplicate,
        Outcome::Stale,
        Outcome::UserDeleted,
    ];
    assert_eq!(
        outcomes,
        every.map(|o| format!("{o:?}")).into_iter().collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_writer_waits_for_the_write_lock_then_answers_unavailable_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clerk-sync.db");
    let db = migrated(&format!("sqlite://{}?mode=rwc", file.display())).await;
    let writer = SqliteWriter::open(&file, std::time::Duration::from_millis(200)).unwrap();
    let events: Arc<[Event]> = events()[..5].into();

    // Another writer holds SQLite's write lock past the busy timeout.
    let blocker = rusqlite::Connection::open(&file).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    let refused = writer.apply(Arc::clone(&events), 1).await;
    assert!(
        matches!(refused, Err(Error::Unavailable(_))),
        "a busy database is worth a retry: {refused:?}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
    assert!(Tables::read(&db).await.ledger.is_empty(), "nothing written");

    // Once the lock is free, the same batch applies whole.
    blocker.execute_batch("COMMIT").unwrap();
    let outcomes = writer.apply(Arc::clone(&events), 2).await.unwrap();
    assert!(outcomes.contains(&Outcome::Applied), "{outcomes:?}");
    let ledger = Tables::read(&db).await.ledger;
    let ids: BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ledger
            .iter()
            .map(|row| row.event_id.as_str())
            .collect::<BTreeSet<_>>(),
        ids
    );
}

/// `seq_tup_read` of `user_email_addresses`: rows read by whole-table scans.
async fn email_index_rows_scanned(db: &DatabaseConnection) -> i64 {
    // Counters reach the shared statistics when a backend flushes them.
    db.execute_unprepared("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'user_email_addresses'",
        ))
        .await
        .unwrap()
        .expect("the table's statistics");
    row.try_get("", "seq_tup_read").unwrap()
}

/// The statements that look rows up in growing tables are planned at every
/// call. The function first runs while the email index is tiny and analyzed,
/// in a session that caches a generic plan of every statement planned once
/// (PostgreSQL does so by itself after five calls when the generic plan
/// costs no more; here at once): a whole-table scan, right for a tiny table.
/// Then the index grows, with no ANALYZE to invalidate cached plans, as in a
/// bulk load. The next batch must still find its users' rows through the
/// index, not read them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_finds_the_email_index_rows_by_user_after_it_grew() {
    let url = test_db::TestDb::new(test_db::Backend::Postgres).await.url;
    migrated(&url).await;
    // One session: PL/pgSQL caches plans per connection.
    let mut options = sea_orm::ConnectOptions::new(&url);
    options.max_connections(1).min_connections(1);
    let db = Database::connect(options).await.unwrap();
    db.execute_unprepared("SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    let events = events();
    for (round, batch) in events.chunks(6).enumerate() {
        apply_on_postgres(&db, &Batch::new(batch), round as i64)
            .await
            .unwrap();
        if round == 0 {
            db.execute_unprepared("ANALYZE user_email_addresses")
                .await
                .unwrap();
        }
    }
    const GROWN: i64 = 50_000;
    db.execute_unprepared(&format!(
        "INSERT INTO user_email_addresses (email_lower, user_id) \
         SELECT 'bulk' || n || '@x.io', 'user_bulk_' || n FROM generate_series(1, {GROWN}) n"
    ))
    .await
    .unwrap();

    let newcomer = Event::try_from(v1::ApplyUserCreatedRequest {
        event: Some(v1::UserCreated {
            meta: Some(v1::EventMeta {
                event_id: "msg_newcomer".into(),
                occurred_at: Some(prost_types::Timestamp::default()),
            }),
            user: Some(v1::User {
                id: "user_newcomer".into(),
                email_addresses: vec![v1::EmailAddress {
                    address: "new@x.io".into(),
                    verified: true,
                    primary: true,
                }],
                updated_at: Some(prost_types::Timestamp::default()),
                ..Default::default()
            }),
        }),
    })
    .unwrap();

    let before = email_index_rows_scanned(&db).await;
    let written = apply_on_postgres(&db, &Batch::new(&[newcomer]), 100)
        .await
        .unwrap();
    assert!(
        !written.upserted.is_empty(),
        "the batch rewrote a user's addresses"
    );
    let scanned = email_index_rows_scanned(&db).await - before;
    assert!(
        scanned < GROWN,
        "the batch read {scanned} rows of the {GROWN}-row email index by scanning it"
    );
}
