//! The `clerk-sync-service` binary itself: bad configuration stops it with one
//! line naming the setting, and SIGTERM stops it cleanly.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

fn service() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clerk-sync-service"));
    command
        .env_remove("DATABASE_URL")
        .env_remove("LOG_FORMAT")
        // No metrics endpoint unless a test asks: the default port may be
        // taken, and its banner line would come before the server's.
        .env("SYNC_SERVICE_METRICS_LISTEN_ADDR", "")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    command
}

type Case = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn bad_settings_stop_start_up_with_one_line_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    // (arguments, environment, the setting the error must name)
    let cases: [Case; 27] = [
        (&["--listen", "not-an-address"], &[], "--listen"),
        (
            &["--feed-poll-interval-ms", "0"],
            &[],
            "--feed-poll-interval-ms",
        ),
        (
            &[],
            &[("FEED_DELETION_RETENTION_SECS", "a month")],
            "--feed-deletion-retention-secs",
        ),
        // Durations that would overflow a clock are refused, not wrapped.
        (
            &[],
            &[("FEED_DELETION_RETENTION_SECS", "18446744073709551615")],
            "--feed-deletion-retention-secs",
        ),
        (
            &["--database-statement-timeout-ms", "2147483648"],
            &[],
            "--database-statement-timeout-ms",
        ),
        (
            &[],
            &[("SYNC_SERVICE_IDLE_TIMEOUT_SECS", "18446744073709551615")],
            "--idle-timeout-secs",
        ),
        (&["--http2-max-streams", "0"], &[], "--http2-max-streams"),
        (
            &["--grpc-max-message-bytes", "10"],
            &[],
            "--grpc-max-message-bytes",
        ),
        (
            &[],
            &[("SYNC_MAX_PENDING_APPLIES", "0")],
            "--max-pending-applies",
        ),
        (
            &["--ledger-retention-days", "1"],
            &[],
            "--ledger-retention-days",
        ),
        (
            &[],
            &[("DATABASE_STATEMENT_TIMEOUT_MS", "soon")],
            "--database-statement-timeout-ms",
        ),
        (
            &["--database-lock-timeout-ms", "0"],
            &[],
            "--database-lock-timeout-ms",
        ),
        (&["--max-batch", "10001"], &[], "--max-batch"),
        (&["--max-batch", "0"], &[], "--max-batch"),
        (&[], &[("SYNC_WRITERS", "lots")], "--writers"),
        (
            &[],
            &[("SYNC_SERVICE_USER_CACHE_CAPACITY", "lots")],
            "--user-cache-capacity",
        ),
        (&["--user-cache-capacity=-1"], &[], "--user-cache-capacity"),
        (&[], &[("LOG_FORMAT", "xml")], "LOG_FORMAT"),
        (
            &["--metrics-listen", "9465"],
            &[],
            "SYNC_SERVICE_METRICS_LISTEN_ADDR",
        ),
        (
            &["migrate"],
            &[("DATABASE_URL", "mysql://root:hunter2@nowhere/db")],
            "DATABASE_URL",
        ),
        // Secure by default: beyond loopback, tokens or an explicit opt-out.
        (&["--listen", "0.0.0.0:0"], &[], "SYNC_SERVICE_WRITE_TOKENS"),
        (
            &[],
            &[("SYNC_SERVICE_READ_TOKENS", "a-read-token-long-enough")],
            "SYNC_SERVICE_WRITE_TOKENS",
        ),
        (
            &[],
            &[("SYNC_SERVICE_WRITE_TOKENS", "hunter2")],
            "SYNC_SERVICE_WRITE_TOKENS",
        ),
        (
            &["--allow-unauthenticated=maybe"],
            &[],
            "--allow-unauthenticated",
        ),
        (
            &[],
            &[("SYNC_STORE_PRIVATE_METADATA", "sometimes")],
            "--store-private-metadata",
        ),
        // Relative to the (empty) working directory: no such file.
        (&["--tls-cert", "missing.pem"], &[], "SYNC_SERVICE_TLS_KEY"),
        (
            &["--tls-cert", "missing.pem", "--tls-key", "missing.pem"],
            &[],
            "SYNC_SERVICE_TLS_CERT",
        ),
    ];
    for (args, env, setting) in cases {
        let output = service()
            .current_dir(dir.path())
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} {env:?} started");
        let error_lines: Vec<_> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(error_lines.len(), 1, "{stderr}");
        assert!(
            error_lines[0].contains(setting),
            "{setting} not named in: {stderr}"
        );
        assert!(
            !stderr.contains("hunter2"),
            "a password was echoed: {stderr}"
        );
    }
}

