//! Backfill passes as a running system: recorded by the sync-service with
//! their counts (`backfill status`, `ListPasses`, the reconcile metrics),
//! scheduled with `--every` and converging while Clerk changes (a 429 and a
//! 500 on the way), one at a time under the lease whoever starts them,
//! resumed from the cursor of a pass whose holder was killed, recorded as
//! failed when they fail; and `--user` resyncs of single users.

use std::time::{Duration, Instant};

use clerk_sync_api::v1::{
    self, PassStatus, ReconcilePass, reconcile_service_client::ReconcileServiceClient,
};
use clerk_sync_common::time::millis_from_timestamp;
use clerk_sync_gateway::{backfill, config::Command};
use serde_json::json;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::Code;

use crate::backfill::{EPOCH_MS, backfill_command, clerk_users, run_backfill, webhook};
use crate::fake_clerk::{FakeClerk, Fault, clerk_user};
use crate::helpers::{Backend, Stack, scrape};

crate::on_both_backends!(
    passes_are_recorded_counted_and_shown,
    a_scheduled_run_converges_with_no_wrong_tombstone,
    two_schedulers_never_run_passes_at_once,
    a_pass_killed_mid_way_is_resumed_from_its_cursor,
    a_failed_pass_is_recorded_and_the_schedule_goes_on,
    named_users_are_resynced,
);

/// Longest a test waits for passes to reach a state.
const PATIENCE: Duration = Duration::from_secs(60);

/// Every recorded pass, newest first.
async fn passes(stack: &Stack) -> Vec<ReconcilePass> {
    ReconcileServiceClient::connect(format!("http://{}", stack.sync_address))
        .await
        .unwrap()
        .list_passes(v1::ListPassesRequest { limit: 1000 })
        .await
        .unwrap()
        .into_inner()
        .passes
}

/// Waits until `done` holds for the passes, and returns them.
async fn wait_for_passes(
    stack: &Stack,
    what: &str,
    done: impl Fn(&[ReconcilePass]) -> bool,
) -> Vec<ReconcilePass> {
    let started = Instant::now();
    loop {
        let passes = passes(stack).await;
        if done(&passes) {
            return passes;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no {what} in time: {passes:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn complete(passes: &[ReconcilePass]) -> impl Iterator<Item = &ReconcilePass> {
    passes
        .iter()
        .filter(|pass| pass.status() == PassStatus::Complete)
}

fn ms(timestamp: &Option<prost_types::Timestamp>) -> i64 {
    timestamp.as_ref().and_then(millis_from_timestamp).unwrap()
}

/// A scheduler (`backfill --every …`) running in a task, and its stop.
struct Scheduler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), backfill::BackfillError>>,
}

impl Scheduler {
    fn start(stack: &Stack, clerk: &FakeClerk, extra: &[&str]) -> Self {
        let config = backfill_command(stack, clerk, extra);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let Some(Command::Backfill(command)) = &config.command else {
                unreachable!()
            };
            backfill::schedule(&config.sync_service, &command.args, async {
                let _ = stopped.await;
            })
            .await
        });
        Self { stop, task }
    }

    /// Stops it; it must end at once and well.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("a scheduler stops at once")
            .unwrap()
            .unwrap();
    }
}

/// The directory's users and their `last_name` (which carries the version).
async fn directory(stack: &Stack) -> Vec<(String, Option<String>)> {
    stack
        .all_users_paged()
        .await
        .into_values()
        .map(|user| (user.id, user.last_name))
        .collect()
}

/// Clerk's users as the directory should hold them.
fn clerk_directory(clerk: &FakeClerk) -> Vec<(String, Option<String>)> {
    let mut users: Vec<_> = clerk
        .users()
        .iter()
        .map(|user| {
            let text = |field: &str| user[field].as_str().map(str::to_owned);
            (text("id").unwrap(), text("last_name"))
        })
        .collect();
    users.sort();
    users
}

