//! The change feed fanned out: once caught up, every watcher of a server
//! takes the pages one shared reader reads after each commit, so a commit
//! costs one read of the log however many watch (counted by
//! `clerk_sync_service_feed_reads_total`). A watcher that falls behind the
//! shared pages reads the log itself and still gets everything; one that
//! does not read at all is ended with where to resume while the others go
//! on; one that joins while changes commit misses nothing.

use std::time::Duration;

use clerk_sync_api::v1::{
    WatchOrganizationsRequest, WatchUsersRequest, WatchUsersResponse, watch_organizations_request,
    watch_organizations_response, watch_users_request::Start,
};
use clerk_sync_service::Config;
use futures::future::join_all;
use tonic::{Code, Streaming};

use crate::{
    feed::{Mirror, expected_state, final_state, follow_to, head, next, send_all, storm, watch},
    feed_limits::{slow_client, wait_for_watchers},
    helpers::{Backend, TestApp, TestDb, user},
    organizations::{apply, clients, joined, membership, organization, upserted},
};

crate::on_both_backends!(
    fifty_watchers_see_every_change_in_order_with_one_read_per_commit,
    organization_watchers_share_one_read_per_commit,
    a_watcher_behind_the_shared_pages_still_gets_every_change,
    a_watcher_that_does_not_read_is_ended_while_the_others_go_on,
    watchers_joining_while_changes_commit_miss_nothing,
);

