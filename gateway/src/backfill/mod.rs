//! `clerk-sync-gateway backfill`: fills the directory from Clerk's Backend
//! API and, with `--reconcile`, tombstones local users Clerk no longer lists.
//! Its settings are [`BackfillArgs`]; Clerk's API is spoken by [`clerk_api`];
//! the sync-service is reached through the server's [`SyncService`] channel.
//!
//! Every listed user goes through the webhook path: mapped by [`crate::clerk`]
//! exactly like a `user.updated` payload (an update for an unknown user
//! creates it) and applied through `UserSyncService` by [`Upstream`], under
//! the event id `backfill_<user id>_<updated_at>`. So a rerun is a string of
//! duplicates, last-write-wins keeps whatever newer a webhook brought, and a
//! running gateway and a backfill overlap safely.
//!
//! Users are listed by Clerk's `starting_after` cursor (the id of the last
//! user of the previous page, in `created_at` order): deep `offset`s slow
//! down and time out, and a cursor does not shift when users are deleted
//! behind it. A cursor user deleted during the listing may be refused by
//! Clerk (400, 404 or 422); the request is then asked again after the user
//! listed before it, up to [`MAX_STEP_BACK`] users back. Users already seen
//! are not applied twice. [`listing`] judges every page and the end of the
//! listing: bounded pages, new users in order on every page, and a length
//! that agrees with Clerk's count before and after; a listing that fails a
//! check stops with an error naming it, and nothing is tombstoned. Every
//! answer from Clerk is read up to a size bound, and the shutdown signal is
//! watched while a page is read and while it is applied.
//!
//! Reconcile runs only after a complete listing (from the start, judged
//! consistent), and only considers live local users whose `updated_at` is
//! older than the listing's start minus [`RECONCILE_MARGIN`] (clock skew): a
//! sign-up during the listing is not a deletion. If they are more than
//! `--max-tombstone-share` of the directory, the pass stops and reports
//! unless `--force` is given. Each is then asked for by id
//! (`GET /v1/users/{id}`): only a 404 tombstones it; a user Clerk still
//! returns is applied like a listed one (the listing missed it). A bad
//! listing can cost requests, never data.
//!
//! A user the sync-service refuses (its data, not the service) is named in
//! the summary with its gRPC code, counted as rejected and skipped; a
//! sync-service that is down or restarting (`UNAVAILABLE`, or `UNKNOWN` from
//! a broken connection) is retried.
//!
//! After the users, a pass copies Clerk's roles, organizations, memberships
//! and invitations ([`organizations`], judged by [`offset_listing`]), and
//! with `--reconcile` tombstones what Clerk lost of them after the users'
//! reconcile. An instance without organizations is reported, not an error.

pub mod clerk_api;
pub mod listing;
pub mod offset_listing;
pub mod organizations;
pub mod passes;

pub use organizations::{ObjectCounts, OrganizationsStatus, OrganizationsSummary, SkippedObject};

use std::{
    collections::HashMap,
    fmt,
    io::IsTerminal as _,
    time::{Duration, Instant},
};

use clap::{Args, Subcommand};
use clerk_sync_api::v1::{
    BatchGetUsersRequest, BeginPassRequest, EventMeta, ListUsersRequest, Outcome, PassCounts,
    PassStatus, User, UserDeleted,
    organization_directory_service_client::OrganizationDirectoryServiceClient,
    user_directory_service_client::UserDirectoryServiceClient,
};
use clerk_sync_common::{
    settings::{MAX_SETTING_SECS, SecretParser},
    time::{millis_from_timestamp, now_millis, timestamp_from_millis},
};
use futures::{StreamExt as _, stream};
use http::{StatusCode, Uri};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::value::RawValue;
use tonic::{Code, transport::Channel};

use crate::{
    Error,
    clerk::{ClerkEvent, ClerkUser, Envelope, UserEvent},
    limits::Limits,
    pipeline::{self, Carriage},
    sync_service::{SyncService, SyncServiceSettings},
    upstream::Upstream,
    verify::Delivery,
};
use clerk_api::{ClerkApi, ClerkApiError, OrgKind, SecretKey, backoff};
use listing::{Listing, ListingError};
use offset_listing::PagingError;
use passes::{Begun, Passes, Report};
use tokio::sync::watch;

/// Reconcile spares users changed this shortly before the listing started.
pub const RECONCILE_MARGIN: Duration = Duration::from_secs(300);
/// Users a refused cursor steps back, one at a time, before the run stops.
pub const MAX_STEP_BACK: usize = 20;
/// Rejected users the summary names (all are counted).
pub const NAMED_REJECTIONS: usize = 20;
/// Rejections logged one by one; later ones are counted only.
const LOGGED_REJECTIONS: u32 = 100;
/// A batch at least this large that the sync-service refuses whole is the
/// service's fault, not the users': the run stops.
const WHOLE_BATCH_REFUSED: usize = 10;
/// Ids per BatchGetUsers call (the API's maximum).
const BATCH_GET: usize = 100;
/// Shortest deadline of a directory call: a page of 1,000 users takes more
/// than one event.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(30);

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
        required = true,
        value_parser = SecretParser::new("--clerk-secret-key (CLERK_SECRET_KEY)", SecretKey::parse)
    )]
    pub clerk_secret_key: Option<SecretKey>,

    /// Base URL of Clerk's Backend API.
    #[arg(
        long = "clerk-api-url", value_name = "URL",
        env = "CLERK_API_URL",
        default_value = "https://api.clerk.com",
        value_parser = parse_clerk_api_url
    )]
    pub clerk_api_url: Uri,

    /// Also tombstone local users that Clerk no longer lists (only after a
    /// complete, consistent listing, only users whose last change is older
    /// than it, and only once Clerk answers 404 for each).
    #[arg(long, env = "BACKFILL_RECONCILE")]
    pub reconcile: bool,

    /// Report what would change; write nothing.
    #[arg(long, env = "BACKFILL_DRY_RUN")]
    pub dry_run: bool,

    /// Continue the listing after this user (the id an interrupted run
    /// printed). A listing that does not start at the first user is
    /// incomplete: no reconcile.
    #[arg(
        long,
        value_name = "USER_ID",
        env = "BACKFILL_RESUME_AFTER",
        value_parser = parse_resume_after
    )]
    pub resume_after: Option<String>,

    /// Gone: listing offsets were replaced by `--resume-after USER_ID`.
    #[arg(long, hide = true, value_name = "OFFSET", env = "BACKFILL_RESUME_FROM",
        value_parser = refuse_resume_from)]
    pub resume_from: Option<String>,

    /// Most users one reconcile pass may tombstone, in percent of the
    /// directory's live users; a pass over it stops unless `--force`.
    #[arg(
        long,
        value_name = "PERCENT",
        env = "BACKFILL_MAX_TOMBSTONE_SHARE",
        default_value = "5",
        value_parser = Share::parse
    )]
    pub max_tombstone_share: Share,

    /// Let reconcile tombstone more than `--max-tombstone-share` (each user
    /// is still confirmed gone by Clerk first).
    #[arg(long, env = "BACKFILL_FORCE")]
    pub force: bool,

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

    /// Run forever: a pass, then the next one after this interval (plus up
    /// to a tenth of it at random), e.g. `6h`. Passes from every scheduler,
    /// CronJob and person run one at a time.
    #[arg(long, value_name = "DURATION", env = "BACKFILL_EVERY",
        value_parser = parse_every,
        conflicts_with_all = ["dry_run", "resume_after", "users"])]
    pub every: Option<Duration>,

    /// Resync only these users (repeatable): fetch each from Clerk and
    /// apply it, or tombstone it when Clerk answers 404.
    #[arg(long = "user", value_name = "USER_ID", env = "BACKFILL_USERS",
        value_delimiter = ',', value_parser = parse_user_id,
        conflicts_with_all = ["reconcile", "resume_after"])]
    pub users: Vec<String>,

    /// How long a pass's lease on the sync-service lasts unless renewed
    /// (every third of it): a holder that dies blocks others this long.
    #[arg(long, value_name = "SECONDS", env = "BACKFILL_LEASE_SECS", default_value = "60",
        value_parser = parse_lease)]
    pub lease_secs: Duration,

    /// Who this pass says runs it (`backfill status` shows it); default
    /// host name and process id.
    #[arg(long, value_name = "NAME", env = "BACKFILL_HOLDER", value_parser = parse_holder)]
    pub holder: Option<String>,
}

