//! `clerk-sync-gateway backfill` against a fake Clerk Backend API, through
//! the real gateway configuration parser and the real sync-service: thousands
//! of users over many pages, a 429 and a 500 mid-way, users deleted and
//! created during the listing, webhooks that are newer than the listing,
//! reconcile, reruns, dry runs, a bad key and a resumed run. The probes of
//! a misbehaving Clerk API are in `backfill_safety`.

use std::{future::pending, time::Duration};

use clap::Parser as _;
use clerk_sync_gateway::{
    Config,
    backfill::{self, BackfillError, Resume, Summary},
    config::Command,
};
use http::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

use crate::fake_clerk::{CLERK_KEY, FakeClerk, Fault, clerk_user};
use crate::helpers::{Backend, Stack};

crate::on_both_backends!(
    backfill_fills_the_directory_and_reconcile_removes_what_clerk_lost,
    dry_run_reports_and_writes_nothing,
    a_bad_key_stops_and_an_interrupted_run_resumes,
);

/// Clerk creation times: one user a second from this instant.
pub(crate) const EPOCH_MS: i64 = 1_700_000_000_000;

pub(crate) fn clerk_users(count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let created = EPOCH_MS + i as i64 * 1000;
            clerk_user(&format!("user_{i:05}"), created, created + 500)
        })
        .collect()
}

/// Parses a backfill command line exactly as the binary does (2 retries
/// unless `extra` says otherwise).
pub(crate) fn backfill_command(stack: &Stack, clerk: &FakeClerk, extra: &[&str]) -> Config {
    let sync_service = stack.sync_service_args();
    let mut argv = vec!["clerk-sync-gateway"];
    argv.extend(sync_service.iter().map(String::as_str));
    argv.extend([
        "backfill",
        "--clerk-secret-key",
        CLERK_KEY,
        "--clerk-api-url",
        &clerk.url,
    ]);
    if !extra.contains(&"--max-retries") {
        argv.extend(["--max-retries", "2"]);
    }
    argv.extend_from_slice(extra);
    Config::try_parse_from(argv).unwrap()
}

pub(crate) async fn run_backfill(config: &Config) -> Result<Summary, BackfillError> {
    let Some(Command::Backfill(command)) = &config.command else {
        panic!("not a backfill command line");
    };
    backfill::run(&config.sync_service, &command.args, pending()).await
}

