//! Trust end to end: the gateway forwarding over mutual TLS with a token,
//! verified addresses deciding who owns an email, account state from Clerk's
//! own payloads, and no password in the stack's banner.

use http::StatusCode;
use tonic::Code;

use crate::helpers::{Backend, Stack, TestDb, fixture};

const EXAMPLE: &str = "user_29w83sxmDNGwOuEthce5gg56FcC";
const MALLORY: &str = "user_2mallory0000000000000000000";

crate::on_both_backends!(
    an_unverified_address_never_takes_over_and_a_verified_move_does,
    banned_and_locked_come_back_and_a_stale_event_does_not_lift_them,
);

async fn deliver_ok(stack: &Stack, msg_id: &str, name: &str) {
    let answer = stack.deliver(msg_id, &fixture(name)).await;
    assert_eq!(answer.status, StatusCode::OK, "{name}: {}", answer.body);
}

async fn an_unverified_address_never_takes_over_and_a_verified_move_does(backend: Backend) {
    let stack = Stack::start(backend).await;
    deliver_ok(&stack, "msg_owner", "user.created.json").await;
    // Mallory signs up and adds the owner's address (differently cased),
    // without being able to verify it.
    deliver_ok(&stack, "msg_mallory", "user.created.unverified-email.json").await;

    let owner = stack.find_by_email("example@example.org").await.unwrap();
    assert_eq!(owner.id, EXAMPLE);
    let mallory = stack.get_user(MALLORY).await.unwrap();
    let claimed = &mallory.email_addresses[1];
    assert_eq!(
        (claimed.address.as_str(), claimed.verified),
        ("Example@Example.org", false)
    );

    // The owner gives the address up: nobody owns it, Mallory's unverified
    // claim still proves nothing.
    deliver_ok(&stack, "msg_release", "user.updated.email-released.json").await;
    let status = stack
        .find_by_email("example@example.org")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no user has this verified email address");

    // Once Mallory verifies it, the address is hers.
    deliver_ok(&stack, "msg_claim", "user.updated.email-claimed.json").await;
    let owner = stack.find_by_email("EXAMPLE@example.org").await.unwrap();
    assert_eq!(owner.id, MALLORY);
    stack.stop().await;
}

async fn banned_and_locked_come_back_and_a_stale_event_does_not_lift_them(backend: Backend) {
    let stack = Stack::start(backend).await;
    deliver_ok(&stack, "msg_created", "user.created.json").await;
    deliver_ok(&stack, "msg_banned", "user.updated.banned-locked.json").await;
    // user.updated.json is older (updated_at 1654012824306 < 1654012884306)
    // and says neither banned nor locked: stale.
    deliver_ok(&stack, "msg_older", "user.updated.json").await;

    let user = stack.get_user(EXAMPLE).await.unwrap();
    assert!(user.banned);
    assert!(user.locked);
    let until = user.locked_until.unwrap();
    assert_eq!(
        (until.seconds, until.nanos),
        (1_654_012_884 + 3600, 306_000_000)
    );
    assert!(user.two_factor_enabled);
    let factors = user.second_factors.unwrap();
    assert!(factors.totp && factors.backup_codes);
    assert!(user.has_image);
    assert_eq!(user.last_active_at.unwrap().seconds, 1_654_012_700);
    assert_eq!(user.legal_accepted_at.unwrap().seconds, 1_654_012_591);
    // The operator did not opt in: Clerk's private metadata is not kept.
    assert_eq!(user.private_metadata, None);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_forwards_over_mutual_tls_with_its_token() {
    let stack = Stack::start_secured(Backend::Sqlite).await;
    deliver_ok(&stack, "msg_created", "user.created.json").await;
    let user = stack.get_user(EXAMPLE).await.unwrap();
    assert_eq!(user.display_name, "Example Example");

    // Over the same TLS channel, without a token, nothing is answered.
    let status = stack
        .directory
        .clone()
        .get_user(clerk_sync_api::v1::GetUserRequest { id: EXAMPLE.into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    stack.stop().await;
}

/// The `clerk-sync` binary on free ports with `env`, its banner, and its
/// working directory (where the SQLite default lives).
fn spawn_stack_binary(env: &[(&str, &str)]) -> (std::process::Child, String, tempfile::TempDir) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_clerk-sync"))
        .current_dir(dir.path())
        .env("GATEWAY_LISTEN_ADDR", "127.0.0.1:0")
        .env("SYNC_SERVICE_LISTEN_ADDR", "127.0.0.1:0")
        .env("GATEWAY_METRICS_LISTEN_ADDR", "127.0.0.1:0")
        .env("SYNC_SERVICE_METRICS_LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .env_remove("CLERK_WEBHOOK_SECRET")
        .env_remove("DATABASE_URL")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    while !banner.contains("Ctrl-C stops both.") {
        assert_ne!(stdout.read_line(&mut banner).unwrap(), 0, "{banner}");
    }
    (child, banner, dir)
}

/// Stops the binary with SIGTERM, checks it exits cleanly, returns its logs.
fn stop_stack_binary(mut child: std::process::Child) -> String {
    use std::io::Read;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    logs
}

/// The address after `marker` in the banner.
fn banner_address(banner: &str, marker: &str) -> String {
    let rest = banner
        .split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("{banner}"));
    rest.split(|c: char| c.is_whitespace() || c == '/')
        .find(|part| !part.is_empty())
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_wires_a_token_between_its_halves_when_reads_need_one() {
    use crate::helpers::{SECRET, deliver_to, http_client};
    use clerk_sync_api::v1::{
        GetUserRequest, user_directory_service_client::UserDirectoryServiceClient,
    };

    const READ_TOKEN: &str = "stack-read-token-0123456789";
    let (child, banner, _dir) = spawn_stack_binary(&[
        ("CLERK_WEBHOOK_SECRET", SECRET),
        ("SYNC_SERVICE_READ_TOKENS", READ_TOKEN),
    ]);
    let gateway = banner_address(&banner, "POST http://");
    let sync = banner_address(&banner, "grpcurl -plaintext ");

    // The gateway half is let in with a token nobody configured.
    let body = fixture("user.created.json");
    let answer = deliver_to(&http_client(), &gateway, "msg_stack", &body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    // Readers need the configured token.
    let mut directory = UserDirectoryServiceClient::connect(format!("http://{sync}"))
        .await
        .unwrap();
    let anonymous = directory
        .get_user(GetUserRequest { id: EXAMPLE.into() })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(GetUserRequest { id: EXAMPLE.into() });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {READ_TOKEN}").parse().unwrap(),
    );
    let user = directory.get_user(request).await.unwrap().into_inner();
    assert_eq!(user.user.unwrap().id, EXAMPLE);

    let logs = stop_stack_binary(child);
    assert!(!logs.contains(READ_TOKEN), "{logs}");
    assert!(!banner.contains(READ_TOKEN), "{banner}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_banner_masks_the_database_password() {
    let db = TestDb::new(Backend::Postgres).await;
    // Trust authentication accepts any password, so this one is harmless
    // and easy to look for.
    let url = db.url.replacen("postgres@", "postgres:hunter2-db-pw@", 1);
    assert_ne!(url, db.url, "{}", db.url);
    let (child, banner, _dir) = spawn_stack_binary(&[("DATABASE_URL", &url)]);
    let logs = stop_stack_binary(child);
    assert!(
        banner.contains("postgres://postgres:***@127.0.0.1"),
        "{banner}"
    );
    assert!(!banner.contains("hunter2-db-pw"), "{banner}");
    assert!(!logs.contains("hunter2-db-pw"), "{logs}");
}
