//! `users`: one row per Clerk user; a deleted user is a tombstone row with
//! `deleted_at` set and every personal column NULL.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "users")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) id: String,
    pub(crate) primary_email_address: Option<String>,
    /// JSON array of every address (`{address, verified, primary}`), in
    /// Clerk's order; rows written before verification was tracked hold bare
    /// strings.
    pub(crate) email_addresses: Option<String>,
    pub(crate) primary_phone_number: Option<String>,
    /// JSON array of every phone number (`{number, verified, primary}`).
    pub(crate) phone_numbers: Option<String>,
    pub(crate) first_name: Option<String>,
    pub(crate) last_name: Option<String>,
    pub(crate) display_name: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) image_url: Option<String>,
    pub(crate) has_image: bool,
    pub(crate) external_id: Option<String>,
    /// JSON object (Clerk public_metadata).
    pub(crate) public_metadata: Option<String>,
    /// JSON object (Clerk private_metadata); NULL unless the operator opted in.
    pub(crate) private_metadata: Option<String>,
    /// Unix milliseconds, like every time column.
    pub(crate) created_at: Option<i64>,
    /// Clerk's updated_at: the version last-write-wins compares.
    pub(crate) updated_at: i64,
    pub(crate) last_sign_in_at: Option<i64>,
    pub(crate) last_active_at: Option<i64>,
    pub(crate) legal_accepted_at: Option<i64>,
    pub(crate) banned: bool,
    pub(crate) locked: bool,
    pub(crate) locked_until: Option<i64>,
    pub(crate) two_factor_enabled: bool,
    pub(crate) totp_enabled: bool,
    pub(crate) backup_code_enabled: bool,
    /// JSON array of linked accounts (`{provider, email_address, verified}`).
    pub(crate) external_accounts: Option<String>,
    /// Which version of the mapping wrote the row: the same Clerk version
    /// re-delivered replaces a row an older mapping wrote (see `apply`).
    pub(crate) profile_format: i32,
    /// Set once the user is deleted; the row is then a tombstone.
    pub(crate) deleted_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