/// Delivers `user` as a signed `user.updated` webhook.
pub(crate) async fn webhook(stack: &Stack, msg_id: &str, user: &Value) {
    let body = json!({
        "type": "user.updated",
        "object": "event",
        "timestamp": user["updated_at"],
        "data": user,
    });
    let answer = stack.deliver(msg_id, body.to_string().as_bytes()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn backfill_fills_the_directory_and_reconcile_removes_what_clerk_lost(backend: Backend) {
    let stack = Stack::start(backend).await;
    let users = clerk_users(2_400);
    let clerk = FakeClerk::start(users.clone()).await;

    // What webhooks already brought: a newer version of user 5; a user Clerk
    // no longer has; one Clerk deleted during the listing (index 2000); and
    // one that signed up just now (its listing will not contain it).
    let mut newer = users[5].clone();
    newer["updated_at"] = json!(EPOCH_MS + 10_000_000);
    newer["first_name"] = json!("Newer");
    webhook(&stack, "msg_newer_5", &newer).await;
    webhook(
        &stack,
        "msg_gone",
        &clerk_user("user_gone", EPOCH_MS - 5_000, EPOCH_MS - 5_000),
    )
    .await;
    webhook(&stack, "msg_2000", &users[2000]).await;
    let fresh = clerk_user("user_fresh", now_ms(), now_ms());
    webhook(&stack, "msg_fresh", &fresh).await;

    // Pages of 200: 13 list requests or so. A 429 and a 500 mid-way.
    clerk.fail(3, Fault::Throttle(1));
    clerk.fail(6, Fault::ServerError);
    // Before the 5th request (the one after user 599): a user the cursor
    // passed is deleted, so is the cursor's own user (Clerk refuses the
    // cursor; the request is asked again after user 598), user 2000 is
    // deleted ahead of the cursor, and a user signs up (appended: newest
    // created_at). The fake refuses offsets past 500, as Clerk's time out.
    clerk.before_request(
        5,
        Box::new(|users: &mut Vec<Value>| {
            users.retain(|u| {
                !["user_00100", "user_00599", "user_02000"].contains(&u["id"].as_str().unwrap())
            });
            let created = EPOCH_MS + 10_000_000;
            users.push(clerk_user("user_signup", created, created + 1));
        }),
    );

    let config = backfill_command(&stack, &clerk, &["--page-size", "200", "--reconcile"]);
    let summary = run_backfill(&config).await.unwrap();

    // Listed: 2,400 - user 2000 + the sign-up; users 100 and 599 were
    // listed before they went. User 5's listing is older than the webhook's
    // version: stale.
    assert_eq!(
        summary,
        Summary {
            dry_run: false,
            fetched: 2_400,
            applied: 2_399,
            repaired_missed: 2_399,
            repaired_stale: 0,
            unchanged: 0,
            stale: 1,
            deleted_locally: 0,
            rejected: 0,
            rejections: vec![],
            tombstoned: 2,
            missed_by_listing: 0,
            quarantined: 0,
            complete: true,
            // This fake instance has organizations but none of them.
            organizations: backfill::OrganizationsSummary {
                status: backfill::OrganizationsStatus::Listed,
                ..backfill::OrganizationsSummary::default()
            },
        }
    );
    // Only the two tombstoned users were asked for by id.
    let mut lookups = clerk.lookups();
    lookups.sort();
    assert_eq!(lookups, ["user_02000", "user_gone"]);

    // Every user Clerk holds now is in the directory, mapped like a webhook:
    // the shift did not make the listing skip anyone.
    let directory = stack.all_users_paged().await;
    for user in clerk.users() {
        let id = user["id"].as_str().unwrap();
        let stored = directory
            .get(id)
            .unwrap_or_else(|| panic!("{id} is missing from the directory"));
        if id == "user_00005" {
            assert_eq!(
                stored.first_name.as_deref(),
                Some("Newer"),
                "the webhook's newer version stays"
            );
            continue;
        }
        assert_eq!(
            stored.primary_email_address.as_deref(),
            Some(&*format!("{id}@example.com"))
        );
        assert_eq!(stored.first_name.as_deref(), Some(&*format!("First {id}")));
        let version = stored.updated_at.unwrap();
        assert_eq!(
            version.seconds * 1000 + i64::from(version.nanos / 1_000_000),
            user["updated_at"].as_i64().unwrap()
        );
    }
    // Reconcile: the two Clerk lost are tombstoned; the sign-up during the
    // listing is not; the user deleted behind the cursor stays until its
    // user.deleted webhook arrives (the listing saw it alive), and so does
    // user 599.
    for gone in ["user_gone", "user_02000"] {
        assert_eq!(
            stack.get_user(gone).await.unwrap_err().code(),
            Code::NotFound,
            "{gone}"
        );
    }
    assert!(stack.get_user("user_fresh").await.is_ok());
    assert!(stack.get_user("user_00100").await.is_ok());
    assert!(stack.get_user("user_00599").await.is_ok());
    // Clerk's 2,398, users 100 and 599 and the fresh sign-up.
    assert_eq!(directory.len(), 2_398 + 2 + 1);

    // The refused cursor was asked again after the user before it; no
    // request used an offset.
    let served = clerk.served();
    let refused = served
        .iter()
        .position(|s| s.status == StatusCode::NOT_FOUND)
        .unwrap();
    assert_eq!(served[refused].after.as_deref(), Some("user_00599"));
    assert_eq!(served[refused + 1].after.as_deref(), Some("user_00598"));
    assert!(served.len() <= 20, "{} list requests", served.len());

    // The 429 was honoured: the retry came a Retry-After (1 s) later; the
    // 500 was retried.
    let throttled = served
        .iter()
        .position(|s| s.status == StatusCode::TOO_MANY_REQUESTS)
        .unwrap();
    assert!(served[throttled + 1].at - served[throttled].at >= Duration::from_millis(990));
    assert_eq!(served[throttled + 1].after, served[throttled].after);
    let failed = served
        .iter()
        .position(|s| s.status == StatusCode::INTERNAL_SERVER_ERROR)
        .unwrap();
    assert_eq!(served[failed + 1].after, served[failed].after);
    assert_eq!(served[failed + 1].status, StatusCode::OK);

    // A rerun changes nothing: every user is a duplicate of the first run's
    // event (user 5's stale one included: the ledger keeps every event id).
    clerk.reset_requests();
    let config = backfill_command(&stack, &clerk, &["--page-size", "500"]);
    let summary = run_backfill(&config).await.unwrap();
    assert_eq!(
        (
            summary.fetched,
            summary.applied,
            summary.unchanged,
            summary.stale,
            summary.tombstoned
        ),
        (2_398, 0, 2_398, 0, 0)
    );
    stack.stop().await;
}

async fn dry_run_reports_and_writes_nothing(backend: Backend) {
    // As production runs: mutual TLS and a write token, which the dry run's
    // reads and the webhooks' writes both present.
    let stack = Stack::start_secured(backend).await;
    let users = clerk_users(300);
    let clerk = FakeClerk::start(users.clone()).await;
    webhook(&stack, "msg_1", &users[1]).await;
    let mut newer = users[2].clone();
    newer["updated_at"] = json!(EPOCH_MS + 10_000_000);
    webhook(&stack, "msg_2", &newer).await;
    webhook(
        &stack,
        "msg_gone",
        &clerk_user("user_gone", EPOCH_MS, EPOCH_MS),
    )
    .await;
    let before = stack.all_users_paged().await;

    // The directory holds 3 users, so the 1 to tombstone is 33 % of it:
    // over the default share, hence --force.
    let config = backfill_command(
        &stack,
        &clerk,
        &["--page-size", "120", "--reconcile", "--dry-run", "--force"],
    );
    let summary = run_backfill(&config).await.unwrap();
    assert_eq!(
        (
            summary.dry_run,
            summary.fetched,
            summary.applied,
            summary.unchanged,
            summary.stale,
            summary.tombstoned
        ),
        (true, 300, 298, 1, 1, 1)
    );
    assert!(
        summary.to_string().starts_with("dry run (nothing written)"),
        "{summary}"
    );
    assert_eq!(
        stack.all_users_paged().await,
        before,
        "a dry run writes nothing"
    );
    stack.stop().await;
}

async fn a_bad_key_stops_and_an_interrupted_run_resumes(backend: Backend) {
    let stack = Stack::start(backend).await;
    let users = clerk_users(1_000);
    let clerk = FakeClerk::start(users.clone()).await;

    // A wrong key: one clear error, nothing written, the key not echoed.
    let mut argv = vec!["clerk-sync-gateway".to_owned()];
    argv.extend(stack.sync_service_args());
    argv.extend(
        [
            "backfill",
            "--clerk-secret-key",
            "sk_test_wrongWrongWrong",
            "--clerk-api-url",
            &clerk.url,
        ]
        .map(String::from),
    );
    let config = Config::try_parse_from(argv).unwrap();
    let error = run_backfill(&config).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, BackfillError::Unauthorized(_)), "{message}");
    assert!(
        message.contains("CLERK_SECRET_KEY") && message.contains("401"),
        "{message}"
    );
    assert!(!message.contains("wrongWrong"), "{message}");
    assert!(stack.all_users_paged().await.is_empty());

    // Clerk fails for longer than the retries allow on the 4th page.
    for request in 4..=6 {
        clerk.fail(request, Fault::ServerError);
    }
    let config = backfill_command(&stack, &clerk, &["--page-size", "100", "--reconcile"]);
    let error = run_backfill(&config).await.unwrap_err();
    let BackfillError::Clerk {
        resume: Resume(Some(resume_after)),
        ..
    } = &error
    else {
        panic!("{error}");
    };
    let resume_after = resume_after.clone();
    assert_eq!(resume_after, "user_00299", "the last user of the 3rd page");
    assert!(
        error
            .to_string()
            .contains("rerun with --resume-after user_00299 to continue"),
        "{error}"
    );
    assert!(error.to_string().contains("500"), "{error}");
    assert_eq!(stack.all_users_paged().await.len(), 300);

    // Resuming where it said: the rest arrives, without starting over.
    clerk.reset_requests();
    let config = backfill_command(
        &stack,
        &clerk,
        &["--page-size", "100", "--resume-after", &resume_after],
    );
    let summary = run_backfill(&config).await.unwrap();
    assert!(!summary.complete, "a resumed listing is not complete");
    assert_eq!((summary.fetched, summary.applied), (700, 700));
    assert_eq!(
        clerk.served().first().unwrap().after.as_deref(),
        Some("user_00299")
    );
    assert_eq!(stack.all_users_paged().await.len(), 1_000);

    // Reconcile refuses a listing that does not start at the first user.
    let config = backfill_command(
        &stack,
        &clerk,
        &["--resume-after", &resume_after, "--reconcile"],
    );
    let error = run_backfill(&config).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("--reconcile needs a complete listing"),
        "{error}"
    );
    stack.stop().await;
}
