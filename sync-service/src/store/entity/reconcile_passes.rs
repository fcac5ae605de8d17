//! `reconcile_passes`: one row per backfill pass.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "reconcile_passes")]
pub(crate) struct Model {
    #[sea_orm(primary_key)]
    pub(crate) id: i64,
    pub(crate) holder: String,
    /// `running`, `complete`, `failed` or `abandoned`.
    pub(crate) status: String,
    pub(crate) reconcile: bool,
    /// The scheduler's interval; `None` for a one-off run.
    pub(crate) every_ms: Option<i64>,
    /// Unix milliseconds.
    pub(crate) started_at: i64,
    /// Unix milliseconds; `None` while running.
    pub(crate) ended_at: Option<i64>,
    /// Unix milliseconds; `None` once ended.
    pub(crate) lease_expires_at: Option<i64>,
    /// `None`: the listing started at the first user.
    pub(crate) resumed_after: Option<String>,
    pub(crate) cursor: Option<String>,
    pub(crate) fetched: i64,
    pub(crate) applied: i64,
    pub(crate) unchanged: i64,
    pub(crate) stale: i64,
    pub(crate) tombstoned: i64,
    pub(crate) rejected: i64,
    pub(crate) quarantined: i64,
    pub(crate) repaired_missed: i64,
    pub(crate) repaired_stale: i64,
    pub(crate) error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
