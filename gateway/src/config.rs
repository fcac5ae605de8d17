//! The gateway's command line: flags with environment fallbacks and defaults
//! that work on a developer machine, assembled from the settings of the
//! modules that use them ([`SyncServiceSettings`], [`Limits`],
//! [`BackfillCommand`], [`QuarantineCommand`]) plus the server's own.
//!
//! Values are parsed into their final types, so a bad one stops start-up
//! with one line naming the setting instead of failing on the first request.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, Subcommand};
use clerk_sync_common::{
    runtime::{LogFormat, MetricsListen, parse_metrics_listen},
    settings::{SecretParser, parse_secs},
};
use http::Uri;

use crate::{
    backfill::BackfillCommand, limits::Limits, quarantine::cli::QuarantineCommand,
    sync_service::SyncServiceSettings, verify::WebhookSecrets,
};

/// Settings of the gateway.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "clerk-sync-gateway",
    version,
    about = "Receives Clerk webhooks (Svix-signed), verifies them and forwards user events to the clerk-sync sync-service over gRPC."
)]
pub struct Config {
    /// What to do (default: serve webhooks).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on for webhooks (used by the binary; `run` takes a bound
    /// listener instead).
    #[arg(
        long = "listen",
        value_name = "ADDR",
        env = "GATEWAY_LISTEN_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// How to reach the sync-service.
    #[command(flatten)]
    pub sync_service: SyncServiceSettings,

    /// Svix signing secret(s) from the Clerk dashboard (`whsec_…`), separated by
    /// spaces or commas (several during a rotation); required to serve. Prefer
    /// the environment variable: command lines are visible to other users of
    /// the machine.
    #[arg(
        long = "webhook-secret", value_name = "SECRETS",
        env = "CLERK_WEBHOOK_SECRET",
        hide_env_values = true,
        value_parser = SecretParser::new("--webhook-secret (CLERK_WEBHOOK_SECRET)", parse_webhook_secrets)
    )]
    pub webhook_secrets: Option<WebhookSecrets>,

    /// Largest accepted webhook body, in bytes.
    #[arg(
        long = "body-limit", value_name = "BYTES",
        env = "GATEWAY_BODY_LIMIT",
        default_value_t = Config::DEFAULT_BODY_LIMIT,
        value_parser = parse_positive_bytes
    )]
    pub body_limit: usize,

    /// How far a webhook's signed timestamp may be from now, in seconds (inclusive).
    #[arg(
        long = "timestamp-tolerance-secs", value_name = "SECS",
        env = "WEBHOOK_TIMESTAMP_TOLERANCE_SECS",
        default_value = "300",
        value_parser = parse_secs
    )]
    pub timestamp_tolerance: Duration,

    /// On shutdown, how long in-flight requests may take to finish, in seconds.
    #[arg(
        long = "shutdown-timeout-secs", value_name = "SECS",
        env = "GATEWAY_SHUTDOWN_TIMEOUT_SECS",
        default_value = "20",
        value_parser = parse_secs
    )]
    pub shutdown_timeout: Duration,

    /// Address serving Prometheus metrics at `GET /metrics` (keep it off the
    /// public network); empty serves none.
    #[arg(
        long = "metrics-listen", value_name = "ADDR",
        env = "GATEWAY_METRICS_LISTEN_ADDR",
        default_value = "127.0.0.1:9464",
        value_parser = |text: &str| parse_metrics_listen(text, "GATEWAY_METRICS_LISTEN_ADDR")
    )]
    pub metrics_listen: MetricsListen,

    /// Log line format: `text` or `json` (one JSON object per line).
    #[arg(
        long = "log-format",
        value_name = "FORMAT",
        env = "LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Connection hygiene and load limits.
    #[command(flatten)]
    pub limits: Limits,
}

/// Sub-commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve webhooks (the default).
    Serve,
    /// Inspect, retry or drop quarantined deliveries on the sync-service.
    Quarantine {
        /// What to do with them.
        #[command(subcommand)]
        action: QuarantineCommand,
    },
    /// Fill the directory from Clerk's Backend API (every user, through the
    /// sync-service with the webhook rules), optionally tombstoning local
    /// users Clerk no longer lists; once, or every `--every`. `backfill
    /// status` lists the recorded passes.
    Backfill(Box<BackfillCommand>),
}

impl Config {
    /// Default of `--body-limit`: 1 MiB, far above any Clerk user event.
    pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

    /// Settings with every default, for the given secrets and sync-service
    /// addresses; for tests and in-process launchers, which then adjust fields.
    pub fn new(webhook_secrets: WebhookSecrets, sync_service_urls: Vec<Uri>) -> Self {
        Self {
            command: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            sync_service: SyncServiceSettings::new(sync_service_urls),
            webhook_secrets: Some(webhook_secrets),
            body_limit: Self::DEFAULT_BODY_LIMIT,
            timestamp_tolerance: Duration::from_secs(300),
            shutdown_timeout: Duration::from_secs(20),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            log_format: LogFormat::Text,
            limits: Limits::default(),
        }
    }
}