/// `clerk-sync-gateway backfill [status]`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BackfillCommand {
    /// What else to do than a pass.
    #[command(subcommand)]
    pub action: Option<BackfillAction>,
    /// The pass's settings.
    #[command(flatten)]
    pub args: BackfillArgs,
}

/// `backfill` sub-commands.
#[derive(Debug, Clone, Subcommand)]
pub enum BackfillAction {
    /// List recent passes (newest first) with their status, cursor and
    /// counts, as the sync-service recorded them.
    Status {
        /// Most passes to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
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

fn parse_user_id(text: &str) -> Result<String, String> {
    let id = text.trim();
    if id.is_empty() {
        return Err("expected a Clerk user id (user_…)".to_owned());
    }
    if id.len() > 256 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("expected a Clerk user id: at most 256 bytes, no spaces".to_owned());
    }
    Ok(id.to_owned())
}

fn parse_resume_after(text: &str) -> Result<String, String> {
    parse_user_id(text)
}

fn parse_every(text: &str) -> Result<Duration, String> {
    let every = humantime::parse_duration(text.trim())
        .map_err(|e| format!("expected a duration such as 6h, 30m or 90s ({e})"))?;
    if every < Duration::from_secs(1) || every.as_secs() > MAX_SETTING_SECS {
        return Err("expected a duration from 1s to ten years".to_owned());
    }
    Ok(every)
}

fn parse_lease(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(secs @ 2..=3600) => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "expected whole seconds from 2 to 3600, got {text:?}"
        )),
    }
}

fn parse_holder(text: &str) -> Result<String, String> {
    let holder = text.trim();
    if holder.is_empty() || holder.len() > 256 || holder.chars().any(char::is_control) {
        return Err("expected a name of 1 to 256 bytes without control characters".to_owned());
    }
    Ok(holder.to_owned())
}

/// This process, as a pass names its holder: host name and process id.
fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host}:{}", std::process::id())
}

fn refuse_resume_from(_: &str) -> Result<String, String> {
    Err(
        "is gone: Clerk lists users by cursor now; pass --resume-after USER_ID \
         (BACKFILL_RESUME_AFTER), the id an interrupted run printed"
            .to_owned(),
    )
}

/// A share of the directory, in percent (0 to 100).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Share(f64);

impl Share {
    /// Reads `5`, `5%` or `0.5` (percent).
    pub fn parse(text: &str) -> Result<Self, String> {
        let number = text.trim().trim_end_matches('%').trim();
        match number.parse::<f64>() {
            Ok(percent) if (0.0..=100.0).contains(&percent) => Ok(Self(percent)),
            _ => Err(format!(
                "expected a percentage from 0 to 100 (e.g. 5 or 0.5%), got {text:?}"
            )),
        }
    }

    /// How many of `total` this share allows (rounded down).
    pub fn of(self, total: u64) -> u64 {
        (total as f64 * self.0 / 100.0).floor() as u64
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} %", self.0)
    }
}

/// Where a rerun picks up: after this user, or from the start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume(pub Option<String>);

impl fmt::Display for Resume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(user_id) => write!(f, "rerun with --resume-after {user_id} to continue"),
            None => f.write_str("rerun to start over"),
        }
    }
}

