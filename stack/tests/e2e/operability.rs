//! Operating the stack: both services' metrics move by exactly what a few
//! deliveries did (on both backends, checked by `promtool check metrics` when
//! `PROMTOOL` is set), and the `clerk-sync` binary logs JSON in which one
//! delivery is followed by its event id, type and user id from the HTTP
//! request to the commit, and refuses bad settings with one line naming them.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read as _},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    thread::JoinHandle,
    time::Duration,
};

use http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    USER,
    helpers::{
        Backend, SECRET, Stack, deliver_to, fixture, http_client, now, scrape, signed_headers,
    },
};

crate::on_both_backends!(both_services_count_deliveries_exactly);

async fn both_services_count_deliveries_exactly(backend: Backend) {
    let stack = Stack::start(backend).await;
    let gateway_before = scrape(stack.gateway_metrics).await;
    let sync_before = scrape(stack.sync_metrics).await;

    let created = fixture("user.created.json");
    for _ in 0..2 {
        // The second delivery of the same message is a duplicate.
        assert_eq!(
            stack.deliver("msg_ops_1", &created).await.status,
            StatusCode::OK
        );
    }
    let session = fixture("session.created.unknown-type.json");
    assert_eq!(
        stack.deliver("msg_ops_2", &session).await.status,
        StatusCode::OK
    );
    let mut tampered = created.clone();
    tampered[20] ^= 1;
    let headers = signed_headers(SECRET, "msg_ops_3", now(), &created);
    assert_eq!(
        stack
            .request(http::Method::POST, "/clerk", &headers, tampered.into())
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    stack.get_user(USER).await.unwrap();

    let gateway = scrape(stack.gateway_metrics).await;
    for (series, delta) in [
        (
            r#"clerk_sync_gateway_webhooks_total{event_type="user.created",status="200"}"#,
            2.0,
        ),
        (
            r#"clerk_sync_gateway_webhooks_total{event_type="other",status="200"}"#,
            1.0,
        ),
        (
            r#"clerk_sync_gateway_webhooks_total{event_type="unknown",status="401"}"#,
            1.0,
        ),
        (
            r#"clerk_sync_gateway_verification_failures_total{reason="signature_mismatch"}"#,
            1.0,
        ),
        ("clerk_sync_gateway_forward_duration_seconds_count", 2.0),
        ("clerk_sync_gateway_in_flight_requests", 0.0),
    ] {
        let moved = gateway.delta(&gateway_before, series);
        assert_eq!(moved, delta, "{series}\n{}", gateway.text);
    }
    assert!(
        !gateway.text.contains("upstream_errors_total{"),
        "{}",
        gateway.text
    );
    assert_eq!(
        gateway.present("clerk_sync_gateway_in_flight_requests"),
        0.0
    );

    let sync = scrape(stack.sync_metrics).await;
    let apply_created = r#"service="clerk.sync.v1.UserSyncService",method="ApplyUserCreated""#;
    let get_user = r#"service="clerk.sync.v1.UserDirectoryService",method="GetUser""#;
    for (series, delta) in [
        (
            r#"clerk_sync_service_events_total{event_type="user.created",outcome="applied"}"#
                .to_owned(),
            1.0,
        ),
        (
            r#"clerk_sync_service_events_total{event_type="user.created",outcome="duplicate"}"#
                .to_owned(),
            1.0,
        ),
        ("clerk_sync_service_commit_batch_events_sum".to_owned(), 2.0),
        (
            format!(r#"clerk_sync_service_grpc_requests_total{{{apply_created},code="OK"}}"#),
            2.0,
        ),
        (
            format!(r#"clerk_sync_service_grpc_requests_total{{{get_user},code="OK"}}"#),
            1.0,
        ),
    ] {
        let moved = sync.delta(&sync_before, &series);
        assert_eq!(moved, delta, "{series}\n{}", sync.text);
    }
    stack.stop().await;
}

/// The `clerk-sync` binary on ports chosen by the system, over SQLite in a
/// temporary directory, its stderr collected by a thread.
pub(crate) struct StackProcess {
    child: Child,
    pub(crate) gateway: SocketAddr,
    /// The sync-service's gRPC address.
    pub(crate) sync: SocketAddr,
    metrics: Vec<SocketAddr>,
    stderr: Option<JoinHandle<String>>,
    _dir: tempfile::TempDir,
}

fn stack_command(dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clerk-sync"));
    command
        .current_dir(dir)
        .env("CLERK_WEBHOOK_SECRET", SECRET)
        .env("DATABASE_URL", "sqlite://data/clerk-sync.db?mode=rwc")
        .env("GATEWAY_LISTEN_ADDR", "127.0.0.1:0")
        .env("SYNC_SERVICE_LISTEN_ADDR", "127.0.0.1:0")
        .env("GATEWAY_METRICS_LISTEN_ADDR", "127.0.0.1:0")
        .env("SYNC_SERVICE_METRICS_LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env_remove("LOG_FORMAT");
    command
}

impl StackProcess {
    fn start(log_format: &str) -> Self {
        Self::start_with(log_format, &[])
    }

    /// As [`StackProcess::start`], with more environment.
    pub(crate) fn start_with(log_format: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = stack_command(dir.path())
            .env("LOG_FORMAT", log_format)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            stderr.read_to_string(&mut text).unwrap();
            text
        });
        // The banner on stdout says where everything listens.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut gateway, mut sync, mut metrics) = (None, None, None);
        while gateway.is_none() || sync.is_none() || metrics.is_none() {
            let mut line = String::new();
            assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "the stack exited");
            let line = line.trim();
            if let Some(url) = line.strip_prefix("webhooks: POST http://") {
                gateway = Some(url.trim_end_matches("/clerk").parse().unwrap());
            } else if let Some(command) = line.strip_prefix("queries:  grpcurl -plaintext ") {
                sync = command
                    .split_whitespace()
                    .next()
                    .map(|a| a.parse().unwrap());
            } else if let Some(urls) = line.strip_prefix("metrics:") {
                metrics = Some(
                    urls.split_whitespace()
                        .map(|url| {
                            let url = url.strip_prefix("http://").unwrap();
                            url.trim_end_matches("/metrics").parse().unwrap()
                        })
                        .collect(),
                );
            }
        }
        Self {
            child,
            gateway: gateway.unwrap(),
            sync: sync.unwrap(),
            metrics: metrics.unwrap(),
            stderr: Some(stderr),
            _dir: dir,
        }
    }

    pub(crate) async fn wait_until_ready(&self) {
        for _ in 0..200 {
            let mut stream = tokio::net::TcpStream::connect(self.gateway).await.unwrap();
            stream
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            if response.starts_with("HTTP/1.1 200") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the stack never became ready");
    }

    /// Stops the process with SIGTERM; returns everything it logged.
    pub(crate) fn stop(mut self) -> String {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        assert!(self.child.wait().unwrap().success(), "unclean exit");
        self.stderr.take().unwrap().join().unwrap()
    }
}

impl Drop for StackProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// The fields of every span a JSON log line was written in, merged.
fn span_fields(line: &Value) -> HashMap<String, Value> {
    let mut fields = HashMap::new();
    for span in line["spans"].as_array().into_iter().flatten() {
        for (key, value) in span.as_object().unwrap() {
            fields.insert(key.clone(), value.clone());
        }
    }
    fields
}

#[tokio::test]
async fn json_logs_follow_one_delivery_from_request_to_commit() {
    let stack = StackProcess::start("json");
    stack.wait_until_ready().await;
    // The stack binary serves both registries.
    assert_eq!(stack.metrics.len(), 2);
    let gateway_metrics = scrape(stack.metrics[0]).await;
    let sync_metrics = scrape(stack.metrics[1]).await;
    assert!(
        gateway_metrics
            .text
            .contains("clerk_sync_gateway_build_info")
    );
    assert!(sync_metrics.text.contains("clerk_sync_service_build_info"));

    let body = fixture("user.created.json");
    let answer = deliver_to(&http_client(), stack.gateway, "msg_logged", &body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let logs = stack.stop();

    let lines: Vec<Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let about_delivery: Vec<_> = lines
        .iter()
        .filter(|line| span_fields(line).get("event_id") == Some(&"msg_logged".into()))
        .collect();
    for line in &about_delivery {
        let fields = span_fields(line);
        assert_eq!(fields["event_type"], "user.created", "{line}");
        assert_eq!(fields["user_id"], USER, "{line}");
    }
    let messages: Vec<_> = about_delivery
        .iter()
        .map(|line| {
            let span = line["span"]["name"].as_str().unwrap_or_default();
            let message = line["fields"]["message"].as_str().unwrap_or_default();
            format!("{span}: {message}")
        })
        .collect();
    for expected in ["webhook: event forwarded", "apply_event: event applied"] {
        assert!(
            messages.iter().any(|m| m == expected),
            "{expected} in {messages:?}"
        );
    }
    // Personal data stays out of the logs.
    assert!(!logs.contains("example@example.org"), "{logs}");
}

#[test]
fn bad_log_format_or_metrics_address_stops_the_stack_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (setting, value) in [
        ("LOG_FORMAT", "xml"),
        ("GATEWAY_METRICS_LISTEN_ADDR", "nowhere"),
        ("SYNC_SERVICE_METRICS_LISTEN_ADDR", taken.as_str()),
    ] {
        let output = stack_command(dir.path())
            .env(setting, value)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{setting}={value} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{setting}={value}: {stderr}");
        assert!(errors[0].contains(setting), "{setting}={value}: {stderr}");
    }
}

#[test]
fn help_names_the_database_url_variable_but_never_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let output = stack_command(dir.path())
        .arg("--help")
        .env("DATABASE_URL", "postgres://app:hunter2@db.internal/clerk")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    assert!(help.contains("DATABASE_URL"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}
