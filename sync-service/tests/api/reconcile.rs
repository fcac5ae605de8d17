//! `ReconcileService`: one backfill pass holds the lease at a time, also
//! when callers race for it; a pass's progress and end are recorded; a dead
//! holder's pass is abandoned once its lease expires and continued after its
//! cursor; a pass that lost its lease is told to stop; bad requests name the
//! field; roles hold; grpcurl reaches it by reflection.

use std::time::Duration;

use clerk_sync_api::v1::{
    BeginPassRequest, BeginPassResponse, EndPassRequest, ListPassesRequest, PassCounts, PassStatus,
    ReconcilePass, RenewPassRequest, reconcile_service_client::ReconcileServiceClient,
};
use clerk_sync_service::{Config, auth::TokenList};
use futures::future::join_all;
use tonic::{Code, transport::Channel};

use crate::helpers::{Backend, TestApp, TestDb, authorized, grpcurl};

crate::on_both_backends!(
    one_pass_holds_the_lease_at_a_time,
    a_dead_holders_pass_is_abandoned_and_continued,
    bad_requests_name_the_field,
);

fn client(app: &TestApp) -> ReconcileServiceClient<Channel> {
    ReconcileServiceClient::new(app.channel.clone())
}

fn lease(secs: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: secs,
        nanos: 0,
    })
}

fn begin(holder: &str, lease_secs: i64) -> BeginPassRequest {
    BeginPassRequest {
        holder: holder.into(),
        lease: lease(lease_secs),
        reconcile: true,
        every: None,
        resume_after: String::new(),
    }
}

async fn begin_pass(
    client: &ReconcileServiceClient<Channel>,
    request: BeginPassRequest,
) -> BeginPassResponse {
    client
        .clone()
        .begin_pass(request)
        .await
        .unwrap()
        .into_inner()
}

fn renew(pass_id: u64, cursor: &str, fetched: u64) -> RenewPassRequest {
    RenewPassRequest {
        pass_id,
        lease: lease(60),
        cursor: cursor.into(),
        counts: Some(PassCounts {
            fetched,
            applied: fetched,
            repaired_missed: fetched,
            ..PassCounts::default()
        }),
    }
}

fn end(pass_id: u64, status: PassStatus) -> EndPassRequest {
    EndPassRequest {
        pass_id,
        status: status.into(),
        cursor: String::new(),
        counts: None,
        error: String::new(),
    }
}

async fn list(client: &ReconcileServiceClient<Channel>) -> Vec<ReconcilePass> {
    client
        .clone()
        .list_passes(ListPassesRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner()
        .passes
}

async fn one_pass_holds_the_lease_at_a_time(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let client = client(&app);

    // Sixteen holders at once: one wins, the others are shown its pass.
    let answers = join_all((0..16).map(|i| begin_pass(&client, begin(&format!("h{i}"), 60)))).await;
    let granted: Vec<_> = answers.iter().filter(|a| a.granted).collect();
    assert_eq!(granted.len(), 1, "{answers:#?}");
    let pass = granted[0].pass.clone().unwrap();
    assert!(
        answers
            .iter()
            .all(|a| a.pass.as_ref().unwrap().id == pass.id),
        "{answers:#?}"
    );
    assert_eq!(pass.status(), PassStatus::Running);
    assert_eq!(
        list(&client).await.len(),
        1,
        "a refused begin records nothing"
    );

    // Renewals record progress; the end releases the lease.
    let renewed = client
        .clone()
        .renew_pass(renew(pass.id, "user_5", 5))
        .await
        .unwrap()
        .into_inner()
        .pass
        .unwrap();
    assert_eq!(
        (renewed.cursor.as_str(), renewed.counts.unwrap().fetched),
        ("user_5", 5)
    );
    let ended = client
        .clone()
        .end_pass(EndPassRequest {
            cursor: "user_9".into(),
            counts: Some(PassCounts {
                fetched: 9,
                ..PassCounts::default()
            }),
            ..end(pass.id, PassStatus::Complete)
        })
        .await
        .unwrap()
        .into_inner()
        .pass
        .unwrap();
    assert_eq!(ended.status(), PassStatus::Complete);
    assert_eq!(
        (ended.cursor.as_str(), ended.counts.unwrap().fetched),
        ("user_9", 9)
    );
    assert!(ended.ended_at.is_some() && ended.lease_expires_at.is_none());

    // An ended pass is told to stop.
    for status in [
        client
            .clone()
            .renew_pass(renew(pass.id, "user_10", 10))
            .await
            .unwrap_err(),
        client
            .clone()
            .end_pass(end(pass.id, PassStatus::Failed))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("no longer running"), "{status:?}");
    }

    // The next pass starts at the first user (its predecessor completed).
    let next = begin_pass(&client, begin("h-next", 60)).await;
    assert!(next.granted);
    assert_eq!(next.pass.unwrap().resumed_after, "");
    let passes = list(&client).await;
    assert_eq!(passes.len(), 2);
    assert!(passes[0].id > passes[1].id, "newest first: {passes:#?}");
    app.stop().await;
}

