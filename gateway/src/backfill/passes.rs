//! The backfill's side of `ReconcileService`: taking the lease (waiting
//! while another pass holds it), renewing it with the pass's progress while
//! the pass runs, recording how the pass ended, and listing passes for
//! `backfill status`.

use std::{fmt::Write as _, time::Duration};

use clerk_sync_api::v1::{
    BeginPassRequest, EndPassRequest, ListPassesRequest, PassCounts, PassStatus, ReconcilePass,
    RenewPassRequest, reconcile_service_client::ReconcileServiceClient,
};
use clerk_sync_common::time::{millis_from_timestamp, now_millis};
use tokio::sync::watch;
use tonic::{Code, transport::Channel};

use super::{Shutdown, retrying};
use crate::{Error, sync_service::SyncService};

/// Where a pass got: its cursor and counts, as the renewals report them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// The last user listed and applied.
    pub cursor: Option<String>,
    /// What the pass counted so far.
    pub counts: PassCounts,
}

/// Talks to the sync-service's `ReconcileService`.
#[derive(Clone, Debug)]
pub struct Passes {
    service: SyncService,
    client: ReconcileServiceClient<Channel>,
    /// How long a lease lasts unless renewed.
    lease: Duration,
    /// Retries of a call while the sync-service is unavailable.
    max_retries: u32,
}

/// What [`Passes::begin`] got.
pub enum Begun {
    /// The lease is this new pass's: [`Passes::keep`] it and run the pass.
    Granted(ReconcilePass),
    /// (Scheduled runs only.) Another holder's pass completed while this one
    /// waited: this round is done.
    CoveredBy(ReconcilePass),
}

/// A granted lease, renewed in the background until [`Passes::end`].
pub struct Lease {
    /// The pass as recorded when it began.
    pub pass: ReconcilePass,
    latest: watch::Receiver<Report>,
    /// Turns true when a renewal finds the lease gone.
    lost: watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Passes {
    /// A client of the sync-service `service`, with leases of `lease`.
    pub fn new(service: &SyncService, lease: Duration, max_retries: u32) -> Self {
        Self {
            client: ReconcileServiceClient::new(service.channel()),
            service: service.clone(),
            lease,
            max_retries,
        }
    }

    /// Takes the lease for a pass, waiting while another pass holds it.
    /// With `skip_if_covered` (a scheduler), a pass that completes from the
    /// first user while this one waits ends the wait with
    /// [`Begun::CoveredBy`] instead. `None` when `shutdown` came first.
    pub async fn begin<F: Future<Output = ()>>(
        &self,
        request: BeginPassRequest,
        skip_if_covered: bool,
        shutdown: &mut Shutdown<'_, F>,
    ) -> Result<Option<Begun>, Error> {
        let mut waited_for = None;
        loop {
            if let Some(held) = waited_for.take()
                && skip_if_covered
                && let Some(done) = self.ended(held).await?
                && done.status() == PassStatus::Complete
                && done.resumed_after.is_empty()
            {
                return Ok(Some(Begun::CoveredBy(done)));
            }
            let answer = self
                .call(
                    |mut client, request| async move { client.begin_pass(request).await },
                    {
                        BeginPassRequest {
                            lease: Some(self.lease_duration()),
                            ..request.clone()
                        }
                    },
                )
                .await?;
            let pass = answer.pass.ok_or_else(|| missing("BeginPass", "pass"))?;
            if answer.granted {
                return Ok(Some(Begun::Granted(pass)));
            }
            let until = pass
                .lease_expires_at
                .as_ref()
                .and_then(millis_from_timestamp)
                .unwrap_or_else(now_millis);
            tracing::info!(
                pass = pass.id,
                holder = pass.holder,
                lease_expires_in_ms = until - now_millis(),
                "another backfill pass is running; waiting for it"
            );
            // Wake at the lease's expiry or sooner (the pass may end early).
            let wait = Duration::from_millis(u64::try_from(until - now_millis()).unwrap_or(0))
                .clamp(Duration::from_millis(200), self.lease / 2);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.as_mut() => return Ok(None),
            }
            waited_for = Some(pass.id);
        }
    }

    /// Pass `id` if it has ended.
    async fn ended(&self, id: u64) -> Result<Option<ReconcilePass>, Error> {
        let passes = self.list(1000).await?;
        Ok(passes
            .into_iter()
            .find(|pass| pass.id == id && pass.status() != PassStatus::Running))
    }

    /// The newest `limit` passes, newest first.
    pub async fn list(&self, limit: i32) -> Result<Vec<ReconcilePass>, Error> {
        Ok(self
            .call(
                |mut client, request| async move { client.list_passes(request).await },
                ListPassesRequest { limit },
            )
            .await?
            .passes)
    }

