//! `processed_events`: the ledger of applied event ids. Its primary key is the
//! deduplication: inserting an id that is already there is the duplicate check.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "processed_events")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) event_id: String,
    pub(crate) user_id: String,
    /// `user.created`, `user.updated` or `user.deleted`, for audits.
    pub(crate) kind: String,
    /// Local Unix milliseconds when the event was applied.
    pub(crate) processed_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
