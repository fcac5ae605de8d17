//! The change feed on one instance: WatchUsers from a snapshot, from now and
//! from a position; ListChanges paging; compaction to one entry per user;
//! resuming after disconnects at random points under a storm of conflicting
//! events; pruned and foreign positions refused with FAILED_PRECONDITION;
//! bad requests. `Mirror`, `storm` and `final_state` serve `feed_replicas`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use clerk_sync_api::v1::{
    self, ListChangesRequest, ListUsersRequest, WatchUsersRequest, WatchUsersResponse,
    user_change::Change, watch_users_request::Start, watch_users_response::Event,
};
use futures::{StreamExt, stream};
use tonic::{Code, Streaming};

use crate::helpers::{Backend, TestApp, TestDatabase, TestDb, user};

crate::on_both_backends!(
    watch_sends_a_snapshot_then_each_change_as_it_commits,
    watch_from_now_and_from_a_position,
    list_changes_pages_in_order_and_keeps_one_entry_per_user,
    resuming_after_disconnects_at_random_points_loses_nothing,
    pruned_and_foreign_positions_are_failed_precondition,
    bad_feed_requests_name_the_field,
);

/// A client's copy of the directory, built only from the feed.
#[derive(Debug, Default)]
pub(crate) struct Mirror {
    pub(crate) users: BTreeMap<String, v1::User>,
    /// Position of the last message applied: where to resume.
    pub(crate) position: i64,
    pub(crate) caught_up: bool,
    pub(crate) deletions_seen: usize,
}

impl Mirror {
    /// Applies one stream message, checking positions only grow.
    pub(crate) fn apply(&mut self, message: WatchUsersResponse) {
        match message.event.expect("every message has an event") {
            Event::User(user) => {
                assert!(message.position > self.position, "positions grow");
                self.users.insert(user.id.clone(), user);
            }
            Event::Deleted(deleted) => {
                assert!(message.position > self.position, "positions grow");
                self.users.remove(&deleted.id);
                self.deletions_seen += 1;
            }
            Event::CaughtUp(_) => {
                assert!(
                    message.position >= self.position,
                    "caught_up never goes back"
                );
                self.caught_up = true;
            }
        }
        self.position = message.position;
    }

    /// Applies one ListChanges entry.
    fn apply_change(&mut self, change: v1::UserChange) {
        assert!(change.position > self.position, "positions grow");
        self.position = change.position;
        match change.change.expect("every change has a kind") {
            Change::User(user) => {
                self.users.insert(user.id.clone(), user);
            }
            Change::Deleted(deleted) => {
                self.users.remove(&deleted.id);
                self.deletions_seen += 1;
            }
        }
    }
}

pub(crate) async fn watch(app: &TestApp, start: Start) -> Streaming<WatchUsersResponse> {
    app.directory
        .clone()
        .watch_users(WatchUsersRequest { start: Some(start) })
        .await
        .unwrap()
        .into_inner()
}

pub(crate) async fn next(stream: &mut Streaming<WatchUsersResponse>) -> WatchUsersResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a feed message within 10 s")
        .expect("the stream stays healthy")
        .expect("the stream stays open")
}

/// Reads the stream into `mirror` until it is caught up with `head`.
pub(crate) async fn follow_to(
    stream: &mut Streaming<WatchUsersResponse>,
    mirror: &mut Mirror,
    head: i64,
) {
    while !(mirror.caught_up && mirror.position >= head) {
        mirror.apply(next(stream).await);
    }
}

/// The log's current head, as ListChanges reports it.
pub(crate) async fn head(app: &TestApp) -> i64 {
    let mut after = 0;
    loop {
        let page = list_changes(app, after, 1000).await.unwrap();
        after = page.next_after_position;
        if !page.has_more {
            return after;
        }
    }
}

