//! `backfill --reconcile` against a Clerk API that misbehaves the ways probes
//! found: an empty page answered 200, a truncated page, counts that disagree
//! with the listing, a cursor ignored, oversized pages, users hidden from the
//! listing, a user the sync-service refuses, a pass that would tombstone a
//! large share of the directory; and a connection to the sync-service broken
//! mid-pass.
//! Each probe asserts that nobody is wrongly tombstoned (every user is still
//! served), that the error names what is wrong, and that the requests and the
//! time spent stay bounded.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clerk_sync_gateway::backfill::{BackfillError, Rejection, Summary, listing::ListingError};

use crate::backfill::{backfill_command, clerk_users, run_backfill};
use crate::fake_clerk::{FakeClerk, Fault};
use crate::helpers::{Backend, Stack, TcpProxy};

crate::on_both_backends!(
    an_empty_page_while_clerk_counts_users_tombstones_nobody,
    a_truncated_page_mid_listing_tombstones_nobody,
    counts_that_disagree_with_the_listing_stop_it,
    an_api_that_ignores_the_cursor_stops_at_the_second_page,
    oversized_pages_stop_the_listing,
    users_clerk_still_returns_are_applied_not_tombstoned,
    a_user_the_sync_service_refuses_is_named_and_skipped,
    listed_users_are_readied_like_webhooks,
    a_pass_over_the_tombstone_share_stops_unless_forced,
    a_connection_broken_mid_pass_is_retried,
);

/// Users in the directory and in Clerk before each probe.
const USERS: u64 = 300;
/// Longest a refused pass may take (each stops at its first bad page).
const BOUNDED: Duration = Duration::from_secs(10);

/// A stack whose directory holds Clerk's [`USERS`] users, and the fake.
async fn filled(backend: Backend) -> (Stack, FakeClerk) {
    let stack = Stack::start(backend).await;
    let clerk = FakeClerk::start(clerk_users(USERS as usize)).await;
    let summary = run_backfill(&backfill_command(&stack, &clerk, &["--page-size", "100"]))
        .await
        .unwrap();
    assert!(summary.complete && summary.applied == USERS, "{summary}");
    clerk.reset_requests();
    (stack, clerk)
}

/// Runs `backfill --reconcile --page-size 100 extra…`, within [`BOUNDED`].
async fn reconcile(
    stack: &Stack,
    clerk: &FakeClerk,
    extra: &[&str],
) -> Result<Summary, BackfillError> {
    let mut args = vec!["--page-size", "100", "--reconcile"];
    args.extend_from_slice(extra);
    let started = Instant::now();
    let result = run_backfill(&backfill_command(stack, clerk, &args)).await;
    assert!(started.elapsed() < BOUNDED, "took {:?}", started.elapsed());
    result
}

/// Asserts that all `count` users are served and none was asked for by id.
async fn nobody_tombstoned(stack: &Stack, clerk: &FakeClerk, count: u64) {
    assert_eq!(stack.all_users_paged().await.len() as u64, count);
    assert!(stack.get_user("user_00000").await.is_ok());
    assert!(clerk.lookups().is_empty(), "{:?}", clerk.lookups());
}

/// Runs a reconcile pass that must stop after `requests` list requests,
/// with nobody tombstoned, and returns its error (the fake's faults reset).
async fn refused_pass(stack: &Stack, clerk: &FakeClerk, requests: usize) -> BackfillError {
    let error = reconcile(stack, clerk, &[]).await.unwrap_err();
    assert_eq!(clerk.served().len(), requests, "{error}");
    nobody_tombstoned(stack, clerk, USERS).await;
    clerk.reset_requests();
    error
}

/// The listing error that stopped a run.
fn listing_error(error: &BackfillError) -> &ListingError {
    match error {
        BackfillError::Listing { source, .. } => source,
        error => panic!("not a listing error: {error}"),
    }
}

fn assert_message(error: &BackfillError, parts: &[&str]) {
    let message = error.to_string();
    for part in parts {
        assert!(message.contains(part), "{part:?} not in: {message}");
    }
}

async fn an_empty_page_while_clerk_counts_users_tombstones_nobody(backend: Backend) {
    let (stack, clerk) = filled(backend).await;
    clerk.fail(1, Fault::Body(Bytes::from_static(b"[]")));
    let error = refused_pass(&stack, &clerk, 1).await;
    let expected = ListingError::ShortOfCount {
        listed: 0,
        before: 300,
        after: 300,
    };
    assert_eq!(listing_error(&error).to_string(), expected.to_string());
    assert_message(
        &error,
        &[
            "after 0 distinct users",
            "Clerk counts 300",
            "nothing was tombstoned",
        ],
    );
    stack.stop().await;
}

async fn a_truncated_page_mid_listing_tombstones_nobody(backend: Backend) {
    let (stack, clerk) = filled(backend).await;
    clerk.fail(2, Fault::Truncate(20));
    let error = refused_pass(&stack, &clerk, 2).await;
    assert!(matches!(
        listing_error(&error),
        ListingError::ShortOfCount { listed: 120, .. }
    ));
    assert_message(
        &error,
        &["after 120 distinct users", "--resume-after user_00119"],
    );
    stack.stop().await;
}