    /// Starts renewing the lease of granted `pass` every third of its
    /// length, reporting the `latest` progress the pass sends.
    pub fn keep(&self, pass: ReconcilePass, latest: watch::Receiver<Report>) -> Lease {
        let (lost_tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(self.clone().renew(pass.id, latest.clone(), lost_tx));
        Lease {
            pass,
            latest,
            lost,
            renewer,
        }
    }

    /// Renews lease `pass_id` until it is lost (then sends `lost` true).
    /// Failures the sync-service may recover from are retried at the next
    /// tick: the lease outlives two missed renewals.
    async fn renew(self, pass_id: u64, latest: watch::Receiver<Report>, lost: watch::Sender<bool>) {
        let mut ticker = tokio::time::interval(self.lease / 3);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let report = latest.borrow().clone();
            let request = RenewPassRequest {
                pass_id,
                lease: Some(self.lease_duration()),
                cursor: report.cursor.unwrap_or_default(),
                counts: Some(report.counts),
            };
            let mut client = self.client.clone();
            let call = client.renew_pass(self.service.request(request));
            match self.service.deadline(call, Error::Upstream).await {
                Ok(_) => {}
                Err(Error::Upstream(status))
                    if matches!(status.code(), Code::FailedPrecondition | Code::NotFound) =>
                {
                    tracing::error!(
                        pass = pass_id,
                        reason = status.message(),
                        "backfill lease lost"
                    );
                    lost.send_replace(true);
                    return;
                }
                Err(error) => {
                    tracing::warn!(pass = pass_id, %error, "cannot renew the backfill lease; retrying");
                }
            }
        }
    }

    /// Records how the pass of `lease` ended and releases the lease.
    pub async fn end(
        &self,
        lease: Lease,
        status: PassStatus,
        error: Option<String>,
    ) -> Result<ReconcilePass, Error> {
        lease.renewer.abort();
        let report = lease.latest.borrow().clone();
        let answer = self
            .call(
                |mut client, request| async move { client.end_pass(request).await },
                {
                    EndPassRequest {
                        pass_id: lease.pass.id,
                        status: status.into(),
                        cursor: report.cursor.unwrap_or_default(),
                        counts: Some(report.counts),
                        error: error.unwrap_or_default(),
                    }
                },
            )
            .await?;
        answer.pass.ok_or_else(|| missing("EndPass", "pass"))
    }

    /// One call, retried (with backoff) while the sync-service is
    /// unavailable.
    async fn call<Req: Clone, Res, Fut>(
        &self,
        call: impl Fn(ReconcileServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        request: Req,
    ) -> Result<Res, Error>
    where
        Fut: Future<Output = Result<tonic::Response<Res>, tonic::Status>>,
    {
        retrying(self.max_retries, || {
            let answer = call(self.client.clone(), self.service.request(request.clone()));
            self.service.deadline(answer, Error::Upstream)
        })
        .await
    }

    fn lease_duration(&self) -> prost_types::Duration {
        self.lease.try_into().expect("a lease of at most an hour")
    }
}

impl Lease {
    /// Completes when the lease is lost: another pass took it after this one
    /// failed to renew it in time. The pass must stop.
    pub async fn lost(&self) {
        if self.lost.clone().wait_for(|lost| *lost).await.is_err() {
            // The renewer stopped without losing it: never.
            std::future::pending::<()>().await;
        }
    }

    /// Whether the lease was lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }
}

impl Drop for Lease {
    /// A pass dropped without [`Passes::end`] (its task killed) stops
    /// renewing, so its lease expires as its holder's would.
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

fn missing(call: &str, field: &str) -> Error {
    Error::Upstream(tonic::Status::internal(format!(
        "{call} answered without {field}"
    )))
}

/// `passes` as `backfill status` prints them: one line each, newest first.
pub fn render(passes: &[ReconcilePass]) -> String {
    let mut text = String::new();
    if passes.is_empty() {
        text.push_str("no backfill pass recorded yet\n");
    }
    for pass in passes {
        let time = |at: &Option<prost_types::Timestamp>| {
            at.as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string)
        };
        let counts = pass.counts.unwrap_or_default();
        let status = pass
            .status()
            .as_str_name()
            .trim_start_matches("PASS_STATUS_")
            .to_lowercase();
        let _ = write!(
            text,
            "pass {} {status} by {}: started {}, ended {}",
            pass.id,
            pass.holder,
            time(&pass.started_at),
            time(&pass.ended_at),
        );
        if pass.reconcile {
            text.push_str(", reconcile");
        }
        if let Some(every) = pass.every {
            let _ = write!(text, ", every {}s", every.seconds);
        }
        if !pass.resumed_after.is_empty() {
            let _ = write!(text, ", resumed after {}", pass.resumed_after);
        }
        let _ = write!(
            text,
            "; fetched {}, applied {} (repaired: {} missed, {} stale), unchanged {}, stale {}, \
             tombstoned {}, rejected {}, quarantined {}",
            counts.fetched,
            counts.applied,
            counts.repaired_missed,
            counts.repaired_stale,
            counts.unchanged,
            counts.stale,
            counts.tombstoned,
            counts.rejected,
            counts.quarantined,
        );
        if !pass.cursor.is_empty() {
            let _ = write!(text, "; cursor {}", pass.cursor);
        }
        if !pass.error.is_empty() {
            let _ = write!(text, "; error: {}", pass.error.escape_debug());
        }
        text.push('\n');
    }
    text
}
