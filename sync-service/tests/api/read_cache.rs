//! The read cache in front of GetUser, BatchGetUsers, FindUserByEmail and
//! ListUsers (which reads a page's keys from the database and the users
//! through the cache):
//! with a warm cache, every apply that returned is seen by the next read on
//! the same replica (deletions, updates, addresses changing owner), under
//! concurrent readers too; another replica's commits are seen within the
//! feed's poll interval (and a replica that cannot follow the log drops its
//! cache); and with the cache turned off the answers are the same.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use clerk_sync_api::v1::{self, BatchGetUsersRequest, FindUserByEmailRequest};
use clerk_sync_service::{
    Config, Store,
    domain::{Event, UserId},
};
use tonic::Code;

use crate::helpers::{Backend, TestApp, TestDb, email, meta, user};

crate::on_both_backends!(
    a_deleted_user_is_not_found_at_once,
    an_update_is_served_at_once,
    an_address_follows_its_new_owner_at_once,
    readers_never_see_a_version_older_than_a_returned_apply,
    with_the_cache_off_the_answers_are_the_same,
    a_listing_reads_through_the_cache,
);

const HITS: &str = r#"clerk_sync_service_user_cache_requests_total{key="id",result="hit"}"#;
const EMAIL_HITS: &str =
    r#"clerk_sync_service_user_cache_requests_total{key="email",result="hit"}"#;
const MISSES: &str = r#"clerk_sync_service_user_cache_requests_total{key="id",result="miss"}"#;

async fn spawn(url: &str, capacity: u64) -> TestApp {
    let mut config = Config::with_database(url);
    config.user_cache_capacity = capacity;
    TestApp::spawn_with(config).await
}

/// The id of the user owning `address`.
async fn find(app: &TestApp, address: &str) -> Result<v1::User, tonic::Status> {
    app.directory
        .clone()
        .find_user_by_email(FindUserByEmailRequest {
            email_address: address.into(),
        })
        .await
        .map(|response| response.into_inner().user.unwrap())
}

