//! Backfill passes and their lease. A pass takes the lease (one row of
//! `reconcile_lease`, upserted only when absent or expired, so two callers
//! cannot both win), renews it while it runs with its cursor and counts, and
//! ends it. A pass whose lease expired unrenewed is recorded as abandoned by
//! the next pass to begin, which continues after its cursor.

use clerk_sync_api::v1::PassCounts;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    TransactionTrait,
    sea_query::{Expr, ExprTrait, OnConflict},
};

use clerk_sync_common::time::now_millis;

use super::{
    Store,
    entity::{reconcile_lease as lease, reconcile_passes as passes},
};
use crate::error::Error;

/// A recorded pass.
pub(crate) type Pass = passes::Model;

/// The name of the backfill's lease row.
const LEASE: &str = "backfill";

/// How a pass stands (the `status` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PassStatus {
    Running,
    Complete,
    Failed,
    Abandoned,
}

impl PassStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Complete => "complete",
            Self::Failed => "failed",
            Self::Abandoned => "abandoned",
        }
    }

    pub(crate) fn parse(stored: &str) -> Result<Self, Error> {
        [Self::Running, Self::Complete, Self::Failed, Self::Abandoned]
            .into_iter()
            .find(|status| status.as_str() == stored)
            .ok_or_else(|| Error::Corrupt(format!("unknown pass status {stored:?}")))
    }
}

/// A pass to begin, parsed at the gRPC edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NewPass {
    pub(crate) holder: String,
    /// How long the lease lasts unless renewed.
    pub(crate) lease_ms: i64,
    pub(crate) reconcile: bool,
    pub(crate) every_ms: Option<i64>,
    /// Where the caller wants to start; `None`: after an abandoned
    /// predecessor's cursor, else at the first user.
    pub(crate) resume_after: Option<String>,
}

/// What BeginPass got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Begun {
    /// The lease is this new pass's.
    Granted(Pass),
    /// Another pass holds it.
    Held(Pass),
}

/// Progress of a running pass, or how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) cursor: Option<String>,
    pub(crate) counts: PassCounts,
}

/// What a report of a pass added to its repairs: users the directory
/// lacked, users it held an older copy of, users tombstoned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Repairs {
    pub(crate) missed: u64,
    pub(crate) stale: u64,
    pub(crate) tombstoned: u64,
}

/// The passes' state the metrics report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReconcileHealth {
    /// When the last complete pass from the first user ended; before there
    /// is one, when the first scheduled pass started (Unix ms).
    pub(crate) last_success_ms: Option<i64>,
    /// The interval of the newest scheduled pass.
    pub(crate) every_ms: Option<i64>,
}

impl Store {
    /// Begins a pass unless another one holds an unexpired lease. Running
    /// passes whose lease expired are recorded as abandoned first.
    pub(crate) async fn begin_pass(&self, new: NewPass) -> Result<Begun, Error> {
        let now = now_millis();
        let txn = self.db.begin().await?;
        lock_lease(&txn).await?;
        if let Some(holder) = lease_holder(&txn, now).await? {
            return Ok(Begun::Held(holder));
        }
        passes::Entity::update_many()
            .col_expr(
                passes::Column::Status,
                Expr::value(PassStatus::Abandoned.as_str()),
            )
            .col_expr(
                passes::Column::EndedAt,
                Expr::col(passes::Column::LeaseExpiresAt),
            )
            .col_expr(
                passes::Column::LeaseExpiresAt,
                Expr::value(Option::<i64>::None),
            )
            .col_expr(
                passes::Column::Error,
                Expr::value(
                    "its holder stopped renewing the lease (it died or lost the sync-service)",
                ),
            )
            .filter(passes::Column::Status.eq(PassStatus::Running.as_str()))
            .filter(passes::Column::LeaseExpiresAt.lte(now))
            .exec(&txn)
            .await?;
        let resumed_after = match new.resume_after {
            Some(after) => Some(after),
            None => passes::Entity::find()
                .order_by_desc(passes::Column::Id)
                .one(&txn)
                .await?
                .filter(|last| last.status == PassStatus::Abandoned.as_str())
                .and_then(|last| last.cursor),
        };
        let expires_at = now.saturating_add(new.lease_ms);
        let pass = passes::Entity::insert(passes::ActiveModel {
            id: NotSet,
            holder: Set(new.holder),
            status: Set(PassStatus::Running.as_str().to_owned()),
            reconcile: Set(new.reconcile),
            every_ms: Set(new.every_ms),
            started_at: Set(now),
            ended_at: Set(None),
            lease_expires_at: Set(Some(expires_at)),
            cursor: Set(resumed_after.clone()),
            resumed_after: Set(resumed_after),
            error: Set(None),
            ..counts_model(&PassCounts::default())
        })
        .exec_with_returning(&txn)
        .await?;
        // Granted only if the row is absent or expired: a caller that won
        // meanwhile (PostgreSQL) leaves this upsert nothing to change.
        let upsert = lease::Entity::insert(lease::ActiveModel {
            name: Set(LEASE.to_owned()),
            pass_id: Set(pass.id),
            expires_at: Set(expires_at),
        })
        .on_conflict(
            OnConflict::column(lease::Column::Name)
                .update_columns([lease::Column::PassId, lease::Column::ExpiresAt])
                .action_and_where(Expr::col((lease::Entity, lease::Column::ExpiresAt)).lte(now))
                .to_owned(),
        )
        .into_query();
        if txn.execute(&upsert).await?.rows_affected() == 0 {
            txn.rollback().await?;
            return match lease_holder(&self.db, now).await? {
                Some(holder) => Ok(Begun::Held(holder)),
                None => Err(Error::FailedPrecondition(
                    "another pass took the lease and ended at once; begin again".to_owned(),
                )),
            };
        }
        txn.commit().await?;
        Ok(Begun::Granted(pass))
    }

