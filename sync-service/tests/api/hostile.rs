//! Hostile and odd input at the sync-service: what a database refuses is
//! handled the same on both backends, limits hold (bind parameters, time
//! overflow), the ledger prunes without making replays harmful, the
//! quarantine keeps one record per event id, and concurrent batches never
//! deadlock on PostgreSQL.

use clerk_sync_api::v1::{
    self, Outcome, QuarantineRequest, quarantine_service_client::QuarantineServiceClient,
};
use clerk_sync_service::{
    domain::{AccountState, Change, EmailAddress, Event, EventId, EventKind, Profile, UserId},
    store::{FeedChange, Store, StoreOptions},
};
use prost_types::Timestamp;
use tonic::Code;

use crate::helpers::{Backend, TestApp, TestDb, email, meta, ts, user};

crate::on_both_backends!(
    nul_in_every_text_field_is_removed_alike,
    ids_with_control_characters_are_invalid,
    changed_since_that_overflows_is_invalid,
    a_user_with_sixteen_thousand_addresses_is_stored,
    a_batch_over_every_bind_limit_is_applied,
    a_replay_after_pruning_changes_nothing,
    the_quarantine_keeps_one_record_per_event_id,
);

fn options(url: &str) -> StoreOptions {
    clerk_sync_service::Config::with_database(url).store_options()
}

