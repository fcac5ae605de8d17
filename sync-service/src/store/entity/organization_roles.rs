//! `organization_roles`: one row per Clerk organization role.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "organization_roles")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) is_creator_eligible: bool,
    /// A JSON array of the ids of its permissions.
    pub(crate) permission_ids: String,
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
