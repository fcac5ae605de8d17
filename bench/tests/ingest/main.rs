//! `clerk-sync-bench` against the real gateway and sync-service (in this
//! process, on both backends): ingest + verify passes on a correct end
//! state and catches a wrong one; the binary's baselines and flag checks.

mod helpers;

use std::process::Command;

use clap::Parser as _;
use clerk_sync_bench::{
    cli::{Cli, Command as Sub, IngestArgs},
    phases,
    plan::{End, EventFactory, Plan},
    target::GrpcTarget,
    verify::verify,
};
use helpers::{READ_TOKEN, SECRET, Stack};

fn ingest_args(stack: &Stack, extra: &[&str]) -> IngestArgs {
    let gateway = format!("http://{}", stack.gateway);
    let sync = format!("http://{}", stack.sync);
    let mut argv = vec![
        "clerk-sync-bench",
        "ingest",
        "--gateway-url",
        &gateway,
        "--webhook-secret",
        SECRET,
        "--sync-service-url",
        &sync,
        "--token",
        READ_TOKEN,
        "--users",
        "40",
        "--updates",
        "3",
        "--connections",
        "4",
    ];
    argv.extend(extra);
    match Cli::try_parse_from(argv).unwrap().command {
        Sub::Ingest(args) => *args,
        _ => unreachable!("ingest parsed"),
    }
}

/// Shuffled, with duplicates and deletes: every event lands, the verifier
/// agrees; against plans that differ by one never-sent update or by the
/// deletions, it must disagree.
async fn ingest_then_verify_catches_a_wrong_end_state(backend: helpers::Backend) {
    let stack = Stack::start(backend).await;
    let args = ingest_args(
        &stack,
        &[
            "--run-id",
            "it1",
            "--shuffle",
            "--duplicate-rate",
            "0.2",
            "--delete-rate",
            "0.25",
            "--seed",
            "3",
        ],
    );
    let outcome = phases::ingest(&args).await.unwrap();
    assert_eq!(
        outcome.report.failures, 0,
        "{:?}",
        outcome.report.first_failure
    );
    let verdict = outcome.verdict.as_ref().expect("verified");
    assert!(outcome.passed(), "{:?}", verdict.mismatches);
    assert_eq!(verdict.checked, 40);

    let target = GrpcTarget::new(
        format!("http://{}", stack.sync).parse().unwrap(),
        Some(READ_TOKEN),
    )
    .unwrap();
    // One more update per user than was ever sent.
    let mut spec = args.plan_spec("it1");
    spec.updates += 1;
    let plan = Plan::new(&spec, &EventFactory::new());
    let live = plan
        .expected
        .iter()
        .filter(|u| u.end != End::Deleted)
        .count();
    assert!(live > 0 && live < 40, "{live}");
    let verdict = verify(&target, &plan.expected).await.unwrap();
    let batch = |verdict: &clerk_sync_bench::verify::Verdict| {
        verdict
            .mismatches
            .iter()
            .filter(|line| line.contains("BatchGetUsers"))
            .count()
    };
    // Every live user through BatchGetUsers, and the first 20 again through GetUser.
    assert_eq!(batch(&verdict), live, "{:?}", &verdict.mismatches[..3]);
    assert_eq!(verdict.mismatches.len(), live + live.min(20));
    assert!(
        verdict.mismatches[0].contains("expected first_name \"v4\"")
            && verdict.mismatches[0].contains("returned Some(\"v3\")"),
        "{}",
        verdict.mismatches[0]
    );

    // The same plan, but nobody deleted: deleted users must be reported.
    let mut spec = args.plan_spec("it1");
    spec.delete_rate = 0.0;
    let plan = Plan::new(&spec, &EventFactory::new());
    let verdict = verify(&target, &plan.expected).await.unwrap();
    assert_eq!(batch(&verdict), 40 - live, "{:?}", verdict.mismatches);
    assert!(
        verdict
            .mismatches
            .iter()
            .all(|line| line.contains("says missing") || line.contains("says NOT_FOUND")),
        "{:?}",
        verdict.mismatches
    );
    assert!(!verdict.passed());
    stack.stop().await;
}

/// Webhooks signed with another secret are refused (401) and the run fails.
async fn a_wrong_secret_fails_the_run(backend: helpers::Backend) {
    let stack = Stack::start(backend).await;
    let mut args = ingest_args(&stack, &[]);
    (args.users, args.updates) = (5, 0);
    args.webhook_secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".parse().unwrap();
    let outcome = phases::ingest(&args).await.unwrap();
    assert_eq!(outcome.report.failures, 5);
    assert_eq!(
        outcome.report.outcomes.get("401"),
        Some(&5),
        "{:?}",
        outcome.report.outcomes
    );
    assert!(!outcome.passed());
    stack.stop().await;
}

on_both_backends!(
    ingest_then_verify_catches_a_wrong_end_state,
    a_wrong_secret_fails_the_run,
);

/// The binary starts both baselines as child processes and measures them.
#[test]
fn baselines_run_as_child_processes() {
    let output = Command::new(env!("CARGO_BIN_EXE_clerk-sync-bench"))
        .args(["baselines", "--requests", "400", "--connections", "4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for kind in ["hyper", "tonic"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("RESULT baseline kind={kind} ")))
            .unwrap_or_else(|| panic!("no {kind} result in {stdout}"));
        assert!(
            line.contains("count=400") && line.contains("failed=0"),
            "{line}"
        );
    }
    assert!(stdout.contains("RESULT rss pid="), "{stdout}");
}

/// A bad value stops the binary with one line naming the flag.
#[test]
fn bad_flags_stop_with_one_line_naming_them() {
    let cases: [(&[&str], &str); 6] = [
        (
            &[
                "ingest",
                "--gateway-url",
                "https://127.0.0.1:1",
                "--webhook-secret",
                SECRET,
            ],
            "--gateway-url: https:// is not supported",
        ),
        (
            &[
                "ingest",
                "--gateway-url",
                "http://127.0.0.1:1",
                "--webhook-secret",
                SECRET,
                "--users",
                "0",
            ],
            "--users",
        ),
        (
            &[
                "query",
                "--sync-service-url",
                "http://127.0.0.1:1",
                "--connections",
                "0",
            ],
            "--connections",
        ),
        (
            &[
                "scan",
                "--sync-service-url",
                "http://127.0.0.1:1",
                "--page-size",
                "1001",
            ],
            "--page-size",
        ),
        (
            &[
                "ready",
                "--sync-service-url",
                "http://127.0.0.1:1",
                "--timeout",
                "0",
            ],
            "--timeout",
        ),
        (
            &[
                "ready",
                "--sync-service-url",
                "http://127.0.0.1:1",
                "--timeout",
                "soon",
            ],
            "--timeout",
        ),
    ];
    for (args, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_clerk-sync-bench"))
            .args(args)
            .env_remove("CLERK_WEBHOOK_SECRET")
            .env_remove("SYNC_SERVICE_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains(expected),
            "{args:?}: {stderr}"
        );
    }
}

/// A gateway that is not there: an error naming the address, not a panic.
#[tokio::test]
async fn an_unreachable_gateway_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let argv = [
        "clerk-sync-bench".to_owned(),
        "ingest".into(),
        "--gateway-url".into(),
        format!("http://{address}"),
        "--webhook-secret".into(),
        SECRET.into(),
        "--users".into(),
        "1".into(),
    ];
    let Sub::Ingest(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!("ingest parsed")
    };
    let error = phases::ingest(&args).await.unwrap_err().to_string();
    assert!(error.contains(&address.to_string()), "{error}");
}
