//! `users`: one row per Clerk user; a deleted user is a tombstone row with
//! `deleted_at` set and every personal column NULL.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) id: String,
    pub(crate) primary_email_address: Option<String>,
    /// JSON array of every address, in Clerk's order.
    pub(crate) email_addresses: Option<String>,
    pub(crate) primary_phone_number: Option<String>,
    pub(crate) first_name: Option<String>,
    pub(crate) last_name: Option<String>,
    pub(crate) display_name: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) image_url: Option<String>,
    pub(crate) external_id: Option<String>,
    /// JSON object (Clerk public_metadata).
    pub(crate) public_metadata: Option<String>,
    /// Unix milliseconds, like every time column.
    pub(crate) created_at: Option<i64>,
    /// Clerk's updated_at: the version last-write-wins compares.
    pub(crate) updated_at: i64,
    pub(crate) last_sign_in_at: Option<i64>,
    /// Set once the user is deleted; the row is then a tombstone.
    pub(crate) deleted_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
