//! The gateway's operability: its metrics endpoint counts real traffic by
//! exactly the right amounts (and passes `promtool check metrics` when
//! `PROMTOOL` is set), and the binary refuses bad metrics and log settings
//! with one line naming them.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::{
    fake_sync::FakeSync,
    helpers::{SECRET, TestApp, USER_CREATED, fixture, now, signed_headers, without},
};

const WEBHOOKS: &str = "clerk_sync_gateway_webhooks_total";
const FAILURES: &str = "clerk_sync_gateway_verification_failures_total";
const UPSTREAM_ERRORS: &str = "clerk_sync_gateway_upstream_errors_total";
const FORWARDED: &str = "clerk_sync_gateway_forward_duration_seconds_count";
const IN_FLIGHT: &str = "clerk_sync_gateway_in_flight_requests";
const QUARANTINED: &str = "clerk_sync_gateway_quarantined_total";

fn webhooks(event_type: &str, status: u16) -> String {
    format!(r#"{WEBHOOKS}{{event_type="{event_type}",status="{status}"}}"#)
}

#[tokio::test]
async fn every_answered_webhook_is_counted_by_type_status_and_failure_reason() {
    let app = TestApp::spawn().await;
    let before = app.scrape().await;

    // Accepted: two creates, one delete, one event type that is not synced.
    for (id, name) in [
        ("msg_m1", USER_CREATED),
        ("msg_m2", USER_CREATED),
        ("msg_m3", "user.deleted.json"),
        ("msg_m4", "session.created.unknown-type.json"),
    ] {
        assert_eq!(app.deliver(id, fixture(name)).await.status, StatusCode::OK);
    }
    // Refused by the verifier: a changed body, a missing header, an old timestamp.
    let body = fixture(USER_CREATED);
    let headers = signed_headers(SECRET, "msg_m5", now(), &body);
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    let refused = [
        (headers.clone(), tampered),
        (without(&headers, "svix-id"), body.clone()),
        (
            signed_headers(SECRET, "msg_m6", now() - 3600, &body),
            body.clone(),
        ),
    ];
    for (headers, body) in refused {
        let status = app.post_clerk(&headers, body).await.status;
        assert!(status.is_client_error(), "{status}");
    }
    // Verified but not JSON: quarantined and acknowledged; its type is never
    // trusted.
    assert_eq!(
        app.deliver("msg_m7", "{\"type\": ").await.status,
        StatusCode::OK
    );
    // The sync-service fails: 503, and the gRPC code is counted.
    app.upstream.fail_with(Some(Code::Unavailable), "down");
    assert_eq!(
        app.deliver("msg_m8", fixture(USER_CREATED)).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Not webhooks: not counted as such.
    app.request(Method::GET, "/healthz", &[], "").await;
    app.request(Method::GET, "/nowhere", &[], "").await;

    let after = app.scrape().await;
    let expected = [
        (webhooks("user.created", 200), 2.0),
        (webhooks("user.deleted", 200), 1.0),
        (webhooks("other", 200), 1.0),
        (webhooks("unknown", 401), 2.0),
        (webhooks("unknown", 400), 1.0),
        (webhooks("unknown", 200), 1.0),
        (QUARANTINED.to_owned(), 1.0),
        (webhooks("user.created", 503), 1.0),
        (format!(r#"{FAILURES}{{reason="signature_mismatch"}}"#), 1.0),
        (format!(r#"{FAILURES}{{reason="missing_header"}}"#), 1.0),
        (
            format!(r#"{FAILURES}{{reason="timestamp_outside_window"}}"#),
            1.0,
        ),
        (format!(r#"{FAILURES}{{reason="malformed_header"}}"#), 0.0),
        (format!(r#"{UPSTREAM_ERRORS}{{code="UNAVAILABLE"}}"#), 1.0),
        // Three accepted user events and the failed one went upstream.
        (FORWARDED.to_owned(), 4.0),
        (IN_FLIGHT.to_owned(), 0.0),
    ];
    for (series, delta) in expected {
        assert_eq!(
            after.delta(&before, &series),
            delta,
            "{series}\n{}",
            after.text
        );
    }
    let webhooks_counted: f64 = after
        .text
        .lines()
        .filter(|line| line.starts_with(WEBHOOKS))
        .map(|line| line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(webhooks_counted, 9.0, "{}", after.text);
    assert_eq!(
        after.present(&format!(
            r#"clerk_sync_gateway_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    // Label values never carry ids from the request.
    assert!(!after.text.contains("msg_m"), "{}", after.text);
    assert!(!after.text.contains("user_29w"), "{}", after.text);
}

#[tokio::test]
async fn in_flight_requests_rise_while_held_and_fall_when_answered() {
    let app = TestApp::spawn().await;
    let (mut arrived, release) = app.upstream.hold_calls();
    let before = app.scrape().await;

    let requests: Vec<_> = (0..3)
        .map(|index| app.deliver_in_background(&format!("msg_held_{index}"), fixture(USER_CREATED)))
        .collect();
    for _ in 0..3 {
        arrived.recv().await.expect("a held call arrived");
    }

    let during = app.scrape().await;
    assert_eq!(during.delta(&before, IN_FLIGHT), 3.0, "{}", during.text);
    assert_eq!(during.delta(&before, FORWARDED), 0.0);

    release.send(true).unwrap();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    let after = app.scrape().await;
    assert_eq!(after.delta(&before, IN_FLIGHT), 0.0, "{}", after.text);
    assert_eq!(after.delta(&before, FORWARDED), 3.0);
    assert_eq!(after.delta(&before, &webhooks("user.created", 200)), 3.0);
}

#[tokio::test]
async fn webhooks_shed_past_the_in_flight_cap_are_counted() {
    let app = TestApp::spawn_with(FakeSync::start().await, |config| {
        config.limits.max_in_flight = 1;
    })
    .await;
    let (mut arrived, release) = app.upstream.hold_calls();
    let before = app.scrape().await;
    let held = app.deliver_in_background("msg_held", fixture(USER_CREATED));
    arrived
        .recv()
        .await
        .expect("the first webhook is in flight");

    for id in ["msg_shed_1", "msg_shed_2"] {
        let response = app.deliver(id, fixture(USER_CREATED)).await;
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let during = app.scrape().await;
    let shed = "clerk_sync_gateway_shed_requests_total";
    assert_eq!(during.delta(&before, shed), 2.0, "{}", during.text);
    // Shed before the body is read: the type is never known.
    assert_eq!(during.delta(&before, &webhooks("unknown", 503)), 2.0);
    assert_eq!(during.delta(&before, IN_FLIGHT), 1.0);

    release.send(true).unwrap();
    assert_eq!(held.await.unwrap(), StatusCode::OK);
    let after = app.scrape().await;
    assert_eq!(after.delta(&before, shed), 2.0);
    assert_eq!(after.delta(&before, &webhooks("user.created", 200)), 1.0);
}

#[tokio::test]
async fn the_gateways_own_deadline_counts_as_deadline_exceeded() {
    let app = TestApp::spawn_with(FakeSync::start().await, |config| {
        config.sync_service.timeout = Duration::from_millis(200);
    })
    .await;
    let (_arrived, _release) = app.upstream.hold_calls();
    let before = app.scrape().await;

    let response = app.deliver("msg_deadline", fixture(USER_CREATED)).await;

    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    let after = app.scrape().await;
    let deadline = format!(r#"{UPSTREAM_ERRORS}{{code="DEADLINE_EXCEEDED"}}"#);
    assert_eq!(after.delta(&before, &deadline), 1.0, "{}", after.text);
    assert_eq!(after.delta(&before, &webhooks("user.created", 503)), 1.0);
    let sum = "clerk_sync_gateway_forward_duration_seconds_sum";
    assert!(after.delta(&before, sum) >= 0.2, "{}", after.text);
}

/// Sends one raw HTTP/1.1 request to the metrics endpoint, returns the status line.
async fn metrics_status_line(app: &TestApp, method: &str, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(app.metrics_addr)
        .await
        .unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_metrics_listener_serves_only_get_metrics() {
    let app = TestApp::spawn().await;
    assert!(
        metrics_status_line(&app, "GET", "/metrics")
            .await
            .contains(" 200 ")
    );
    assert!(
        metrics_status_line(&app, "HEAD", "/metrics")
            .await
            .contains(" 200 ")
    );
    assert!(
        metrics_status_line(&app, "POST", "/metrics")
            .await
            .contains(" 405 ")
    );
    assert!(
        metrics_status_line(&app, "GET", "/clerk")
            .await
            .contains(" 404 ")
    );
}

fn gateway() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clerk-sync-gateway"));
    command
        .env("CLERK_WEBHOOK_SECRET", SECRET)
        .env("GATEWAY_LISTEN_ADDR", "127.0.0.1:0")
        .env("GATEWAY_METRICS_LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env_remove("LOG_FORMAT");
    command
}

#[test]
fn bad_log_format_or_metrics_address_stops_start_up_with_one_line_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let cases = [
        ("LOG_FORMAT", "xml"),
        ("GATEWAY_METRICS_LISTEN_ADDR", "9464"),
        ("GATEWAY_METRICS_LISTEN_ADDR", taken.as_str()),
    ];
    for (setting, value) in cases {
        let output = gateway().env(setting, value).output().unwrap();
        assert!(!output.status.success(), "{setting}={value} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let naming: Vec<_> = stderr.lines().filter(|l| l.contains(setting)).collect();
        assert_eq!(naming.len(), 1, "{setting}={value}: {stderr}");
        assert!(
            naming[0].to_lowercase().contains("error"),
            "{setting}={value}: {stderr}"
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line_and_an_empty_metrics_address_serves_none() {
    let mut child = gateway()
        .env("LOG_FORMAT", "json")
        .env("GATEWAY_METRICS_LISTEN_ADDR", "")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert_ne!(stderr.read_line(&mut line).unwrap(), 0, "exited: {lines:?}");
        let started = line.contains("gateway listening");
        lines.push(line);
        if started {
            break;
        }
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    lines.extend(rest.lines().map(str::to_owned));
    for line in &lines {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(object["fields"]["message"].is_string(), "{line}");
        assert!(
            !object["fields"]["message"]
                .as_str()
                .unwrap()
                .contains("metrics listening"),
            "metrics were served: {line}"
        );
    }
}
