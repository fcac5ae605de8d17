//! Clerk's webhook JSON, parsed once into typed values, and its mapping onto the
//! `clerk.sync.v1` messages the sync-service applies.
//!
//! Only the verified body reaches this module. Strings are borrowed from the body
//! where Clerk sent them without escapes. Organization and membership events
//! keep their data raw for [`crate::organizations`]; other event types are
//! recognised as [`ClerkEvent::Other`] without looking inside their data.

use std::borrow::Cow;
use std::fmt;

use clerk_sync_api::v1::{
    self, EventMeta, SecondFactors, User, UserCreated, UserDeleted, UserUpdated,
};
use clerk_sync_common::time::timestamp_from_millis;
use prost_types::Timestamp;
use serde::{Deserialize, Deserializer, de};
use serde_json::value::RawValue;

use crate::{Error, verify::Delivery};

/// A verified Clerk webhook, typed by its `type`.
#[derive(Debug)]
pub enum ClerkEvent<'a> {
    /// `user.created`: the complete new user.
    UserCreated(Envelope<ClerkUser<'a>>),
    /// `user.updated`: the complete user after the change.
    UserUpdated(Envelope<ClerkUser<'a>>),
    /// `user.deleted`: only the id of the user that is gone.
    UserDeleted(Envelope<DeletedUser<'a>>),
    /// One of [`crate::organizations::EVENT_TYPES`], mapped there.
    Organization {
        /// The event's `type`.
        event_type: &'static str,
        /// The event's object, unparsed.
        data: Envelope<&'a RawValue>,
    },
    /// Any other event type (`session.created`, …): acknowledged, not forwarded.
    Other {
        /// The event's `type`, for the logs.
        event_type: Text<'a>,
    },
}

/// What every event carries around its `data`.
#[derive(Debug)]
pub struct Envelope<T> {
    /// When Clerk emitted the event, in Unix milliseconds (`timestamp`), if sent.
    pub timestamp_ms: Option<i64>,
    /// The event's object.
    pub data: T,
}

/// The outer JSON object, with `data` kept as raw text until `type` is known.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(rename = "type")]
    event_type: Option<Text<'a>>,
    timestamp: Option<i64>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// A Clerk user object (the `data` of `user.created` and `user.updated`).
///
/// Fields are optional where Clerk may send `null` or leave them out; the ones
/// the sync-service needs are checked when mapping ([`UserEvent::from_clerk`]).
#[derive(Debug, Deserialize)]
pub struct ClerkUser<'a> {
    /// Clerk user id.
    #[serde(borrow)]
    pub id: Option<Text<'a>>,
    /// Every email address, in Clerk's order.
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    pub email_addresses: Vec<EmailAddress<'a>>,
    /// Id of the entry of `email_addresses` that is primary.
    #[serde(borrow)]
    pub primary_email_address_id: Option<Text<'a>>,
    /// Every phone number, in Clerk's order.
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    pub phone_numbers: Vec<PhoneNumber<'a>>,
    /// Id of the entry of `phone_numbers` that is primary.
    #[serde(borrow)]
    pub primary_phone_number_id: Option<Text<'a>>,
    /// Given name.
    #[serde(borrow)]
    pub first_name: Option<Text<'a>>,
    /// Family name.
    #[serde(borrow)]
    pub last_name: Option<Text<'a>>,
    /// Username, on instances that use them.
    #[serde(borrow)]
    pub username: Option<Text<'a>>,
    /// Profile image URL.
    #[serde(borrow)]
    pub image_url: Option<Text<'a>>,
    /// The application's own id for the user.
    #[serde(borrow)]
    pub external_id: Option<Text<'a>>,
    /// Whether the user uploaded a profile image.
    pub has_image: Option<bool>,
    /// Public metadata, a JSON object.
    pub public_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Private (server-side) metadata, a JSON object. The sync-service keeps
    /// it only when its operator opted in.
    pub private_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Creation time, Unix milliseconds.
    pub created_at: Option<i64>,
    /// Last change, Unix milliseconds: the version for last-write-wins.
    pub updated_at: Option<i64>,
    /// Last sign-in, Unix milliseconds; null if never.
    pub last_sign_in_at: Option<i64>,
    /// Last activity, Unix milliseconds.
    pub last_active_at: Option<i64>,
    /// When the legal terms were accepted, Unix milliseconds.
    pub legal_accepted_at: Option<i64>,
    /// Banned by an administrator.
    pub banned: Option<bool>,
    /// Locked out after failed sign-in attempts.
    pub locked: Option<bool>,
    /// Seconds until the lockout ends, counted from the event.
    pub lockout_expires_in_seconds: Option<i64>,
    /// Any second factor enabled.
    pub two_factor_enabled: Option<bool>,
    /// An authenticator app enabled.
    pub totp_enabled: Option<bool>,
    /// Backup codes enabled.
    pub backup_code_enabled: Option<bool>,
    /// Linked identity-provider accounts.
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    pub external_accounts: Vec<ClerkExternalAccount<'a>>,
}

/// The `verification` object of an address, number or linked account.
#[derive(Debug, Deserialize)]
pub struct Verification<'a> {
    /// `verified`, `unverified`, `expired`, …
    #[serde(borrow)]
    pub status: Option<Text<'a>>,
}

