//! The `clerk-sync-service` binary itself: bad configuration stops it with one
//! line naming the setting, and SIGTERM stops it cleanly.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

fn service() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clerk-sync-service"));
    command.env_remove("DATABASE_URL").env("RUST_LOG", "info");
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
    let cases: [Case; 6] = [
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
        (&["--max-batch", "0"], &[], "--max-batch"),
        (&[], &[("SYNC_WRITERS", "lots")], "--writers"),
        (
            &["migrate"],
            &[("DATABASE_URL", "mysql://root:hunter2@nowhere/db")],
            "DATABASE_URL",
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
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("sync-service listening") {
        line.clear();
        assert_ne!(
            stderr.read_line(&mut line).unwrap(),
            0,
            "exited before listening"
        );
    }
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
