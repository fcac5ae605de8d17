//! Typed domain values. Requests are parsed into these once, at the gRPC edge;
//! the store never sees a raw protobuf message or an unchecked string.

use clerk_sync_api::v1;
use prost_types::Timestamp;

use crate::error::Error;

/// Longest id accepted (Clerk and Svix ids are ~30 characters).
const MAX_ID_LEN: usize = 256;

/// A non-empty Clerk user id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(String);

impl UserId {
    /// Parses a user id; `field` names it in the error.
    pub fn parse(value: String, field: &str) -> Result<Self, Error> {
        parse_id(value, field).map(Self)
    }

    /// The id as Clerk spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A non-empty event id (the Svix message id): the deduplication key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(String);

impl EventId {
    /// Parses an event id; `field` names it in the error.
    pub fn parse(value: String, field: &str) -> Result<Self, Error> {
        parse_id(value, field).map(Self)
    }

    /// The id as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn parse_id(value: String, field: &str) -> Result<String, Error> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.chars().any(char::is_control) {
        // PostgreSQL refuses U+0000 in text and SQLite would keep it: refused
        // alike on both backends (the event is quarantined).
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_ID_LEN} bytes"),
        ));
    }
    Ok(value)
}

/// Milliseconds since the Unix epoch: Clerk's unit, and the stored one.
pub type Millis = i64;

/// Converts a protobuf timestamp to Unix milliseconds; `field` names it in
/// the error when the time does not fit (seconds near `i64::MAX`) or `nanos`
/// is outside 0..1e9.
pub fn millis_from_timestamp(ts: &Timestamp, field: &str) -> Result<Millis, Error> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(Error::invalid(field, "has nanos outside 0..1e9"));
    }
    ts.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(ts.nanos) / 1_000_000))
        .ok_or_else(|| Error::invalid(field, "is out of range"))
}

fn optional_time(ts: Option<Timestamp>, field: &str) -> Result<Option<Millis>, Error> {
    ts.as_ref()
        .map(|ts| millis_from_timestamp(ts, field))
        .transpose()
}

/// Converts Unix milliseconds to a protobuf timestamp.
pub fn timestamp_from_millis(ms: Millis) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn required_time(ts: Option<Timestamp>, field: &str) -> Result<Millis, Error> {
    optional_time(ts, field)?.ok_or_else(|| Error::invalid(field, "is required"))
}

/// Which Clerk event a change came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `user.created`
    Created,
    /// `user.updated`
    Updated,
    /// `user.deleted`
    Deleted,
}

impl EventKind {
    /// Clerk's name for the event type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "user.created",
            Self::Updated => "user.updated",
            Self::Deleted => "user.deleted",
        }
    }
}

/// A user's profile as the directory stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Clerk user id.
    pub id: UserId,
    /// Primary email address, as Clerk spells it.
    pub primary_email_address: Option<String>,
    /// Every address, in Clerk's order.
    pub email_addresses: Vec<String>,
    /// Primary phone number.
    pub primary_phone_number: Option<String>,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// A name fit to show; never empty.
    pub display_name: String,
    /// Clerk username.
    pub username: Option<String>,
    /// Profile image URL.
    pub image_url: Option<String>,
    /// The application's own id for the user.
    pub external_id: Option<String>,
    /// Clerk public_metadata (a JSON object).
    pub public_metadata: serde_json::Map<String, serde_json::Value>,
    /// Creation time in Clerk.
    pub created_at: Option<Millis>,
    /// Clerk's version of the profile: last write wins by this.
    pub updated_at: Millis,
    /// Last sign-in time.
    pub last_sign_in_at: Option<Millis>,
}

impl Profile {
    /// Parses the `User` of an ingest request; `field` is its path in errors.
    fn parse(user: Option<v1::User>, field: &str) -> Result<Self, Error> {
        let user = user.ok_or_else(|| Error::invalid(field, "is required"))?;
        let id = UserId::parse(user.id, &format!("{field}.id"))?;
        let updated_at = required_time(user.updated_at, &format!("{field}.updated_at"))?;
        let display_name = if user.display_name.trim().is_empty() {
            id.as_str().to_owned()
        } else {
            user.display_name
        };
        Ok(Self {
            id,
            primary_email_address: user.primary_email_address,
            email_addresses: user.email_addresses,
            primary_phone_number: user.primary_phone_number,
            first_name: user.first_name,
            last_name: user.last_name,
            display_name,
            username: user.username,
            image_url: user.image_url,
            external_id: user.external_id,
            public_metadata: user
                .public_metadata
                .map(clerk_sync_api::json::json_from_struct)
                .unwrap_or_default(),
            created_at: optional_time(user.created_at, &format!("{field}.created_at"))?,
            updated_at,
            last_sign_in_at: optional_time(
                user.last_sign_in_at,
                &format!("{field}.last_sign_in_at"),
            )?,
        })
    }

    /// The protobuf form served to clients.
    pub fn into_proto(self) -> v1::User {
        v1::User {
            id: self.id.0,
            primary_email_address: self.primary_email_address,
            email_addresses: self.email_addresses,
            primary_phone_number: self.primary_phone_number,
            first_name: self.first_name,
            last_name: self.last_name,
            display_name: self.display_name,
            username: self.username,
            image_url: self.image_url,
            external_id: self.external_id,
            public_metadata: Some(clerk_sync_api::json::struct_from_json(self.public_metadata)),
            created_at: self.created_at.map(timestamp_from_millis),
            updated_at: Some(timestamp_from_millis(self.updated_at)),
            last_sign_in_at: self.last_sign_in_at.map(timestamp_from_millis),
        }
    }
}