async fn a_dead_holders_pass_is_abandoned_and_continued(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let client = client(&app);

    let dead = begin_pass(&client, begin("dead", 2)).await.pass.unwrap();
    client
        .clone()
        .renew_pass(RenewPassRequest {
            lease: lease(2),
            ..renew(dead.id, "user_42", 42)
        })
        .await
        .unwrap();
    let refused = begin_pass(&client, begin("waiting", 60)).await;
    assert!(!refused.granted);
    assert_eq!(refused.pass.unwrap().holder, "dead");

    // Two seconds without a renewal: the lease is free and the next pass
    // continues after the dead pass's cursor.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let next = begin_pass(&client, begin("waiting", 60)).await;
    assert!(next.granted, "{next:#?}");
    let next = next.pass.unwrap();
    assert_eq!(
        (next.resumed_after.as_str(), next.cursor.as_str()),
        ("user_42", "user_42")
    );
    let passes = list(&client).await;
    let old = passes.iter().find(|p| p.id == dead.id).unwrap();
    assert_eq!(old.status(), PassStatus::Abandoned);
    assert!(old.error.contains("stopped renewing"), "{old:#?}");
    assert_eq!(old.counts.unwrap().fetched, 42);

    // The dead holder, back, is told it lost its pass.
    let status = client
        .clone()
        .renew_pass(renew(dead.id, "user_50", 50))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // A person's --resume-after wins over the recorded cursor.
    client
        .clone()
        .end_pass(end(next.id, PassStatus::Abandoned))
        .await
        .unwrap();
    let person = begin_pass(
        &client,
        BeginPassRequest {
            resume_after: "user_7".into(),
            ..begin("person", 60)
        },
    )
    .await;
    assert_eq!(person.pass.unwrap().resumed_after, "user_7");
    app.stop().await;
}

async fn bad_requests_name_the_field(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let client = client(&app);
    let every = |secs| {
        Some(prost_types::Duration {
            seconds: secs,
            nanos: 0,
        })
    };
    let begins = [
        (begin("", 60), "holder"),
        (begin(&"h".repeat(257), 60), "holder"),
        (begin("a\u{0}b", 60), "holder"),
        (begin("h", 1), "lease"),
        (begin("h", 7_200), "lease"),
        (
            BeginPassRequest {
                lease: None,
                ..begin("h", 60)
            },
            "lease",
        ),
        (
            BeginPassRequest {
                every: every(0),
                ..begin("h", 60)
            },
            "every",
        ),
        (
            BeginPassRequest {
                every: every(-5),
                ..begin("h", 60)
            },
            "every",
        ),
        (
            BeginPassRequest {
                resume_after: "x".repeat(300),
                ..begin("h", 60)
            },
            "resume_after",
        ),
    ];
    for (request, field) in begins {
        let status = client.clone().begin_pass(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{field}: {status:?}");
    }
    assert!(
        list(&client).await.is_empty(),
        "a refused request records nothing"
    );

    let status = client
        .clone()
        .renew_pass(renew(0, "", 0))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message().starts_with("pass_id")),
        (Code::InvalidArgument, true)
    );
    let status = client
        .clone()
        .renew_pass(renew(999, "", 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let pass = begin_pass(&client, begin("h", 60)).await.pass.unwrap();
    for status in [PassStatus::Running, PassStatus::Unspecified] {
        let answer = client
            .clone()
            .end_pass(end(pass.id, status))
            .await
            .unwrap_err();
        assert_eq!(answer.code(), Code::InvalidArgument, "{answer:?}");
        assert!(answer.message().starts_with("status"), "{answer:?}");
    }
    for limit in [-1, 1_001] {
        let status = client
            .clone()
            .list_passes(ListPassesRequest { limit })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("limit"), "{status:?}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_list_passes_writers_run_them_and_grpcurl_reaches_them() {
    const WRITE_TOKEN: &str = "write-token-4Jq8Z1x0Lw6p";
    const READ_TOKEN: &str = "read-token-Hs72kQmzP01c";
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = Config::with_database(&db.url);
    config.write_tokens = TokenList::parse(WRITE_TOKEN).unwrap();
    config.read_tokens = TokenList::parse(READ_TOKEN).unwrap();
    let app = TestApp::spawn_with(config).await;
    let mut client = client(&app);

    let status = client
        .begin_pass(authorized(begin("h", 60), Some(READ_TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = client
        .list_passes(authorized(ListPassesRequest { limit: 5 }, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    client
        .begin_pass(authorized(begin("ops", 60), Some(WRITE_TOKEN)))
        .await
        .unwrap();
    let passes = client
        .list_passes(authorized(ListPassesRequest { limit: 5 }, Some(READ_TOKEN)))
        .await
        .unwrap()
        .into_inner()
        .passes;
    assert_eq!(passes.len(), 1);

    let address = app.address.to_string();
    let authorization = format!("authorization: Bearer {READ_TOKEN}");
    let output = grpcurl(&[
        "-plaintext",
        "-H",
        &authorization,
        "-d",
        r#"{"limit": 5}"#,
        &address,
        "clerk.sync.v1.ReconcileService/ListPasses",
    ])
    .await;
    assert!(output.status.success(), "{}", output.stderr);
    let answer: serde_json::Value = serde_json::from_str(&output.stdout).unwrap();
    assert_eq!(answer["passes"][0]["holder"], "ops");
    assert_eq!(answer["passes"][0]["status"], "PASS_STATUS_RUNNING");
    app.stop().await;
}
