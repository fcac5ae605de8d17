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
//! Listing by offset has a trap: a user deleted behind the cursor shifts every
//! later user one place down, and a plain `offset += limit` would skip one.
//! Each page is therefore requested a little before where the last one ended
//! (an overlap of [`OVERLAP`] users) and must begin with a user already seen;
//! if it does not (more deletions than the overlap), the cursor steps back a
//! page until it does. Users already seen are not applied twice.
//!
//! Reconcile runs only after a complete listing (from offset 0 to the end,
//! without gaps), and tombstones only live local users whose `updated_at` is
//! older than the listing's start minus [`RECONCILE_MARGIN`] (clock skew): a
//! sign-up during the listing is not a deletion.

pub mod clerk_api;

use std::{
    collections::HashSet,
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
use http::Uri;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::value::RawValue;
use tonic::{Code, transport::Channel};

use crate::{
    Error,
    clerk::{ClerkEvent, ClerkUser, Envelope, UserEvent},
    sync_service::{SyncService, SyncServiceSettings},
    upstream::Upstream,
    verify::Delivery,
};
use clerk_api::{ClerkApi, ClerkApiError, SecretKey, backoff};

/// Users each page request re-reads from the end of the previous page.
pub const OVERLAP: u64 = 20;
/// Reconcile spares users changed this shortly before the listing started.
pub const RECONCILE_MARGIN: Duration = Duration::from_secs(300);
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

/// Why a backfill stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// Talking to Clerk failed for good.
    #[error("{source}; rerun with --resume-from {resume_from} to continue")]
    Clerk {
        /// What failed.
        source: ClerkApiError,
        /// Where a rerun picks up.
        resume_from: u64,
    },
    /// Clerk refused the key: nothing to resume.
    #[error(transparent)]
    Unauthorized(ClerkApiError),
    /// The sync-service failed for good.
    #[error("sync-service: {source}; rerun with --resume-from {resume_from} to continue")]
    SyncService {
        /// What failed.
        source: Error,
        /// Where a rerun picks up.
        resume_from: u64,
    },
    /// Reconcile could not finish (the backfill itself did).
    #[error("reconcile stopped: {0}; rerun to finish it")]
    Reconcile(Error),
    /// Stopped by a signal between pages.
    #[error("interrupted; rerun with --resume-from {resume_from} to continue")]
    Interrupted {
        /// Where a rerun picks up.
        resume_from: u64,
    },
    /// Settings that cannot work together, or a client that cannot be built.
    #[error("{0}")]
    Setup(String),
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
    /// Listed users refused as unusable (no id or updated_at; rejected by
    /// the sync-service), logged by id.
    pub rejected: u64,
    /// Local users tombstoned by reconcile (dry run: that would be).
    pub tombstoned: u64,
    /// Users the sync-service quarantined. The sync-service has no quarantine
    /// outcome yet, so this stays 0 until it reports one.
    pub quarantined: u64,
    /// Whether the listing ran from offset 0 to its end without a gap.
    pub complete: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
        )
    }
}