/// Whether a `verification` says the owner proved it. Anything but Clerk's
/// `verified` (no verification, unverified, expired, transferable) is not.
fn is_verified(verification: Option<&Verification<'_>>) -> bool {
    verification
        .and_then(|v| v.status.as_ref())
        .is_some_and(|status| status.as_str() == "verified")
}

/// An entry of a user's `external_accounts`.
#[derive(Debug, Deserialize)]
pub struct ClerkExternalAccount<'a> {
    /// `oauth_google`, `oauth_github`, …
    #[serde(borrow)]
    pub provider: Option<Text<'a>>,
    /// The address the provider reported.
    #[serde(borrow)]
    pub email_address: Option<Text<'a>>,
    /// Whether Clerk verified the account.
    #[serde(borrow)]
    pub verification: Option<Verification<'a>>,
}

/// An entry of a user's `email_addresses`.
#[derive(Debug, Deserialize)]
pub struct EmailAddress<'a> {
    /// Clerk's id of this address (`idn_…`).
    #[serde(borrow)]
    pub id: Option<Text<'a>>,
    /// The address as the user typed it.
    #[serde(borrow)]
    pub email_address: Option<Text<'a>>,
    /// Whether the user proved they own it.
    #[serde(borrow)]
    pub verification: Option<Verification<'a>>,
}

/// An entry of a user's `phone_numbers`.
#[derive(Debug, Deserialize)]
pub struct PhoneNumber<'a> {
    /// Clerk's id of this number (`idn_…`).
    #[serde(borrow)]
    pub id: Option<Text<'a>>,
    /// The number in E.164 form.
    #[serde(borrow)]
    pub phone_number: Option<Text<'a>>,
    /// Whether the user proved they own it.
    #[serde(borrow)]
    pub verification: Option<Verification<'a>>,
}

/// The `data` of `user.deleted`: Clerk sends only `{id, object, deleted}`.
#[derive(Debug, Deserialize)]
pub struct DeletedUser<'a> {
    /// Id of the deleted user.
    #[serde(borrow)]
    pub id: Option<Text<'a>>,
}

/// A JSON string borrowed from the body when it has no escapes, owned otherwise.
///
/// (`Option<Cow<str>>` never borrows with serde; this wrapper does.)
#[derive(Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

