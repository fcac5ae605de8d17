//! `organization_permissions`: one row per Clerk permission.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "organization_permissions")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) name: String,
    pub(crate) description: String,
    /// `system` or `custom`.
    #[sea_orm(column_name = "type")]
    pub(crate) kind: String,
    /// Unix milliseconds.
    pub(crate) created_at: Option<i64>,
    /// Unix milliseconds: the last-write-wins key.
    pub(crate) updated_at: i64,
    /// Unix milliseconds; set on a tombstone.
    pub(crate) deleted_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