/// What an event asks the directory to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Create or update the user, if this version is newer than the stored one.
    Upsert(Box<Profile>),
    /// Erase the user and keep a tombstone.
    Delete {
        /// The deleted user.
        user_id: UserId,
        /// When Clerk deleted the user (the event time).
        deleted_at: Millis,
    },
}

/// A validated event, ready for the store.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Deduplication key.
    pub id: EventId,
    /// The Clerk event type.
    pub kind: EventKind,
    /// The change it carries.
    pub change: Change,
}

impl Event {
    /// The user the event is about.
    pub fn user_id(&self) -> &UserId {
        match &self.change {
            Change::Upsert(profile) => &profile.id,
            Change::Delete { user_id, .. } => user_id,
        }
    }

    fn parse_meta(meta: Option<v1::EventMeta>) -> Result<(EventId, Option<Timestamp>), Error> {
        let meta = meta.ok_or_else(|| Error::invalid("event.meta", "is required"))?;
        Ok((
            EventId::parse(meta.event_id, "event.meta.event_id")?,
            meta.occurred_at,
        ))
    }

    fn parse_upsert(
        kind: EventKind,
        meta: Option<v1::EventMeta>,
        user: Option<v1::User>,
    ) -> Result<Self, Error> {
        let (id, _) = Self::parse_meta(meta)?;
        Ok(Self {
            id,
            kind,
            change: Change::Upsert(Box::new(Profile::parse(user, "event.user")?)),
        })
    }
}

impl TryFrom<v1::ApplyUserCreatedRequest> for Event {
    type Error = Error;

    fn try_from(request: v1::ApplyUserCreatedRequest) -> Result<Self, Error> {
        let event = request
            .event
            .ok_or_else(|| Error::invalid("event", "is required"))?;
        Self::parse_upsert(EventKind::Created, event.meta, event.user)
    }
}

impl TryFrom<v1::ApplyUserUpdatedRequest> for Event {
    type Error = Error;

    fn try_from(request: v1::ApplyUserUpdatedRequest) -> Result<Self, Error> {
        let event = request
            .event
            .ok_or_else(|| Error::invalid("event", "is required"))?;
        Self::parse_upsert(EventKind::Updated, event.meta, event.user)
    }
}

impl TryFrom<v1::ApplyUserDeletedRequest> for Event {
    type Error = Error;

    fn try_from(request: v1::ApplyUserDeletedRequest) -> Result<Self, Error> {
        let event = request
            .event
            .ok_or_else(|| Error::invalid("event", "is required"))?;
        let (id, occurred_at) = Self::parse_meta(event.meta)?;
        Ok(Self {
            id,
            kind: EventKind::Deleted,
            change: Change::Delete {
                user_id: UserId::parse(event.user_id, "event.user_id")?,
                deleted_at: required_time(occurred_at, "event.meta.occurred_at")?,
            },
        })
    }
}

/// What applying one event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The directory changed.
    Applied,
    /// The event id was applied before.
    Duplicate,
    /// The stored version is as new or newer.
    Stale,
    /// The user is deleted; deletes are final.
    UserDeleted,
}

impl From<Outcome> for v1::Outcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Applied => Self::Applied,
            Outcome::Duplicate => Self::Duplicate,
            Outcome::Stale => Self::Stale,
            Outcome::UserDeleted => Self::UserDeleted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_and_timestamps_round_trip_including_before_1970() {
        for ms in [0, 1, 999, 1_654_012_591_835, -1, -1001] {
            assert_eq!(millis_from_timestamp(&timestamp_from_millis(ms), "t").unwrap(), ms);
        }
    }

    #[test]
    fn times_that_do_not_fit_are_invalid_not_wrapped() {
        for (seconds, nanos) in [(i64::MAX, 0), (i64::MIN, 0), (i64::MAX / 1000 + 1, 0), (0, -1), (0, 1_000_000_000)] {
            let err = millis_from_timestamp(&Timestamp { seconds, nanos }, "changed_since").unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { .. }), "{seconds} {nanos}");
            assert!(err.to_string().starts_with("changed_since "), "{err}");
        }
        let max = Timestamp { seconds: i64::MAX / 1000, nanos: 807_000_000 };
        assert_eq!(millis_from_timestamp(&max, "t").unwrap(), i64::MAX);
    }

    #[test]
    fn blank_ids_are_rejected_with_the_field_name() {
        let err = UserId::parse("  ".into(), "id").unwrap_err();
        assert_eq!(err.to_string(), "id must not be empty");
        let err = EventId::parse("x".repeat(300), "event.meta.event_id").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("event.meta.event_id must be at most")
        );
    }

    #[test]
    fn a_delete_without_event_time_is_rejected() {
        let request = v1::ApplyUserDeletedRequest {
            event: Some(v1::UserDeleted {
                meta: Some(v1::EventMeta {
                    event_id: "msg_1".into(),
                    occurred_at: None,
                }),
                user_id: "user_1".into(),
            }),
        };
        let err = Event::try_from(request).unwrap_err();
        assert_eq!(err.to_string(), "event.meta.occurred_at is required");
    }
}