async fn nul_in_every_text_field_is_removed_alike(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let nul = |text: &str| Some(format!("\0{text}\0"));
    let hostile = v1::User {
        primary_email_address: nul("Ada@Example.COM"),
        email_addresses: vec![
            email("\0Ada@Example.COM", true, true),
            email("x\0@y.io", true, false),
        ],
        primary_phone_number: nul("+15555550100"),
        first_name: nul("Ada"),
        last_name: Some("\0".into()),
        display_name: "\0Ada\0".into(),
        username: nul("ada"),
        image_url: nul("https://img.clerk.com/x"),
        external_id: nul("42"),
        public_metadata: Some(clerk_sync_api::json::struct_from_json(
            serde_json::json!({"k\u{0}": "v\u{0}"})
                .as_object()
                .unwrap()
                .clone(),
        )),
        ..user("user_nul", 10)
    };
    assert_eq!(app.created("msg_nul", hostile).await, Outcome::Applied);

    let stored = app.get("user_nul").await.unwrap();
    assert_eq!(
        stored.primary_email_address.as_deref(),
        Some("Ada@Example.COM")
    );
    let addresses: Vec<&str> = stored
        .email_addresses
        .iter()
        .map(|email| email.address.as_str())
        .collect();
    assert_eq!(addresses, ["Ada@Example.COM", "x@y.io"]);
    assert_eq!(stored.primary_phone_number.as_deref(), Some("+15555550100"));
    assert_eq!(stored.first_name.as_deref(), Some("Ada"));
    // Nothing but U+0000 leaves nothing: unset.
    assert_eq!(stored.last_name, None);
    assert_eq!(stored.display_name, "Ada");
    assert_eq!(stored.username.as_deref(), Some("ada"));
    assert_eq!(stored.image_url.as_deref(), Some("https://img.clerk.com/x"));
    assert_eq!(stored.external_id.as_deref(), Some("42"));
    // Metadata is JSON: U+0000 survives there, escaped, on both backends.
    let metadata = clerk_sync_api::json::json_from_struct(stored.public_metadata.unwrap());
    assert_eq!(metadata["k\u{0}"], "v\u{0}");
    // The email index holds the cleaned address.
    let found = app
        .directory
        .clone()
        .find_user_by_email(v1::FindUserByEmailRequest {
            email_address: "x@y.io".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.user.unwrap().id, "user_nul");
}

async fn ids_with_control_characters_are_invalid(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let request = v1::ApplyUserCreatedRequest {
        event: Some(v1::UserCreated {
            meta: Some(meta("msg_bad_id", 0)),
            user: Some(user("user_\0evil", 10)),
        }),
    };
    let status = app
        .sync
        .clone()
        .apply_user_created(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "event.user.id must not contain control characters"
    );
}

async fn changed_since_that_overflows_is_invalid(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    for seconds in [i64::MAX, i64::MIN] {
        let status = app
            .directory
            .clone()
            .list_users(v1::ListUsersRequest {
                changed_since: Some(Timestamp { seconds, nanos: 0 }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{seconds}");
        assert_eq!(status.message(), "changed_since is out of range");
    }
    let overflowing_user = v1::User {
        updated_at: Some(Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        }),
        ..user("user_far", 10)
    };
    let status = app
        .sync
        .clone()
        .apply_user_updated(v1::ApplyUserUpdatedRequest {
            event: Some(v1::UserUpdated {
                meta: Some(meta("msg_far", 0)),
                user: Some(overflowing_user),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "event.user.updated_at is out of range");
}

async fn a_user_with_sixteen_thousand_addresses_is_stored(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let addresses: Vec<v1::EmailAddress> = (0..16_500)
        .map(|i| email(&format!("a{i}@many.example"), true, false))
        .collect();
    let many = v1::User {
        email_addresses: addresses,
        ..user("user_many", 10)
    };
    assert_eq!(app.created("msg_many", many).await, Outcome::Applied);
    let found = app
        .directory
        .clone()
        .find_user_by_email(v1::FindUserByEmailRequest {
            email_address: "A16499@many.example".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.user.unwrap().email_addresses.len(), 16_500);
}

fn profile(id: &str, version: i64) -> Profile {
    Profile {
        id: UserId::parse(id.into(), "id").unwrap(),
        primary_email_address: Some(format!("{id}@example.com")),
        email_addresses: [format!("{id}@example.com"), format!("{id}@example.net")]
            .into_iter()
            .enumerate()
            .map(|(i, address)| EmailAddress {
                address,
                verified: true,
                primary: i == 0,
            })
            .collect(),
        phone_numbers: Vec::new(),
        primary_phone_number: None,
        first_name: Some(format!("v{version}")),
        last_name: None,
        display_name: format!("v{version}"),
        username: None,
        image_url: None,
        has_image: false,
        external_id: None,
        public_metadata: serde_json::Map::new(),
        private_metadata: None,
        created_at: Some(1),
        updated_at: version,
        last_sign_in_at: None,
        last_active_at: None,
        legal_accepted_at: None,
        state: AccountState::default(),
        external_accounts: Vec::new(),
    }
}

fn upsert(event_id: &str, id: &str, version: i64) -> Event {
    Event {
        id: EventId::parse(event_id.into(), "id").unwrap(),
        kind: EventKind::Updated,
        change: Change::Upsert(Box::new(profile(id, version))),
    }
}

fn delete(event_id: &str, id: &str, at: i64) -> Event {
    Event {
        id: EventId::parse(event_id.into(), "id").unwrap(),
        kind: EventKind::Deleted,
        change: Change::Delete {
            user_id: UserId::parse(id.into(), "id").unwrap(),
            deleted_at: at,
        },
    }
}

async fn a_batch_over_every_bind_limit_is_applied(backend: Backend) {
    let db = TestDb::new(backend).await;
    // The batch must run whole: on a loaded machine it can outlast the
    // default statement timeout, and a batch that fails is applied event by
    // event, which answers differently (a create and a delete of the same
    // user are then both applied).
    let mut config = clerk_sync_service::Config::with_database(&db.url);
    config.database_statement_timeout_ms = 600_000;
    let store = Store::connect(&config.store_options()).await.unwrap();
    store.migrate().await.unwrap();
    // 10,000 events (the largest --max-batch): 40,000 ledger parameters,
    // 150,000 users parameters, 40,000 email index parameters.
    let mut events: Vec<Event> = (0..9_000)
        .map(|i| upsert(&format!("msg_{i}"), &format!("user_{i:05}"), 5))
        .collect();
    events.extend((0..1_000).map(|i| delete(&format!("msg_del_{i}"), &format!("user_{i:05}"), 9)));
    let outcomes = store.apply_batch(events.as_slice()).await;
    assert_eq!(outcomes.len(), 10_000);
    let applied = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Ok(clerk_sync_service::domain::Outcome::Applied)))
        .count();
    // Users 0..1000 are created and deleted in the batch: the delete wins.
    assert_eq!(applied, 9_000, "{:?}", outcomes.iter().find(|o| o.is_err()));
    assert!(
        store
            .get_user(&UserId::parse("user_00999".into(), "id").unwrap())
            .await
            .is_err()
    );
    let kept = store.find_by_email("USER_08999@example.net").await.unwrap();
    assert_eq!(kept.id.as_str(), "user_08999");

    // Every user written has its log entry, at consecutive positions in user
    // id order across the chunks of the change log insert.
    let mut logged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.changes_after(after, 1000, 0).await.unwrap();
        logged.extend(page.entries.into_iter().map(|entry| match entry.change {
            FeedChange::Upsert(profile) => (entry.position, profile.id.as_str().to_owned()),
            FeedChange::Deleted { id, .. } => (entry.position, id.as_str().to_owned()),
        }));
        after = page.next_after;
        if !page.has_more {
            break;
        }
    }
    let expected: Vec<(i64, String)> = (0..9_000)
        .map(|i| (i + 1, format!("user_{i:05}")))
        .collect();
    assert_eq!(logged, expected);
    assert_eq!(store.feed_head().await.unwrap(), 9_000);
}

async fn a_replay_after_pruning_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let store = Store::connect(&options(&db.url)).await.unwrap();

    assert_eq!(
        app.created("msg_c", user("user_p", 10)).await,
        Outcome::Applied
    );
    assert_eq!(
        app.updated("msg_u", user("user_p", 20)).await,
        Outcome::Applied
    );
    assert_eq!(
        app.created("msg_gone", user("user_g", 10)).await,
        Outcome::Applied
    );
    assert_eq!(app.deleted("msg_d", "user_g", 30).await, Outcome::Applied);
    // Nothing is old enough yet.
    assert_eq!(
        store
            .prune_ledger_older_than(std::time::Duration::from_secs(3600), 2)
            .await
            .unwrap(),
        0
    );
    let before = app.get("user_p").await.unwrap();

    // Everything is pruned, two rows per statement.
    let pruned = store.prune_ledger(i64::MAX, 2).await.unwrap();
    assert_eq!(pruned, 4);

    // The replays are no longer duplicates, and still harmless.
    assert_eq!(
        app.created("msg_c", user("user_p", 10)).await,
        Outcome::Stale
    );
    assert_eq!(
        app.updated("msg_u", user("user_p", 20)).await,
        Outcome::Stale
    );
    assert_eq!(
        app.created("msg_gone", user("user_g", 10)).await,
        Outcome::UserDeleted
    );
    assert_eq!(
        app.deleted("msg_d", "user_g", 30).await,
        Outcome::UserDeleted
    );
    assert_eq!(app.get("user_p").await.unwrap(), before);
    assert_eq!(app.get("user_g").await.unwrap_err().code(), Code::NotFound);
    // The replays are remembered again.
    assert_eq!(
        app.created("msg_c", user("user_p", 10)).await,
        Outcome::Duplicate
    );
}

async fn the_quarantine_keeps_one_record_per_event_id(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let mut quarantine = QuarantineServiceClient::new(app.channel.clone());
    // Not UTF-8, with NUL: kept byte for byte.
    let body = b"{\"type\":\"user.updated\",\0\xff}".to_vec();
    let request = QuarantineRequest {
        event_id: "msg_poison".into(),
        event_type: "user.updated".into(),
        reason: "invalid JSON payload: expected value".into(),
        body: body.clone(),
        delivered_at: Some(ts(1_700_000_000_000)),
    };
    let first = quarantine
        .quarantine(request.clone())
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    assert_eq!(first.seen_count, 1);
    assert_eq!(first.body_size, body.len() as u64);
    let again = quarantine
        .quarantine(QuarantineRequest {
            reason: "a newer reason".into(),
            ..request.clone()
        })
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    assert_eq!(again.seen_count, 2);
    assert_eq!(again.first_seen_at, first.first_seen_at);
    let seconds = |at: Option<Timestamp>| at.map(|at| (at.seconds, at.nanos));
    assert!(seconds(again.last_seen_at) >= seconds(first.last_seen_at));
    quarantine
        .quarantine(QuarantineRequest {
            event_id: "msg_zz_other".into(),
            event_type: String::new(),
            ..request
        })
        .await
        .unwrap();

    let listed = quarantine
        .list_quarantined(v1::ListQuarantinedRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.events.len(), 1);
    assert_eq!(listed.events[0].event_id, "msg_poison");
    assert!(
        listed.events[0].body.is_empty(),
        "listings leave bodies out"
    );
    assert_eq!(listed.events[0].body_size, body.len() as u64);
    let rest = quarantine
        .list_quarantined(v1::ListQuarantinedRequest {
            page_size: 10,
            page_token: listed.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.events.len(), 1);
    assert_eq!(rest.events[0].event_id, "msg_zz_other");
    assert_eq!(rest.events[0].event_type, "");
    assert!(rest.next_page_token.is_empty());

    let shown = quarantine
        .get_quarantined(v1::GetQuarantinedRequest {
            event_id: "msg_poison".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    assert_eq!(shown.body, body);
    assert_eq!(shown.reason, "a newer reason");
    assert_eq!(shown.delivered_at.unwrap().seconds, 1_700_000_000);

    quarantine
        .drop_quarantined(v1::DropQuarantinedRequest {
            event_id: "msg_poison".into(),
        })
        .await
        .unwrap();
    for status in [
        quarantine
            .get_quarantined(v1::GetQuarantinedRequest {
                event_id: "msg_poison".into(),
            })
            .await
            .unwrap_err(),
        quarantine
            .drop_quarantined(v1::DropQuarantinedRequest {
                event_id: "msg_poison".into(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound);
    }
}

/// `{upsert U2, delete U1}` against `{upsert U1, delete U2}` from two
/// instances (two pools) at once, many times over: with one lock order no
/// transaction ever deadlocks (PostgreSQL counts deadlocks per database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossed_upserts_and_deletes_never_deadlock_on_postgres() {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let db = TestDb::new(Backend::Postgres).await;
    let first = Store::connect(&options(&db.url)).await.unwrap();
    first.migrate().await.unwrap();
    let second = Store::connect(&options(&db.url)).await.unwrap();

    for round in 0..60 {
        let (u1, u2) = (format!("user_{round}_1"), format!("user_{round}_2"));
        // Both users exist, so every write takes a row lock on an existing row.
        let seed = [
            upsert(&format!("seed_{round}_1"), &u1, 1),
            upsert(&format!("seed_{round}_2"), &u2, 1),
        ];
        for outcome in first.apply_batch(seed.as_slice()).await {
            outcome.unwrap();
        }
        let a = [
            upsert(&format!("a_{round}"), &u2, 5),
            delete(&format!("a_del_{round}"), &u1, 9),
        ];
        let b = [
            upsert(&format!("b_{round}"), &u1, 5),
            delete(&format!("b_del_{round}"), &u2, 9),
        ];
        let (left, right) = tokio::join!(
            first.apply_batch(a.as_slice()),
            second.apply_batch(b.as_slice())
        );
        for outcome in left.into_iter().chain(right) {
            outcome.unwrap();
        }
        for id in [&u1, &u2] {
            assert!(
                first
                    .get_user(&UserId::parse(id.clone(), "id").unwrap())
                    .await
                    .is_err(),
                "{id} ends deleted"
            );
        }
    }
    drop((first, second));

    // Backends flush their statistics when they exit: wait for them to go.
    let conn = Database::connect(&db.url).await.unwrap();
    let query = |sql: &str| Statement::from_string(sea_orm::DatabaseBackend::Postgres, sql);
    for _ in 0..100 {
        let others = conn
            .query_one_raw(query(
                "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap();
        if others == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let deadlocks = conn
        .query_one_raw(query(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "deadlocks")
        .unwrap();
    assert_eq!(deadlocks, 0, "PostgreSQL detected deadlocks");
}

/// The quarantine holds raw personal data and can redrive events: with tokens
/// configured it needs a write token; a reader and a stranger are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quarantine_needs_the_write_role() {
    use clerk_sync_service::{Config, auth::TokenList};

    use crate::helpers::authorized;
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = Config::with_database(&db.url);
    config.write_tokens = TokenList::parse("write-token-quarantine-01").unwrap();
    config.read_tokens = TokenList::parse("read-token-quarantine-02").unwrap();
    let app = TestApp::spawn_with(config).await;
    let mut quarantine = QuarantineServiceClient::new(app.channel.clone());
    let list = |token| {
        authorized(
            v1::ListQuarantinedRequest {
                page_size: 10,
                page_token: String::new(),
            },
            token,
        )
    };

    for (token, code) in [
        (None, Code::Unauthenticated),
        (Some("read-token-quarantine-02"), Code::PermissionDenied),
    ] {
        let status = quarantine.list_quarantined(list(token)).await.unwrap_err();
        assert_eq!(status.code(), code, "{token:?}");
    }
    let listed = quarantine
        .list_quarantined(list(Some("write-token-quarantine-01")))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.events.is_empty());
}

/// Past `--max-pending-applies`, applies are refused at once (UNAVAILABLE,
/// so the gateway answers 503) instead of queueing: here the one allowed
/// apply waits for a write lock another connection holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_past_the_pending_limit_are_shed_at_once() {
    use futures::stream::{FuturesUnordered, StreamExt};
    use sea_orm::{ConnectionTrait, TransactionTrait};

    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = clerk_sync_service::Config::with_database(&db.url);
    config.max_pending_applies = 1;
    let app = TestApp::spawn_with(config).await;
    let sql = crate::helpers::connect_sql(&db.url).await;
    let lock = sql.begin().await.unwrap();
    lock.execute_unprepared(
        "INSERT INTO processed_events (event_id, user_id, kind, processed_at) \
         VALUES ('msg_lock', 'user_lock', 'user.created', 0)",
    )
    .await
    .unwrap();

    let mut calls: FuturesUnordered<_> = (0..5)
        .map(|i| {
            let mut sync = app.sync.clone();
            async move {
                sync.apply_user_created(v1::ApplyUserCreatedRequest {
                    event: Some(v1::UserCreated {
                        meta: Some(meta(&format!("msg_shed_{i}"), 0)),
                        user: Some(user(&format!("user_shed_{i}"), 10)),
                    }),
                })
                .await
            }
        })
        .collect();
    // Four are refused while the fifth waits on the lock.
    for _ in 0..4 {
        let status = tokio::time::timeout(std::time::Duration::from_secs(3), calls.next())
            .await
            .expect("shed at once")
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "too many events in flight; retry later");
    }
    lock.rollback().await.unwrap();
    let applied = calls.next().await.unwrap().unwrap().into_inner();
    assert_eq!(applied.outcome(), Outcome::Applied);
}