    /// Extends the lease of running pass `id` to `lease_ms` from now and
    /// records `progress`. Returns the pass and what its repairs grew by.
    pub(crate) async fn renew_pass(
        &self,
        id: i64,
        lease_ms: i64,
        progress: Progress,
    ) -> Result<(Pass, Repairs), Error> {
        let now = now_millis();
        let expires_at = now.saturating_add(lease_ms);
        let txn = self.db.begin().await?;
        lock_lease(&txn).await?;
        let before = running_pass(&txn, id).await?;
        let renewed = lease::Entity::update_many()
            .col_expr(lease::Column::ExpiresAt, Expr::value(expires_at))
            .filter(lease::Column::Name.eq(LEASE))
            .filter(lease::Column::PassId.eq(id))
            .exec(&txn)
            .await?;
        if renewed.rows_affected == 0 {
            return Err(Error::FailedPrecondition(format!(
                "pass {id} no longer holds the lease (it expired and another pass took it): stop"
            )));
        }
        let pass = passes::Entity::update(passes::ActiveModel {
            id: Set(id),
            lease_expires_at: Set(Some(expires_at)),
            cursor: Set(progress.cursor.or(before.cursor.clone())),
            ..counts_model(&progress.counts)
        })
        .exec(&txn)
        .await?;
        txn.commit().await?;
        let grown = growth(&counts(&before), &progress.counts);
        Ok((pass, grown))
    }

    /// Records how running pass `id` ended and releases its lease. Returns
    /// the pass and what its repairs grew by since its last report.
    pub(crate) async fn end_pass(
        &self,
        id: i64,
        status: PassStatus,
        progress: Progress,
        error: Option<String>,
    ) -> Result<(Pass, Repairs), Error> {
        let txn = self.db.begin().await?;
        lock_lease(&txn).await?;
        let before = running_pass(&txn, id).await?;
        let pass = passes::Entity::update(passes::ActiveModel {
            id: Set(id),
            status: Set(status.as_str().to_owned()),
            ended_at: Set(Some(now_millis())),
            lease_expires_at: Set(None),
            cursor: Set(progress.cursor.or(before.cursor.clone())),
            error: Set(error),
            ..counts_model(&progress.counts)
        })
        .exec(&txn)
        .await?;
        lease::Entity::delete_many()
            .filter(lease::Column::Name.eq(LEASE))
            .filter(lease::Column::PassId.eq(id))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        let grown = growth(&counts(&before), &progress.counts);
        Ok((pass, grown))
    }

    /// The newest `limit` passes, newest first.
    pub(crate) async fn list_passes(&self, limit: u64) -> Result<Vec<Pass>, Error> {
        Ok(passes::Entity::find()
            .order_by_desc(passes::Column::Id)
            .limit(limit)
            .all(&self.reads)
            .await?)
    }