impl<'a> ClerkEvent<'a> {
    /// Parses a verified webhook body. Invalid JSON, a missing `type`, or a
    /// `user.*` event whose `data` is missing or not a user object is an error
    /// (HTTP 400); other event types are not looked into.
    pub fn parse(body: &'a [u8]) -> Result<Self, Error> {
        let raw: RawEnvelope<'a> = serde_json::from_slice(body).map_err(Error::InvalidJson)?;
        let event_type = raw.event_type.ok_or(Error::MissingField("type"))?;
        let timestamp_ms = raw.timestamp;
        let data = |raw_data: Option<&'a RawValue>| raw_data.ok_or(Error::MissingField("data"));
        Ok(match event_type.as_str() {
            "user.created" => {
                ClerkEvent::UserCreated(Envelope::parse(timestamp_ms, data(raw.data)?)?)
            }
            "user.updated" => {
                ClerkEvent::UserUpdated(Envelope::parse(timestamp_ms, data(raw.data)?)?)
            }
            "user.deleted" => {
                ClerkEvent::UserDeleted(Envelope::parse(timestamp_ms, data(raw.data)?)?)
            }
            other => match crate::organizations::EVENT_TYPES
                .iter()
                .find(|known| **known == other)
            {
                Some(event_type) => ClerkEvent::Organization {
                    event_type,
                    data: Envelope {
                        timestamp_ms,
                        data: data(raw.data)?,
                    },
                },
                None => ClerkEvent::Other { event_type },
            },
        })
    }

    /// The event's `type`.
    pub fn event_type(&self) -> &str {
        match self {
            ClerkEvent::UserCreated(_) => "user.created",
            ClerkEvent::UserUpdated(_) => "user.updated",
            ClerkEvent::UserDeleted(_) => "user.deleted",
            ClerkEvent::Organization { event_type, .. } => event_type,
            ClerkEvent::Other { event_type } => event_type.as_str(),
        }
    }

    /// The id of the user the event is about, when it is a user event that has one.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            ClerkEvent::UserCreated(event) | ClerkEvent::UserUpdated(event) => {
                event.data.id.as_ref().map(Text::as_str)
            }
            ClerkEvent::UserDeleted(event) => event.data.id.as_ref().map(Text::as_str),
            ClerkEvent::Organization { .. } | ClerkEvent::Other { .. } => None,
        }
    }
}

impl<T> Envelope<T> {
    fn parse<'a>(timestamp_ms: Option<i64>, data: &'a RawValue) -> Result<Self, Error>
    where
        T: Deserialize<'a>,
    {
        Ok(Self {
            timestamp_ms,
            data: serde_json::from_str(data.get()).map_err(Error::InvalidJson)?,
        })
    }

    fn meta(&self, delivery: &Delivery<'_>) -> EventMeta {
        let occurred_at = match self.timestamp_ms {
            Some(ms) => timestamp_from_millis(ms),
            None => Timestamp {
                seconds: delivery.timestamp,
                nanos: 0,
            },
        };
        EventMeta {
            event_id: delivery.id.to_owned(),
            occurred_at: Some(occurred_at),
        }
    }
}

/// A user event in the sync-service's terms, ready to forward.
#[derive(Debug, Clone, PartialEq)]
pub enum UserEvent {
    /// For `ApplyUserCreated`.
    Created(UserCreated),
    /// For `ApplyUserUpdated`.
    Updated(UserUpdated),
    /// For `ApplyUserDeleted`.
    Deleted(UserDeleted),
}

impl UserEvent {
    /// Maps a parsed event onto its sync message; `None` for event types the
    /// directory does not track. `delivery` supplies the event id and, when the
    /// payload has no `timestamp`, the time of the event.
    ///
    /// A user event without `data.id` (or, for created/updated, without
    /// `data.updated_at`) is [`Error::MissingField`].
    pub fn from_clerk(
        event: ClerkEvent<'_>,
        delivery: &Delivery<'_>,
    ) -> Result<Option<Self>, Error> {
        Ok(Some(match event {
            ClerkEvent::UserCreated(event) => {
                let meta = event.meta(delivery);
                UserEvent::Created(UserCreated {
                    user: Some(user_from_clerk(event.data, meta.occurred_at)?),
                    meta: Some(meta),
                })
            }
            ClerkEvent::UserUpdated(event) => {
                let meta = event.meta(delivery);
                UserEvent::Updated(UserUpdated {
                    user: Some(user_from_clerk(event.data, meta.occurred_at)?),
                    meta: Some(meta),
                })
            }
            ClerkEvent::UserDeleted(event) => {
                let meta = event.meta(delivery);
                UserEvent::Deleted(UserDeleted {
                    meta: Some(meta),
                    user_id: required_id(event.data.id)?,
                })
            }
            ClerkEvent::Organization { .. } | ClerkEvent::Other { .. } => return Ok(None),
        }))
    }
}

