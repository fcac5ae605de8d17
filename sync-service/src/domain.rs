//! Typed domain values. Requests are parsed into these once, at the gRPC edge;
//! the store never sees a raw protobuf message or an unchecked string.

use std::sync::OnceLock;

use clerk_sync_api::v1;
use clerk_sync_common::time;
pub use clerk_sync_common::time::timestamp_from_millis;
use prost::{Message, bytes::Bytes};
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

    /// The id as Clerk spells it, owned.
    pub fn into_string(self) -> String {
        self.0
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

pub(crate) fn parse_id(value: String, field: &str) -> Result<String, Error> {
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
    time::millis_from_timestamp(ts).ok_or_else(|| Error::invalid(field, "is out of range"))
}

/// Page size when a request asks for 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page size a request may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Parses the `page_size` of a listing request: 0 asks for
/// [`DEFAULT_PAGE_SIZE`]; negative sizes and sizes above [`MAX_PAGE_SIZE`]
/// are refused.
pub fn page_size(requested: i32) -> Result<u32, Error> {
    match u32::try_from(requested) {
        Err(_) => Err(Error::invalid("page_size", "must not be negative")),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) if n > MAX_PAGE_SIZE => Err(Error::invalid(
            "page_size",
            format!("must be at most {MAX_PAGE_SIZE}"),
        )),
        Ok(n) => Ok(n),
    }
}

pub(crate) fn optional_time(ts: Option<Timestamp>, field: &str) -> Result<Option<Millis>, Error> {
    ts.as_ref()
        .map(|ts| millis_from_timestamp(ts, field))
        .transpose()
}

pub(crate) fn required_time(ts: Option<Timestamp>, field: &str) -> Result<Millis, Error> {
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

/// An email address of a user.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EmailAddress {
    /// As Clerk spells it.
    pub address: String,
    /// The user proved they own it; only then does it identify them.
    pub verified: bool,
    /// The user's primary address.
    pub primary: bool,
}

/// A phone number of a user.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PhoneNumber {
    /// E.164 form.
    pub number: String,
    /// The user proved they own it.
    pub verified: bool,
    /// The user's primary number.
    pub primary: bool,
}

/// An account at an identity provider linked to a user.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExternalAccount {
    /// Clerk's provider name (`oauth_google`, …).
    pub provider: String,
    /// The address the provider reported.
    pub email_address: Option<String>,
    /// Clerk verified the account.
    pub verified: bool,
}

/// What Clerk says about a user's standing: what callers act on before
/// letting the user do anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountState {
    /// Banned by an administrator: cannot sign in.
    pub banned: bool,
    /// Locked out after failed sign-in attempts.
    pub locked: bool,
    /// When the lockout ends (event time + Clerk's lockout duration).
    pub locked_until: Option<Millis>,
    /// A second factor is enabled.
    pub two_factor_enabled: bool,
    /// An authenticator app is enabled.
    pub totp_enabled: bool,
    /// Backup codes are enabled.
    pub backup_codes_enabled: bool,
}