async fn passes_are_recorded_counted_and_shown(backend: Backend) {
    let stack = Stack::start(backend).await;
    let clerk = FakeClerk::start(clerk_users(300)).await;
    // What webhooks brought: an older version of user 0, and a user Clerk
    // no longer has.
    let mut older = clerk.users()[0].clone();
    older["updated_at"] = json!(older["updated_at"].as_i64().unwrap() - 100);
    webhook(&stack, "msg_older_0", &older).await;
    webhook(
        &stack,
        "msg_gone",
        &clerk_user("user_gone", EPOCH_MS - 5_000, EPOCH_MS - 5_000),
    )
    .await;

    let args = [
        "--page-size",
        "100",
        "--reconcile",
        "--holder",
        "ops-laptop",
    ];
    let config = backfill_command(&stack, &clerk, &args);
    let summary = run_backfill(&config).await.unwrap();
    assert_eq!(
        (
            summary.applied,
            summary.repaired_missed,
            summary.repaired_stale,
            summary.tombstoned
        ),
        (300, 299, 1, 1),
        "{summary}"
    );

    let recorded = passes(&stack).await;
    let [pass] = recorded.as_slice() else {
        panic!("{recorded:#?}")
    };
    assert_eq!(pass.status(), PassStatus::Complete);
    assert_eq!(
        (pass.holder.as_str(), pass.reconcile, pass.every),
        ("ops-laptop", true, None)
    );
    assert_eq!(
        (pass.resumed_after.as_str(), pass.cursor.as_str()),
        ("", "user_00299")
    );
    assert_eq!(pass.counts, Some(summary.counts()));
    assert!(pass.ended_at.is_some() && pass.lease_expires_at.is_none());
    assert!(ms(&pass.ended_at) >= ms(&pass.started_at));

    // `backfill status` prints it.
    let status = backfill::status(&config.sync_service, 20).await.unwrap();
    for part in [
        "pass 1 complete by ops-laptop",
        "reconcile",
        "fetched 300, applied 300 (repaired: 299 missed, 1 stale)",
        "tombstoned 1",
        "cursor user_00299",
    ] {
        assert!(status.contains(part), "{part:?} not in {status}");
    }

    // The metrics: what it repaired, and when it ended (sampled).
    let ended_secs = ms(&pass.ended_at).div_euclid(1000) as f64;
    let started = Instant::now();
    let metrics = loop {
        let metrics = scrape(stack.sync_metrics).await;
        if metrics.value("clerk_sync_service_reconcile_last_success_timestamp_seconds")
            == ended_secs
        {
            break metrics;
        }
        assert!(started.elapsed() < PATIENCE, "{}", metrics.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let repaired = |kind: &str| {
        metrics.value(&format!(
            "clerk_sync_service_reconcile_repaired_total{{kind=\"{kind}\"}}"
        ))
    };
    assert_eq!(
        (
            repaired("missed"),
            repaired("stale"),
            repaired("tombstoned")
        ),
        (299.0, 1.0, 1.0)
    );
    // No scheduler: no interval, so the overdue alert stays silent.
    assert!(
        !metrics
            .text
            .contains("\nclerk_sync_service_reconcile_interval_seconds "),
        "{}",
        metrics.text
    );

    // A rerun repairs nothing and is listed first.
    let rerun = run_backfill(&config).await.unwrap();
    assert_eq!((rerun.applied, rerun.unchanged), (0, 300), "{rerun}");
    let recorded = passes(&stack).await;
    assert_eq!(
        recorded.iter().map(|p| p.id).collect::<Vec<_>>(),
        [pass.id + 1, pass.id]
    );
    let metrics = scrape(stack.sync_metrics).await;
    assert_eq!(
        metrics.value("clerk_sync_service_reconcile_repaired_total{kind=\"missed\"}"),
        299.0
    );
}

async fn a_scheduled_run_converges_with_no_wrong_tombstone(backend: Backend) {
    let stack = Stack::start(backend).await;
    let clerk = FakeClerk::start(clerk_users(2_000)).await;
    let scheduler = Scheduler::start(
        &stack,
        &clerk,
        &[
            "--reconcile",
            "--every",
            "1s",
            "--lease-secs",
            "2",
            "--max-retries",
            "3",
        ],
    );
    wait_for_passes(&stack, "first complete pass", |p| complete(p).count() >= 1).await;
    assert_eq!(directory(&stack).await, clerk_directory(&clerk));

    // Between passes Clerk gains 30 users, changes 20 and loses 40 (webhooks
    // lost for all of them), and the next requests meet a 429 and a 500.
    let changed_at = clerk_sync_common::time::now_millis();
    clerk.change_users(|users| {
        users.retain(|user| {
            let n: usize = user["id"].as_str().unwrap()[5..].parse().unwrap();
            !(100..140).contains(&n)
        });
        for user in users.iter_mut().take(20) {
            let updated = user["updated_at"].as_i64().unwrap() + 1_000;
            user["updated_at"] = json!(updated);
            user["last_name"] = json!(format!("v{updated}"));
        }
        users.extend((0..30).map(|i| {
            let created = EPOCH_MS + 3_000_000 + i * 1000;
            clerk_user(&format!("user_new_{i:02}"), created, created)
        }));
    });
    let next = clerk.list_requests();
    clerk.fail(next + 1, Fault::Throttle(1));
    clerk.fail(next + 2, Fault::ServerError);
    let recorded = wait_for_passes(&stack, "a complete pass after the changes", |p| {
        complete(p).any(|pass| ms(&pass.started_at) > changed_at)
    })
    .await;
    scheduler.stop().await;

    // The directory is Clerk's: nobody tombstoned who is still there.
    assert_eq!(directory(&stack).await, clerk_directory(&clerk));
    assert_eq!(
        stack.get_user("user_00120").await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(
        recorded
            .iter()
            .all(|pass| pass.status() == PassStatus::Complete),
        "{recorded:#?}"
    );
    let metrics = scrape(stack.sync_metrics).await;
    let repaired = |kind: &str| {
        metrics.value(&format!(
            "clerk_sync_service_reconcile_repaired_total{{kind=\"{kind}\"}}"
        ))
    };
    assert_eq!(
        (
            repaired("missed"),
            repaired("stale"),
            repaired("tombstoned")
        ),
        (2_030.0, 20.0, 40.0)
    );
    assert_eq!(
        metrics.value("clerk_sync_service_reconcile_interval_seconds"),
        1.0
    );
    // Stopped between passes or during one: nothing is left running.
    let last = passes(&stack).await;
    assert!(
        last.iter().all(|pass| pass.status() != PassStatus::Running),
        "{last:#?}"
    );
}

async fn two_schedulers_never_run_passes_at_once(backend: Backend) {
    let stack = Stack::start(backend).await;
    let clerk = FakeClerk::start(clerk_users(600)).await;
    clerk.slow_pages(Duration::from_millis(100));
    let schedule = |holder| {
        Scheduler::start(
            &stack,
            &clerk,
            &[
                "--page-size",
                "100",
                "--every",
                "1s",
                "--lease-secs",
                "2",
                "--holder",
                holder,
            ],
        )
    };
    let (a, b) = (schedule("scheduler-a"), schedule("scheduler-b"));
    wait_for_passes(&stack, "four complete passes", |p| complete(p).count() >= 4).await;
    a.stop().await;
    b.stop().await;

    let recorded = passes(&stack).await;
    for (i, one) in recorded.iter().enumerate() {
        assert_ne!(one.status(), PassStatus::Running, "{one:#?}");
        for other in &recorded[i + 1..] {
            let apart = ms(&one.ended_at) <= ms(&other.started_at)
                || ms(&other.ended_at) <= ms(&one.started_at);
            assert!(apart, "passes ran at once: {one:#?} {other:#?}");
        }
    }
    assert_eq!(directory(&stack).await, clerk_directory(&clerk));
}

async fn a_pass_killed_mid_way_is_resumed_from_its_cursor(backend: Backend) {
    let stack = Stack::start(backend).await;
    let clerk = FakeClerk::start(clerk_users(1_000)).await;
    clerk.slow_pages(Duration::from_millis(300));
    let args = ["--page-size", "100", "--reconcile", "--lease-secs", "2"];
    let config = backfill_command(&stack, &clerk, &args);
    let killed = tokio::spawn({
        let config = config.clone();
        async move { run_backfill(&config).await }
    });
    // Killed once a renewal has recorded two pages' progress.
    wait_for_passes(&stack, "a running pass past its second page", |p| {
        p.first().is_some_and(|pass| {
            pass.status() == PassStatus::Running && pass.cursor.as_str() >= "user_00199"
        })
    })
    .await;
    killed.abort();
    let _ = killed.await;
    let [dead] = passes(&stack).await.try_into().unwrap();
    clerk.slow_pages(Duration::ZERO);
    clerk.reset_requests();

    // The next pass waits out the dead holder's lease, records it as
    // abandoned and continues after its cursor; reconcile waits for a pass
    // from the first user.
    let summary = run_backfill(&config).await.unwrap();
    assert!(!summary.complete && summary.tombstoned == 0, "{summary}");
    let recorded = passes(&stack).await;
    let [resumed, dead_now] = recorded.as_slice() else {
        panic!("{recorded:#?}")
    };
    assert_eq!(dead_now.status(), PassStatus::Abandoned);
    assert!(dead_now.error.contains("stopped renewing"), "{dead_now:#?}");
    assert_eq!(dead_now.cursor, dead.cursor);
    assert_eq!(resumed.status(), PassStatus::Complete);
    assert_eq!(resumed.resumed_after, dead.cursor);
    assert_eq!(
        clerk
            .served()
            .first()
            .and_then(|served| served.after.clone()),
        Some(dead.cursor.clone())
    );
    let resumed_at: usize = dead.cursor[5..].parse().unwrap();
    assert_eq!(resumed.counts.unwrap().fetched, (999 - resumed_at) as u64);
    assert_eq!(directory(&stack).await, clerk_directory(&clerk));

    // The pass after that starts at the first user again.
    let full = run_backfill(&config).await.unwrap();
    assert!(full.complete, "{full}");
    assert_eq!(passes(&stack).await[0].resumed_after, "");
}

async fn a_failed_pass_is_recorded_and_the_schedule_goes_on(backend: Backend) {
    let stack = Stack::start(backend).await;
    let clerk = FakeClerk::start(clerk_users(300)).await;
    clerk.fail(1, Fault::ServerError);
    let scheduler = Scheduler::start(
        &stack,
        &clerk,
        &["--reconcile", "--every", "1s", "--max-retries", "0"],
    );
    let recorded = wait_for_passes(&stack, "a complete pass", |p| complete(p).count() >= 1).await;
    scheduler.stop().await;

    let failed = recorded.last().unwrap();
    assert_eq!(failed.status(), PassStatus::Failed, "{recorded:#?}");
    assert!(failed.error.contains("500"), "{failed:#?}");
    assert!(failed.ended_at.is_some());
    // A failed pass is started over, not continued.
    let next = &recorded[recorded.len() - 2];
    assert_eq!(
        (next.status(), next.resumed_after.as_str()),
        (PassStatus::Complete, "")
    );
    assert_eq!(next.every.unwrap().seconds, 1);
    let metrics = scrape(stack.sync_metrics).await;
    assert!(
        metrics.value("clerk_sync_service_reconcile_last_success_timestamp_seconds")
            >= ms(&failed.started_at).div_euclid(1000) as f64
    );
}

async fn named_users_are_resynced(backend: Backend) {
    let stack = Stack::start(backend).await;
    let clerk = FakeClerk::start(clerk_users(50)).await;
    run_backfill(&backfill_command(&stack, &clerk, &[]))
        .await
        .unwrap();
    // Clerk changed user 3 and deleted user 4; both webhooks were lost.
    clerk.change_users(|users| {
        users[3]["updated_at"] = json!(EPOCH_MS + 9_000_000);
        users[3]["last_name"] = json!("Resynced");
        users.remove(4);
    });
    clerk.reset_requests();

    let summary = run_backfill(&backfill_command(
        &stack,
        &clerk,
        &["--user", "user_00003", "--user", "user_00004,user_nobody"],
    ))
    .await
    .unwrap();
    assert_eq!(
        (
            summary.fetched,
            summary.applied,
            summary.repaired_stale,
            summary.tombstoned,
            summary.rejected
        ),
        (1, 1, 1, 1, 1),
        "{summary}"
    );
    assert_eq!(summary.rejections[0].user_id, "user_nobody");
    assert_eq!(
        stack
            .get_user("user_00003")
            .await
            .unwrap()
            .last_name
            .as_deref(),
        Some("Resynced")
    );
    assert_eq!(
        stack.get_user("user_00004").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(clerk.lookups(), ["user_00003", "user_00004", "user_nobody"]);
    assert!(clerk.served().is_empty(), "a resync lists nobody");
    // A resync is no pass: only the first backfill is recorded.
    assert_eq!(passes(&stack).await.len(), 1);
    assert_eq!(directory(&stack).await.len(), 49);
}
