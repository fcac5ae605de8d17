//! Command line: subcommands and their settings. Every bad value stops the
//! tool with one line naming the flag (secrets and tokens are never echoed).

use clap::{Args, Parser, Subcommand, ValueEnum};
use clerk_sync_common::settings::{BearerToken, SecretParser};
use http::Uri;

use crate::{signing::SigningSecret, target::parse_http_url};

/// Load generator for a running clerk-sync deployment.
#[derive(Debug, Parser)]
#[command(name = "clerk-sync-bench", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Post signed Clerk webhooks to a gateway, then (with
    /// --sync-service-url) verify the end state through the directory.
    Ingest(Box<IngestArgs>),
    /// Drive the sync-service's UserDirectoryService, its
    /// OrganizationDirectoryService's point reads, or its health check.
    Query(QueryArgs),
    /// Put the directory's first users into organizations (through the
    /// write role), for `query --method check-permission | get-membership`.
    SeedOrganizations(SeedArgs),
    /// Start a bare hyper `200 {}` server and a no-op tonic server as child
    /// processes and measure them with the same load: the machine's ceiling.
    Baselines(BaselineArgs),
    /// Read the whole directory once with ListUsers, page after page: how
    /// long a full pass takes.
    Scan(ScanArgs),
    /// Wait until the sync-service answers its health check SERVING: how
    /// long a start-up takes, counted from this command's start.
    Ready(ReadyArgs),
    /// Hold what a hostile client can against the sync-service's gRPC port
    /// (idle connections, declared-large streams, watchers that never read)
    /// and print the servers' memory.
    Attack(AttackArgs),
    /// Hold change-feed watchers (some never reading) while another process
    /// loads the deployment (`ingest --stamp-send-time`): delivery latency
    /// from each webhook's send to its message on the stream, and the
    /// servers' memory.
    Watch(WatchArgs),
    /// Serve `200 {}` over HTTP/1.1 on 127.0.0.1:0; prints the address.
    #[command(hide = true)]
    ServeHyperBaseline,
    /// Serve grpc.health.v1 on 127.0.0.1:0; prints the address.
    #[command(hide = true)]
    ServeTonicBaseline,
}

/// Load settings shared by every subcommand that makes load.
#[derive(Clone, Debug, Args)]
pub struct LoadArgs {
    /// Keep-alive connections, one request in flight on each.
    #[arg(long, value_name = "C", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub connections: u32,

    /// Run for this many seconds instead of a fixed count (ingest: a storm
    /// of fresh users until the time is up).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: Option<u64>,

    /// Server process ids to report peak RSS and CPU µs per request of
    /// (comma-separated; Linux /proc), at start, middle and end.
    #[arg(long, value_name = "PIDS", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub server_pids: Vec<u32>,
}

/// `ingest` settings.
#[derive(Clone, Debug, Args)]
pub struct IngestArgs {
    /// The gateway's webhook URL (plain http; the path defaults to /clerk).
    #[arg(long, value_name = "URL", value_parser = |s: &str| parse_http_url("--gateway-url", s))]
    pub gateway_url: Uri,

    /// The endpoint's signing secret (whsec_…). Prefer the environment variable.
    #[arg(long, value_name = "SECRET", env = "CLERK_WEBHOOK_SECRET", hide_env_values = true, value_parser = SecretParser::new("--webhook-secret (CLERK_WEBHOOK_SECRET)", str::parse::<SigningSecret>))]
    pub webhook_secret: SigningSecret,

    /// Users; each gets one user.created and --updates user.updated.
    #[arg(long, value_name = "N", default_value_t = 4000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub users: u32,

    /// user.updated events per user, each with a later updated_at.
    #[arg(long, value_name = "U", default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub updates: u32,