#[test]
fn migrate_creates_the_sqlite_file_and_sigterm_stops_serving_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let status = service()
        .current_dir(dir.path())
        .arg("migrate")
        .status()
        .unwrap();
    assert!(status.success());
    assert!(dir.path().join("data/clerk-sync.db").exists());

    let mut child = service()
        .current_dir(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kept open: a closed pipe would fail the server's next log line.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    read_until(&mut stderr, "sync-service listening");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM should end in a clean exit, got {status}"
    );
}

#[test]
fn a_key_that_does_not_fit_the_certificate_is_named_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let certs = crate::helpers::TestCerts::new();
    let output = service()
        .current_dir(dir.path())
        .arg("--tls-cert")
        .arg(certs.path("server.pem"))
        .arg("--tls-key")
        .arg(certs.path("client-key.pem"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error_lines: Vec<_> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(error_lines.len(), 1, "{stderr}");
    assert!(error_lines[0].contains("SYNC_SERVICE_TLS_KEY"), "{stderr}");
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_searched_addresses_never_reach_the_logs() {
    const TOKEN: &str = "tok-never-logged-7Fq2x9";
    let dir = tempfile::tempdir().unwrap();
    let mut child = service()
        .current_dir(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("SYNC_SERVICE_WRITE_TOKENS", TOKEN)
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let banner = read_until(&mut stderr, "sync-service listening");
    let address = banner
        .split("address=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {banner}"))
        .to_owned();

    let authorization = format!("authorization: Bearer {TOKEN}");
    let found = crate::helpers::grpcurl(&[
        "-plaintext",
        "-H",
        &authorization,
        "-d",
        r#"{"email_address": "secret.person@example.org"}"#,
        &address,
        "clerk.sync.v1.UserDirectoryService/FindUserByEmail",
    ])
    .await;
    assert!(found.stderr.contains("Code: NotFound"), "{}", found.stderr);
    assert!(!found.stderr.contains("secret.person"), "{}", found.stderr);
    let refused = crate::helpers::grpcurl(&[
        "-plaintext",
        "-H",
        &format!("authorization: Bearer {TOKEN}-wrong"),
        &address,
        "clerk.sync.v1.UserDirectoryService/GetUser",
    ])
    .await;
    assert!(
        refused.stderr.contains("Unauthenticated"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains(TOKEN), "{}", refused.stderr);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let mut logs = banner;
    std::io::Read::read_to_string(&mut stderr, &mut logs).unwrap();
    assert!(logs.contains("sync-service stopped"), "{logs}");
    assert!(
        !logs.contains("tok-never-logged"),
        "a token was logged: {logs}"
    );
    assert!(
        !logs.contains("secret.person"),
        "an address was logged: {logs}"
    );
}

#[test]
fn beyond_loopback_it_serves_with_tokens_or_when_told_to_serve_without() {
    let dir = tempfile::tempdir().unwrap();
    for env in [
        ("SYNC_SERVICE_WRITE_TOKENS", "a-write-token-long-enough"),
        ("SYNC_SERVICE_ALLOW_UNAUTHENTICATED", "true"),
    ] {
        let mut child = service()
            .current_dir(dir.path())
            .args(["--listen", "0.0.0.0:0"])
            .env(env.0, env.1)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = read_until(
            &mut BufReader::new(child.stderr.take().unwrap()),
            "sync-service listening",
        );
        assert!(!stderr.contains("a-write-token"), "{stderr}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// Reads until a line contains `needle`; returns what was read.
fn read_until(stderr: &mut impl BufRead, needle: &str) -> String {
    let mut seen = String::new();
    let mut line = String::new();
    while !line.contains(needle) {
        line.clear();
        assert_ne!(
            stderr.read_line(&mut line).unwrap(),
            0,
            "exited before {needle:?}: {seen}"
        );
        seen.push_str(&line);
    }
    seen
}

#[test]
fn a_metrics_address_in_use_stops_start_up_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let output = service()
        .current_dir(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env(
            "SYNC_SERVICE_METRICS_LISTEN_ADDR",
            taken.local_addr().unwrap().to_string(),
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error_lines: Vec<_> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(error_lines.len(), 1, "{stderr}");
    assert!(
        error_lines[0].contains("SYNC_SERVICE_METRICS_LISTEN_ADDR"),
        "{stderr}"
    );
}

#[test]
fn help_names_the_database_url_variable_but_never_its_value() {
    let output = service()
        .arg("--help")
        .env("DATABASE_URL", "postgres://app:hunter2@db.internal/clerk")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    assert!(help.contains("DATABASE_URL"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}
