//! `organization_invitations`: one row per Clerk invitation (its acceptance
//! link is never kept).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "organization_invitations")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) id: String,
    pub(crate) organization_id: String,
    pub(crate) email_address: String,
    pub(crate) role: String,
    pub(crate) role_name: String,
    /// `pending`, `accepted` or `revoked`.
    pub(crate) status: String,
    /// A JSON object.
    pub(crate) public_metadata: String,
    /// A JSON object; `None` unless private metadata is stored.
    pub(crate) private_metadata: Option<String>,
    /// Who accepted it.
    pub(crate) user_id: Option<String>,
    /// Unix milliseconds.
    pub(crate) expires_at: Option<i64>,
    /// Unix milliseconds.
    pub(crate) created_at: Option<i64>,
    /// Unix milliseconds: the last-write-wins key.
    pub(crate) updated_at: i64,
    /// Unix milliseconds; set when the organization is deleted.
    pub(crate) deleted_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