    /// What the reconcile metrics report.
    pub(crate) async fn reconcile_health(&self) -> Result<ReconcileHealth, Error> {
        let last_complete: Option<Option<i64>> = passes::Entity::find()
            .select_only()
            .column_as(passes::Column::EndedAt.max(), "ended_at")
            .filter(passes::Column::Status.eq(PassStatus::Complete.as_str()))
            .filter(passes::Column::ResumedAfter.is_null())
            .into_tuple()
            .one(&self.reads)
            .await?;
        let scheduled = passes::Entity::find()
            .filter(passes::Column::EveryMs.is_not_null())
            .order_by_desc(passes::Column::Id);
        let first_scheduled = scheduled.clone().order_by_asc(passes::Column::Id);
        let newest = scheduled.one(&self.reads).await?;
        let last_success_ms = match last_complete.flatten() {
            Some(ended_at) => Some(ended_at),
            None => first_scheduled
                .one(&self.reads)
                .await?
                .map(|pass| pass.started_at),
        };
        Ok(ReconcileHealth {
            last_success_ms,
            every_ms: newest.and_then(|pass| pass.every_ms),
        })
    }
}

/// Takes the lease row's write lock as a transaction's first statement (a
/// write that changes nothing): on SQLite a transaction that read first could
/// not upgrade to a write beside another writer (`SQLITE_BUSY`), and on
/// PostgreSQL callers queue on the row instead of racing past each other.
async fn lock_lease(txn: &impl ConnectionTrait) -> Result<(), Error> {
    lease::Entity::update_many()
        .col_expr(
            lease::Column::ExpiresAt,
            Expr::col(lease::Column::ExpiresAt),
        )
        .filter(lease::Column::Name.eq(LEASE))
        .exec(txn)
        .await?;
    Ok(())
}

/// The pass holding an unexpired lease, if any.
async fn lease_holder(db: &impl ConnectionTrait, now: i64) -> Result<Option<Pass>, Error> {
    let Some(held) = lease::Entity::find_by_id(LEASE).one(db).await? else {
        return Ok(None);
    };
    if held.expires_at <= now {
        return Ok(None);
    }
    passes::Entity::find_by_id(held.pass_id)
        .one(db)
        .await?
        .map(Some)
        .ok_or_else(|| {
            Error::Corrupt(format!(
                "the lease names pass {} it has no record of",
                held.pass_id
            ))
        })
}

/// Pass `id`, which must be running.
async fn running_pass(db: &impl ConnectionTrait, id: i64) -> Result<Pass, Error> {
    let pass = passes::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no pass {id}")))?;
    match PassStatus::parse(&pass.status)? {
        PassStatus::Running => Ok(pass),
        ended => Err(Error::FailedPrecondition(format!(
            "pass {id} is no longer running (it is {}): stop",
            ended.as_str()
        ))),
    }
}

/// A pass's counts as recorded.
pub(crate) fn counts(pass: &Pass) -> PassCounts {
    let count = |stored: i64| u64::try_from(stored).unwrap_or(0);
    PassCounts {
        fetched: count(pass.fetched),
        applied: count(pass.applied),
        unchanged: count(pass.unchanged),
        stale: count(pass.stale),
        tombstoned: count(pass.tombstoned),
        rejected: count(pass.rejected),
        quarantined: count(pass.quarantined),
        repaired_missed: count(pass.repaired_missed),
        repaired_stale: count(pass.repaired_stale),
    }
}

/// The count columns set to `counts`, every other column unset.
fn counts_model(counts: &PassCounts) -> passes::ActiveModel {
    let count = |value: u64| Set(i64::try_from(value).unwrap_or(i64::MAX));
    passes::ActiveModel {
        fetched: count(counts.fetched),
        applied: count(counts.applied),
        unchanged: count(counts.unchanged),
        stale: count(counts.stale),
        tombstoned: count(counts.tombstoned),
        rejected: count(counts.rejected),
        quarantined: count(counts.quarantined),
        repaired_missed: count(counts.repaired_missed),
        repaired_stale: count(counts.repaired_stale),
        ..Default::default()
    }
}

/// What the repairs grew by from `before` to `after` (counts never shrink).
fn growth(before: &PassCounts, after: &PassCounts) -> Repairs {
    Repairs {
        missed: after.repaired_missed.saturating_sub(before.repaired_missed),
        stale: after.repaired_stale.saturating_sub(before.repaired_stale),
        tombstoned: after.tombstoned.saturating_sub(before.tombstoned),
    }
}
