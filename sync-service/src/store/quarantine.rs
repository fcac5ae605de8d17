//! The quarantine: verified deliveries that cannot be applied, stored with
//! their body so nothing authentic is lost. One conditional upsert keyed by
//! event id records a delivery, so a redelivery (or two gateways at once)
//! updates the record it already has instead of adding one.
//!
//! Bodies hold personal data, so the quarantine keeps them no longer than
//! the directory would: deleting a user erases the records about them (at
//! once after the deletion commits, and by the periodic sweep should that
//! fail), records are dropped after their retention, and the quarantine
//! refuses new records (the gateway answers 503 and Svix retries) once its
//! bodies reach a size cap.

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait,
    sea_query::{Expr, ExprTrait, OnConflict},
};

use clerk_sync_common::time::now_millis;

use super::{Store, entity::quarantined_events as quarantined};
use crate::{
    domain::{EventId, Millis, UserId},
    error::Error,
};

use super::entity::users;

/// A delivery to quarantine, parsed at the gRPC edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewQuarantined {
    /// The svix-id.
    pub event_id: EventId,
    /// The payload's `type`, if it could be read.
    pub event_type: Option<String>,
    /// Why it cannot be applied.
    pub reason: String,
    /// The verified body.
    pub body: Vec<u8>,
    /// The signed svix-timestamp, Unix seconds.
    pub svix_timestamp: i64,
    /// The user the delivery is about, when its body names one.
    pub user_id: Option<UserId>,
}

/// A quarantine record as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// The svix-id.
    pub event_id: String,
    /// The payload's `type`, if it could be read.
    pub event_type: Option<String>,
    /// Why it cannot be applied (the latest reason).
    pub reason: String,
    /// The verified body; `None` where a listing leaves it out.
    pub body: Option<Vec<u8>>,
    /// Size of the body in bytes.
    pub body_size: u64,
    /// The signed svix-timestamp, Unix seconds.
    pub svix_timestamp: i64,
    /// First quarantined, Unix milliseconds.
    pub first_seen_at: Millis,
    /// Last quarantined, Unix milliseconds.
    pub last_seen_at: Millis,
    /// How many times it was quarantined.
    pub seen_count: u64,
}

/// A record without its body, as listings read it.
#[derive(Debug, FromQueryResult)]
struct Summary {
    event_id: String,
    event_type: Option<String>,
    reason: String,
    body_size: i64,
    svix_timestamp: i64,
    first_seen_at: i64,
    last_seen_at: i64,
    seen_count: i64,
}

impl From<Summary> for Quarantined {
    fn from(row: Summary) -> Self {
        Self {
            event_id: row.event_id,
            event_type: row.event_type,
            reason: row.reason,
            body: None,
            body_size: row.body_size.try_into().unwrap_or_default(),
            svix_timestamp: row.svix_timestamp,
            first_seen_at: row.first_seen_at,
            last_seen_at: row.last_seen_at,
            seen_count: row.seen_count.try_into().unwrap_or_default(),
        }
    }
}

impl From<quarantined::Model> for Quarantined {
    fn from(row: quarantined::Model) -> Self {
        Self {
            event_id: row.event_id,
            event_type: row.event_type,
            reason: row.reason,
            body_size: row.body.len() as u64,
            body: Some(row.body),
            svix_timestamp: row.svix_timestamp,
            first_seen_at: row.first_seen_at,
            last_seen_at: row.last_seen_at,
            seen_count: row.seen_count.try_into().unwrap_or_default(),
        }
    }
}

impl Store {
    /// Records `delivery` (or, if its event id is already quarantined, bumps
    /// that record's last sighting and count and keeps the newest reason and
    /// body) and returns the record without its body. Committed on return.
    pub async fn quarantine(&self, delivery: NewQuarantined) -> Result<Quarantined, Error> {
        let now = now_millis();
        let body_size = delivery.body.len() as i64;
        let row = quarantined::ActiveModel {
            event_id: Set(delivery.event_id.as_str().to_owned()),
            event_type: Set(delivery.event_type),
            body: Set(delivery.body),
            svix_timestamp: Set(delivery.svix_timestamp),
            reason: Set(delivery.reason),
            first_seen_at: Set(now),
            last_seen_at: Set(now),
            seen_count: Set(1),
            user_id: Set(delivery.user_id.map(|id| id.as_str().to_owned())),
        };
        let stored_count = Expr::col((quarantined::Entity, quarantined::Column::SeenCount));
        let mut insert = quarantined::Entity::insert(row)
            .on_conflict(
                OnConflict::column(quarantined::Column::EventId)
                    .update_columns([
                        quarantined::Column::EventType,
                        quarantined::Column::Body,
                        quarantined::Column::SvixTimestamp,
                        quarantined::Column::Reason,
                        quarantined::Column::LastSeenAt,
                        quarantined::Column::UserId,
                    ])
                    .value(quarantined::Column::SeenCount, stored_count.add(1))
                    .to_owned(),
            )
            .into_query();
        insert.returning(sea_orm::sea_query::Query::returning().columns(SUMMARY_COLUMNS));
        let row = self
            .db
            .query_one(&insert)
            .await?
            .ok_or_else(|| Error::Corrupt("quarantine upsert returned no row".into()))?;
        let get_i64 = |column: &str| row.try_get::<i64>("", column);
        Ok(Summary {
            event_id: row.try_get("", "event_id")?,
            event_type: row.try_get("", "event_type")?,
            reason: row.try_get("", "reason")?,
            body_size,
            svix_timestamp: get_i64("svix_timestamp")?,
            first_seen_at: get_i64("first_seen_at")?,
            last_seen_at: get_i64("last_seen_at")?,
            seen_count: get_i64("seen_count")?,
        }
        .into())
    }

