//! Command line and environment configuration of the sync-service.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, builder::BoolishValueParser};
use clerk_sync_common::{
    runtime::{LogFormat, MetricsListen, parse_metrics_listen},
    settings::{MAX_SETTING_SECS, SecretParser},
};

use crate::{
    auth::{TokenList, Tokens},
    ingest::IngestOptions,
    limits::Limits,
    store::StoreOptions,
};

/// Default of `--grpc-max-message-bytes`: 16 MiB, several times the gateway's
/// default body limit (protobuf may be larger than the JSON it came from).
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 16 * 1024 * 1024;

/// PostgreSQL's largest `statement_timeout` / `lock_timeout` (an `int` of
/// milliseconds, about 24.8 days).
const MAX_POSTGRES_TIMEOUT_MS: u64 = i32::MAX as u64;

/// Default database: a SQLite file under ./data, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/clerk-sync.db?mode=rwc";

/// clerk-sync sync-service: applies Clerk user events to the directory
/// database and serves the directory over gRPC.
#[derive(Clone, Debug, Parser)]
#[command(name = "clerk-sync-service", version)]
pub struct Config {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Database URL: `sqlite://PATH?mode=rwc` or `postgres://USER@HOST/DB`.
    // Its value may hold a password: `--help` names the variable only.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL, global = true)]
    pub database_url: String,

    /// Address the gRPC server listens on.
    #[arg(
        long,
        env = "SYNC_SERVICE_LISTEN_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub listen: SocketAddr,

    /// Connections of the read pool (queries and change-feed reads); the
    /// writers have a pool of their own, of SYNC_WRITERS + 1.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub database_max_connections: u32,

    /// Milliseconds to wait for a database connection (and for SQLite's lock).
    #[arg(long, env = "DATABASE_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000), global = true)]
    pub database_timeout_ms: u64,

    /// Most events committed in one transaction (group commit).
    #[arg(long, env = "SYNC_MAX_BATCH", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000), global = true)]
    pub max_batch: u64,

    /// Writer tasks committing batches (default 1): more overlap one batch's
    /// commit with the next one's work, at the price of smaller batches.
    #[arg(long, env = "SYNC_WRITERS", value_parser = clap::value_parser!(u64).range(1..=64), global = true)]
    pub writers: Option<u64>,

