//! `clerk.sync.v1.ReconcileService`: the lease and record of backfill passes,
//! kept by the [`Store`]; every report of a pass counts its repairs into the
//! metrics.

use std::time::Duration;

use clerk_sync_api::v1::{
    self, BeginPassRequest, BeginPassResponse, EndPassRequest, EndPassResponse, ListPassesRequest,
    ListPassesResponse, PassCounts, ReconcilePass, RenewPassRequest, RenewPassResponse,
};
use tonic::{Request, Response, Status};

use super::quarantine::clean_text;
use crate::{
    domain::timestamp_from_millis,
    error::Error,
    metrics,
    store::{self, Begun, NewPass, Pass, PassStatus, Progress, Store},
};

/// Shortest and longest lease a pass may ask for.
const LEASE_RANGE: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(3600));
/// Longest holder, cursor or resume id kept.
const MAX_NAME_LEN: usize = 256;
/// Longest error kept.
const MAX_ERROR_LEN: usize = 4096;
/// Passes ListPasses returns by default, and at most.
const DEFAULT_LIMIT: u64 = 20;
const MAX_LIMIT: u64 = 1000;

/// Serves `ReconcileService`.
#[derive(Clone, Debug)]
pub(crate) struct ReconcileService {
    pub(crate) store: Store,
}

#[tonic::async_trait]
impl v1::reconcile_service_server::ReconcileService for ReconcileService {
    async fn begin_pass(
        &self,
        request: Request<BeginPassRequest>,
    ) -> Result<Response<BeginPassResponse>, Status> {
        let request = request.into_inner();
        let new = NewPass {
            holder: name(&request.holder, "holder")?
                .ok_or_else(|| Error::invalid("holder", "is required"))?,
            lease_ms: lease_ms(request.lease)?,
            reconcile: request.reconcile,
            every_ms: request
                .every
                .map(|every| positive_ms(every, "every"))
                .transpose()?,
            resume_after: name(&request.resume_after, "resume_after")?,
        };
        let (granted, pass) = match self.store.begin_pass(new).await? {
            Begun::Granted(pass) => {
                tracing::info!(
                    pass = pass.id,
                    holder = %pass.holder,
                    resumed_after = pass.resumed_after,
                    "backfill pass began"
                );
                (true, pass)
            }
            Begun::Held(pass) => (false, pass),
        };
        Ok(Response::new(BeginPassResponse {
            granted,
            pass: Some(to_proto(pass)?),
        }))
    }

    async fn renew_pass(
        &self,
        request: Request<RenewPassRequest>,
    ) -> Result<Response<RenewPassResponse>, Status> {
        let request = request.into_inner();
        let id = pass_id(request.pass_id)?;
        let lease_ms = lease_ms(request.lease)?;
        let progress = progress(&request.cursor, request.counts)?;
        let (pass, repairs) = self.store.renew_pass(id, lease_ms, progress).await?;
        metrics::record_repairs(repairs);
        Ok(Response::new(RenewPassResponse {
            pass: Some(to_proto(pass)?),
        }))
    }

    async fn end_pass(
        &self,
        request: Request<EndPassRequest>,
    ) -> Result<Response<EndPassResponse>, Status> {
        let request = request.into_inner();
        let id = pass_id(request.pass_id)?;
        let status = match request.status() {
            v1::PassStatus::Complete => PassStatus::Complete,
            v1::PassStatus::Failed => PassStatus::Failed,
            v1::PassStatus::Abandoned => PassStatus::Abandoned,
            v1::PassStatus::Unspecified | v1::PassStatus::Running => {
                return Err(Error::invalid(
                    "status",
                    "must be PASS_STATUS_COMPLETE, PASS_STATUS_FAILED or PASS_STATUS_ABANDONED",
                )
                .into());
            }
        };
        let progress = progress(&request.cursor, request.counts)?;
        let error =
            Some(clean_text(&request.error, MAX_ERROR_LEN)).filter(|e| !e.trim().is_empty());
        let (pass, repairs) = self.store.end_pass(id, status, progress, error).await?;
        metrics::record_repairs(repairs);
        tracing::info!(
            pass = pass.id,
            status = status.as_str(),
            "backfill pass ended"
        );
        Ok(Response::new(EndPassResponse {
            pass: Some(to_proto(pass)?),
        }))
    }