async fn batch_get(app: &TestApp, ids: &[&str]) -> v1::BatchGetUsersResponse {
    app.directory
        .clone()
        .batch_get_users(BatchGetUsersRequest {
            ids: ids.iter().map(|id| id.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every live user, through ListUsers pages of two.
async fn list(app: &TestApp) -> Vec<v1::User> {
    let mut users = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .directory
            .clone()
            .list_users(v1::ListUsersRequest {
                page_size: 2,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        users.extend(page.users);
        if page.next_page_token.is_empty() {
            return users;
        }
        page_token = page.next_page_token;
    }
}

/// `user(id, version)` that also has `address` verified.
fn with_address(id: &str, version: i64, address: &str) -> v1::User {
    let mut user = user(id, version);
    user.email_addresses.push(email(address, true, false));
    user
}

/// Reads `id` every way there is, twice: the second round is served from a
/// warm cache.
async fn warm(app: &TestApp, id: &str) {
    // The cache follower also reads back this replica's own commits and
    // forgets the keys they touched: let it pass the write first, or its
    // tick can land between a fill and the read meant to hit it.
    let poll = Duration::from_millis(Config::with_database("").feed_poll_interval_ms);
    tokio::time::sleep(poll * 3).await;
    for _ in 0..2 {
        app.get(id).await.unwrap();
        batch_get(app, &[id]).await;
        find(app, &format!("{id}@example.com")).await.unwrap();
    }
}

/// The version a user was read at (its `updated_at`).
fn version(user: &v1::User) -> i64 {
    let at = user.updated_at.unwrap();
    at.seconds * 1000 + i64::from(at.nanos / 1_000_000)
}

async fn deletion_is_seen_at_once(app: &TestApp) {
    app.created("msg_1", user("user_1", 100)).await;
    warm(app, "user_1").await;

    app.deleted("msg_2", "user_1", 200).await;
    assert_eq!(list(app).await, []);
    assert_eq!(app.get("user_1").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(batch_get(app, &["user_1"]).await.missing_ids, ["user_1"]);
    let status = find(app, "user_1@example.com").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

async fn update_is_seen_at_once(app: &TestApp) {
    app.created("msg_1", user("user_1", 100)).await;
    warm(app, "user_1").await;

    app.updated("msg_2", user("user_1", 200)).await;
    assert_eq!(list(app).await, [user("user_1", 200)]);
    assert_eq!(app.get("user_1").await.unwrap(), user("user_1", 200));
    assert_eq!(
        batch_get(app, &["user_1"]).await.users,
        [user("user_1", 200)]
    );
    let found = find(app, "USER_1@example.com").await.unwrap();
    assert_eq!(found, user("user_1", 200));
}

async fn address_moves_are_seen_at_once(app: &TestApp) {
    // A releases the address, then B verifies it.
    app.created("msg_a1", with_address("user_a", 100, "moving@example.org"))
        .await;
    app.created("msg_b1", user("user_b", 100)).await;
    warm(app, "user_a").await;
    warm(app, "user_b").await;
    for _ in 0..2 {
        assert_eq!(find(app, "moving@example.org").await.unwrap().id, "user_a");
    }
    app.updated("msg_a2", user("user_a", 200)).await;
    let released = find(app, "moving@example.org").await.unwrap_err();
    assert_eq!(released.code(), Code::NotFound);
    app.updated("msg_b2", with_address("user_b", 200, "Moving@Example.org"))
        .await;
    assert_eq!(find(app, "moving@example.org").await.unwrap().id, "user_b");

    // C verifies an address B still has: the more recently updated wins at
    // once, whichever it is.
    app.updated("msg_b3", with_address("user_b", 300, "shared@example.org"))
        .await;
    app.created("msg_c1", with_address("user_c", 250, "shared@example.org"))
        .await;
    for _ in 0..2 {
        assert_eq!(find(app, "shared@example.org").await.unwrap().id, "user_b");
    }
    app.updated("msg_c2", with_address("user_c", 400, "SHARED@example.org"))
        .await;
    assert_eq!(find(app, "shared@example.org").await.unwrap().id, "user_c");
    // And back when C is deleted.
    app.deleted("msg_c3", "user_c", 500).await;
    assert_eq!(find(app, "shared@example.org").await.unwrap().id, "user_b");
}

async fn a_deleted_user_is_not_found_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = spawn(&db.url, 1000).await;
    deletion_is_seen_at_once(&app).await;
    // The reads before the deletion were served from memory.
    let scrape = app.scrape().await;
    assert!(scrape.value(HITS) >= 2.0, "{}", scrape.text);
    assert!(scrape.value(EMAIL_HITS) >= 1.0, "{}", scrape.text);
}

async fn an_update_is_served_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = spawn(&db.url, 1000).await;
    update_is_seen_at_once(&app).await;
}

async fn an_address_follows_its_new_owner_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = spawn(&db.url, 1000).await;
    address_moves_are_seen_at_once(&app).await;
}

async fn with_the_cache_off_the_answers_are_the_same(backend: Backend) {
    for scenario in 0..3 {
        let db = TestDb::new(backend).await;
        let app = spawn(&db.url, 0).await;
        match scenario {
            0 => deletion_is_seen_at_once(&app).await,
            1 => update_is_seen_at_once(&app).await,
            _ => address_moves_are_seen_at_once(&app).await,
        }
        let scrape = app.scrape().await;
        assert_eq!(scrape.value(HITS) + scrape.value(EMAIL_HITS), 0.0);
        app.stop().await;
    }
}

/// A listing takes the users the cache holds from it and fills it with the
/// others.
async fn a_listing_reads_through_the_cache(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = spawn(&db.url, 1000).await;
    for n in 1..=5 {
        app.created(&format!("msg_{n}"), user(&format!("user_{n}"), n * 100))
            .await;
    }
    let expected: Vec<v1::User> = (1..=5)
        .map(|n| user(&format!("user_{n}"), n * 100))
        .collect();
    let poll = Duration::from_millis(Config::with_database("").feed_poll_interval_ms);
    tokio::time::sleep(poll * 3).await;
    app.get("user_2").await.unwrap();

    let before = app.scrape().await;
    assert_eq!(list(&app).await, expected);
    let after = app.scrape().await;
    assert_eq!(
        after.value(HITS) - before.value(HITS),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(after.value(MISSES) - before.value(MISSES), 4.0);

    assert_eq!(list(&app).await, expected);
    let again = app.scrape().await;
    assert_eq!(again.value(HITS) - after.value(HITS), 5.0);
    assert_eq!(again.value(MISSES), after.value(MISSES));

    // A change is listed at once, at its new place.
    app.updated("msg_6", user("user_1", 600)).await;
    let mut moved = expected[1..].to_vec();
    moved.push(user("user_1", 600));
    assert_eq!(list(&app).await, moved);
}

/// Readers hammer one user by id, in batches and by address while a writer applies
/// version after version and finally deletes it. No read returns a version
/// older than one whose apply had returned before the read began, and once
/// the deletion returned, every read finds nothing.
async fn readers_never_see_a_version_older_than_a_returned_apply(backend: Backend) {
    const VERSIONS: i64 = 60;
    const READERS: usize = 6;
    let db = TestDb::new(backend).await;
    let app = Arc::new(spawn(&db.url, 1000).await);
    app.created("msg_0", user("user_hot", 1)).await;
    // The newest version whose apply returned; VERSIONS + 1 once the
    // deletion's did.
    let returned = Arc::new(AtomicI64::new(1));
    let done = Arc::new(AtomicBool::new(false));

    let readers: Vec<_> = (0..READERS)
        .map(|reader| {
            let (app, returned, done) = (app.clone(), returned.clone(), done.clone());
            tokio::spawn(async move {
                let mut reads = 0;
                loop {
                    let last_round = done.load(Ordering::SeqCst);
                    let floor = returned.load(Ordering::SeqCst);
                    let read = match (reads + reader) % 3 {
                        0 => app.get("user_hot").await,
                        1 => find(&app, "user_hot@example.com").await,
                        _ => batch_get(&app, &["user_hot"])
                            .await
                            .users
                            .pop()
                            .ok_or_else(|| tonic::Status::not_found("missing")),
                    };
                    match read {
                        Ok(user) => assert!(
                            version(&user) >= floor,
                            "read version {} after version {floor} was applied",
                            version(&user)
                        ),
                        Err(status) => {
                            assert_eq!(status.code(), Code::NotFound);
                            // Only the deletion, applied or in flight, hides
                            // the user.
                            assert!(
                                returned.load(Ordering::SeqCst) >= VERSIONS,
                                "not found before the deletion was sent"
                            );
                        }
                    }
                    reads += 1;
                    if last_round {
                        // Every read begun after the deletion returned.
                        assert!(floor > VERSIONS);
                        return reads;
                    }
                }
            })
        })
        .collect();

    for version in 2..=VERSIONS {
        app.updated(&format!("msg_{version}"), user("user_hot", version))
            .await;
        returned.store(version, Ordering::SeqCst);
    }
    app.deleted("msg_del", "user_hot", VERSIONS + 1).await;
    returned.store(VERSIONS + 1, Ordering::SeqCst);
    // Let the readers read after the deletion for a while, then stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    done.store(true, Ordering::SeqCst);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    assert!(reads > VERSIONS as usize, "only {reads} reads");
    for _ in 0..3 {
        assert_eq!(
            app.get("user_hot").await.unwrap_err().code(),
            Code::NotFound
        );
        let status = find(&app, "user_hot@example.com").await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    // Some reads were served from memory.
    assert!(app.scrape().await.value(HITS) > 0.0);
}

/// Two replicas on one PostgreSQL database: what is written through one is
/// served by the other's warm cache within the poll interval and a read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replicas_commits_reach_a_warm_cache_within_the_poll_interval() {
    const POLL_MS: u64 = 100;
    let db = TestDb::new(Backend::Postgres).await;
    let replica = || {
        let mut config = Config::with_database(&db.url);
        config.feed_poll_interval_ms = POLL_MS;
        TestApp::spawn_with(config)
    };
    let (reading, writer) = (replica().await, replica().await);
    // A reference the checks below copy into their futures.
    let reader = &reading;
    writer.created("msg_1", user("user_1", 100)).await;
    // Waits until `reader` answers `check`, warming its cache the while;
    // returns how long that took.
    async fn until<F: Future<Output = bool>>(check: impl Fn() -> F) -> Duration {
        let start = Instant::now();
        while !check().await {
            assert!(start.elapsed() < Duration::from_secs(10), "never seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }
    until(move || async move { reader.get("user_1").await.is_ok() }).await;
    warm(reader, "user_1").await;
    let before = reader.scrape().await;

    writer.updated("msg_2", user("user_1", 200)).await;
    let update = until(move || async move {
        reader.get("user_1").await.unwrap() == user("user_1", 200)
            && version(&find(reader, "user_1@example.com").await.unwrap()) == 200
    })
    .await;
    warm(reader, "user_1").await;
    writer.deleted("msg_3", "user_1", 300).await;
    let deletion = until(move || async move {
        reader.get("user_1").await.is_err()
            && find(reader, "user_1@example.com").await.is_err()
            && batch_get(reader, &["user_1"]).await.users.is_empty()
    })
    .await;

    println!("another replica's commits seen after {update:?} (update), {deletion:?} (deletion)");
    // The stated bound: one poll interval plus a read; generous slack for a
    // loaded 2-core machine.
    let bound = Duration::from_millis(POLL_MS + 1_500);
    assert!(
        update < bound && deletion < bound,
        "{update:?} {deletion:?}"
    );
    // The warm reads in between were served from memory.
    assert!(reader.scrape().await.delta(&before, HITS) > 0.0);
    reading.stop().await;
    writer.stop().await;
}

/// Misses of the user cache so far, in this test's process.
fn misses() -> f64 {
    let text = clerk_sync_service::metrics::render();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(
                r#"clerk_sync_service_user_cache_requests_total{key="id",result="miss"} "#,
            )
        })
        .map_or(0.0, |value| value.parse().unwrap())
}

/// A replica that cannot follow the log (another replica pruned the deletion
/// it had not read yet) drops its whole cache rather than serve stale users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_place_in_the_log_was_pruned_drops_its_whole_cache() {
    const POLL: Duration = Duration::from_secs(2);
    let db = TestDb::new(Backend::Postgres).await;
    let options = Config::with_database(&db.url).store_options();
    let reading = Store::connect(&options).await.unwrap();
    reading.migrate().await.unwrap();
    let writing = Store::connect(&options).await.unwrap();
    let upsert = |event_id: &str, id: &str| {
        Event::try_from(v1::ApplyUserCreatedRequest {
            event: Some(v1::UserCreated {
                meta: Some(meta(event_id, 0)),
                user: Some(user(id, 100)),
            }),
        })
        .unwrap()
    };
    writing
        .apply_batch([upsert("msg_1", "user_1"), upsert("msg_2", "user_2")])
        .await;
    // The follower starts at the head; its next tick comes after POLL.
    let from = reading.feed_head().await.unwrap();
    let follower = tokio::spawn({
        let reading = reading.clone();
        async move { reading.follow_changes_into_cache(from, POLL).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let [one, two] = ["user_1", "user_2"].map(|id| UserId::parse(id.into(), "id").unwrap());
    for id in [&one, &two, &one, &two] {
        reading.get_user(id).await.unwrap();
    }

    let deletion = Event::try_from(v1::ApplyUserDeletedRequest {
        event: Some(v1::UserDeleted {
            meta: Some(meta("msg_3", 5_000)),
            user_id: "user_1".into(),
        }),
    })
    .unwrap();
    writing.apply_batch([deletion]).await.remove(0).unwrap();
    let far_future = i64::MAX / 2;
    assert_eq!(writing.prune_deletions(far_future).await.unwrap(), 1);
    // Until the next tick, the other replica's deletion is not known here.
    assert!(reading.get_user(&one).await.is_ok());

    let start = Instant::now();
    while reading.get_user(&one).await.is_ok() {
        let limit = POLL + Duration::from_millis(1_500);
        assert!(start.elapsed() < limit, "the deletion was never seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every entry went, not only the deleted user's.
    let before = misses();
    reading.get_user(&two).await.unwrap();
    assert_eq!(misses(), before + 1.0);
    follower.abort();
}