/// A JSON object (Clerk metadata).
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// A user's profile as the directory stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Clerk user id.
    pub id: UserId,
    /// Primary email address, as Clerk spells it.
    pub primary_email_address: Option<String>,
    /// Every address, in Clerk's order.
    pub email_addresses: Vec<EmailAddress>,
    /// Primary phone number.
    pub primary_phone_number: Option<String>,
    /// Every phone number, in Clerk's order.
    pub phone_numbers: Vec<PhoneNumber>,
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
    /// The user uploaded an image.
    pub has_image: bool,
    /// The application's own id for the user.
    pub external_id: Option<String>,
    /// Clerk public_metadata (a JSON object).
    pub public_metadata: JsonObject,
    /// Clerk private_metadata; `None` unless the operator opted in to
    /// storing it.
    pub private_metadata: Option<JsonObject>,
    /// Creation time in Clerk.
    pub created_at: Option<Millis>,
    /// Clerk's version of the profile: last write wins by this.
    pub updated_at: Millis,
    /// Last sign-in time.
    pub last_sign_in_at: Option<Millis>,
    /// Last activity in the application.
    pub last_active_at: Option<Millis>,
    /// When the user accepted the legal terms.
    pub legal_accepted_at: Option<Millis>,
    /// Banned, locked, second factors.
    pub state: AccountState,
    /// Linked identity-provider accounts.
    pub external_accounts: Vec<ExternalAccount>,
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
        let second_factors = user.second_factors.unwrap_or_default();
        Ok(Self {
            id,
            primary_email_address: user.primary_email_address,
            email_addresses: user
                .email_addresses
                .into_iter()
                .map(|email| EmailAddress {
                    address: email.address,
                    verified: email.verified,
                    primary: email.primary,
                })
                .collect(),
            primary_phone_number: user.primary_phone_number,
            phone_numbers: user
                .phone_numbers
                .into_iter()
                .map(|phone| PhoneNumber {
                    number: phone.number,
                    verified: phone.verified,
                    primary: phone.primary,
                })
                .collect(),
            first_name: user.first_name,
            last_name: user.last_name,
            display_name,
            username: user.username,
            image_url: user.image_url,
            has_image: user.has_image,
            external_id: user.external_id,
            public_metadata: user
                .public_metadata
                .map(clerk_sync_api::json::json_from_struct)
                .unwrap_or_default(),
            private_metadata: user
                .private_metadata
                .map(clerk_sync_api::json::json_from_struct),
            created_at: optional_time(user.created_at, &format!("{field}.created_at"))?,
            updated_at,
            last_sign_in_at: optional_time(
                user.last_sign_in_at,
                &format!("{field}.last_sign_in_at"),
            )?,
            last_active_at: optional_time(user.last_active_at, &format!("{field}.last_active_at"))?,
            legal_accepted_at: optional_time(
                user.legal_accepted_at,
                &format!("{field}.legal_accepted_at"),
            )?,
            state: AccountState {
                banned: user.banned,
                locked: user.locked,
                locked_until: optional_time(user.locked_until, &format!("{field}.locked_until"))?,
                two_factor_enabled: user.two_factor_enabled,
                totp_enabled: second_factors.totp,
                backup_codes_enabled: second_factors.backup_codes,
            },
            external_accounts: user
                .external_accounts
                .into_iter()
                .map(|account| ExternalAccount {
                    provider: account.provider,
                    email_address: account.email_address,
                    verified: account.verified,
                })
                .collect(),
        })
    }

    /// The protobuf form served to clients. Private metadata is left out
    /// unless `with_private_metadata`. By reference: a cached profile is
    /// copied once, straight into the message.
    pub fn to_proto(&self, with_private_metadata: bool) -> v1::User {
        let struct_from_json = clerk_sync_api::json::struct_from_json_ref;
        v1::User {
            id: self.id.0.clone(),
            primary_email_address: self.primary_email_address.clone(),
            email_addresses: self
                .email_addresses
                .iter()
                .map(|email| v1::EmailAddress {
                    address: email.address.clone(),
                    verified: email.verified,
                    primary: email.primary,
                })
                .collect(),
            primary_phone_number: self.primary_phone_number.clone(),
            phone_numbers: self
                .phone_numbers
                .iter()
                .map(|phone| v1::PhoneNumber {
                    number: phone.number.clone(),
                    verified: phone.verified,
                    primary: phone.primary,
                })
                .collect(),
            first_name: self.first_name.clone(),
            last_name: self.last_name.clone(),
            display_name: self.display_name.clone(),
            username: self.username.clone(),
            image_url: self.image_url.clone(),
            has_image: self.has_image,
            external_id: self.external_id.clone(),
            public_metadata: Some(struct_from_json(&self.public_metadata)),
            private_metadata: self
                .private_metadata
                .as_ref()
                .filter(|_| with_private_metadata)
                .map(struct_from_json),
            created_at: self.created_at.map(timestamp_from_millis),
            updated_at: Some(timestamp_from_millis(self.updated_at)),
            last_sign_in_at: self.last_sign_in_at.map(timestamp_from_millis),
            last_active_at: self.last_active_at.map(timestamp_from_millis),
            legal_accepted_at: self.legal_accepted_at.map(timestamp_from_millis),
            banned: self.state.banned,
            locked: self.state.locked,
            locked_until: self.state.locked_until.map(timestamp_from_millis),
            two_factor_enabled: self.state.two_factor_enabled,
            second_factors: Some(v1::SecondFactors {
                totp: self.state.totp_enabled,
                backup_codes: self.state.backup_codes_enabled,
            }),
            external_accounts: self
                .external_accounts
                .iter()
                .map(|account| v1::ExternalAccount {
                    provider: account.provider.clone(),
                    email_address: account.email_address.clone(),
                    verified: account.verified,
                })
                .collect(),
        }
    }
}

