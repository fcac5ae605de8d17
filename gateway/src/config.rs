//! The gateway's settings: command-line flags with environment fallbacks and
//! defaults that work on a developer machine.
//!
//! Values are parsed into their final types here, so a bad one stops start-up
//! with one line naming the setting instead of failing on the first request.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use clerk_sync_common::{
    runtime::{LogFormat, MetricsListen, parse_metrics_listen},
    settings::{BearerToken, SecretParser},
};
use http::Uri;

use crate::{
    clerk_api::SecretKey, limits::Limits, quarantine::cli::QuarantineCommand,
    verify::WebhookSecrets,
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
    /// users Clerk no longer lists; then exit.
    Backfill(BackfillArgs),
}

/// How to reach the sync-service: the addresses, the token, TLS and the
/// deadlines. Shared by everything in this crate that applies events.
#[derive(Debug, Clone, clap::Args)]
pub struct SyncServiceSettings {
    /// Address(es) of the sync-service gRPC server, comma-separated; several are
    /// load-balanced. `https://` speaks TLS (see --sync-service-ca).
    #[arg(
        long = "sync-service-url", value_name = "URL",
        env = "SYNC_SERVICE_URL",
        default_value = "http://127.0.0.1:50051",
        value_delimiter = ',',
        value_parser = parse_sync_service_url,
        global = true
    )]
    pub urls: Vec<Uri>,

    /// Bearer token sent on every call: one of the sync-service's write
    /// tokens. Prefer the environment variable.
    #[arg(
        long = "sync-service-token", value_name = "TOKEN",
        env = "SYNC_SERVICE_TOKEN",
        hide_env_values = true,
        value_parser = SecretParser::new("--sync-service-token (SYNC_SERVICE_TOKEN)", BearerToken::parse),
        global = true
    )]
    pub token: Option<BearerToken>,

    /// CA certificate(s) (PEM) to trust for `https://` sync-service URLs,
    /// for a private CA; the system's roots are trusted otherwise.
    #[arg(
        long = "sync-service-ca",
        value_name = "PEM",
        env = "SYNC_SERVICE_CA",
        global = true
    )]
    pub ca: Option<PathBuf>,

    /// Client certificate (PEM) to present to the sync-service (mutual TLS).
    #[arg(
        long = "sync-service-client-cert",
        value_name = "PEM",
        env = "SYNC_SERVICE_CLIENT_CERT",
        global = true
    )]
    pub client_cert: Option<PathBuf>,

    /// Private key (PEM) of --sync-service-client-cert.
    #[arg(
        long = "sync-service-client-key",
        value_name = "PEM",
        env = "SYNC_SERVICE_CLIENT_KEY",
        global = true
    )]
    pub client_key: Option<PathBuf>,

    /// Deadline of each call to the sync-service, in milliseconds; past it the
    /// webhook is answered 503 and Svix retries.
    #[arg(
        long = "upstream-timeout-ms", value_name = "MS",
        env = "SYNC_SERVICE_TIMEOUT_MS",
        default_value = "5000",
        value_parser = parse_positive_millis,
        global = true
    )]
    pub timeout: Duration,

    /// Time allowed to open a connection to the sync-service, in milliseconds.
    #[arg(
        long = "connect-timeout-ms", value_name = "MS",
        env = "SYNC_SERVICE_CONNECT_TIMEOUT_MS",
        default_value = "1000",
        value_parser = parse_positive_millis,
        global = true
    )]
    pub connect_timeout: Duration,
}

impl SyncServiceSettings {
    /// Plain-text addresses and every other default, for tests and
    /// in-process launchers.
    pub fn new(urls: Vec<Uri>) -> Self {
        Self {
            urls,
            token: None,
            ca: None,
            client_cert: None,
            client_key: None,
            timeout: Duration::from_millis(5000),
            connect_timeout: Duration::from_millis(1000),
        }
    }
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

/// Settings of `clerk-sync-gateway backfill` (the sync-service address and
/// timeouts are the server's).
#[derive(Debug, Clone, Args)]
pub struct BackfillArgs {
    /// Clerk secret key (`sk_live_…` or `sk_test_…`) of the instance to copy.
    /// Prefer the environment variable: command lines are visible to other
    /// users of the machine.
    #[arg(
        long = "clerk-secret-key", value_name = "KEY",
        env = "CLERK_SECRET_KEY",
        hide_env_values = true,
        value_parser = SecretParser::new("--clerk-secret-key (CLERK_SECRET_KEY)", SecretKey::parse)
    )]
    pub clerk_secret_key: SecretKey,

    /// Base URL of Clerk's Backend API.
    #[arg(
        long = "clerk-api-url", value_name = "URL",
        env = "CLERK_API_URL",
        default_value = "https://api.clerk.com",
        value_parser = parse_clerk_api_url
    )]
    pub clerk_api_url: Uri,

    /// Also tombstone local users that Clerk no longer lists (only after a
    /// complete listing, and only users whose last change is older than it).
    #[arg(long, env = "BACKFILL_RECONCILE")]
    pub reconcile: bool,

    /// Report what would change; write nothing.
    #[arg(long, env = "BACKFILL_DRY_RUN")]
    pub dry_run: bool,

    /// Start the listing at this offset: the one an interrupted run printed.
    /// A listing that does not start at 0 is incomplete: no reconcile.
    #[arg(
        long,
        value_name = "OFFSET",
        env = "BACKFILL_RESUME_FROM",
        default_value_t = 0
    )]
    pub resume_from: u64,

    /// Users per page requested from Clerk (Clerk allows at most 500).
    #[arg(long, value_name = "N", env = "BACKFILL_PAGE_SIZE", default_value_t = 500,
        value_parser = clap::value_parser!(u32).range(1..=500))]
    pub page_size: u32,

    /// Retries of a failing request (Clerk 5xx or network error, sync-service
    /// unavailable) before the run stops; waits double from 250 ms.
    #[arg(long, value_name = "N", env = "BACKFILL_MAX_RETRIES", default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(0..=20))]
    pub max_retries: u32,

    /// Users applied concurrently.
    #[arg(long, value_name = "N", env = "BACKFILL_CONCURRENCY", default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
}

fn parse_clerk_api_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .trim()
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected https://host"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) if uri.path().is_empty() || uri.path() == "/" => Ok(uri),
        (Some("http" | "https"), Some(_)) => Err("expected a base URL without a path".to_owned()),
        _ => Err("expected https://host".to_owned()),
    }
}

fn parse_sync_service_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .trim()
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected http://host:port"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err("expected http://host:port or https://host:port".to_owned()),
    }
}

fn parse_webhook_secrets(text: &str) -> Result<WebhookSecrets, String> {
    WebhookSecrets::parse(text).map_err(|error| match error {
        crate::Error::Config { reason, .. } => reason,
        other => other.to_string(),
    })
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| "expected a whole number of seconds".to_owned())
}

fn parse_positive_bytes(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1 byte".to_owned()),
        Ok(bytes) => Ok(bytes),
        Err(_) => Err("expected a whole number of bytes".to_owned()),
    }
}

fn parse_positive_millis(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1 ms".to_owned()),
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(_) => Err("expected a whole number of milliseconds".to_owned()),
    }
}

#[cfg(test)]
mod tests {
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
        let Some(Command::Backfill(args)) = &config.command else {
            panic!("{config:?}")
        };
        assert!(args.reconcile && !args.dry_run);
        assert_eq!(args.clerk_api_url, "https://api.clerk.com");
        assert_eq!((args.page_size, args.resume_from), (500, 0));
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
            (&["--resume-from", "minus3"], "--resume-from"),
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
