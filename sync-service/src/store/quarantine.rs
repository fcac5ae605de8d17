//! The quarantine: verified deliveries that cannot be applied, stored with
//! their raw body so nothing authentic is lost. One conditional upsert keyed
//! by event id records a delivery, so a redelivery (or two gateways at once)
//! updates the record it already has instead of adding one.

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait,
    sea_query::{Expr, ExprTrait, OnConflict},
};

use clerk_sync_common::time::now_millis;

use super::{Store, entity::quarantined_events as quarantined};
use crate::{
    domain::{EventId, Millis},
    error::Error,
};

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

    /// How many deliveries are quarantined.
    pub async fn count_quarantined(&self) -> Result<u64, Error> {
        use sea_orm::PaginatorTrait;
        Ok(quarantined::Entity::find().count(&self.reads).await?)
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
