//! `organizations`: one row per Clerk organization; a deleted one keeps a
//! tombstone (`deleted_at` set, names and metadata erased).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "organizations")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) slug: Option<String>,
    pub(crate) image_url: Option<String>,
    pub(crate) has_image: bool,
    pub(crate) max_allowed_memberships: i64,
    pub(crate) admin_delete_enabled: bool,
    /// A JSON object.
    pub(crate) public_metadata: String,
    /// A JSON object; `None` unless private metadata is stored.
    pub(crate) private_metadata: Option<String>,
    pub(crate) created_by: Option<String>,
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
