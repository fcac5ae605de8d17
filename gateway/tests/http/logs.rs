//! What the gateway writes to its logs: never a secret, and nothing
//! unbounded from an unverified request.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

use http::StatusCode;
use tracing_subscriber::fmt::MakeWriter;

use crate::helpers::{SECRET, TestApp, now, signed_headers};

/// Log output kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// A current-thread runtime: the server's tasks log through this thread's
// subscriber.
#[tokio::test]
async fn an_unverified_event_id_is_logged_cut_to_a_sane_length() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = TestApp::spawn().await;
    let long_id = format!("msg_{}", "A".repeat(5000));
    let body = br#"{"type":"user.created","data":{}}"#.to_vec();
    let mut headers = signed_headers(SECRET, &long_id, now(), &body);
    // Signed for another body: refused as not authentic.
    headers.retain(|(name, _)| *name != "svix-signature");
    headers.push(("svix-signature", "v1,bm90IGEgc2lnbmF0dXJl".to_owned()));
    let response = app.post_clerk(&headers, body).await;
    // Refused before any signature check: no Svix id is that long.
    assert_eq!(response.status, StatusCode::BAD_REQUEST);

    let logs = captured.text();
    let kept = format!("msg_{}", "A".repeat(60));
    assert!(logs.contains(&kept), "{logs}");
    assert!(
        !logs.contains(&format!("{kept}A")),
        "the whole id was logged"
    );
}

#[test]
fn the_sync_service_url_password_is_masked_in_the_logs() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_clerk-sync-gateway"))
        .args(["--listen", "127.0.0.1:0"])
        .env("CLERK_WEBHOOK_SECRET", SECRET)
        .env("SYNC_SERVICE_URL", "http://svc:hunter2-url-pw@127.0.0.1:9")
        .env("GATEWAY_METRICS_LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut logs = String::new();
    while !logs.contains("gateway listening") {
        assert_ne!(stderr.read_line(&mut logs).unwrap(), 0, "{logs}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(logs.contains("svc:***@127.0.0.1:9"), "{logs}");
    assert!(!logs.contains("hunter2-url-pw"), "{logs}");
}