fn required_id(id: Option<Text<'_>>) -> Result<String, Error> {
    match id {
        Some(id) if !id.as_str().trim().is_empty() => Ok(id.0.into_owned()),
        _ => Err(Error::MissingField("data.id")),
    }
}

/// Maps a Clerk user object. `observed_at` is when Clerk reported it (the
/// event's time): a lockout's end is counted from there.
pub fn user_from_clerk(user: ClerkUser<'_>, observed_at: Option<Timestamp>) -> Result<User, Error> {
    let id = required_id(user.id)?;
    let updated_at = user
        .updated_at
        .ok_or(Error::MissingField("data.updated_at"))?;

    let primary_email_address = primary(
        &user.email_addresses,
        user.primary_email_address_id.as_ref(),
        |entry| (&entry.id, &entry.email_address),
    );
    let primary_phone_number = primary(
        &user.phone_numbers,
        user.primary_phone_number_id.as_ref(),
        |entry| (&entry.id, &entry.phone_number),
    );
    let email_addresses = user
        .email_addresses
        .iter()
        .filter_map(|entry| {
            Some(v1::EmailAddress {
                address: entry.email_address.as_ref()?.as_str().to_owned(),
                verified: is_verified(entry.verification.as_ref()),
                primary: entry.id.is_some() && entry.id == user.primary_email_address_id,
            })
        })
        .collect();
    let phone_numbers = user
        .phone_numbers
        .iter()
        .filter_map(|entry| {
            Some(v1::PhoneNumber {
                number: entry.phone_number.as_ref()?.as_str().to_owned(),
                verified: is_verified(entry.verification.as_ref()),
                primary: entry.id.is_some() && entry.id == user.primary_phone_number_id,
            })
        })
        .collect();
    let external_accounts = user
        .external_accounts
        .iter()
        .filter_map(|account| {
            Some(v1::ExternalAccount {
                provider: account.provider.as_ref()?.as_str().to_owned(),
                email_address: account
                    .email_address
                    .as_ref()
                    .filter(|email| !email.as_str().trim().is_empty())
                    .map(|email| email.as_str().to_owned()),
                verified: is_verified(account.verification.as_ref()),
            })
        })
        .collect();
    let locked = user.locked.unwrap_or(false);
    let locked_until = match (locked, user.lockout_expires_in_seconds, observed_at) {
        (true, Some(seconds), Some(at)) if seconds >= 0 => Some(Timestamp {
            seconds: at.seconds.saturating_add(seconds),
            nanos: at.nanos,
        }),
        _ => None,
    };

    let first_name = non_empty(user.first_name);
    let last_name = non_empty(user.last_name);
    let username = non_empty(user.username);
    let display_name = display_name(
        first_name.as_deref(),
        last_name.as_deref(),
        username.as_deref(),
        primary_email_address.as_deref(),
        primary_phone_number.as_deref(),
        &id,
    );

    Ok(User {
        id,
        primary_email_address,
        email_addresses,
        primary_phone_number,
        phone_numbers,
        first_name,
        last_name,
        display_name,
        username,
        image_url: non_empty(user.image_url),
        has_image: user.has_image.unwrap_or(false),
        external_id: non_empty(user.external_id),
        public_metadata: user
            .public_metadata
            .map(clerk_sync_api::json::struct_from_json),
        private_metadata: user
            .private_metadata
            .map(clerk_sync_api::json::struct_from_json),
        created_at: user.created_at.map(timestamp_from_millis),
        updated_at: Some(timestamp_from_millis(updated_at)),
        last_sign_in_at: user.last_sign_in_at.map(timestamp_from_millis),
        last_active_at: user.last_active_at.map(timestamp_from_millis),
        legal_accepted_at: user.legal_accepted_at.map(timestamp_from_millis),
        banned: user.banned.unwrap_or(false),
        locked,
        locked_until,
        two_factor_enabled: user.two_factor_enabled.unwrap_or(false),
        second_factors: Some(SecondFactors {
            totp: user.totp_enabled.unwrap_or(false),
            backup_codes: user.backup_code_enabled.unwrap_or(false),
        }),
        external_accounts,
    })
}