async fn counts_that_disagree_with_the_listing_stop_it(backend: Backend) {
    let (stack, clerk) = filled(backend).await;

    // The count changes wildly during the listing: 3 full pages and the
    // empty end are listed.
    clerk.lie_about_counts(&[300, 3_000]);
    let error = refused_pass(&stack, &clerk, 4).await;
    assert!(matches!(
        listing_error(&error),
        ListingError::CountMoved {
            before: 300,
            after: 3_000
        }
    ));
    assert_message(&error, &["300 users before", "3000 after"]);

    // The count says more than the listing brings.
    clerk.lie_about_counts(&[600, 600]);
    let error = refused_pass(&stack, &clerk, 4).await;
    assert_message(&error, &["after 300 distinct users", "Clerk counts 600"]);

    // The count says far less: the listing stops instead of listing on.
    clerk.lie_about_counts(&[30]);
    let error = refused_pass(&stack, &clerk, 2).await;
    assert!(matches!(
        listing_error(&error),
        ListingError::PastCount {
            listed: 200,
            count: 30
        }
    ));
    stack.stop().await;
}

async fn an_api_that_ignores_the_cursor_stops_at_the_second_page(backend: Backend) {
    let (stack, clerk) = filled(backend).await;
    clerk.ignore_cursor();
    let error = refused_pass(&stack, &clerk, 2).await;
    assert!(matches!(
        listing_error(&error),
        ListingError::NoNewUser { page: 100, .. }
    ));
    assert_message(
        &error,
        &["after user_00099", "does not move on with starting_after"],
    );
    stack.stop().await;
}

async fn oversized_pages_stop_the_listing(backend: Backend) {
    let (stack, clerk) = filled(backend).await;

    // More users than the limit asked for.
    let page = serde_json::to_vec(&clerk_users(101)).unwrap();
    clerk.fail(1, Fault::Body(Bytes::from(page)));
    let error = refused_pass(&stack, &clerk, 1).await;
    assert!(matches!(listing_error(&error), ListingError::BadPage(_)));
    assert_message(&error, &["more users than the 100 asked for"]);

    // A 30 MB body of ten million `{}`: refused at its size bound, and not
    // asked for again.
    let mut huge = Vec::with_capacity(30_000_002);
    huge.push(b'[');
    huge.extend(std::iter::repeat_n(*b"{},", 10_000_000).flatten());
    huge.pop();
    huge.push(b']');
    clerk.fail(1, Fault::Body(Bytes::from(huge)));
    let error = refused_pass(&stack, &clerk, 1).await;
    assert!(matches!(error, BackfillError::Clerk { .. }), "{error}");
    assert_message(&error, &["/v1/users", "larger than"]);

    // A page of `{}` within every bound: no user on it is new.
    let empties = format!("[{}]", vec!["{}"; 100].join(","));
    clerk.fail(1, Fault::Body(Bytes::from(empties)));
    let error = refused_pass(&stack, &clerk, 1).await;
    assert_message(&error, &["without a single new one"]);
    stack.stop().await;
}

async fn users_clerk_still_returns_are_applied_not_tombstoned(backend: Backend) {
    let (stack, clerk) = filled(backend).await;
    // Left out of the listing and of the count alike: only asking Clerk for
    // each user shows they exist.
    let hidden = ["user_00010", "user_00150", "user_00151", "user_00299"];
    clerk.hide_from_listing(&hidden);
    let summary = reconcile(&stack, &clerk, &[]).await.unwrap();
    assert!(summary.complete, "{summary}");
    assert_eq!(
        (
            summary.fetched,
            summary.tombstoned,
            summary.missed_by_listing,
            summary.unchanged
        ),
        (296, 0, 4, 300)
    );
    assert!(
        summary
            .to_string()
            .contains("4 users the listing missed were still in Clerk"),
        "{summary}"
    );
    let mut lookups = clerk.lookups();
    lookups.sort();
    assert_eq!(lookups, hidden);
    assert_eq!(stack.all_users_paged().await.len() as u64, USERS);
    stack.stop().await;
}

async fn a_user_the_sync_service_refuses_is_named_and_skipped(backend: Backend) {
    let stack = Stack::start(backend).await;
    let mut users = clerk_users(USERS as usize);
    // An id the sync-service refuses (longer than 256 bytes).
    let refused = format!("user_{}", "x".repeat(300));
    users[150]["id"] = refused.clone().into();
    let clerk = FakeClerk::start(users).await;
    for run in 0..2 {
        let summary = reconcile(&stack, &clerk, &[]).await.unwrap();
        assert!(summary.complete, "{summary}");
        assert_eq!(summary.rejected, 1, "{summary}");
        assert_eq!(
            summary.rejections,
            [Rejection {
                user_id: refused.clone(),
                why: "sync-service: InvalidArgument".to_owned()
            }]
        );
        let text = summary.to_string();
        assert!(
            text.contains(&format!("{refused:?} (sync-service: InvalidArgument)")),
            "{text}"
        );
        // The rerun is not aborted: everything else is a duplicate.
        let (applied, unchanged) = if run == 0 { (299, 0) } else { (0, 299) };
        assert_eq!((summary.applied, summary.unchanged), (applied, unchanged));
    }
    assert_eq!(stack.all_users_paged().await.len(), 299);
    stack.stop().await;
}