    async fn list_passes(
        &self,
        request: Request<ListPassesRequest>,
    ) -> Result<Response<ListPassesResponse>, Status> {
        let limit = match u64::try_from(request.into_inner().limit) {
            Err(_) => return Err(Error::invalid("limit", "must not be negative").into()),
            Ok(0) => DEFAULT_LIMIT,
            Ok(limit) if limit > MAX_LIMIT => {
                return Err(Error::invalid("limit", format!("must be at most {MAX_LIMIT}")).into());
            }
            Ok(limit) => limit,
        };
        let passes = self.store.list_passes(limit).await?;
        Ok(Response::new(ListPassesResponse {
            passes: passes.into_iter().map(to_proto).collect::<Result<_, _>>()?,
        }))
    }
}

/// An optional name-like field (holder, user id): at most
/// [`MAX_NAME_LEN`] bytes, no control characters; `None` when empty.
fn name(text: &str, field: &str) -> Result<Option<String>, Error> {
    if text.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_NAME_LEN} bytes"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not hold control characters"));
    }
    Ok(Some(text.trim().to_owned()).filter(|name| !name.is_empty()))
}

fn pass_id(id: u64) -> Result<i64, Error> {
    i64::try_from(id)
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| Error::invalid("pass_id", "is required (the id BeginPass granted)"))
}

/// A protobuf duration in milliseconds; positive and at most ten years.
fn positive_ms(duration: prost_types::Duration, field: &str) -> Result<i64, Error> {
    Duration::try_from(duration)
        .ok()
        .filter(|d| !d.is_zero() && d.as_secs() <= clerk_sync_common::settings::MAX_SETTING_SECS)
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| Error::invalid(field, "must be a positive duration of at most ten years"))
}

fn lease_ms(lease: Option<prost_types::Duration>) -> Result<i64, Error> {
    let (min, max) = LEASE_RANGE;
    let lease = lease.ok_or_else(|| Error::invalid("lease", "is required"))?;
    match positive_ms(lease, "lease")? {
        ms if (min.as_millis() as i64..=max.as_millis() as i64).contains(&ms) => Ok(ms),
        _ => Err(Error::invalid(
            "lease",
            format!("must be from {} s to {} s", min.as_secs(), max.as_secs()),
        )),
    }
}

fn progress(cursor: &str, counts: Option<PassCounts>) -> Result<Progress, Error> {
    Ok(Progress {
        cursor: name(cursor, "cursor")?,
        counts: counts.unwrap_or_default(),
    })
}

fn to_proto(pass: Pass) -> Result<ReconcilePass, Error> {
    let status = match PassStatus::parse(&pass.status)? {
        PassStatus::Running => v1::PassStatus::Running,
        PassStatus::Complete => v1::PassStatus::Complete,
        PassStatus::Failed => v1::PassStatus::Failed,
        PassStatus::Abandoned => v1::PassStatus::Abandoned,
    };
    Ok(ReconcilePass {
        id: pass.id as u64,
        counts: Some(store::counts(&pass)),
        holder: pass.holder,
        status: status.into(),
        reconcile: pass.reconcile,
        every: pass
            .every_ms
            .map(|ms| Duration::from_millis(ms.max(0) as u64).try_into())
            .transpose()
            .map_err(|_| Error::Corrupt("pass interval out of range".to_owned()))?,
        started_at: Some(timestamp_from_millis(pass.started_at)),
        ended_at: pass.ended_at.map(timestamp_from_millis),
        lease_expires_at: pass.lease_expires_at.map(timestamp_from_millis),
        resumed_after: pass.resumed_after.unwrap_or_default(),
        cursor: pass.cursor.unwrap_or_default(),
        error: pass.error.unwrap_or_default(),
    })
}