    /// Most users kept in the in-memory read cache of GetUser, BatchGetUsers
    /// and FindUserByEmail (0 turns it off).
    #[arg(
        long,
        env = "SYNC_SERVICE_USER_CACHE_CAPACITY",
        default_value_t = 100_000,
        global = true
    )]
    pub user_cache_capacity: u64,

    /// Milliseconds between database checks behind the gRPC health status.
    #[arg(long, env = "HEALTH_CHECK_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000), global = true)]
    pub health_check_interval_ms: u64,

    /// Milliseconds between checks of the change log for commits made through
    /// other replicas (watchers on this replica wake at once on its own).
    #[arg(long, env = "FEED_POLL_INTERVAL_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=60_000), global = true)]
    pub feed_poll_interval_ms: u64,

    /// Seconds a deletion stays in the change log (0: forever). A client
    /// resuming from before a pruned deletion must restart from a snapshot.
    #[arg(
        long,
        env = "FEED_DELETION_RETENTION_SECS",
        default_value_t = 2_592_000,
        value_parser = clap::value_parser!(u64).range(0..=MAX_SETTING_SECS),
        global = true
    )]
    pub feed_deletion_retention_secs: u64,

    /// PostgreSQL statement_timeout of every connection, in milliseconds.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=MAX_POSTGRES_TIMEOUT_MS), global = true)]
    pub database_statement_timeout_ms: u64,

    /// PostgreSQL lock_timeout of every connection, in milliseconds.
    #[arg(long, env = "DATABASE_LOCK_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=MAX_POSTGRES_TIMEOUT_MS), global = true)]
    pub database_lock_timeout_ms: u64,

    /// Largest gRPC message received or sent, in bytes (keep it above the
    /// gateway's body limit: quarantined bodies travel in one message).
    #[arg(long, env = "GRPC_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES, value_parser = clap::value_parser!(u64).range(65_536..=1_073_741_824), global = true)]
    pub grpc_max_message_bytes: u64,

    /// Most events waiting to be applied at once; past it, applies are
    /// refused at once with UNAVAILABLE (the gateway answers 503).
    #[arg(long, env = "SYNC_MAX_PENDING_APPLIES", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000), global = true)]
    pub max_pending_applies: u64,

    /// Days an applied event id is remembered for deduplication (Svix retries
    /// for about 28 hours); older ledger rows are pruned in the background.
    #[arg(long, env = "LEDGER_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..=36_500), global = true)]
    pub ledger_retention_days: u64,

    /// Days a quarantined delivery is kept after it was last seen; older
    /// records are dropped in the background (records about a deleted user
    /// go with the user).
    #[arg(long, env = "SYNC_QUARANTINE_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3650), global = true)]
    pub quarantine_retention_days: u64,

    /// Most bytes of bodies the quarantine holds; past it, new deliveries are
    /// refused with RESOURCE_EXHAUSTED (the gateway answers 503 and Svix
    /// retries) until an operator retries or drops some.
    #[arg(long, env = "SYNC_QUARANTINE_MAX_BYTES", default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1_048_576..), global = true)]
    pub quarantine_max_bytes: u64,

    /// Bearer tokens that may apply events (and read): the gateway's and a
    /// backfill's. Comma- or space-separated, so that a new token can be
    /// added before the old one is removed. Prefer the environment variable:
    /// command lines are visible to other users of the machine.
    #[arg(long, env = "SYNC_SERVICE_WRITE_TOKENS", hide_env_values = true, value_name = "TOKENS", default_value = "", hide_default_value = true, value_parser = SecretParser::new("--write-tokens (SYNC_SERVICE_WRITE_TOKENS)", TokenList::parse), global = true)]
    pub write_tokens: TokenList,

    /// Bearer tokens that may only read (UserDirectoryService): the other
    /// internal services'. Comma- or space-separated.
    #[arg(long, env = "SYNC_SERVICE_READ_TOKENS", hide_env_values = true, value_name = "TOKENS", default_value = "", hide_default_value = true, value_parser = SecretParser::new("--read-tokens (SYNC_SERVICE_READ_TOKENS)", TokenList::parse), global = true)]
    pub read_tokens: TokenList,

    /// Serve without tokens on an address beyond loopback. Without it, such a
    /// server refuses to start: anyone who reaches it could erase users.
    #[arg(long, env = "SYNC_SERVICE_ALLOW_UNAUTHENTICATED", value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new(), global = true)]
    pub allow_unauthenticated: bool,

    /// TLS certificate chain (PEM) of the gRPC port; with --tls-key, the
    /// server speaks only TLS.
    #[arg(long, env = "SYNC_SERVICE_TLS_CERT", value_name = "PEM", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SYNC_SERVICE_TLS_KEY", value_name = "PEM", global = true)]
    pub tls_key: Option<PathBuf>,

    /// CA certificate(s) (PEM) that client certificates must be signed by:
    /// set it to require mutual TLS.
    #[arg(
        long,
        env = "SYNC_SERVICE_TLS_CLIENT_CA",
        value_name = "PEM",
        global = true
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Store Clerk's private_metadata and serve it to callers with a token.
    /// Off by default: it can hold secrets the operator never meant to copy;
    /// when off, it is dropped on arrival and erased from the database at
    /// start-up.
    #[arg(long, env = "SYNC_STORE_PRIVATE_METADATA", value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new(), global = true)]
    pub store_private_metadata: bool,

    /// Seconds in-flight requests get to finish on shutdown.
    #[arg(
        long,
        env = "SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(0..=86_400),
        global = true
    )]
    pub shutdown_timeout_secs: u64,

    /// Address serving Prometheus metrics at `GET /metrics` (keep it off the
    /// public network); empty serves none.
    #[arg(
        long = "metrics-listen",
        value_name = "ADDR",
        env = "SYNC_SERVICE_METRICS_LISTEN_ADDR",
        default_value = "127.0.0.1:9465",
        value_parser = |text: &str| parse_metrics_listen(text, "SYNC_SERVICE_METRICS_LISTEN_ADDR"),
        global = true
    )]
    pub metrics_listen: MetricsListen,

    /// Connection limits of the gRPC port.
    #[command(flatten)]
    pub limits: Limits,

    /// Log line format: `text` or `json` (one JSON object per line).
    #[arg(
        long = "log-format",
        value_name = "FORMAT",
        env = "LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