async fn listed_users_are_readied_like_webhooks(backend: Backend) {
    let stack = Stack::start(backend).await;
    let mut users = clerk_users(USERS as usize);
    let deep = (0..40).fold(
        serde_json::json!("leaf"),
        |inner, _| serde_json::json!({ "deeper": inner }),
    );
    // Private metadata the sync-service does not keep is dropped, so the
    // ban is applied; public metadata too deep to decode is refused by name.
    users[10]["private_metadata"] = deep.clone();
    users[10]["banned"] = true.into();
    users[20]["public_metadata"] = deep;
    let banned = users[10]["id"].as_str().unwrap().to_owned();
    let too_deep = users[20]["id"].as_str().unwrap().to_owned();
    let clerk = FakeClerk::start(users).await;

    let summary = reconcile(&stack, &clerk, &[]).await.unwrap();
    assert!(summary.complete, "{summary}");
    assert_eq!(summary.rejected, 1, "{summary}");
    assert_eq!(summary.rejections[0].user_id, too_deep);
    assert!(
        summary.rejections[0]
            .why
            .contains("public_metadata is nested 40 levels"),
        "{summary}"
    );
    let user = stack.get_user(&banned).await.unwrap();
    assert!(user.banned);
    assert_eq!(stack.all_users_paged().await.len() as u64, USERS - 1);
    stack.stop().await;
}

async fn a_pass_over_the_tombstone_share_stops_unless_forced(backend: Backend) {
    let (stack, clerk) = filled(backend).await;
    // Clerk lost its 30 oldest users (10 %): a consistent listing.
    let clerk_now = FakeClerk::start(clerk_users(USERS as usize).split_off(30)).await;

    let error = reconcile(&stack, &clerk_now, &[]).await.unwrap_err();
    assert!(
        matches!(
            error,
            BackfillError::TooManyTombstones {
                candidates: 30,
                live: 300,
                ..
            }
        ),
        "{error}"
    );
    assert_message(
        &error,
        &[
            "30 of the directory's 300",
            "(5 %)",
            "--force",
            "nothing was tombstoned",
        ],
    );
    nobody_tombstoned(&stack, &clerk_now, USERS).await;

    // A share that allows it, in a dry run: reported, nothing written.
    let summary = reconcile(
        &stack,
        &clerk_now,
        &["--max-tombstone-share", "10", "--dry-run"],
    )
    .await
    .unwrap();
    assert_eq!(summary.tombstoned, 30, "{summary}");
    assert_eq!(stack.all_users_paged().await.len() as u64, USERS);

    // Forced: each is confirmed gone by Clerk, then tombstoned.
    clerk_now.reset_requests();
    let summary = reconcile(&stack, &clerk_now, &["--force"]).await.unwrap();
    assert_eq!(summary.tombstoned, 30, "{summary}");
    assert_eq!(clerk_now.lookups().len(), 30);
    assert_eq!(stack.all_users_paged().await.len(), 270);
    assert!(stack.get_user("user_00029").await.is_err());
    assert!(stack.get_user("user_00030").await.is_ok());
    drop(clerk);
    stack.stop().await;
}

async fn a_connection_broken_mid_pass_is_retried(backend: Backend) {
    let stack = Stack::start(backend).await;
    let clerk = FakeClerk::start(clerk_users(1_000)).await;
    // The backfill reaches the sync-service through a proxy that resets its
    // connections mid-call, as a sync-service restart does: the calls in
    // flight fail with UNKNOWN ("transport error"), later ones with
    // UNAVAILABLE until it is back. One user at a time, so the pass is
    // still applying when the connection breaks.
    let proxy = TcpProxy::start(stack.sync_address).await;
    let mut config = backfill_command(
        &stack,
        &clerk,
        &[
            "--page-size",
            "50",
            "--concurrency",
            "1",
            "--max-retries",
            "6",
        ],
    );
    config.sync_service.urls = vec![format!("http://{}", proxy.address).parse().unwrap()];
    let pass = tokio::spawn(async move { run_backfill(&config).await });
    while stack.all_users_paged().await.len() < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.cut().await;
    let at_cut = stack.all_users_paged().await.len();
    assert!(
        at_cut < 1_000,
        "the pass had applied every user before the cut"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore().await;
    let summary = pass.await.unwrap().unwrap();
    assert!(summary.complete, "{summary}");
    assert_eq!((summary.fetched, summary.rejected), (1_000, 0), "{summary}");
    assert_eq!(stack.all_users_paged().await.len(), 1_000);
    stack.stop().await;
}
