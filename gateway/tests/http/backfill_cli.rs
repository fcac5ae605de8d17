//! The `clerk-sync-gateway` binary's settings and its `backfill` command's
//! one-line failures: a missing or malformed key, a key Clerk refuses, and
//! serving without a webhook secret.

use std::process::{Command, Output};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::fake_sync::FakeSync;

fn gateway(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clerk-sync-gateway"));
    command
        .args(args)
        .env_remove("CLERK_WEBHOOK_SECRET")
        .env_remove("CLERK_SECRET_KEY")
        .env_remove("CLERK_API_URL")
        .env("RUST_LOG", "warn");
    command
}

/// The lines of stderr that report an error: exactly one is expected.
fn error_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| line.starts_with("error"))
        .map(str::to_owned)
        .collect()
}

/// Arguments, environment, and the setting the error must name.
type Case = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn bad_or_missing_settings_stop_with_one_line_naming_them() {
    let cases: [Case; 5] = [
        (&["backfill"], &[], "--clerk-secret-key"),
        (
            &["backfill"],
            &[("CLERK_SECRET_KEY", "pk_live_Secret123")],
            "CLERK_SECRET_KEY",
        ),
        (
            &[
                "backfill",
                "--clerk-secret-key",
                "sk_x",
                "--page-size",
                "900",
            ],
            &[],
            "--page-size",
        ),
        (
            &[
                "backfill",
                "--clerk-secret-key",
                "sk_x",
                "--clerk-api-url",
                "ftp://x",
            ],
            &[],
            "--clerk-api-url",
        ),
        (&["--listen", "127.0.0.1:0"], &[], "CLERK_WEBHOOK_SECRET"),
    ];
    for (args, env, setting) in cases {
        let output = gateway(args).envs(env.iter().copied()).output().unwrap();
        assert!(!output.status.success(), "{args:?} succeeded");
        let errors = error_lines(&output);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        // clap names a missing argument on the line after its one error line.
        assert!(
            errors[0].contains(setting)
                || (errors[0].contains("required") && stderr.contains(setting)),
            "{setting} not named: {stderr}"
        );
        assert!(!stderr.contains("Secret123"));
    }
}

/// Answers every HTTP request with Clerk's 401.
async fn refusing_clerk() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let body =
                    r#"{"errors":[{"message":"Unauthorized","code":"authentication_invalid"}]}"#;
                let response = format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_clerk_refuses_stops_the_backfill_with_one_clear_line() {
    let clerk = refusing_clerk().await;
    let sync = FakeSync::start().await;
    let sync_url = sync.url().to_string();
    let output = tokio::task::spawn_blocking(move || {
        gateway(&["backfill", "--clerk-api-url", &clerk])
            .env("CLERK_SECRET_KEY", "sk_test_Secret123")
            .env("SYNC_SERVICE_URL", sync_url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    // The pass took the lease, so it is recorded as failed, with the reason.
    let [ended] = sync.ended_passes().try_into().unwrap();
    assert_eq!(ended.status(), clerk_sync_api::v1::PassStatus::Failed);
    assert!(ended.error.contains("401"), "{ended:?}");
    assert_eq!(output.status.code(), Some(1));
    let errors = error_lines(&output);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("401") && errors[0].contains("CLERK_SECRET_KEY"),
        "{errors:?}"
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains("Secret123"));
    assert!(output.stdout.is_empty(), "no summary after a refusal");
}