/// Sub-commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Migrate the database, then serve gRPC (the default).
    Serve,
    /// Migrate the database and exit.
    Migrate,
}

impl Config {
    /// Configuration with every default, for `database_url`.
    pub fn with_database(database_url: impl Into<String>) -> Self {
        let mut config = Self::parse_from(["clerk-sync-service"]);
        config.database_url = database_url.into();
        config
    }

    /// How to reach the database.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            database_url: self.database_url.clone(),
            max_connections: self.database_max_connections,
            // Each writer, and one for the quarantine and pruning.
            write_connections: self.ingest_options().writers as u32 + 1,
            acquire_timeout: Duration::from_millis(self.database_timeout_ms),
            statement_timeout: Duration::from_millis(self.database_statement_timeout_ms),
            lock_timeout: Duration::from_millis(self.database_lock_timeout_ms),
            user_cache_capacity: self.user_cache_capacity,
        }
    }

    /// How long deletions stay in the change log; `None`: forever.
    pub fn feed_deletion_retention(&self) -> Option<Duration> {
        (self.feed_deletion_retention_secs > 0)
            .then(|| Duration::from_secs(self.feed_deletion_retention_secs))
    }

    /// The tokens calls are checked against; `None` to serve
    /// unauthenticated, which only a loopback address or an explicit
    /// --allow-unauthenticated permits.
    pub fn tokens(&self) -> anyhow::Result<Option<Tokens>> {
        if self.write_tokens.is_empty() {
            if !self.read_tokens.is_empty() {
                anyhow::bail!(
                    "SYNC_SERVICE_READ_TOKENS is set but SYNC_SERVICE_WRITE_TOKENS is not: nothing could apply events"
                );
            }
            if !self.listen.ip().is_loopback() && !self.allow_unauthenticated {
                anyhow::bail!(
                    "refusing to serve {} without authentication: set SYNC_SERVICE_WRITE_TOKENS (and SYNC_SERVICE_READ_TOKENS), or SYNC_SERVICE_ALLOW_UNAUTHENTICATED=true",
                    self.listen
                );
            }
            return Ok(None);
        }
        Tokens::new(&self.write_tokens, &self.read_tokens)
            .map(Some)
            .map_err(|reason| anyhow::anyhow!("SYNC_SERVICE_READ_TOKENS: {reason}"))
    }

    /// TLS settings of the gRPC port, read from the PEM files; `None`
    /// without --tls-cert and --tls-key.
    pub fn tls(&self) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        crate::tls::server_config(
            self.tls_cert.as_ref(),
            self.tls_key.as_ref(),
            self.tls_client_ca.as_ref(),
        )
    }

    /// How to size the write path.
    pub fn ingest_options(&self) -> IngestOptions {
        IngestOptions {
            writers: self.writers.map_or(1, |n| n as usize),
            max_batch: self.max_batch as usize,
            max_pending: self.max_pending_applies as usize,
        }
    }
}

impl Config {
    /// How long applied event ids are kept in the ledger.
    pub fn ledger_retention(&self) -> Duration {
        Duration::from_secs(self.ledger_retention_days.saturating_mul(24 * 3600))
    }

    /// How long a quarantined delivery is kept after it was last seen.
    pub fn quarantine_retention(&self) -> Duration {
        Duration::from_secs(self.quarantine_retention_days.saturating_mul(24 * 3600))
    }

    /// The gRPC message size limit, in bytes.
    pub fn max_message_bytes(&self) -> usize {
        usize::try_from(self.grpc_max_message_bytes).unwrap_or(usize::MAX)
    }
}