/// Runs a backfill against the sync-service `settings` name, with `args`,
/// stopping between pages when `shutdown` completes.
pub async fn run(
    settings: &SyncServiceSettings,
    args: &BackfillArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, BackfillError> {
    if args.reconcile && args.resume_from > 0 {
        return Err(BackfillError::Setup(
            "--reconcile needs a complete listing; --resume-from skips its start".to_owned(),
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
        seen: HashSet::new(),
        summary: Summary {
            dry_run: args.dry_run,
            ..Summary::default()
        },
    };
    let started_at = now_millis();
    let total = match run.api.count_users().await {
        Ok(total) => Some(total),
        Err(error @ ClerkApiError::Unauthorized(_)) => {
            return Err(BackfillError::Unauthorized(error));
        }
        Err(error) => {
            tracing::warn!(%error, "cannot count Clerk's users; progress shows no total");
            None
        }
    };
    let progress = Progress::new(total);
    tokio::pin!(shutdown);
    run.list_and_apply(&progress, &mut shutdown).await?;
    progress.finish();
    if args.reconcile {
        run.reconcile(started_at - RECONCILE_MARGIN.as_millis() as i64)
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
    /// Ids of every user listed so far.
    seen: HashSet<String>,
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
    /// Pages through Clerk's users and applies the new ones.
    async fn list_and_apply(
        &mut self,
        progress: &Progress,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), BackfillError> {
        let limit = self.args.page_size;
        // Less than half a page, so every full page moves the cursor on.
        let overlap = OVERLAP.min(u64::from(limit) / 2);
        // `next`: how many users precede the first one not yet listed.
        let mut next = self.args.resume_from;
        let mut first_page = true;
        loop {
            let start = if first_page {
                next
            } else {
                next.saturating_sub(overlap)
            };
            let resume_from = start;
            let body = tokio::select! {
                body = self.api.list_users(start, limit) => body,
                () = shutdown.as_mut() => return Err(BackfillError::Interrupted { resume_from }),
            };
            let body = body.map_err(|source| match source {
                ClerkApiError::Unauthorized(_) => BackfillError::Unauthorized(source),
                source => BackfillError::Clerk {
                    source,
                    resume_from,
                },
            })?;
            let page: Vec<&RawValue> =
                serde_json::from_slice(&body).map_err(|e| BackfillError::Clerk {
                    source: ClerkApiError::InvalidAnswer {
                        path: "/v1/users",
                        reason: format!("not a JSON array of users: {e}"),
                    },
                    resume_from,
                })?;

            // Continuity: an overlapping page must begin with a user already
            // seen, else deletions behind the cursor may hide one.
            if !first_page && start > 0 && overlap > 0 {
                let continues = page
                    .first()
                    .and_then(|raw| user_id(raw))
                    .is_some_and(|id| self.seen.contains(&id));
                if !continues {
                    tracing::info!(
                        offset = start,
                        "users were deleted behind the cursor; stepping back a page"
                    );
                    next = next.saturating_sub(u64::from(limit));
                    continue;
                }
            }
            first_page = false;

            let mut fresh = Vec::new();
            for raw in &page {
                let Some(id) = user_id(raw) else {
                    self.summary.fetched += 1;
                    self.summary.rejected += 1;
                    tracing::warn!(offset = start, "Clerk listed a user without an id; skipped");
                    continue;
                };
                if !self.seen.insert(id) {
                    continue;
                }
                self.summary.fetched += 1;
                match map_user(raw) {
                    Ok(mapped) => fresh.push(mapped),
                    Err(error) => {
                        self.summary.rejected += 1;
                        tracing::warn!(%error, "a listed user cannot be mapped; skipped");
                    }
                }
            }
            if self.args.dry_run {
                self.classify(fresh, resume_from).await?;
            } else {
                self.apply(fresh, resume_from).await?;
            }
            next = start + page.len() as u64;
            progress.page(self.summary.fetched, next);
            if page.len() < limit as usize {
                self.summary.complete = self.args.resume_from == 0;
                return Ok(());
            }
        }
    }

    /// Applies `users` through the sync-service, a few at a time.
    async fn apply(&mut self, users: Vec<Mapped>, resume_from: u64) -> Result<(), BackfillError> {
        let upstream = &self.upstream;
        let max_retries = self.args.max_retries;
        let mut outcomes = stream::iter(users)
            .map(|user| async move {
                let outcome =
                    forward_retrying(upstream, user.event, &user.event_id, max_retries).await;
                (user.user_id, outcome)
            })
            .buffer_unordered(self.args.concurrency as usize);
        while let Some((user_id, outcome)) = outcomes.next().await {
            match outcome {
                Ok(Outcome::Applied) => self.summary.applied += 1,
                Ok(Outcome::Duplicate) => self.summary.unchanged += 1,
                Ok(Outcome::Stale) => self.summary.stale += 1,
                Ok(Outcome::UserDeleted) => {
                    self.summary.stale += 1;
                    self.summary.deleted_locally += 1;
                }
                Ok(Outcome::Unspecified) => unreachable!("Upstream refuses unknown outcomes"),
                Err(Error::Upstream(status)) if status.code() == Code::InvalidArgument => {
                    self.summary.rejected += 1;
                    tracing::warn!(
                        user_id,
                        reason = status.message(),
                        "sync-service rejected a user"
                    );
                }
                Err(source) => {
                    return Err(BackfillError::SyncService {
                        source,
                        resume_from,
                    });
                }
            }
        }
        Ok(())
    }

    /// Dry run: compares `users` with the directory instead of applying.
    async fn classify(
        &mut self,
        users: Vec<Mapped>,
        resume_from: u64,
    ) -> Result<(), BackfillError> {
        for chunk in users.chunks(BATCH_GET) {
            let ids = chunk.iter().map(|u| u.user_id.clone()).collect();
            let request = self.directory_service.request(BatchGetUsersRequest { ids });
            let local = self
                .directory_service
                .deadline(self.directory.batch_get_users(request), Error::Upstream)
                .await
                .map_err(|source| BackfillError::SyncService {
                    source,
                    resume_from,
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

    /// Tombstones the live local users the listing did not contain and whose
    /// last change is older than `cutoff` (Unix ms). Only after a complete
    /// listing.
    async fn reconcile(&mut self, cutoff: i64) -> Result<(), BackfillError> {
        if !self.summary.complete {
            tracing::warn!("the listing is incomplete: reconcile skipped");
            return Ok(());
        }
        let mut missing = Vec::new();
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
            missing.extend(
                page.users
                    .into_iter()
                    .filter(|user| !self.seen.contains(&user.id))
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
                break;
            }
            page_token = page.next_page_token;
        }
        tracing::info!(
            users = missing.len(),
            "local users Clerk no longer lists (changed before the listing started)"
        );
        if self.args.dry_run {
            self.summary.tombstoned = missing.len() as u64;
            return Ok(());
        }
        let deleted_at = timestamp_from_millis(cutoff + RECONCILE_MARGIN.as_millis() as i64);
        for user_id in missing {
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
                    tracing::info!(user_id, "tombstoned: Clerk no longer lists this user");
                }
                Ok(_) => {}
                Err(error) => return Err(BackfillError::Reconcile(error)),
            }
        }
        Ok(())
    }
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

fn retryable(error: &Error) -> bool {
    match error {
        Error::UpstreamTimeout => true,
        Error::Upstream(status) => matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled
        ),
        _ => false,
    }
}

/// The `id` of a listed user, if it has one.
fn user_id(raw: &RawValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<String>,
    }
    serde_json::from_str::<Id>(raw.get())
        .ok()?
        .id
        .filter(|id| !id.trim().is_empty())
}

/// Maps a listed user like the `data` of a `user.updated` webhook.
fn map_user(raw: &RawValue) -> Result<Mapped, Error> {
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

    fn page(&self, fetched: u64, offset: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(fetched),
            None => {
                let per_second = fetched as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
                tracing::info!(
                    fetched,
                    offset,
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