fn reads(feed: &str, reader: &str) -> String {
    format!(r#"clerk_sync_service_feed_reads_total{{feed="{feed}",reader="{reader}"}}"#)
}

/// A server whose poller never rings after its first look: every wake-up
/// of the watchers is a local commit, so reads can be counted per commit.
async fn spawn(db: &TestDb, configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config::with_database(&db.url);
    config.feed_poll_interval_ms = 3_600_000;
    configure(&mut config);
    TestApp::spawn_with(config).await
}

/// A user whose messages take about 2 KB each.
fn large_user(id: &str, version: i64) -> clerk_sync_api::v1::User {
    let mut profile = user(id, version);
    profile.public_metadata = Some(clerk_sync_api::json::struct_from_json(
        serde_json::json!({ "bio": "b".repeat(2000) })
            .as_object()
            .unwrap()
            .clone(),
    ));
    profile
}

/// A `WatchUsers` stream from now on a [`slow_client`].
async fn slow_watch(app: &TestApp) -> Streaming<WatchUsersResponse> {
    slow_client(app)
        .await
        .watch_users(WatchUsersRequest {
            start: Some(Start::Now(())),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn fifty_watchers_see_every_change_in_order_with_one_read_per_commit(backend: Backend) {
    const COMMITS: usize = 20;
    let db = TestDb::new(backend).await;
    let app = spawn(&db, |_| {}).await;
    for n in 0..5 {
        app.created(&format!("msg_before_{n}"), user(&format!("user_{n}"), 100))
            .await;
    }
    // With nobody watching, a commit costs the shared readers no read.
    let idle = app.scrape().await;
    for feed in ["users", "organizations"] {
        assert_eq!(idle.value(&reads(feed, "shared")), 0.0, "{}", idle.text);
    }
    // Snapshots, from now and from a position: each catches up by itself.
    let starts = (0..50).map(|i| match i % 3 {
        0 => Start::Snapshot(()),
        1 => Start::Now(()),
        _ => Start::AfterPosition(2),
    });
    let mut streams = join_all(starts.map(|start| watch(&app, start))).await;
    let mut mirrors: Vec<Mirror> = (0..streams.len()).map(|_| Mirror::default()).collect();
    let start_head = head(&app).await;
    for (stream, mirror) in streams.iter_mut().zip(&mut mirrors) {
        follow_to(stream, mirror, start_head).await;
    }
    let before = app.scrape().await;

    // One event at a time: each commits in a transaction of its own.
    for n in 0..COMMITS {
        let id = format!("user_{}", n % 8);
        if n == 13 {
            app.deleted(&format!("msg_{n}"), &id, 10_000).await;
        } else {
            app.updated(&format!("msg_{n}"), user(&id, 200 + n as i64))
                .await;
        }
    }
    let end = head(&app).await;
    let expected = final_state(&app).await;
    for (i, (stream, mirror)) in streams.iter_mut().zip(&mut mirrors).enumerate() {
        follow_to(stream, mirror, end).await;
        if i % 3 != 1 {
            assert_eq!(mirror.users, expected, "watcher {i}");
        } else {
            // From now: the users changed since, each as it is now.
            for (id, user) in &mirror.users {
                assert_eq!(Some(user), expected.get(id), "watcher {i}, {id}");
            }
            assert_eq!(mirror.users.len(), 7, "watcher {i}");
        }
        assert_eq!(mirror.deletions_seen, 1, "watcher {i}");
    }

    let after = app.scrape().await;
    let shared = after.delta(&before, &reads("users", "shared"));
    assert!(
        (1.0..=COMMITS as f64).contains(&shared),
        "{shared} shared reads for {COMMITS} commits"
    );
    // Not one read per watcher and commit: none at all once caught up.
    assert_eq!(after.delta(&before, &reads("users", "watcher")), 0.0);
    // Nobody watches organizations: their log is not read.
    assert_eq!(after.delta(&before, &reads("organizations", "shared")), 0.0);
    app.stop().await;
}

async fn organization_watchers_share_one_read_per_commit(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = spawn(&db, |_| {}).await;
    let c = clients(&app);
    apply(&c, upserted("msg_o0", organization("org_0", "Zero", 100))).await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        let stream = c
            .directory
            .clone()
            .watch_organizations(WatchOrganizationsRequest {
                start: Some(watch_organizations_request::Start::Snapshot(())),
            })
            .await
            .unwrap()
            .into_inner();
        streams.push(stream);
    }
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); streams.len()];
    let mut positions = vec![0; streams.len()];
    let through = |seen: &mut Vec<String>, position: &mut i64, message| {
        let message: clerk_sync_api::v1::WatchOrganizationsResponse = message;
        assert!(message.position >= *position, "positions grow");
        *position = message.position;
        match message.event.unwrap() {
            watch_organizations_response::Event::Change(change) => {
                use clerk_sync_api::v1::organization_change::Change;
                seen.push(match change.change.unwrap() {
                    Change::Organization(o) => o.id,
                    Change::OrganizationDeleted(o) => format!("-{}", o.id),
                    Change::Membership(m) => m.id,
                    Change::MembershipDeleted(m) => format!("-{}", m.id),
                });
                false
            }
            watch_organizations_response::Event::CaughtUp(_) => true,
        }
    };
    for (i, stream) in streams.iter_mut().enumerate() {
        while !through(&mut seen[i], &mut positions[i], next_of(stream).await) {}
    }
    let before = app.scrape().await;

    // A membership before its organization, then the organization: the
    // organization comes first in every stream.
    let events = [
        joined(
            "msg_m1",
            membership("orgmem_1", "org_1", "user_1", "org:member", &[], 100),
        ),
        upserted("msg_o1", organization("org_1", "One", 100)),
        joined(
            "msg_m2",
            membership("orgmem_2", "org_0", "user_2", "org:admin", &[], 100),
        ),
        upserted("msg_o0b", organization("org_0", "Zero again", 200)),
    ];
    for event in events {
        apply(&c, event).await;
    }
    let end = head(&app).await;
    for (i, stream) in streams.iter_mut().enumerate() {
        while positions[i] < end {
            through(&mut seen[i], &mut positions[i], next_of(stream).await);
        }
    }
    // The organization before its membership; its change moves its
    // membership after it. Whether the last two commits arrive as one page
    // or two, every watcher got the same pages.
    assert_eq!(seen[0][..3], ["org_0", "org_1", "orgmem_1"]);
    assert_eq!(seen[0][seen[0].len() - 2..], ["org_0", "orgmem_2"]);
    for (i, theirs) in seen.iter().enumerate() {
        assert_eq!(theirs, &seen[0], "watcher {i}");
    }
    let after = app.scrape().await;
    let shared = after.delta(&before, &reads("organizations", "shared"));
    assert!(
        (1.0..=4.0).contains(&shared),
        "{shared} shared reads for 4 commits"
    );
    assert_eq!(
        after.delta(&before, &reads("organizations", "watcher")),
        0.0
    );
    app.stop().await;
}

async fn next_of<M>(stream: &mut Streaming<M>) -> M {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .expect("the stream stays up")
        .expect("the stream does not end")
}

async fn a_watcher_behind_the_shared_pages_still_gets_every_change(backend: Backend) {
    // Far more commits than the shared reader keeps pages for, each far
    // larger than the watcher's buffer and window can hold.
    const COMMITS: usize = 100;
    let db = TestDb::new(backend).await;
    let app = spawn(&db, |config| {
        config.limits.watch_buffer_bytes = 4 * 1024;
        config.limits.watch_stall_timeout = Duration::from_secs(120);
    })
    .await;
    let mut slow = slow_watch(&app).await;
    let mut slow_mirror = Mirror::default();
    let mut keeping_up = watch(&app, Start::Now(())).await;
    let mut mirror = Mirror::default();
    let start = head(&app).await;
    follow_to(&mut slow, &mut slow_mirror, start).await;
    follow_to(&mut keeping_up, &mut mirror, start).await;
    let before = app.scrape().await;

    // The slow client reads nothing while these commit; the other does.
    let reading = async {
        while mirror.users.len() < COMMITS {
            mirror.apply(next(&mut keeping_up).await);
        }
    };
    let writing = async {
        for n in 0..COMMITS {
            app.created(
                &format!("msg_{n}"),
                large_user(&format!("user_{n:03}"), 100),
            )
            .await;
        }
    };
    tokio::join!(reading, writing);

    let end = head(&app).await;
    follow_to(&mut slow, &mut slow_mirror, end).await;
    let expected = final_state(&app).await;
    assert_eq!(expected.len(), COMMITS);
    assert_eq!(slow_mirror.users, expected);
    assert_eq!(mirror.users, expected);
    // It fell behind the shared pages and read the log itself.
    let after = app.scrape().await;
    assert!(after.delta(&before, &reads("users", "watcher")) >= 1.0);
    app.stop().await;
}

async fn a_watcher_that_does_not_read_is_ended_while_the_others_go_on(backend: Backend) {
    const COMMITS: usize = 60;
    let db = TestDb::new(backend).await;
    let app = spawn(&db, |config| {
        config.limits.watch_buffer_bytes = 8 * 1024;
        config.limits.watch_stall_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stalled = slow_watch(&app).await;
    let mut stalled_mirror = Mirror::default();
    let mut others: Vec<Streaming<WatchUsersResponse>> =
        join_all((0..3).map(|_| watch(&app, Start::Now(())))).await;
    let mut mirrors: Vec<Mirror> = (0..3).map(|_| Mirror::default()).collect();
    let start = head(&app).await;
    follow_to(&mut stalled, &mut stalled_mirror, start).await;
    for (stream, mirror) in others.iter_mut().zip(&mut mirrors) {
        follow_to(stream, mirror, start).await;
    }
    wait_for_watchers(&app, 4.0).await;

    let created = |range: std::ops::Range<usize>| {
        let app = &app;
        async move {
            for n in range {
                app.created(
                    &format!("msg_{n}"),
                    large_user(&format!("user_{n:03}"), 100),
                )
                .await;
            }
        }
    };
    created(0..COMMITS).await;
    let middle = head(&app).await;
    for (stream, mirror) in others.iter_mut().zip(&mut mirrors) {
        follow_to(stream, mirror, middle).await;
    }
    // Past the stall timeout: the client reads what it was sent, then learns
    // where to resume.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ended = loop {
        match stalled.message().await {
            Ok(Some(message)) => stalled_mirror.apply(message),
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    let resume = stalled_mirror.position;
    assert!(
        ended
            .message()
            .contains(&format!("resume with after_position {resume}")),
        "last position {resume}: {ended:?}"
    );
    assert!(
        stalled_mirror.users.len() < COMMITS,
        "everything was buffered"
    );
    wait_for_watchers(&app, 3.0).await;

    // The others go on.
    created(COMMITS..COMMITS + 10).await;
    let end = head(&app).await;
    let expected = final_state(&app).await;
    for (stream, mirror) in others.iter_mut().zip(&mut mirrors) {
        follow_to(stream, mirror, end).await;
        assert_eq!(mirror.users, expected);
    }
    // Resuming where it was told loses nothing.
    let mut resumed = watch(&app, Start::AfterPosition(resume)).await;
    follow_to(&mut resumed, &mut stalled_mirror, end).await;
    assert_eq!(stalled_mirror.users, expected);
    app.stop().await;
}

async fn watchers_joining_while_changes_commit_miss_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = spawn(&db, |_| {}).await;
    let (events, deleted) = storm("join", 40, 4, 11);
    let mut first = watch(&app, Start::Snapshot(())).await;
    let mut first_mirror = Mirror::default();
    follow_to(&mut first, &mut first_mirror, 0).await;

    // Watchers join every few milliseconds while the storm commits: each
    // catches up by itself and switches to the shared pages wherever they
    // are, reading any stretch between the two itself.
    let joining = async {
        let mut joined = Vec::new();
        for i in 0..12 {
            tokio::time::sleep(Duration::from_millis(15)).await;
            let start = if i % 2 == 0 {
                Start::Snapshot(())
            } else {
                Start::AfterPosition(0)
            };
            let mut stream = watch(&app, start).await;
            // Taken up to its caught_up marker now, so that it follows the
            // shared pages while the storm goes on.
            let mut mirror = Mirror::default();
            while !mirror.caught_up {
                mirror.apply(next(&mut stream).await);
            }
            joined.push((stream, mirror));
        }
        joined
    };
    let apps = [&app];
    let (mut joined, ()) = tokio::join!(joining, send_all(&apps, events));

    let end = head(&app).await;
    let expected = expected_state("join", 40, 4, &deleted);
    assert_eq!(final_state(&app).await, expected);
    follow_to(&mut first, &mut first_mirror, end).await;
    assert_eq!(first_mirror.users, expected, "the first watcher");
    for (i, (stream, mirror)) in joined.iter_mut().enumerate() {
        follow_to(stream, mirror, end).await;
        assert_eq!(mirror.users, expected, "watcher {i}");
    }
    app.stop().await;
}