    /// Up to `limit` records after `after` (a (first_seen_at, event_id)
    /// position), in that order, without bodies.
    pub async fn list_quarantined(
        &self,
        limit: u64,
        after: Option<(Millis, String)>,
    ) -> Result<Vec<Quarantined>, Error> {
        let mut select = quarantined::Entity::find().select_only();
        for column in SUMMARY_COLUMNS {
            select = select.column(column);
        }
        // LENGTH of a blob / bytea is its size in bytes on both backends.
        select = select.column_as(Expr::cust(r#"CAST(LENGTH("body") AS BIGINT)"#), "body_size");
        if let Some((first_seen_at, event_id)) = after {
            select = select.filter(
                Expr::col(quarantined::Column::FirstSeenAt)
                    .gt(first_seen_at)
                    .or(Expr::col(quarantined::Column::FirstSeenAt)
                        .eq(first_seen_at)
                        .and(Expr::col(quarantined::Column::EventId).gt(event_id))),
            );
        }
        Ok(select
            .order_by_asc(quarantined::Column::FirstSeenAt)
            .order_by_asc(quarantined::Column::EventId)
            .limit(limit)
            .into_model::<Summary>()
            .all(&self.reads)
            .await?
            .into_iter()
            .map(Quarantined::from)
            .collect())
    }

    /// The record of `event_id`, with its body.
    pub async fn get_quarantined(&self, event_id: &EventId) -> Result<Quarantined, Error> {
        quarantined::Entity::find_by_id(event_id.as_str())
            .one(&self.reads)
            .await?
            .map(Quarantined::from)
            .ok_or_else(|| not_found(event_id))
    }

    /// Deletes the record of `event_id`.
    pub async fn drop_quarantined(&self, event_id: &EventId) -> Result<(), Error> {
        let deleted = quarantined::Entity::delete_many()
            .filter(quarantined::Column::EventId.eq(event_id.as_str()))
            .exec(&self.db)
            .await?;
        if deleted.rows_affected == 0 {
            return Err(not_found(event_id));
        }
        Ok(())
    }

    /// How many deliveries are quarantined, and the bytes of their bodies.
    pub async fn quarantine_size(&self) -> Result<(u64, u64), Error> {
        #[derive(FromQueryResult)]
        struct Size {
            records: i64,
            bytes: i64,
        }
        let size = quarantined::Entity::find()
            .select_only()
            .column_as(Expr::cust("CAST(COUNT(*) AS BIGINT)"), "records")
            .column_as(
                Expr::cust(r#"CAST(COALESCE(SUM(LENGTH("body")), 0) AS BIGINT)"#),
                "bytes",
            )
            .into_model::<Size>()
            .one(&self.reads)
            .await?
            .ok_or_else(|| Error::Corrupt("an aggregate returned no row".into()))?;
        Ok((
            size.records.try_into().unwrap_or_default(),
            size.bytes.try_into().unwrap_or_default(),
        ))
    }

    /// Erases the records about `users` (just deleted); returns how many.
    pub async fn erase_quarantined_of(&self, users: &[&str]) -> Result<u64, Error> {
        if users.is_empty() {
            return Ok(0);
        }
        let mut erased = 0;
        // Chunks stay under every backend's bind-parameter limit.
        for chunk in users.chunks(1000) {
            erased += quarantined::Entity::delete_many()
                .filter(quarantined::Column::UserId.is_in(chunk.iter().copied()))
                .exec(&self.db)
                .await?
                .rows_affected;
        }
        Ok(erased)
    }

    /// Drops records last seen before `before` (Unix milliseconds) and any
    /// record about a deleted user; returns how many.
    pub async fn prune_quarantine(&self, before: Millis) -> Result<u64, Error> {
        let deleted_users = users::Entity::find()
            .select_only()
            .column(users::Column::Id)
            .filter(users::Column::DeletedAt.is_not_null())
            .into_query();
        let pruned = quarantined::Entity::delete_many()
            .filter(
                quarantined::Column::LastSeenAt
                    .lt(before)
                    .or(quarantined::Column::UserId.in_subquery(deleted_users)),
            )
            .exec(&self.db)
            .await?;
        Ok(pruned.rows_affected)
    }
}

fn not_found(event_id: &EventId) -> Error {
    Error::NotFound(format!("event {} is not quarantined", event_id.as_str()))
}

/// Every column but the body.
const SUMMARY_COLUMNS: [quarantined::Column; 7] = [
    quarantined::Column::EventId,
    quarantined::Column::EventType,
    quarantined::Column::Reason,
    quarantined::Column::SvixTimestamp,
    quarantined::Column::FirstSeenAt,
    quarantined::Column::LastSeenAt,
    quarantined::Column::SeenCount,
];