/// Why a backfill stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// Talking to Clerk failed for good.
    #[error("{source}; {resume}")]
    Clerk {
        /// What failed.
        source: ClerkApiError,
        /// Where a rerun picks up.
        resume: Resume,
    },
    /// Clerk refused the key: nothing to resume.
    #[error(transparent)]
    Unauthorized(ClerkApiError),
    /// Clerk's listing cannot be trusted: nothing was tombstoned.
    #[error("{source}; nothing was tombstoned; {resume}")]
    Listing {
        /// What is wrong with it.
        source: ListingError,
        /// Where a rerun picks up.
        resume: Resume,
    },
    /// Clerk's listing of organization objects cannot be trusted: nothing
    /// was tombstoned.
    #[error("{source}; nothing was tombstoned; {resume}")]
    OrganizationListing {
        /// What is wrong with it.
        source: PagingError,
        /// Where a rerun picks up.
        resume: Resume,
    },
    /// The sync-service failed for good.
    #[error("sync-service: {}; {resume}", crate::error::chain(source))]
    SyncService {
        /// What failed.
        source: Error,
        /// Where a rerun picks up.
        resume: Resume,
    },
    /// Reconcile could not finish (the backfill itself did).
    #[error("reconcile stopped: {0}; rerun to finish it")]
    Reconcile(Error),
    /// Reconcile could not ask Clerk about a user (the backfill itself did).
    #[error("reconcile stopped: {0}; rerun to finish it")]
    ReconcileClerk(ClerkApiError),
    /// Reconcile would tombstone more of the directory than allowed.
    #[error(
        "reconcile would tombstone {candidates} of the directory's {live} users, more than \
         --max-tombstone-share ({share}) allows; nothing was tombstoned. Check that the key is \
         the directory's instance and what Clerk lists, then rerun with --force if they are \
         really gone"
    )]
    TooManyTombstones {
        /// Local users the listing lacks.
        candidates: u64,
        /// Live users in the directory.
        live: u64,
        /// The allowed share.
        share: Share,
    },
    /// Reconcile would tombstone more of one kind of organization object
    /// than allowed.
    #[error(
        "reconcile would tombstone {candidates} of the directory's {live} {kind}, more than \
         --max-tombstone-share ({share}) allows; nothing of them was tombstoned. Check that the \
         key is the directory's instance and what Clerk lists, then rerun with --force if they \
         are really gone"
    )]
    TooManyOrganizationTombstones {
        /// Organizations, memberships or roles.
        kind: OrgKind,
        /// Local objects the listing lacks.
        candidates: u64,
        /// Live objects of the kind in the directory.
        live: u64,
        /// The allowed share.
        share: Share,
    },
    /// `--user`: Clerk could not be asked about a user.
    #[error("cannot fetch {user_id:?} from Clerk: {source}")]
    Resync {
        /// The user.
        user_id: String,
        /// What failed.
        source: ClerkApiError,
    },
    /// The pass's lease expired unrenewed and another pass took it: this
    /// one stopped, and the other continues after its cursor.
    #[error(
        "pass {pass} lost its lease to another pass (the sync-service was out of reach for \
         longer than the lease); it stopped and the other pass continues after its cursor"
    )]
    LeaseLost {
        /// The pass that stopped.
        pass: u64,
    },
    /// Stopped by a signal.
    #[error("interrupted; {resume}")]
    Interrupted {
        /// Where a rerun picks up.
        resume: Resume,
    },
    /// Settings that cannot work together, or a client that cannot be built.
    #[error("{0}")]
    Setup(String),
}

/// A listed user that was not applied, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The user's id.
    pub user_id: String,
    /// Why: the sync-service's gRPC code, or what is unusable.
    pub why: String,
}

/// What a run did (or, with `--dry-run`, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Users Clerk listed (each once, however often re-read).
    pub fetched: u64,
    /// Users written (dry run: that would be written: new or newer).
    pub applied: u64,
    /// Of `applied`: users the directory did not have (lost webhooks, or a
    /// first fill).
    pub repaired_missed: u64,
    /// Of `applied`: users the directory held an older copy of.
    pub repaired_stale: u64,
    /// Users the directory already held at this version (a rerun).
    pub unchanged: u64,
    /// Users the directory holds a newer version of (a webhook won).
    pub stale: u64,
    /// Of `stale`: users deleted locally (deletes are final).
    pub deleted_locally: u64,
    /// Listed users refused as unusable (no id or updated_at; refused by
    /// the sync-service), skipped.
    pub rejected: u64,
    /// The first [`NAMED_REJECTIONS`] of `rejected`, by id.
    pub rejections: Vec<Rejection>,
    /// Local users tombstoned by reconcile (dry run: that would be), each
    /// confirmed gone by Clerk.
    pub tombstoned: u64,
    /// Local users the listing lacked but Clerk still returned by id:
    /// applied instead of tombstoned.
    pub missed_by_listing: u64,
    /// Users the sync-service quarantined. The sync-service has no quarantine
    /// outcome yet, so this stays 0 until it reports one.
    pub quarantined: u64,
    /// Whether the listing ran from the first user to its end and agreed
    /// with Clerk's count.
    pub complete: bool,
    /// Organizations, memberships, invitations and roles.
    pub organizations: OrganizationsSummary,
}