    /// Fraction of users that end with a user.deleted (0 to 1).
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = |s: &str| parse_fraction("--delete-rate", s))]
    pub delete_rate: f64,

    /// Fraction of deliveries sent twice with the same svix-id (0 to 1).
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = |s: &str| parse_fraction("--duplicate-rate", s))]
    pub duplicate_rate: f64,

    /// Send the events in random order (updates may arrive before creates).
    #[arg(long)]
    pub shuffle: bool,

    /// Seed of the random choices (deleted users, duplicates, order).
    #[arg(long, value_name = "SEED", default_value_t = 1)]
    pub seed: u64,

    /// Stamp each upsert with the time it is sent (Unix µs, in
    /// `public_metadata.bench_sent_us`; signed when sent rather than up
    /// front), for `watch` to time delivery through the change feed.
    #[arg(long)]
    pub stamp_send_time: bool,

    /// Open loop: send R events per second in all, each connection its share
    /// on a fixed schedule, and time each from when it was due. Default:
    /// closed loop, each connection as fast as the answers come.
    #[arg(long, value_name = "R", value_parser = parse_per_second)]
    pub rate: Option<f64>,

    /// Run id in user ids (`user_bench_<RUN>_<n>`); default: from the clock,
    /// so every run has fresh users. Letters and digits only.
    #[arg(long, value_name = "RUN", value_parser = parse_run_id)]
    pub run_id: Option<String>,

    /// The sync-service to verify the end state on (plain http).
    #[arg(long, value_name = "URL", value_parser = |s: &str| parse_http_url("--sync-service-url", s))]
    pub sync_service_url: Option<Uri>,

    /// Read token for the directory (sent as `authorization: Bearer …`).
    #[arg(long, value_name = "TOKEN", env = "SYNC_SERVICE_TOKEN", hide_env_values = true, value_parser = SecretParser::new("--token (SYNC_SERVICE_TOKEN)", parse_token))]
    pub token: Option<String>,

    /// Load settings.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Directory calls `query` can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// UserDirectoryService/GetUser on a random known id.
    GetUser,
    /// UserDirectoryService/BatchGetUsers on --batch-size random known ids.
    BatchGetUsers,
    /// UserDirectoryService/FindUserByEmail on a random known address.
    FindUserByEmail,
    /// UserDirectoryService/ListUsers: the first page of --batch-size users.
    ListUsers,
    /// OrganizationDirectoryService/CheckPermission of a random known member
    /// in their organization (half of them hold the permission).
    CheckPermission,
    /// OrganizationDirectoryService/GetMembership of a random known member.
    GetMembership,
    /// grpc.health.v1.Health/Check: the same server's near no-op call.
    Health,
}

/// `query` settings.
#[derive(Clone, Debug, Args)]
pub struct QueryArgs {
    /// The sync-service (plain http).
    #[arg(long, value_name = "URL", value_parser = |s: &str| parse_http_url("--sync-service-url", s))]
    pub sync_service_url: Uri,

    /// Read token (sent as `authorization: Bearer …`).
    #[arg(long, value_name = "TOKEN", env = "SYNC_SERVICE_TOKEN", hide_env_values = true, value_parser = SecretParser::new("--token (SYNC_SERVICE_TOKEN)", parse_token))]
    pub token: Option<String>,

    /// The call to make.
    #[arg(long, value_enum, default_value_t = Method::GetUser)]
    pub method: Method,

    /// Calls to make (ignored with --duration).
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub calls: u64,

    /// Ids per BatchGetUsers call; page size of ListUsers.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch_size: u32,

    /// Query the users of this ingest run (`user_bench_<RUN>_<n>`, n <
    /// --users) instead of sampling ids with ListUsers.
    #[arg(long, value_name = "RUN", value_parser = parse_run_id, requires = "users")]
    pub run_id: Option<String>,

    /// Users of --run-id.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub users: Option<u32>,

    /// Without --run-id: how many users to sample with ListUsers.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sample: u32,

    /// Before measuring, call once per known key (user, address or
    /// membership), untimed: the figures are then the warm read path's,
    /// without the first read of each key.
    #[arg(long)]
    pub warm_up: bool,

    /// Load settings.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// `seed-organizations` settings.
#[derive(Clone, Debug, Args)]
pub struct SeedArgs {
    /// The sync-service (plain http).
    #[arg(long, value_name = "URL", value_parser = |s: &str| parse_http_url("--sync-service-url", s))]
    pub sync_service_url: Uri,