fn parse_webhook_secrets(text: &str) -> Result<WebhookSecrets, String> {
    WebhookSecrets::parse(text).map_err(|error| match error {
        crate::Error::Config { reason, .. } => reason,
        other => other.to_string(),
    })
}

fn parse_positive_bytes(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1 byte".to_owned()),
        Ok(bytes) => Ok(bytes),
        Err(_) => Err("expected a whole number of bytes".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use clerk_sync_common::settings::BearerToken;

    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut argv = vec!["clerk-sync-gateway"];
        if !args.contains(&"--webhook-secret") {
            argv.extend(["--webhook-secret", SECRET]);
        }
        argv.extend_from_slice(args);
        Config::try_parse_from(argv)
    }

    #[test]
    fn defaults_match_config_new() {
        let parsed = parse(&[]).unwrap();
        let built = Config::new(
            SECRET.parse().unwrap(),
            vec!["http://127.0.0.1:50051".parse().unwrap()],
        );
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
    }

    #[test]
    fn several_sync_service_urls_are_comma_separated() {
        let config = parse(&["--sync-service-url", "http://a:1,http://b:2"]).unwrap();
        assert_eq!(config.sync_service.urls.len(), 2);
        assert_eq!(config.sync_service.urls[1], "http://b:2");
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (args, setting) in [
            (&["--body-limit", "0"][..], "--body-limit"),
            (&["--body-limit", "lots"], "--body-limit"),
            (&["--upstream-timeout-ms", "0"], "--upstream-timeout-ms"),
            (&["--connect-timeout-ms=-1"], "--connect-timeout-ms"),
            (
                &["--timestamp-tolerance-secs", "5m"],
                "--timestamp-tolerance-secs",
            ),
            (
                &["--timestamp-tolerance-secs", "18446744073709551615"],
                "--timestamp-tolerance-secs",
            ),
            (
                &["--upstream-timeout-ms", "18446744073709551615"],
                "--upstream-timeout-ms",
            ),
            (
                &["--sync-service-url", "localhost:50051"],
                "--sync-service-url",
            ),
            (&["--listen", "8080"], "--listen"),
            (&["--metrics-listen", "9464"], "GATEWAY_METRICS_LISTEN_ADDR"),
            (&["--log-format", "xml"], "LOG_FORMAT"),
            (&["--webhook-secret", "whsec_"], "--webhook-secret"),
            (&["--header-timeout-secs", "0"], "--header-timeout-secs"),
            (&["--body-timeout-secs", "x"], "--body-timeout-secs"),
            (&["--idle-timeout-secs=-5"], "--idle-timeout-secs"),
            (
                &["--http2-keepalive-interval-secs", "0"],
                "--http2-keepalive-interval-secs",
            ),
            (
                &["--http2-keepalive-timeout-secs", "soon"],
                "--http2-keepalive-timeout-secs",
            ),
            (&["--http2-max-streams", "0"], "--http2-max-streams"),
            (&["--max-connections", "0"], "--max-connections"),
            (&["--max-in-flight", "many"], "--max-in-flight"),
            (&["--max-message-bytes", "0"], "--max-message-bytes"),
            (
                &["--sync-service-url", "ftp://host:1"],
                "--sync-service-url",
            ),
            (
                &["--sync-service-token", "MfKQ9r8G ünicode"],
                "SYNC_SERVICE_TOKEN",
            ),
            (&["--sync-service-token", " "], "SYNC_SERVICE_TOKEN"),
            (
                &["--webhook-secret", "whsec_MfKQ9r8G*"],
                "CLERK_WEBHOOK_SECRET",
            ),
        ] {
            let error = parse(args).unwrap_err().to_string();
            assert!(error.contains(setting), "{args:?}: {error}");
            assert!(!error.contains("MfKQ9r8G"), "{error}");
        }
    }

    fn backfill(args: &[&str]) -> Result<Config, clap::Error> {
        let mut argv = vec!["clerk-sync-gateway", "backfill"];
        if !args.contains(&"--clerk-secret-key") {
            argv.extend(["--clerk-secret-key", "sk_test_Secret123"]);
        }
        argv.extend_from_slice(args);
        Config::try_parse_from(argv)
    }

    #[test]
    fn backfill_takes_the_servers_sync_service_settings_and_needs_no_webhook_secret() {
        let config = Config::try_parse_from([
            "clerk-sync-gateway",
            "--sync-service-url",
            "http://a:1",
            "backfill",
            "--clerk-secret-key",
            "sk_test_Secret123",
            "--upstream-timeout-ms",
            "900",
            "--reconcile",
        ])
        .unwrap();
        assert_eq!(config.sync_service.urls, ["http://a:1"]);
        assert_eq!(config.sync_service.timeout, Duration::from_millis(900));
        assert!(config.webhook_secrets.is_none());
        let Some(Command::Backfill(command)) = &config.command else {
            panic!("{config:?}")
        };
        let args = &command.args;
        assert!(args.reconcile && !args.dry_run);
        assert_eq!(args.clerk_api_url, "https://api.clerk.com");
        assert_eq!((args.page_size, args.resume_after.as_deref()), (500, None));
        assert_eq!(args.max_tombstone_share.of(1_000), 50);
        assert!(!args.force);
        assert!(!format!("{config:?}").contains("Secret123"));
    }

    #[test]
    fn bad_backfill_values_name_the_setting_without_echoing_the_key() {
        for (args, setting) in [
            (
                &["--clerk-secret-key", "pk_test_Secret123"][..],
                "--clerk-secret-key",
            ),
            (
                &["--clerk-secret-key", "sk_test Secret123"],
                "CLERK_SECRET_KEY",
            ),
            (&["--clerk-api-url", "api.clerk.com"], "--clerk-api-url"),
            (
                &["--clerk-api-url", "https://api.clerk.com/v1"],
                "--clerk-api-url",
            ),
            (&["--page-size", "501"], "--page-size"),
            (&["--page-size", "0"], "--page-size"),
            (&["--resume-from", "400"], "--resume-after USER_ID"),
            (&["--resume-after", "user 1"], "--resume-after"),
            (&["--max-tombstone-share", "120"], "--max-tombstone-share"),
            (&["--max-retries", "many"], "--max-retries"),
            (&["--concurrency", "0"], "--concurrency"),
        ] {
            let error = backfill(args).unwrap_err().to_string();
            assert!(error.contains(setting), "{args:?}: {error}");
            assert!(!error.contains("Secret123"), "{error}");
        }
        let error = Config::try_parse_from(["clerk-sync-gateway", "backfill"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--clerk-secret-key"), "{error}");
    }

    #[test]
    fn schedules_resyncs_and_status_parse_and_refuse_what_cannot_go_together() {
        let command = |config: Config| match config.command {
            Some(Command::Backfill(command)) => command,
            other => panic!("{other:?}"),
        };
        let scheduled = command(backfill(&["--reconcile", "--every", "6h"]).unwrap());
        assert_eq!(scheduled.args.every, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(scheduled.args.lease_secs, Duration::from_secs(60));
        let resync = command(backfill(&["--user", "user_a,user_b", "--user", "user_c"]).unwrap());
        assert_eq!(resync.args.users, ["user_a", "user_b", "user_c"]);

        // `backfill status` needs no Clerk key.
        let status = command(
            Config::try_parse_from(["clerk-sync-gateway", "backfill", "status", "--limit", "5"])
                .unwrap(),
        );
        assert!(matches!(
            status.action,
            Some(crate::backfill::BackfillAction::Status { limit: 5 })
        ));

        for (args, named) in [
            (&["--every", "0s"][..], "--every"),
            (&["--every", "soon"], "--every"),
            (&["--every", "6h", "--dry-run"], "--dry-run"),
            (
                &["--every", "6h", "--resume-after", "user_1"],
                "--resume-after",
            ),
            (&["--user", "user_1", "--reconcile"], "--reconcile"),
            (&["--user", "user 1"], "--user"),
            (&["--lease-secs", "1"], "--lease-secs"),
            (&["--holder", ""], "--holder"),
            (&["--reconcile", "status"], "status"),
        ] {
            let error = backfill(args).unwrap_err().to_string();
            assert!(error.contains(named), "{args:?}: {error}");
        }
    }

    #[test]
    fn an_empty_metrics_address_turns_metrics_off() {
        assert_eq!(
            parse(&["--metrics-listen", ""]).unwrap().metrics_listen,
            None
        );
        let config = parse(&["--metrics-listen", "0.0.0.0:9100", "--log-format", "json"]).unwrap();
        assert_eq!(
            config.metrics_listen,
            Some(SocketAddr::from(([0, 0, 0, 0], 9100)))
        );
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn debug_output_redacts_the_secret_and_the_token() {
        let config = parse(&["--sync-service-token", "tok_MfKQ9r8G_0123456789"]).unwrap();
        assert_eq!(
            config.sync_service.token.as_ref().map(BearerToken::expose),
            Some("tok_MfKQ9r8G_0123456789")
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("MfKQ9r8G"), "{shown}");
    }

    #[test]
    fn https_urls_are_accepted() {
        let config = parse(&["--sync-service-url", "https://sync.internal:50051"]).unwrap();
        assert_eq!(config.sync_service.urls[0].scheme_str(), Some("https"));
    }
}
