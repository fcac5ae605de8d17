//! `organization_memberships`: one row per Clerk membership; an ended one
//! keeps a tombstone (`deleted_at` set, personal data erased).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "organization_memberships")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) id: String,
    pub(crate) organization_id: String,
    pub(crate) user_id: String,
    pub(crate) role: String,
    pub(crate) role_name: String,
    /// A JSON array of permission keys.
    pub(crate) permissions: String,
    /// A JSON object.
    pub(crate) public_metadata: String,
    /// A JSON object; `None` unless private metadata is stored.
    pub(crate) private_metadata: Option<String>,
    /// The member's public data (JSON object).
    pub(crate) public_user_data: String,
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