    /// Write token (sent as `authorization: Bearer …`).
    #[arg(long, value_name = "TOKEN", env = "SYNC_SERVICE_TOKEN", hide_env_values = true, value_parser = SecretParser::new("--token (SYNC_SERVICE_TOKEN)", parse_token))]
    pub token: Option<String>,

    /// Organizations to create.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub organizations: u32,

    /// Users to make members (the directory's first, one membership each).
    #[arg(long, value_name = "N", default_value_t = 4000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sample: u32,
}

/// `scan` settings.
#[derive(Clone, Debug, Args)]
pub struct ScanArgs {
    /// The sync-service (plain http).
    #[arg(long, value_name = "URL", value_parser = |s: &str| parse_http_url("--sync-service-url", s))]
    pub sync_service_url: Uri,

    /// Read token (sent as `authorization: Bearer …`).
    #[arg(long, value_name = "TOKEN", env = "SYNC_SERVICE_TOKEN", hide_env_values = true, value_parser = SecretParser::new("--token (SYNC_SERVICE_TOKEN)", parse_token))]
    pub token: Option<String>,

    /// Users per ListUsers page.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
}

/// `ready` settings.
#[derive(Clone, Debug, Args)]
pub struct ReadyArgs {
    /// The sync-service (plain http).
    #[arg(long, value_name = "URL", value_parser = |s: &str| parse_http_url("--sync-service-url", s))]
    pub sync_service_url: Uri,

    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

/// What `attack` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AttackKind {
    /// Connections that send the HTTP/2 preface and nothing more.
    Idle,
    /// Health-check streams each declaring a 4 MB message.
    Streams,
    /// WatchUsers snapshot streams that never read.
    Watchers,
}

/// `attack` settings.
#[derive(Clone, Debug, Args)]
pub struct AttackArgs {
    /// What to hold.
    #[arg(long, value_enum)]
    pub kind: AttackKind,

    /// The sync-service (plain http, an IP address and port).
    #[arg(long, value_name = "URL", value_parser = |s: &str| parse_http_url("--sync-service-url", s))]
    pub sync_service_url: Uri,

    /// Connections (idle) or streams (streams, watchers).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub count: u32,

    /// Seconds to hold them.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub hold: u64,

    /// Server process ids whose memory is printed (comma-separated).
    #[arg(long, value_name = "PIDS", value_delimiter = ',')]
    pub server_pids: Vec<u32>,

    /// `watchers`: seconds after the streams are dropped to print the
    /// servers' memory once more (it is printed 3 s after the drop too): an
    /// allocator may give memory back only after a delay.
    #[arg(long, value_name = "SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(3..=600))]
    pub settle: u64,

    /// Read token for `watchers` (sent as `authorization: Bearer …`).
    #[arg(long, value_name = "TOKEN", env = "SYNC_SERVICE_TOKEN", hide_env_values = true, value_parser = SecretParser::new("--token (SYNC_SERVICE_TOKEN)", parse_token))]
    pub token: Option<String>,
}

/// `watch` settings.
#[derive(Clone, Debug, Args)]
pub struct WatchArgs {
    /// The sync-service (plain http).
    #[arg(long, value_name = "URL", value_parser = |s: &str| parse_http_url("--sync-service-url", s))]
    pub sync_service_url: Uri,

    /// WatchUsers streams to open, from now.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub count: u32,

    /// How many of them never read (on connections with the smallest
    /// HTTP/2 windows).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=50_000))]
    pub idle: u32,

    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub hold: u64,

    /// End this many seconds after the last message (once one arrived).
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub quiet: u64,

    /// Server process ids whose memory is sampled every second
    /// (comma-separated).
    #[arg(long, value_name = "PIDS", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub server_pids: Vec<u32>,

    /// Read token (sent as `authorization: Bearer …`).
    #[arg(long, value_name = "TOKEN", env = "SYNC_SERVICE_TOKEN", hide_env_values = true, value_parser = SecretParser::new("--token (SYNC_SERVICE_TOKEN)", parse_token))]
    pub token: Option<String>,
}

/// `baselines` settings.
#[derive(Clone, Debug, Args)]
pub struct BaselineArgs {
    /// Requests per baseline (ignored with --duration).
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: u64,

