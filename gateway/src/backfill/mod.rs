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

pub mod clerk_api;
pub mod listing;

use std::{
    fmt,
    io::IsTerminal as _,
    time::{Duration, Instant},
};

use clap::Args;
use clerk_sync_api::v1::{
    BatchGetUsersRequest, EventMeta, ListUsersRequest, Outcome, UserDeleted,
    user_directory_service_client::UserDirectoryServiceClient,
};
use clerk_sync_common::{
    settings::SecretParser,
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
use clerk_api::{ClerkApi, ClerkApiError, SecretKey, backoff};
use listing::{Listing, ListingError};

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

fn parse_resume_after(text: &str) -> Result<String, String> {
    let id = text.trim();
    if id.is_empty() {
        return Err("expected a Clerk user id (user_…)".to_owned());
    }
    if id.len() > 256 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("expected a Clerk user id: at most 256 bytes, no spaces".to_owned());
    }
    Ok(id.to_owned())
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
    /// The sync-service failed for good.
    #[error("sync-service: {source}; {resume}")]
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
            "{}fetched {}, {applied} {}, unchanged {}, stale {} ({} deleted locally), rejected {}, \
             {tombstoned} {}, quarantined {}",
            if self.dry_run {
                "dry run (nothing written): "
            } else {
                ""
            },
            self.fetched,
            self.applied,
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
        Ok(())
    }
}

/// The shutdown future a run watches.
type Shutdown<'a, F> = std::pin::Pin<&'a mut F>;

/// Runs a backfill against the sync-service `settings` name, with `args`,
/// stopping (with where to resume) when `shutdown` completes.
pub async fn run(
    settings: &SyncServiceSettings,
    args: &BackfillArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, BackfillError> {
    if args.reconcile && args.resume_after.is_some() {
        return Err(BackfillError::Setup(
            "--reconcile needs a complete listing; --resume-after skips its start".to_owned(),
        ));
    }
    let api = ClerkApi::new(
        &args.clerk_api_url,
        &args.clerk_secret_key,
        args.max_retries,
    )
    .map_err(|e| BackfillError::Setup(e.to_string()))?;
    let service = SyncService::new(settings).map_err(|e| BackfillError::Setup(e.to_string()))?;
    let directory = service.with_timeout(service.timeout().max(DIRECTORY_TIMEOUT));
    let mut run = Backfill {
        api,
        upstream: Upstream::new(&service),
        directory: directory.directory_client(),
        directory_service: directory,
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
    };
    tokio::pin!(shutdown);
    let started_at = now_millis();
    // Judging the listing needs the count; progress only wants it.
    let judged = args.resume_after.is_none();
    let count_before = run.count(judged && args.reconcile).await?;
    let mut listing = Listing::new(args.page_size, count_before);
    let progress = Progress::new(count_before);
    run.list_and_apply(&mut listing, &progress, &mut shutdown)
        .await?;
    progress.finish();
    if judged && count_before.is_some() {
        let resume = Resume(listing.cursor(0).map(str::to_owned));
        if let Some(count_after) = run.count(args.reconcile).await? {
            listing
                .check_complete(count_after)
                .map_err(|source| BackfillError::Listing { source, resume })?;
            run.summary.complete = true;
        }
    }
    if args.reconcile {
        run.reconcile(
            &listing,
            started_at - RECONCILE_MARGIN.as_millis() as i64,
            &mut shutdown,
        )
        .await?;
    }
    Ok(run.summary)
}

/// The state of one run.
struct Backfill {
    api: ClerkApi,
    upstream: Upstream,
    /// Reads the directory for reconcile and dry runs.
    directory: UserDirectoryServiceClient<Channel>,
    /// The channel `directory` uses, with the directory's longer deadline.
    directory_service: SyncService,
    args: BackfillArgs,
    /// What the sync-service takes: every user is readied as a webhook is.
    carriage: Carriage,
    /// Rejections still logged one by one (a bad page must not flood logs).
    logs_left: u32,
    summary: Summary,
}

/// A listed user, mapped for the sync-service.
struct Mapped {
    user_id: String,
    updated_at: i64,
    event_id: String,
    event: UserEvent,
}

impl Backfill {
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
        let mut after = self.args.resume_after.clone();
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
                Ok(outcome) => self.count_outcome(outcome),
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

    fn count_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.summary.applied += 1,
            Outcome::Duplicate => self.summary.unchanged += 1,
            Outcome::Stale => self.summary.stale += 1,
            Outcome::UserDeleted => {
                self.summary.stale += 1;
                self.summary.deleted_locally += 1;
            }
            Outcome::Unspecified => unreachable!("Upstream refuses unknown outcomes"),
        }
    }

    /// Dry run: compares `users` with the directory instead of applying.
    async fn classify(&mut self, users: Vec<Mapped>, resume: &Resume) -> Result<(), BackfillError> {
        for chunk in users.chunks(BATCH_GET) {
            let ids = chunk.iter().map(|u| u.user_id.clone()).collect();
            let request = self.directory_service.request(BatchGetUsersRequest { ids });
            let local = self
                .directory_service
                .deadline(self.directory.batch_get_users(request), Error::Upstream)
                .await
                .map_err(|source| BackfillError::SyncService {
                    source,
                    resume: resume.clone(),
                })?
                .users;
            for user in chunk {
                let stored = local
                    .iter()
                    .find(|l| l.id == user.user_id)
                    .and_then(|l| l.updated_at.as_ref())
                    .and_then(millis_from_timestamp);
                match stored {
                    Some(stored) if stored == user.updated_at => self.summary.unchanged += 1,
                    Some(stored) if stored > user.updated_at => self.summary.stale += 1,
                    // Missing (or deleted) locally, or older.
                    _ => self.summary.applied += 1,
                }
            }
        }
        Ok(())
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
            let request = self.directory_service.request(ListUsersRequest {
                page_size: 1000,
                page_token,
                ..ListUsersRequest::default()
            });
            let page = self
                .directory_service
                .deadline(self.directory.list_users(request), Error::Upstream)
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
                Ok(Some(body)) => self.apply_missed(&user_id, &body).await?,
                Err(error @ ClerkApiError::Unauthorized(_)) => {
                    return Err(BackfillError::Unauthorized(error));
                }
                Err(error) => return Err(BackfillError::ReconcileClerk(error)),
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

    /// Applies a user the listing lacked but Clerk returned by id.
    async fn apply_missed(&mut self, user_id: &str, body: &[u8]) -> Result<(), BackfillError> {
        self.summary.missed_by_listing += 1;
        tracing::warn!(
            user_id,
            "Clerk still has a user its listing lacked: applied, not tombstoned"
        );
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
    let mut attempt = 0;
    loop {
        match upstream.forward(event.clone(), event_id).await {
            Err(error) if attempt < max_retries && retryable(&error) => {
                attempt += 1;
                tracing::warn!(%error, event_id, attempt, "sync-service call failed; retrying");
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