pub(crate) async fn list_changes(
    app: &TestApp,
    after_position: i64,
    page_size: i32,
) -> Result<v1::ListChangesResponse, tonic::Status> {
    app.directory
        .clone()
        .list_changes(ListChangesRequest {
            after_position,
            page_size,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every live user, from ListUsers.
pub(crate) async fn final_state(app: &TestApp) -> BTreeMap<String, v1::User> {
    let mut users = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .directory
            .clone()
            .list_users(ListUsersRequest {
                page_size: 1000,
                page_token,
                ..ListUsersRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        users.extend(page.users.into_iter().map(|u| (u.id.clone(), u)));
        if page.next_page_token.is_empty() {
            return users;
        }
        page_token = page.next_page_token;
    }
}

/// One event of a storm.
#[derive(Clone, Debug)]
pub(crate) enum StormEvent {
    Upsert {
        event_id: String,
        user_id: String,
        version: i64,
    },
    Delete {
        event_id: String,
        user_id: String,
    },
}

/// A deterministic storm over `users` users: versions 1..=versions each, a
/// delete for every third user, every event twice, shuffled by `seed`.
/// Returns the events and the ids that end deleted.
pub(crate) fn storm(
    prefix: &str,
    users: usize,
    versions: i64,
    seed: u64,
) -> (Vec<StormEvent>, BTreeSet<String>) {
    let mut events = Vec::new();
    let mut deleted = BTreeSet::new();
    for u in 0..users {
        let user_id = format!("user_{prefix}_{u}");
        for version in 1..=versions {
            events.push(StormEvent::Upsert {
                event_id: format!("msg_{prefix}_{u}_{version}"),
                user_id: user_id.clone(),
                version: version * 10,
            });
        }
        if u % 3 == 0 {
            events.push(StormEvent::Delete {
                event_id: format!("msg_{prefix}_{u}_del"),
                user_id: user_id.clone(),
            });
            deleted.insert(user_id);
        }
    }
    let copies = events.clone();
    events.extend(copies);
    let mut rng = Lcg(seed);
    for i in (1..events.len()).rev() {
        events.swap(i, rng.below(i + 1));
    }
    (events, deleted)
}

/// A small deterministic generator, so failures replay.
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as usize % n
    }
}

pub(crate) async fn send(app: &TestApp, event: StormEvent) {
    match event {
        StormEvent::Upsert {
            event_id,
            user_id,
            version,
        } => {
            app.updated(&event_id, user(&user_id, version)).await;
        }
        StormEvent::Delete { event_id, user_id } => {
            app.deleted(&event_id, &user_id, 1_000).await;
        }
    }
}

/// Sends `events`, 32 at a time, each to one of `apps` in turn.
pub(crate) async fn send_all(apps: &[&TestApp], events: Vec<StormEvent>) {
    stream::iter(events.into_iter().enumerate())
        .for_each_concurrent(32, |(i, event)| send(apps[i % apps.len()], event))
        .await;
}

/// The state every follower must end in: each surviving user at its newest
/// version, no deleted user.
pub(crate) fn expected_state(
    prefix: &str,
    users: usize,
    versions: i64,
    deleted: &BTreeSet<String>,
) -> BTreeMap<String, v1::User> {
    (0..users)
        .map(|u| format!("user_{prefix}_{u}"))
        .filter(|id| !deleted.contains(id))
        .map(|id| (id.clone(), user(&id, versions * 10)))
        .collect()
}

async fn watch_sends_a_snapshot_then_each_change_as_it_commits(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    for id in ["user_a", "user_b", "user_c"] {
        app.created(&format!("msg_{id}"), user(id, 100)).await;
    }
    app.updated("msg_a2", user("user_a", 200)).await;
    app.deleted("msg_c_del", "user_c", 300).await;

    let mut stream = watch(&app, Start::Snapshot(())).await;
    let mut mirror = Mirror::default();
    while !mirror.caught_up {
        mirror.apply(next(&mut stream).await);
    }
    // The snapshot: live users in their current state; the user deleted
    // before it is not even mentioned.
    assert_eq!(mirror.deletions_seen, 0);
    assert_eq!(mirror.users.len(), 2);
    assert_eq!(mirror.users["user_a"], user("user_a", 200));
    assert_eq!(mirror.users["user_b"], user("user_b", 100));
    assert_eq!(mirror.position, head(&app).await);

    // Then live changes, each once, in commit order.
    app.updated("msg_b2", user("user_b", 200)).await;
    let message = next(&mut stream).await;
    assert!(message.position > mirror.position);
    assert_eq!(message.event, Some(Event::User(user("user_b", 200))));
    mirror.apply(message);

    app.deleted("msg_a_del", "user_a", 400).await;
    let message = next(&mut stream).await;
    let Some(Event::Deleted(deleted)) = &message.event else {
        panic!("expected a deletion, got {message:?}");
    };
    assert_eq!(deleted.id, "user_a");
    assert_eq!(deleted.deleted_at.unwrap().seconds, 0);
    mirror.apply(message);

    // Stale, duplicate and post-deletion events change nothing: no message.
    app.updated("msg_b_old", user("user_b", 150)).await;
    app.updated("msg_b2", user("user_b", 200)).await;
    app.updated("msg_a_late", user("user_a", 900)).await;
    app.created("msg_d", user("user_d", 100)).await;
    let message = next(&mut stream).await;
    assert_eq!(message.event, Some(Event::User(user("user_d", 100))));
    mirror.apply(message);

    assert_eq!(mirror.users, final_state(&app).await);
    drop(stream);
    app.stop().await;
}

async fn watch_from_now_and_from_a_position(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    app.created("msg_a", user("user_a", 100)).await;
    let after_a = head(&app).await;
    app.created("msg_b", user("user_b", 100)).await;

    // From now: caught up at once, at the current head, then live changes.
    let mut from_now = watch(&app, Start::Now(())).await;
    let first = next(&mut from_now).await;
    assert_eq!(first.event, Some(Event::CaughtUp(v1::CaughtUp {})));
    assert_eq!(first.position, head(&app).await);

    // From a position: what came after it, then caught up.
    let mut resumed = watch(&app, Start::AfterPosition(after_a)).await;
    let message = next(&mut resumed).await;
    assert_eq!(message.event, Some(Event::User(user("user_b", 100))));
    let marker = next(&mut resumed).await;
    assert_eq!(marker.event, Some(Event::CaughtUp(v1::CaughtUp {})));

    app.updated("msg_a2", user("user_a", 200)).await;
    for stream in [&mut from_now, &mut resumed] {
        let message = next(stream).await;
        assert_eq!(message.event, Some(Event::User(user("user_a", 200))));
    }
    drop((from_now, resumed));
    app.stop().await;
}

pub(crate) async fn list_changes_pages_in_order_and_keeps_one_entry_per_user(
    db: impl TestDatabase,
) {
    let db = db.open().await;
    let app = TestApp::spawn(&db.url).await;
    for version in 1..=4 {
        for u in 0..5 {
            let id = format!("user_{u}");
            app.updated(&format!("msg_{u}_{version}"), user(&id, version * 10))
                .await;
        }
    }
    app.deleted("msg_3_del", "user_3", 1_000).await;

    let mut mirror = Mirror::default();
    let mut pages = 0;
    let mut entries = 0;
    loop {
        let page = list_changes(&app, mirror.position, 2).await.unwrap();
        pages += 1;
        entries += page.changes.len();
        assert!(page.changes.len() <= 2);
        for change in page.changes {
            mirror.apply_change(change);
        }
        assert!(page.next_after_position >= mirror.position);
        mirror.position = page.next_after_position;
        if !page.has_more {
            break;
        }
    }
    // 21 changes were committed; compaction kept one per user.
    assert_eq!(entries, 5);
    assert_eq!(pages, 3);
    assert_eq!(mirror.deletions_seen, 1);
    assert_eq!(mirror.users, final_state(&app).await);
    assert_eq!(mirror.users["user_0"], user("user_0", 40));

    // Caught up: an empty page at the same position.
    let page = list_changes(&app, mirror.position, 0).await.unwrap();
    assert!(page.changes.is_empty() && !page.has_more);
    assert_eq!(page.next_after_position, mirror.position);

    // A poller resuming from any earlier position ends in the same state.
    for resume_at in 0..mirror.position {
        let mut late = Mirror {
            users: BTreeMap::new(),
            position: resume_at,
            ..Mirror::default()
        };
        let page = list_changes(&app, resume_at, 1000).await.unwrap();
        for change in page.changes {
            late.apply_change(change);
        }
        assert!(late.position <= mirror.position);
        for id in late.users.keys() {
            assert_eq!(late.users[id], mirror.users[id], "resumed at {resume_at}");
        }
    }
    app.stop().await;
}

async fn resuming_after_disconnects_at_random_points_loses_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let (users, versions) = (24, 5);
    let (events, deleted) = storm("r", users, versions, 7);

    // The storm runs while the follower disconnects and resumes.
    let sender = async { send_all(&[&app], events).await };
    let follower = async {
        let mut rng = Lcg(11);
        let mut mirror = Mirror::default();
        let mut stream = watch(&app, Start::AfterPosition(0)).await;
        let mut reconnects = 0;
        // Until the storm has settled: many short sessions.
        for _ in 0..40 {
            for _ in 0..rng.below(12) {
                match tokio::time::timeout(Duration::from_millis(50), stream.message()).await {
                    Ok(message) => mirror.apply(message.unwrap().unwrap()),
                    Err(_) => break,
                }
            }
            drop(stream);
            reconnects += 1;
            stream = watch(&app, Start::AfterPosition(mirror.position)).await;
            mirror.caught_up = false;
        }
        (mirror, stream, reconnects)
    };
    let ((), (mut mirror, mut stream, reconnects)) = tokio::join!(sender, follower);
    assert_eq!(reconnects, 40);

    let head = head(&app).await;
    follow_to(&mut stream, &mut mirror, head).await;
    assert_eq!(mirror.users, expected_state("r", users, versions, &deleted));
    assert_eq!(mirror.users, final_state(&app).await);

    // A poller that stops at random points ends in the same state.
    let mut rng = Lcg(5);
    let mut polled = Mirror::default();
    loop {
        let page = list_changes(&app, polled.position, 1 + rng.below(7) as i32)
            .await
            .unwrap();
        for change in page.changes {
            polled.apply_change(change);
        }
        polled.position = page.next_after_position;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(polled.users, mirror.users);
    drop(stream);
    app.stop().await;
}

async fn pruned_and_foreign_positions_are_failed_precondition(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = clerk_sync_service::Config::with_database(&db.url);
    config.feed_deletion_retention_secs = 1;
    let app = TestApp::spawn_with(config).await;
    app.created("msg_a", user("user_a", 100)).await;
    app.created("msg_b", user("user_b", 100)).await;
    let before_deletion = head(&app).await;
    app.deleted("msg_a_del", "user_a", 200).await;
    let deletion = head(&app).await;

    // A client that saw user_a live and resumes from before its deletion
    // would miss it once the entry is pruned (retention: 1 s): refused.
    let mut refusal = None;
    for _ in 0..100 {
        match list_changes(&app, before_deletion, 10).await {
            Ok(page) => {
                assert!(
                    !page.changes.is_empty(),
                    "the deletion is there until pruned"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let refusal = refusal.expect("the deletion entry is pruned within 10 s");
    assert_eq!(refusal.code(), Code::FailedPrecondition);
    assert!(
        refusal.message().contains("restart from a snapshot"),
        "{}",
        refusal.message()
    );
    let status = app
        .directory
        .clone()
        .watch_users(WatchUsersRequest {
            start: Some(Start::AfterPosition(before_deletion)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("restart from a snapshot"));

    // From the deletion on, and from a snapshot, all is well.
    let page = list_changes(&app, deletion, 10).await.unwrap();
    assert!(page.changes.is_empty());
    let mut stream = watch(&app, Start::Snapshot(())).await;
    let mut mirror = Mirror::default();
    follow_to(&mut stream, &mut mirror, deletion).await;
    assert_eq!(mirror.users, final_state(&app).await);
    assert_eq!(mirror.users.keys().collect::<Vec<_>>(), ["user_b"]);
    // From 0 (a client starting empty) too: the pruned deletion concerns it not.
    let page = list_changes(&app, 0, 10).await.unwrap();
    assert_eq!(page.changes.len(), 1);

    // A position this log never reached comes from another database.
    let status = list_changes(&app, deletion + 1_000, 10).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("restart from a snapshot"));
    drop(stream);
    app.stop().await;
}

async fn bad_feed_requests_name_the_field(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let cases = [
        (WatchUsersRequest { start: None }, "start is required"),
        (
            WatchUsersRequest {
                start: Some(Start::AfterPosition(-1)),
            },
            "after_position must not be negative",
        ),
    ];
    for (request, message) in cases {
        let status = app
            .directory
            .clone()
            .watch_users(request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with(message),
            "{}",
            status.message()
        );
    }
    for (after, size, message) in [
        (-5, 10, "after_position must not be negative"),
        (0, -1, "page_size must not be negative"),
        (0, 1001, "page_size must be at most 1000"),
    ] {
        let status = list_changes(&app, after, size).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), message);
    }
    app.stop().await;
}