/// The value of the entry whose id is `primary_id`; `None` when no id is given
/// or no entry has it (Clerk users may have no email or no phone at all).
fn primary<'e, 'a: 'e, E>(
    entries: &'e [E],
    primary_id: Option<&Text<'a>>,
    fields: impl Fn(&'e E) -> (&'e Option<Text<'a>>, &'e Option<Text<'a>>),
) -> Option<String> {
    let primary_id = primary_id?;
    entries.iter().find_map(|entry| {
        let (id, value) = fields(entry);
        (id.as_ref() == Some(primary_id))
            .then(|| value.as_ref().map(|value| value.as_str().to_owned()))
            .flatten()
    })
}

/// Clerk sends `null` for absent names; an empty or blank string means the same.
fn non_empty(text: Option<Text<'_>>) -> Option<String> {
    text.filter(|text| !text.as_str().trim().is_empty())
        .map(|text| text.0.into_owned())
}

/// A name fit to show a person: "first last" when either is known, else the
/// username, the primary email, the primary phone, or the user id.
fn display_name(
    first: Option<&str>,
    last: Option<&str>,
    username: Option<&str>,
    email: Option<&str>,
    phone: Option<&str>,
    id: &str,
) -> String {
    let full_name = [first, last]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if !full_name.is_empty() {
        return full_name;
    }
    [username, email, phone]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|candidate| !candidate.is_empty())
        .unwrap_or(id)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::value::Kind;

    const SVIX_TIMESTAMP: i64 = 1_700_000_000;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../tests/fixtures/clerk/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn delivery() -> Delivery<'static> {
        Delivery {
            id: "msg_test",
            timestamp: SVIX_TIMESTAMP,
        }
    }

    fn map(body: &[u8]) -> Result<Option<UserEvent>, Error> {
        UserEvent::from_clerk(ClerkEvent::parse(body)?, &delivery())
    }

    fn created_user(body: &[u8]) -> (EventMeta, User) {
        match map(body).unwrap() {
            Some(UserEvent::Created(UserCreated {
                meta: Some(meta),
                user: Some(user),
            })) => (meta, user),
            other => panic!("not a user.created: {other:?}"),
        }
    }

    fn ts(ms: i64) -> Option<Timestamp> {
        Some(timestamp_from_millis(ms))
    }

    #[test]
    fn user_created_maps_every_field() {
        let (meta, user) = created_user(&fixture("user.created.json"));
        assert_eq!(
            meta,
            EventMeta {
                event_id: "msg_test".into(),
                occurred_at: Some(Timestamp {
                    seconds: 1_654_012_591,
                    nanos: 835_000_000
                }),
            }
        );
        assert_eq!(
            user,
            User {
                id: "user_29w83sxmDNGwOuEthce5gg56FcC".into(),
                primary_email_address: Some("example@example.org".into()),
                email_addresses: vec![v1::EmailAddress {
                    address: "example@example.org".into(),
                    verified: true,
                    primary: true,
                }],
                primary_phone_number: None,
                phone_numbers: vec![],
                first_name: Some("Example".into()),
                last_name: Some("Example".into()),
                display_name: "Example Example".into(),
                username: None,
                image_url: Some("https://img.clerk.com/xxxxxx".into()),
                has_image: false,
                external_id: Some("567772".into()),
                public_metadata: Some(prost_types::Struct::default()),
                private_metadata: Some(prost_types::Struct::default()),
                created_at: ts(1_654_012_591_514),
                updated_at: ts(1_654_012_591_835),
                last_sign_in_at: ts(1_654_012_591_514),
                // The catalogue example predates these: absent means no.
                last_active_at: None,
                legal_accepted_at: None,
                banned: false,
                locked: false,
                locked_until: None,
                two_factor_enabled: false,
                second_factors: Some(SecondFactors::default()),
                external_accounts: vec![],
            }
        );
    }

    fn updated_user(body: &[u8]) -> User {
        match map(body).unwrap() {
            Some(UserEvent::Updated(UserUpdated {
                user: Some(user), ..
            })) => user,
            other => panic!("not a user.updated: {other:?}"),
        }
    }

    #[test]
    fn account_state_is_mapped_and_the_lockout_counts_from_the_event() {
        let user = updated_user(&fixture("user.updated.banned-locked.json"));
        assert!(user.banned);
        assert!(user.locked);
        // The event's timestamp (1654012884306 ms) plus 3600 s.
        assert_eq!(
            user.locked_until,
            Some(Timestamp {
                seconds: 1_654_012_884 + 3600,
                nanos: 306_000_000
            })
        );
        assert!(user.two_factor_enabled);
        assert_eq!(
            user.second_factors,
            Some(SecondFactors {
                totp: true,
                backup_codes: true
            })
        );
        assert!(user.has_image);
        assert_eq!(user.last_active_at, ts(1_654_012_700_000));
        assert_eq!(user.legal_accepted_at, ts(1_654_012_591_514));
        let private = user.private_metadata.unwrap().fields;
        assert_eq!(
            private["role"].kind,
            Some(Kind::StringValue("admin".into()))
        );
    }

    #[test]
    fn a_lock_without_duration_has_no_end_and_no_lock_has_no_end() {
        let body =
            br#"{"type":"user.updated","timestamp":1000,"data":{"id":"user_1","updated_at":5,
            "locked":true,"lockout_expires_in_seconds":null}}"#;
        let user = updated_user(body);
        assert!(user.locked);
        assert_eq!(user.locked_until, None);
        let body =
            br#"{"type":"user.updated","timestamp":1000,"data":{"id":"user_1","updated_at":5,
            "locked":false,"lockout_expires_in_seconds":3600}}"#;
        assert_eq!(updated_user(body).locked_until, None);
    }

    #[test]
    fn verification_is_kept_for_every_address_number_and_linked_account() {
        let (_, user) = created_user(&fixture("user.created.unverified-email.json"));
        let emails: Vec<_> = user
            .email_addresses
            .iter()
            .map(|e| (e.address.as_str(), e.verified, e.primary))
            .collect();
        assert_eq!(
            emails,
            [
                ("mallory@example.net", true, true),
                ("Example@Example.org", false, false)
            ]
        );
        let body = br#"{"type":"user.created","data":{"id":"user_1","updated_at":5,
            "primary_phone_number_id":"idn_p2",
            "phone_numbers":[
              {"id":"idn_p1","phone_number":"+15555550101","verification":null},
              {"id":"idn_p2","phone_number":"+15555550102","verification":{"status":"verified"}}],
            "external_accounts":[
              {"provider":"oauth_google","email_address":"a@gmail.com","verification":{"status":"verified"}},
              {"provider":"oauth_github","email_address":"","verification":{"status":"unverified"}},
              {"email_address":"no-provider@x.io"}]}}"#;
        let (_, user) = created_user(body);
        let phones: Vec<_> = user
            .phone_numbers
            .iter()
            .map(|p| (p.number.as_str(), p.verified, p.primary))
            .collect();
        assert_eq!(
            phones,
            [("+15555550101", false, false), ("+15555550102", true, true)]
        );
        assert_eq!(
            user.external_accounts,
            [
                v1::ExternalAccount {
                    provider: "oauth_google".into(),
                    email_address: Some("a@gmail.com".into()),
                    verified: true,
                },
                v1::ExternalAccount {
                    provider: "oauth_github".into(),
                    email_address: None,
                    verified: false,
                },
            ]
        );
    }

    #[test]
    fn primary_email_is_found_by_id_not_position_and_unicode_survives() {
        let (_, user) = created_user(&fixture("user.created.multi-email-unicode.json"));
        assert_eq!(
            user.primary_email_address.as_deref(),
            Some("Primary.Person@Example.COM")
        );
        let addresses: Vec<_> = user
            .email_addresses
            .iter()
            .map(|e| (e.address.as_str(), e.primary))
            .collect();
        assert_eq!(
            addresses,
            [
                ("old.address@example.net", false),
                ("Primary.Person@Example.COM", true)
            ]
        );
        assert_eq!(user.first_name.as_deref(), Some("Zoë"));
        assert_eq!(user.last_name.as_deref(), Some("Ångström-Ñúñez 😀"));
        assert_eq!(user.display_name, "Zoë Ångström-Ñúñez 😀");
    }

    #[test]
    fn phone_only_user_has_no_email_and_is_named_by_phone() {
        let (_, user) = created_user(&fixture("user.created.phone-only.json"));
        assert_eq!(user.primary_email_address, None);
        assert!(user.email_addresses.is_empty());
        assert_eq!(user.primary_phone_number.as_deref(), Some("+15555550100"));
        assert_eq!(user.first_name, None);
        assert_eq!(user.last_name, None);
        assert_eq!(user.display_name, "+15555550100");
    }

    #[test]
    fn user_updated_with_null_last_name() {
        let event = map(&fixture("user.updated.json")).unwrap();
        let Some(UserEvent::Updated(UserUpdated {
            meta: Some(meta),
            user: Some(user),
        })) = event
        else {
            panic!("not a user.updated: {event:?}");
        };
        assert_eq!(meta.occurred_at, ts(1_654_012_824_306));
        assert_eq!(user.first_name.as_deref(), Some("Example"));
        assert_eq!(user.last_name, None);
        assert_eq!(user.display_name, "Example");
        assert!(!user.display_name.contains("null"));
        assert_eq!(user.external_id, None);
        assert_eq!(user.updated_at, ts(1_654_012_824_306));
    }

    #[test]
    fn user_deleted_carries_the_id_and_the_event_time() {
        let event = map(&fixture("user.deleted.json")).unwrap();
        assert_eq!(
            event,
            Some(UserEvent::Deleted(UserDeleted {
                meta: Some(EventMeta {
                    event_id: "msg_test".into(),
                    occurred_at: ts(1_661_861_640_000),
                }),
                user_id: "user_29w83sxmDNGwOuEthce5gg56FcC".into(),
            }))
        );
    }

    #[test]
    fn without_payload_timestamp_the_svix_timestamp_is_the_event_time() {
        let body =
            br#"{"type":"user.deleted","data":{"id":"user_1","object":"user","deleted":true}}"#;
        let Some(UserEvent::Deleted(deleted)) = map(body).unwrap() else {
            panic!()
        };
        assert_eq!(
            deleted.meta.unwrap().occurred_at,
            Some(Timestamp {
                seconds: SVIX_TIMESTAMP,
                nanos: 0
            })
        );
    }

    #[test]
    fn unknown_event_types_are_not_forwarded() {
        let body = fixture("session.created.unknown-type.json");
        let event = ClerkEvent::parse(&body).unwrap();
        assert_eq!(event.event_type(), "session.created");
        assert_eq!(event.user_id(), None);
        assert_eq!(UserEvent::from_clerk(event, &delivery()).unwrap(), None);
    }

    #[test]
    fn other_types_are_ignored_whatever_their_data() {
        // `data` of other types may reuse user field names with other shapes.
        let body = br#"{"type":"organization.created","data":{"id":5,"email_addresses":"x"}}"#;
        assert_eq!(map(body).unwrap(), None);
    }

    #[test]
    fn display_name_falls_back_in_order() {
        let name = |first, last, username, email, phone| {
            display_name(first, last, username, email, phone, "user_1")
        };
        assert_eq!(name(Some(" Ada "), None, Some("ada"), None, None), "Ada");
        assert_eq!(name(None, Some("Lovelace"), None, None, None), "Lovelace");
        assert_eq!(name(Some(""), Some(" "), Some("ada"), None, None), "ada");
        assert_eq!(name(None, None, None, Some("a@x.io"), Some("+1")), "a@x.io");
        assert_eq!(name(None, None, None, None, Some("+1")), "+1");
        assert_eq!(name(None, None, None, None, None), "user_1");
    }

    #[test]
    fn blank_names_are_unset_and_never_shown() {
        let body = br#"{"type":"user.updated","timestamp":1,"data":{"id":"user_1","updated_at":5,
            "first_name":"","last_name":null,"username":"  ","email_addresses":null,"phone_numbers":null}}"#;
        let Some(UserEvent::Updated(event)) = map(body).unwrap() else {
            panic!()
        };
        let user = event.user.unwrap();
        assert_eq!(
            (user.first_name, user.last_name, user.username),
            (None, None, None)
        );
        assert_eq!(user.display_name, "user_1");
        assert_eq!(user.primary_email_address, None);
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let body = br#"{"type":"user.created","data":{"id":"user_1","updated_at":5,
            "first_name":"Jos\u00e9 \"JJ\"","image_url":"https://x.io/a?b=1\u0026c=2"}}"#;
        let Some(UserEvent::Created(event)) = map(body).unwrap() else {
            panic!()
        };
        let user = event.user.unwrap();
        assert_eq!(user.first_name.as_deref(), Some("José \"JJ\""));
        assert_eq!(user.image_url.as_deref(), Some("https://x.io/a?b=1&c=2"));
    }

    #[test]
    fn public_metadata_becomes_a_struct() {
        let body = br#"{"type":"user.created","data":{"id":"user_1","updated_at":5,
            "public_metadata":{"plan":"pro","seats":3,"beta":true}}}"#;
        let Some(UserEvent::Created(event)) = map(body).unwrap() else {
            panic!()
        };
        let fields = event.user.unwrap().public_metadata.unwrap().fields;
        assert_eq!(fields["plan"].kind, Some(Kind::StringValue("pro".into())));
        assert_eq!(fields["seats"].kind, Some(Kind::NumberValue(3.0)));
        assert_eq!(fields["beta"].kind, Some(Kind::BoolValue(true)));
    }

    #[test]
    fn missing_required_fields_are_named() {
        let cases: [(&[u8], &str); 7] = [
            (
                br#"{"type":"user.created","data":{"updated_at":5}}"#,
                "data.id",
            ),
            (
                br#"{"type":"user.updated","data":{"id":null,"updated_at":5}}"#,
                "data.id",
            ),
            (
                br#"{"type":"user.created","data":{"id":"","updated_at":5}}"#,
                "data.id",
            ),
            (
                br#"{"type":"user.created","data":{"id":"user_1"}}"#,
                "data.updated_at",
            ),
            (
                br#"{"type":"user.deleted","data":{"deleted":true}}"#,
                "data.id",
            ),
            (br#"{"type":"user.created"}"#, "data"),
            (br#"{"data":{"id":"user_1"}}"#, "type"),
        ];
        for (body, field) in cases {
            match map(body) {
                Err(Error::MissingField(missing)) => {
                    assert_eq!(missing, field, "{}", String::from_utf8_lossy(body))
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }

    #[test]
    fn invalid_json_is_rejected() {
        for body in [
            &b"not json"[..],
            b"",
            b"[1,2]",
            br#"{"type":"user.created","data":{"id":"user_1""#,
            br#"{"type":"user.created","data":"text"}"#,
            br#"{"type":"user.created","data":{"id":42,"updated_at":5}}"#,
            br#"{"type":"user.created","data":{"id":"u","updated_at":"yesterday"}}"#,
        ] {
            assert!(
                matches!(map(body), Err(Error::InvalidJson(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let body = fixture("user.created.multi-email-unicode.json");
        let ClerkEvent::UserCreated(event) = ClerkEvent::parse(&body).unwrap() else {
            panic!()
        };
        assert!(matches!(event.data.last_name.unwrap().0, Cow::Borrowed(_)));
    }
}