/// A live user as the store reads it: the profile, and the encoded
/// [`v1::User`] of it for each audience, made at the first read that wants
/// it and then shared. A cached user is one `Arc` of this, so every read of
/// it while the cache holds this version copies those bytes into its reply
/// and builds no message (a change replaces the whole entry).
#[derive(Debug)]
pub struct StoredUser {
    profile: Profile,
    /// Without, then with, private metadata.
    encoded: [OnceLock<Bytes>; 2],
}

impl StoredUser {
    /// A user read from the store.
    pub fn new(profile: Profile) -> Self {
        Self {
            profile,
            encoded: Default::default(),
        }
    }

    /// The encoded [`v1::User`], as [`Profile::to_proto`] gives it.
    pub fn encoded(&self, with_private_metadata: bool) -> Bytes {
        // Without private metadata stored, both audiences get the same bytes.
        let private = with_private_metadata && self.profile.private_metadata.is_some();
        let encoded = &self.encoded[usize::from(private)];
        encoded
            .get_or_init(|| self.profile.to_proto(private).encode_to_vec().into())
            .clone()
    }
}

/// Equal when the profiles are: the encodings are made of them.
impl PartialEq for StoredUser {
    fn eq(&self, other: &Self) -> bool {
        self.profile == other.profile
    }
}

impl std::ops::Deref for StoredUser {
    type Target = Profile;

    fn deref(&self) -> &Profile {
        &self.profile
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

    /// Drops the private metadata the event carries, for a directory that
    /// does not store it: it then never reaches the database or a log.
    pub fn forget_private_metadata(&mut self) {
        if let Change::Upsert(profile) = &mut self.change {
            profile.private_metadata = None;
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
    /// The organization or membership is deleted, or the organization or
    /// user a membership belongs to is; deletes are final.
    Deleted,
}

impl From<Outcome> for v1::Outcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Applied => Self::Applied,
            Outcome::Duplicate => Self::Duplicate,
            Outcome::Stale => Self::Stale,
            Outcome::UserDeleted => Self::UserDeleted,
            Outcome::Deleted => Self::Deleted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_and_timestamps_round_trip_including_before_1970() {
        for ms in [0, 1, 999, 1_654_012_591_835, -1, -1001] {
            assert_eq!(
                millis_from_timestamp(&timestamp_from_millis(ms), "t").unwrap(),
                ms
            );
        }
    }

    #[test]
    fn times_that_do_not_fit_are_invalid_not_wrapped() {
        for (seconds, nanos) in [
            (i64::MAX, 0),
            (i64::MIN, 0),
            (i64::MAX / 1000 + 1, 0),
            (0, -1),
            (0, 1_000_000_000),
        ] {
            let err =
                millis_from_timestamp(&Timestamp { seconds, nanos }, "changed_since").unwrap_err();
            assert!(
                matches!(err, Error::InvalidArgument { .. }),
                "{seconds} {nanos}"
            );
            assert!(err.to_string().starts_with("changed_since "), "{err}");
        }
        let max = Timestamp {
            seconds: i64::MAX / 1000,
            nanos: 807_000_000,
        };
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