impl Summary {
    /// The counts a recorded pass reports.
    pub fn counts(&self) -> PassCounts {
        PassCounts {
            fetched: self.fetched,
            applied: self.applied,
            unchanged: self.unchanged,
            stale: self.stale,
            tombstoned: self.tombstoned,
            rejected: self.rejected,
            quarantined: self.quarantined,
            repaired_missed: self.repaired_missed,
            repaired_stale: self.repaired_stale,
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (applied, tombstoned) = if self.dry_run {
            ("would apply", "would tombstone")
        } else {
            ("applied", "tombstoned")
        };
        write!(
            f,
            "{}fetched {}, {applied} {} ({} missing, {} older locally), unchanged {}, stale {} \
             ({} deleted locally), rejected {}, {tombstoned} {}, quarantined {}",
            if self.dry_run {
                "dry run (nothing written): "
            } else {
                ""
            },
            self.fetched,
            self.applied,
            self.repaired_missed,
            self.repaired_stale,
            self.unchanged,
            self.stale,
            self.deleted_locally,
            self.rejected,
            self.tombstoned,
            self.quarantined,
        )?;
        if self.missed_by_listing > 0 {
            write!(
                f,
                "; {} users the listing missed were still in Clerk (not tombstoned)",
                self.missed_by_listing
            )?;
        }
        if !self.rejections.is_empty() {
            let named: Vec<String> = self
                .rejections
                .iter()
                .map(|r| format!("{:?} ({})", r.user_id, r.why))
                .collect();
            write!(f, "; rejected users: {}", named.join(", "))?;
            let more = self.rejected.saturating_sub(self.rejections.len() as u64);
            if more > 0 {
                write!(f, " and {more} more (see the log)")?;
            }
        }
        self.organizations.write(f, self.dry_run)
    }
}

/// The shutdown future a run watches.
type Shutdown<'a, F> = std::pin::Pin<&'a mut F>;

/// Runs `command`: a pass (once, or with `--every` forever), a resync of
/// `--user`s, or `status`; writes the summary or the passes to `out`.
pub async fn command(
    settings: &SyncServiceSettings,
    command: &BackfillCommand,
    shutdown: impl Future<Output = ()>,
    out: &mut (dyn std::io::Write + Send),
) -> Result<(), BackfillError> {
    let written = match &command.action {
        Some(BackfillAction::Status { limit }) => status(settings, *limit).await?,
        None if command.args.every.is_some() => {
            schedule(settings, &command.args, shutdown).await?;
            String::new()
        }
        None => format!(
            "backfill done: {}\n",
            run(settings, &command.args, shutdown).await?
        ),
    };
    out.write_all(written.as_bytes())
        .map_err(|e| BackfillError::Setup(format!("cannot write the report: {e}")))
}

/// The newest `limit` passes the sync-service recorded, one line each.
pub async fn status(settings: &SyncServiceSettings, limit: u32) -> Result<String, BackfillError> {
    let service = SyncService::new(settings).map_err(|e| BackfillError::Setup(e.to_string()))?;
    // Listing takes no lease; two retries ride out a restarting service.
    let passes = Passes::new(&service, Duration::from_secs(60), 2)
        .list(limit as i32)
        .await
        .map_err(|source| BackfillError::SyncService {
            source,
            resume: Resume::default(),
        })?;
    Ok(passes::render(&passes))
}

/// Runs a pass, then the next one every `--every` (plus up to a tenth of it
/// at random, so schedulers started together drift apart), until `shutdown`
/// completes. A failed pass is recorded and logged; the schedule goes on.
pub async fn schedule(
    settings: &SyncServiceSettings,
    args: &BackfillArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BackfillError> {
    let every = args
        .every
        .ok_or_else(|| BackfillError::Setup("--every is required to schedule".to_owned()))?;
    tokio::pin!(shutdown);
    loop {
        match recorded_pass(settings, args, true, &mut shutdown).await {
            Ok(Some(summary)) => tracing::info!(%summary, "backfill pass complete"),
            Ok(None) => {}
            Err(BackfillError::Interrupted { .. }) => return Ok(()),
            Err(error @ BackfillError::Setup(_)) => return Err(error),
            Err(error) => tracing::error!(%error, "backfill pass failed"),
        }
        let wait = every + every.mul_f64(jitter() / 10.0);
        tracing::info!(next_pass_in_secs = wait.as_secs(), "backfill scheduled");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.as_mut() => return Ok(()),
        }
    }
}

/// A random fraction in [0, 1).
fn jitter() -> f64 {
    (getrandom::u64().unwrap_or(0) >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs one backfill pass (or, with `--user`, resyncs those users) against
/// the sync-service `settings` name, stopping (with where to resume) when
/// `shutdown` completes. A pass that writes takes the sync-service's lease
/// first, waiting while another pass runs, and is recorded there.
pub async fn run(
    settings: &SyncServiceSettings,
    args: &BackfillArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, BackfillError> {
    tokio::pin!(shutdown);
    if !args.users.is_empty() {
        let mut run = Backfill::new(settings, args)?;
        run.resync(&args.users, &mut shutdown).await?;
        return Ok(run.summary);
    }
    if args.dry_run {
        // Writes nothing, so it neither waits for nor blocks a pass.
        let mut run = Backfill::new(settings, args)?;
        run.pass(args.resume_after.clone(), args.reconcile, &mut shutdown)
            .await?;
        return Ok(run.summary);
    }
    match recorded_pass(settings, args, false, &mut shutdown).await? {
        Some(summary) => Ok(summary),
        None => unreachable!("only a scheduled pass gives way to another"),
    }
}

/// A pass under the sync-service's lease, recorded there: it starts where
/// an abandoned predecessor stopped (unless `--resume-after` says), reports
/// its cursor and counts with every renewal, and records how it ended.
/// `None` when, `scheduled`, it waited for another holder's pass that then
/// completed from the first user: this round is done.
async fn recorded_pass<F: Future<Output = ()>>(
    settings: &SyncServiceSettings,
    args: &BackfillArgs,
    scheduled: bool,
    shutdown: &mut Shutdown<'_, F>,
) -> Result<Option<Summary>, BackfillError> {
    let mut run = Backfill::new(settings, args)?;
    let passes = Passes::new(&run.service, args.lease_secs, args.max_retries);
    let request = BeginPassRequest {
        holder: args.holder.clone().unwrap_or_else(default_holder),
        lease: None,
        reconcile: args.reconcile,
        every: args.every.and_then(|every| every.try_into().ok()),
        resume_after: args.resume_after.clone().unwrap_or_default(),
    };
    let began = passes
        .begin(request, scheduled, shutdown)
        .await
        .map_err(|source| BackfillError::SyncService {
            source,
            resume: Resume(args.resume_after.clone()),
        })?;
    let pass = match began {
        None => {
            return Err(BackfillError::Interrupted {
                resume: Resume(args.resume_after.clone()),
            });
        }
        Some(Begun::CoveredBy(pass)) => {
            tracing::info!(
                pass = pass.id,
                holder = pass.holder,
                "another holder's pass completed while this one waited; this round is done"
            );
            return Ok(None);
        }
        Some(Begun::Granted(pass)) => pass,
    };
    let resume_after = Some(pass.resumed_after.clone()).filter(|after| !after.is_empty());
    let reconcile = args.reconcile && resume_after.is_none();
    if args.reconcile && !reconcile {
        tracing::info!(
            pass = pass.id,
            resumed_after = resume_after.as_deref(),
            "continuing an abandoned pass's listing: reconcile waits for a pass from the first user"
        );
    }
    let (report, latest) = watch::channel(Report {
        cursor: resume_after.clone(),
        counts: PassCounts::default(),
    });
    run.report = Some(report);
    let lease = passes.keep(pass, latest);
    let pass_id = lease.pass.id;
    let result = {
        let stop = async {
            tokio::select! {
                () = shutdown.as_mut() => {}
                () = lease.lost() => {}
            }
        };
        tokio::pin!(stop);
        run.pass(resume_after, reconcile, &mut stop).await
    };
    let lost = lease.is_lost();
    let (status, error) = match &result {
        Ok(()) => (PassStatus::Complete, None),
        Err(BackfillError::Interrupted { .. }) if lost => (
            PassStatus::Abandoned,
            Some("its lease was lost to another pass".to_owned()),
        ),
        Err(BackfillError::Interrupted { .. }) => {
            (PassStatus::Abandoned, Some("interrupted".to_owned()))
        }
        Err(error) => (PassStatus::Failed, Some(error.to_string())),
    };
    match passes.end(lease, status, error).await {
        Ok(pass) => tracing::info!(pass = pass.id, status = ?status, "backfill pass recorded"),
        Err(error) => tracing::warn!(
            pass = pass_id,
            %error,
            "cannot record how the pass ended; once its lease expires the next pass records it \
             abandoned"
        ),
    }
    match result {
        Err(BackfillError::Interrupted { .. }) if lost => {
            Err(BackfillError::LeaseLost { pass: pass_id })
        }
        result => result.map(|()| Some(run.summary)),
    }
}

/// The state of one run.
struct Backfill {
    api: ClerkApi,
    upstream: Upstream,
    /// The sync-service, with the directory's longer deadline.
    service: SyncService,
    /// Reads the directory for reconcile and dry runs.
    directory: UserDirectoryServiceClient<Channel>,
    /// Reads the directory's organizations, memberships, invitations and
    /// roles.
    organization_directory: OrganizationDirectoryServiceClient<Channel>,
    args: BackfillArgs,
    /// What the sync-service takes: every user is readied as a webhook is.
    carriage: Carriage,
    /// Rejections still logged one by one (a bad page must not flood logs).
    logs_left: u32,
    summary: Summary,
    /// The last user listed and applied.
    cursor: Option<String>,
    /// Where a recorded pass reports its progress.
    report: Option<watch::Sender<Report>>,
}

/// A listed user, mapped for the sync-service.
struct Mapped {
    user_id: String,
    updated_at: i64,
    event_id: String,
    event: UserEvent,
}

impl Backfill {
    fn new(settings: &SyncServiceSettings, args: &BackfillArgs) -> Result<Self, BackfillError> {
        if args.reconcile && args.resume_after.is_some() {
            return Err(BackfillError::Setup(
                "--reconcile needs a complete listing; --resume-after skips its start".to_owned(),
            ));
        }
        let key = args.clerk_secret_key.as_ref().ok_or_else(|| {
            BackfillError::Setup("--clerk-secret-key (CLERK_SECRET_KEY) is required".to_owned())
        })?;
        let api = ClerkApi::new(&args.clerk_api_url, key, args.max_retries)
            .map_err(|e| BackfillError::Setup(e.to_string()))?;
        let service =
            SyncService::new(settings).map_err(|e| BackfillError::Setup(e.to_string()))?;
        let upstream = Upstream::new(&service);
        let service = service.with_timeout(service.timeout().max(DIRECTORY_TIMEOUT));
        Ok(Self {
            api,
            upstream,
            directory: service.directory_client(),
            organization_directory: OrganizationDirectoryServiceClient::new(service.channel()),
            service,
            args: args.clone(),
            // The sync-service's default message limit: a backfill has no
            // --max-message-bytes of its own, and a user over the real one is
            // refused by name like any other.
            carriage: Carriage {
                max_message_bytes: Limits::DEFAULT_MAX_MESSAGE_BYTES,
                private_metadata: settings.private_metadata,
            },
            logs_left: LOGGED_REJECTIONS,
            summary: Summary {
                dry_run: args.dry_run,
                ..Summary::default()
            },
            cursor: None,
            report: None,
        })
    }

    /// Lists Clerk's users after `resume_after` (from the first without)
    /// and applies them, then the organization objects; with `reconcile`,
    /// then tombstones what Clerk lost of both.
    async fn pass<F: Future<Output = ()>>(
        &mut self,
        resume_after: Option<String>,
        reconcile: bool,
        shutdown: &mut Shutdown<'_, F>,
    ) -> Result<(), BackfillError> {
        let started_at = now_millis();
        // Judging the listing needs the count; progress only wants it.
        let judged = resume_after.is_none();
        let count_before = self.count(judged && reconcile).await?;
        let mut listing = Listing::new(self.args.page_size, count_before);
        let progress = Progress::new(count_before);
        self.cursor = resume_after;
        self.list_and_apply(&mut listing, &progress, shutdown)
            .await?;
        progress.finish();
        if judged && count_before.is_some() {
            let resume = Resume(listing.cursor(0).map(str::to_owned));
            if let Some(count_after) = self.count(reconcile).await? {
                listing
                    .check_complete(count_after)
                    .map_err(|source| BackfillError::Listing { source, resume })?;
                self.summary.complete = true;
            }
        }
        let organizations = self.copy_organizations(shutdown).await?;
        if reconcile {
            self.reconcile(
                &listing,
                started_at - RECONCILE_MARGIN.as_millis() as i64,
                shutdown,
            )
            .await?;
            if let Some(organizations) = &organizations {
                self.reconcile_organizations(organizations, shutdown)
                    .await?;
            }
        }
        Ok(())
    }

    /// Sends the cursor and counts to the pass's lease renewals.
    fn report(&self) {
        if let Some(report) = &self.report {
            report.send_replace(Report {
                cursor: self.cursor.clone(),
                counts: self.summary.counts(),
            });
        }
    }

    /// Clerk's user count: required (an error when Clerk does not answer),
    /// or only wanted (`None` then).
    async fn count(&self, required: bool) -> Result<Option<u64>, BackfillError> {
        match self.api.count_users().await {
            Ok(total) => Ok(Some(total)),
            Err(error @ ClerkApiError::Unauthorized(_)) => Err(BackfillError::Unauthorized(error)),
            Err(source) if required => Err(BackfillError::Clerk {
                source,
                resume: Resume::default(),
            }),
            Err(error) => {
                tracing::warn!(%error, "cannot count Clerk's users; the listing is not judged complete");
                Ok(None)
            }
        }
    }

    /// Pages through Clerk's users by cursor and applies the new ones.
    async fn list_and_apply<F: Future<Output = ()>>(
        &mut self,
        listing: &mut Listing,
        progress: &Progress,
        shutdown: &mut Shutdown<'_, F>,
    ) -> Result<(), BackfillError> {
        let limit = self.args.page_size;
        let mut after = self.cursor.clone();
        // How far a refused cursor stepped back from the last listed user.
        let mut back = 0;
        loop {
            let resume = Resume(after.clone());
            let body = tokio::select! {
                body = self.api.list_users(after.as_deref(), limit) => body,
                () = shutdown.as_mut() => return Err(BackfillError::Interrupted { resume }),
            };
            let body = match body {
                Ok(body) => body,
                Err(source @ ClerkApiError::Unauthorized(_)) => {
                    return Err(BackfillError::Unauthorized(source));
                }
                Err(ClerkApiError::Status { status, .. })
                    if cursor_refused(status)
                        && back < MAX_STEP_BACK
                        && listing.cursor(back + 1).is_some() =>
                {
                    back += 1;
                    after = listing.cursor(back).map(str::to_owned);
                    tracing::info!(
                        %status,
                        starting_after = after.as_deref(),
                        "Clerk refused the cursor (its user may be deleted); asking after an earlier user"
                    );
                    continue;
                }
                Err(source) => return Err(BackfillError::Clerk { source, resume }),
            };
            let to_listing_error = |source| BackfillError::Listing {
                source,
                resume: resume.clone(),
            };
            let page = listing::parse_page(&body, limit).map_err(to_listing_error)?;
            let users = listing
                .accept(&page, after.as_deref())
                .map_err(to_listing_error)?;
            back = 0;
            self.summary.fetched += users.fresh.len() as u64 + users.without_id;
            if users.without_id > 0 {
                self.summary.rejected += users.without_id;
                tracing::warn!(
                    users = users.without_id,
                    starting_after = after.as_deref(),
                    "Clerk listed users without an id; skipped"
                );
            }
            let mut fresh = Vec::with_capacity(users.fresh.len());
            for raw in users.fresh {
                match map_user(raw, self.carriage) {
                    Ok(mapped) => fresh.push(mapped),
                    Err(error) => {
                        let user_id = listing::user_id(raw).unwrap_or_default();
                        self.reject(&user_id, format!("unusable: {error}"), "");
                    }
                }
            }
            let applied = async {
                if self.args.dry_run {
                    self.classify(fresh, &resume).await
                } else {
                    self.apply(fresh, &resume).await
                }
            };
            tokio::select! {
                result = applied => result?,
                () = shutdown.as_mut() => return Err(BackfillError::Interrupted { resume }),
            }
            progress.page(self.summary.fetched, listing.cursor(0));
            if let Some(last) = listing.cursor(0) {
                self.cursor = Some(last.to_owned());
            }
            self.report();
            if page.len() < limit as usize {
                return Ok(());
            }
            after = listing.cursor(0).map(str::to_owned);
        }
    }

    /// Counts a user that is skipped, names it with `why` in the summary
    /// (the first few) and logs it with `detail` (the first many).
    fn reject(&mut self, user_id: &str, why: String, detail: &str) {
        self.summary.rejected += 1;
        if self.logs_left > 0 {
            self.logs_left -= 1;
            tracing::warn!(user_id, why, detail, "user skipped");
            if self.logs_left == 0 {
                tracing::warn!("further skipped users are counted, not logged");
            }
        }
        if self.summary.rejections.len() < NAMED_REJECTIONS {
            self.summary.rejections.push(Rejection {
                user_id: user_id.to_owned(),
                why,
            });
        }
    }

    /// Applies `users` through the sync-service, a few at a time.
    async fn apply(&mut self, users: Vec<Mapped>, resume: &Resume) -> Result<(), BackfillError> {
        let batch = users.len();
        // What the directory held before, to tell a repair from a rerun.
        let local = self
            .local_versions(users.iter().map(|u| u.user_id.as_str()), resume)
            .await?;
        // A handle of its own: the outcomes are counted into `self` meanwhile.
        let upstream = self.upstream.clone();
        let upstream = &upstream;
        let max_retries = self.args.max_retries;
        let mut outcomes = stream::iter(users)
            .map(|user| async move {
                let outcome =
                    forward_retrying(upstream, user.event, &user.event_id, max_retries).await;
                (user.user_id, outcome)
            })
            .buffer_unordered(self.args.concurrency as usize);
        let mut refused = 0;
        while let Some((user_id, outcome)) = outcomes.next().await {
            match outcome {
                Ok(outcome) => self.count_outcome(outcome, local.contains_key(&user_id)),
                Err(Error::Upstream(status)) if refused_for_the_user(status.code()) => {
                    refused += 1;
                    if refused == batch && batch >= WHOLE_BATCH_REFUSED {
                        // Not this user: every user of the batch.
                        return Err(BackfillError::SyncService {
                            source: Error::Upstream(status),
                            resume: resume.clone(),
                        });
                    }
                    self.reject(&user_id, refusal(&status), status.message());
                }
                Err(source) => {
                    return Err(BackfillError::SyncService {
                        source,
                        resume: resume.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Counts what applying a user did; `held`: whether the directory had
    /// it before.
    fn count_outcome(&mut self, outcome: Outcome, held: bool) {
        match outcome {
            Outcome::Applied => self.count_repair(held),
            Outcome::Duplicate => self.summary.unchanged += 1,
            Outcome::Stale => self.summary.stale += 1,
            Outcome::UserDeleted | Outcome::Deleted => {
                self.summary.stale += 1;
                self.summary.deleted_locally += 1;
            }
            Outcome::Unspecified => unreachable!("Upstream refuses unknown outcomes"),
        }
    }

    /// Dry run: compares `users` with the directory instead of applying.
    async fn classify(&mut self, users: Vec<Mapped>, resume: &Resume) -> Result<(), BackfillError> {
        let local = self
            .local_versions(users.iter().map(|u| u.user_id.as_str()), resume)
            .await?;
        for user in users {
            match local.get(&user.user_id) {
                Some(&stored) if stored == user.updated_at => self.summary.unchanged += 1,
                Some(&stored) if stored > user.updated_at => self.summary.stale += 1,
                stored => self.count_repair(stored.is_some()),
            }
        }
        Ok(())
    }

    /// Counts a user written (or, dry run, to be written) over an older
    /// local copy (`held`) or none.
    fn count_repair(&mut self, held: bool) {
        self.summary.applied += 1;
        if held {
            self.summary.repaired_stale += 1;
        } else {
            self.summary.repaired_missed += 1;
        }
    }

    /// The `updated_at` (Unix ms) of each of `users` the directory holds
    /// live.
    async fn local_versions<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
        resume: &Resume,
    ) -> Result<HashMap<String, i64>, BackfillError> {
        let ids: Vec<String> = ids.into_iter().map(str::to_owned).collect();
        let mut versions = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_GET) {
            let users = match self.batch_get(chunk.to_vec()).await {
                // An id the directory cannot hold (too long, say) refuses
                // the whole batch: ask one by one, and such ids are absent.
                Err(Error::Upstream(status)) if status.code() == Code::InvalidArgument => {
                    let mut users = Vec::new();
                    for id in chunk {
                        match self.batch_get(vec![id.clone()]).await {
                            Ok(found) => users.extend(found),
                            Err(Error::Upstream(status))
                                if status.code() == Code::InvalidArgument => {}
                            Err(source) => return Err(self.sync_service_error(source, resume)),
                        }
                    }
                    users
                }
                Err(source) => return Err(self.sync_service_error(source, resume)),
                Ok(users) => users,
            };
            versions.extend(users.into_iter().filter_map(|user| {
                let stored = user.updated_at.as_ref().and_then(millis_from_timestamp)?;
                Some((user.id, stored))
            }));
        }
        Ok(versions)
    }

    async fn batch_get(&self, ids: Vec<String>) -> Result<Vec<User>, Error> {
        retrying(self.args.max_retries, || async {
            let request = self
                .service
                .request(BatchGetUsersRequest { ids: ids.clone() });
            let mut directory = self.directory.clone();
            let call = directory.batch_get_users(request);
            Ok(self.service.deadline(call, Error::Upstream).await?.users)
        })
        .await
    }

    fn sync_service_error(&self, source: Error, resume: &Resume) -> BackfillError {
        BackfillError::SyncService {
            source,
            resume: resume.clone(),
        }
    }

    /// The directory's live users and, of them, those `listing` lacks whose
    /// last change is older than `cutoff` (Unix ms).
    async fn directory_gap(
        &mut self,
        listing: &Listing,
        cutoff: i64,
    ) -> Result<(u64, Vec<String>), BackfillError> {
        let (mut live, mut missing) = (0, Vec::new());
        let mut page_token = String::new();
        loop {
            let page = retrying(self.args.max_retries, || async {
                let request = self.service.request(ListUsersRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                    ..ListUsersRequest::default()
                });
                let mut directory = self.directory.clone();
                let call = directory.list_users(request);
                self.service.deadline(call, Error::Upstream).await
            })
            .await
            .map_err(BackfillError::Reconcile)?;
            live += page.users.len() as u64;
            missing.extend(
                page.users
                    .into_iter()
                    .filter(|user| !listing.contains(&user.id))
                    .filter(|user| {
                        user.updated_at
                            .as_ref()
                            .and_then(millis_from_timestamp)
                            .unwrap_or(0)
                            < cutoff
                    })
                    .map(|user| user.id),
            );
            if page.next_page_token.is_empty() {
                return Ok((live, missing));
            }
            page_token = page.next_page_token;
        }
    }

    /// Tombstones the live local users the complete `listing` lacked, whose
    /// last change is older than `cutoff` (Unix ms), and that Clerk answers
    /// 404 for; applies those it still returns.
    async fn reconcile<F: Future<Output = ()>>(
        &mut self,
        listing: &Listing,
        cutoff: i64,
        shutdown: &mut Shutdown<'_, F>,
    ) -> Result<(), BackfillError> {
        if !self.summary.complete {
            tracing::warn!("the listing could not be judged complete: reconcile skipped");
            return Ok(());
        }
        let (live, missing) = self.directory_gap(listing, cutoff).await?;
        tracing::info!(
            users = missing.len(),
            live,
            "local users Clerk did not list (changed before the listing started)"
        );
        let share = self.args.max_tombstone_share;
        if missing.len() as u64 > share.of(live) && !self.args.force {
            return Err(BackfillError::TooManyTombstones {
                candidates: missing.len() as u64,
                live,
                share,
            });
        }
        let deleted_at = timestamp_from_millis(cutoff + RECONCILE_MARGIN.as_millis() as i64);
        for user_id in missing {
            let answer = tokio::select! {
                answer = self.api.get_user(&user_id) => answer,
                () = shutdown.as_mut() => {
                    return Err(BackfillError::Interrupted { resume: Resume::default() });
                }
            };
            match answer {
                Ok(None) => self.tombstone(user_id, deleted_at).await?,
                Ok(Some(body)) => {
                    self.summary.missed_by_listing += 1;
                    tracing::warn!(
                        user_id,
                        "Clerk still has a user its listing lacked: applied, not tombstoned"
                    );
                    self.apply_fetched(&user_id, &body).await?;
                }
                Err(error @ ClerkApiError::Unauthorized(_)) => {
                    return Err(BackfillError::Unauthorized(error));
                }
                Err(error) => return Err(BackfillError::ReconcileClerk(error)),
            }
            self.report();
        }
        Ok(())
    }

    /// `--user`: fetches each of `users` from Clerk and applies it, or
    /// tombstones it when Clerk answers 404 and the directory holds it.
    async fn resync<F: Future<Output = ()>>(
        &mut self,
        users: &[String],
        shutdown: &mut Shutdown<'_, F>,
    ) -> Result<(), BackfillError> {
        for user_id in users {
            let answer = tokio::select! {
                answer = self.api.get_user(user_id) => answer,
                () = shutdown.as_mut() => {
                    return Err(BackfillError::Interrupted { resume: Resume::default() });
                }
            };
            match answer {
                Ok(Some(body)) => {
                    self.summary.fetched += 1;
                    self.apply_fetched(user_id, &body).await?;
                }
                Ok(None) => {
                    let held = self
                        .local_versions([user_id.as_str()], &Resume::default())
                        .await?;
                    if held.is_empty() {
                        self.reject(
                            user_id,
                            "neither Clerk nor the directory has it".to_owned(),
                            "",
                        );
                    } else {
                        self.tombstone(user_id.clone(), timestamp_from_millis(now_millis()))
                            .await?;
                    }
                }
                Err(error @ ClerkApiError::Unauthorized(_)) => {
                    return Err(BackfillError::Unauthorized(error));
                }
                Err(source) => {
                    return Err(BackfillError::Resync {
                        user_id: user_id.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Tombstones `user_id`, which Clerk answered 404 for.
    async fn tombstone(
        &mut self,
        user_id: String,
        deleted_at: prost_types::Timestamp,
    ) -> Result<(), BackfillError> {
        if self.args.dry_run {
            self.summary.tombstoned += 1;
            return Ok(());
        }
        let event_id = format!("reconcile_{user_id}");
        let event = UserEvent::Deleted(UserDeleted {
            meta: Some(EventMeta {
                event_id: event_id.clone(),
                occurred_at: Some(deleted_at),
            }),
            user_id: user_id.clone(),
        });
        match forward_retrying(&self.upstream, event, &event_id, self.args.max_retries).await {
            Ok(Outcome::Applied) => {
                self.summary.tombstoned += 1;
                tracing::info!(user_id, "tombstoned: Clerk has no such user (404)");
            }
            Ok(_) => {}
            Err(Error::Upstream(status)) if refused_for_the_user(status.code()) => {
                self.reject(&user_id, refusal(&status), status.message());
            }
            Err(error) => return Err(BackfillError::Reconcile(error)),
        }
        Ok(())
    }

    /// Applies a user Clerk returned by id (`body`).
    async fn apply_fetched(&mut self, user_id: &str, body: &[u8]) -> Result<(), BackfillError> {
        let mapped = serde_json::from_slice::<&RawValue>(body)
            .map_err(Error::InvalidJson)
            .and_then(|raw| map_user(raw, self.carriage))
            .and_then(|mapped| {
                if mapped.user_id == user_id {
                    Ok(mapped)
                } else {
                    Err(Error::Unmappable(
                        "Clerk answered with another user's id".to_owned(),
                    ))
                }
            });
        match mapped {
            Ok(mapped) if self.args.dry_run => {
                self.classify(vec![mapped], &Resume::default()).await
            }
            Ok(mapped) => self.apply(vec![mapped], &Resume::default()).await,
            Err(error) => {
                self.reject(user_id, format!("unusable: {error}"), "");
                Ok(())
            }
        }
    }
}

/// Whether Clerk's `status` to a cursored list request may mean the cursor's
/// user is gone (Clerk documents 400 and 422 for bad parameters).
fn cursor_refused(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::UNPROCESSABLE_ENTITY
    )
}

/// How a refusal is named in the summary.
fn refusal(status: &tonic::Status) -> String {
    format!("sync-service: {:?}", status.code())
}

/// Whether a gRPC `code` refuses one user's data rather than the call: the
/// user is skipped, later users still go through.
fn refused_for_the_user(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::AlreadyExists
            | Code::NotFound
            | Code::Internal
            | Code::DataLoss
    )
}

/// Forwards one event, retrying while the sync-service is unavailable.
async fn forward_retrying(
    upstream: &Upstream,
    event: UserEvent,
    event_id: &str,
    max_retries: u32,
) -> Result<Outcome, Error> {
    retrying(max_retries, || upstream.forward(event.clone(), event_id)).await
}

/// Runs the sync-service `call` again while it fails in a way the service
/// may recover from ([`retryable`]), up to `max_retries` times, waiting
/// twice as long each time from 250 ms.
async fn retrying<T, F: Future<Output = Result<T, Error>>>(
    max_retries: u32,
    mut call: impl FnMut() -> F,
) -> Result<T, Error> {
    let mut attempt = 0;
    loop {
        match call().await {
            Err(error) if attempt < max_retries && retryable(&error) => {
                attempt += 1;
                tracing::warn!(%error, attempt, "sync-service call failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
            result => return result,
        }
    }
}

/// Whether a failed call may succeed later. A sync-service restarting
/// mid-call breaks the connection, which the transport reports as
/// `UNKNOWN` ("transport error", "connection reset") or `CANCELLED`.
fn retryable(error: &Error) -> bool {
    match error {
        Error::UpstreamTimeout => true,
        Error::Upstream(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Cancelled
                | Code::Unknown
        ),
        _ => false,
    }
}

/// Maps a listed user like the `data` of a `user.updated` webhook, readied
/// for the sync-service by the webhooks' own step ([`pipeline::prepare`]).
fn map_user(raw: &RawValue, carriage: Carriage) -> Result<Mapped, Error> {
    let user: ClerkUser<'_> = serde_json::from_str(raw.get()).map_err(Error::InvalidJson)?;
    let user_id = user
        .id
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .ok_or(Error::MissingField("id"))?;
    let updated_at = user.updated_at.ok_or(Error::MissingField("updated_at"))?;
    let event_id = format!("backfill_{user_id}_{updated_at}");
    let delivery = Delivery {
        id: &event_id,
        timestamp: updated_at.div_euclid(1000),
    };
    let event = ClerkEvent::UserUpdated(Envelope {
        timestamp_ms: Some(updated_at),
        data: user,
    });
    let event = UserEvent::from_clerk(event, &delivery)?.ok_or(Error::MissingField("id"))?;
    let event = pipeline::prepare(event, carriage)?;
    Ok(Mapped {
        user_id,
        updated_at,
        event_id,
        event,
    })
}

/// A progress bar on a terminal; log lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Progress {
    fn new(total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(total) => ProgressBar::new(total),
                None => ProgressBar::no_length(),
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} users \
                     ({per_sec}, ETA {eta})",
                )
                .expect("a valid template"),
            );
            bar
        });
        Self {
            bar,
            started: Instant::now(),
        }
    }

    fn page(&self, fetched: u64, last_user: Option<&str>) {
        match &self.bar {
            Some(bar) => bar.set_position(fetched),
            None => {
                let per_second = fetched as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
                tracing::info!(
                    fetched,
                    last_user,
                    users_per_second = per_second.round() as u64,
                    "backfill progress"
                );
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_is_retried_and_refused_data_is_not() {
        let status = |code| Error::Upstream(tonic::Status::new(code, "transport error"));
        assert!(retryable(&status(Code::Unknown)));
        assert!(retryable(&status(Code::Unavailable)));
        assert!(!retryable(&status(Code::InvalidArgument)));
        assert!(refused_for_the_user(Code::InvalidArgument));
        assert!(!refused_for_the_user(Code::Unknown));
        assert!(!refused_for_the_user(Code::PermissionDenied));
        assert!(!refused_for_the_user(Code::Unauthenticated));
    }

    #[test]
    fn shares_are_percentages() {
        assert_eq!(Share::parse("5").unwrap().of(1_200), 60);
        assert_eq!(Share::parse("0.5%").unwrap().of(1_000), 5);
        assert_eq!(Share::parse("0").unwrap().of(1_000), 0);
        for bad in ["-1", "101", "five", "NaN", ""] {
            let error = Share::parse(bad).unwrap_err();
            assert!(error.contains("percentage"), "{bad}: {error}");
        }
    }

    #[test]
    fn summaries_name_rejected_users_with_a_bound() {
        let mut summary = Summary {
            rejected: 25,
            ..Summary::default()
        };
        summary.rejections.push(Rejection {
            user_id: "user_bad\u{1}".to_owned(),
            why: "sync-service: InvalidArgument".to_owned(),
        });
        let text = summary.to_string();
        assert!(
            text.contains(r#""user_bad\u{1}" (sync-service: InvalidArgument) and 24 more"#),
            "{text}"
        );
    }
}
