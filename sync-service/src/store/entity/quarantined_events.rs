//! `quarantined_events`: verified deliveries that cannot be applied, keyed by
//! event id, with their raw body.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "quarantined_events")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) event_id: String,
    /// The payload's `type`, when it could be read.
    pub(crate) event_type: Option<String>,
    /// The verified body, byte for byte.
    pub(crate) body: Vec<u8>,
    /// The signed svix-timestamp, Unix seconds.
    pub(crate) svix_timestamp: i64,
    pub(crate) reason: String,
    /// Unix milliseconds.
    pub(crate) first_seen_at: i64,
    /// Unix milliseconds.
    pub(crate) last_seen_at: i64,
    pub(crate) seen_count: i64,
    /// The user the delivery is about, when its body names one: deleting
    /// the user erases the record.
    pub(crate) user_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