    /// Load settings.
    #[command(flatten)]
    pub load: LoadArgs,
}

fn parse_fraction(flag: &str, text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("{flag}: expected a fraction from 0 to 1")),
    }
}

fn parse_per_second(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err("--rate: expected events per second, above 0".to_owned()),
    }
}

fn parse_run_id(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.len() <= 24 && text.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(text.to_owned())
    } else {
        Err("--run-id: expected 1 to 24 letters or digits".to_owned())
    }
}

/// A bearer token, as the targets send it.
fn parse_token(text: &str) -> Result<String, String> {
    BearerToken::parse(text).map(|token| token.expose().to_owned())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn refused(args: &[&str]) -> String {
        let mut argv = vec!["clerk-sync-bench"];
        argv.extend(args);
        Cli::try_parse_from(argv).unwrap_err().to_string()
    }

    const INGEST: [&str; 5] = [
        "ingest",
        "--gateway-url",
        "http://127.0.0.1:1",
        "--webhook-secret",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ];

    #[test]
    fn a_good_ingest_line_parses() {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(INGEST)).unwrap();
        let Command::Ingest(args) = cli.command else {
            panic!("not ingest")
        };
        assert_eq!(
            (args.users, args.updates, args.load.connections, args.rate),
            (4000, 4, 32, None)
        );
    }

    #[test]
    fn bad_values_name_their_flag() {
        let with = |extra: &[&'static str]| {
            let mut args = INGEST.to_vec();
            args.extend(extra);
            refused(&args)
        };
        assert!(with(&["--users", "0"]).contains("--users"));
        assert!(with(&["--connections", "x"]).contains("--connections"));
        assert!(with(&["--delete-rate", "1.5"]).contains("--delete-rate: expected a fraction"));
        assert!(with(&["--duplicate-rate=-1"]).contains("--duplicate-rate"));
        assert!(with(&["--server-pids", "0"]).contains("--server-pids"));
        assert!(with(&["--rate", "0"]).contains("--rate: expected events per second"));
        assert!(with(&["--rate", "inf"]).contains("--rate"));
        assert!(with(&["--run-id", "a_b"]).contains("--run-id"));
        assert!(
            with(&["--sync-service-url", "https://h:1"])
                .contains("--sync-service-url: https:// is not supported")
        );
        let secret = refused(&[
            "ingest",
            "--gateway-url",
            "http://h:1",
            "--webhook-secret",
            "whsec_%%%",
        ]);
        assert!(
            secret.contains("--webhook-secret (CLERK_WEBHOOK_SECRET)"),
            "{secret}"
        );
        assert!(!secret.contains("%%%"), "{secret}");
        let token = refused(&[
            "query",
            "--sync-service-url",
            "http://h:1",
            "--token",
            "a b",
        ]);
        assert!(token.contains("--token (SYNC_SERVICE_TOKEN)"), "{token}");
        assert!(!token.contains("a b"), "{token}");
        let method = refused(&[
            "query",
            "--sync-service-url",
            "http://h:1",
            "--method",
            "nope",
        ]);
        assert!(method.contains("--method"), "{method}");
    }

    #[test]
    fn the_organization_and_watch_flags_refuse_bad_values() {
        let url = ["--sync-service-url", "http://h:1"];
        for (args, flag) in [
            (
                &["seed-organizations", "--organizations", "0"][..],
                "--organizations",
            ),
            (&["seed-organizations", "--sample", "x"], "--sample"),
            (&["watch", "--count", "0"], "--count"),
            (&["watch", "--idle", "50001"], "--idle"),
            (&["watch", "--quiet", "0"], "--quiet"),
            (&["watch", "--server-pids", "0"], "--server-pids"),
            (&["query", "--warm-up", "yes"], "yes"),
        ] {
            let mut argv = args.to_vec();
            argv.extend(url);
            let error = refused(&argv);
            assert!(error.contains(flag), "{args:?}: {error}");
        }
    }
}
