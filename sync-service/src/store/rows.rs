//! The `users` row ⇄ [`Profile`] mapping, both ways, and the key an
//! address is indexed under: what the write path stores and every read
//! path (queries, the change feed, the cache) reads back, defined once below
//! all of them.

use crate::{
    domain::{AccountState, Change, EmailAddress, Millis, Profile, UserId},
    error::Error,
};

use super::entity::users;

/// Version of the Clerk-to-row mapping this code writes. Bumped whenever the
/// mapping starts keeping something it dropped before, so that the same Clerk
/// version of a user, delivered again (a backfill), fills the row in.
pub(super) const PROFILE_FORMAT: i32 = 2;

/// The key an address is indexed under, in the email index and in this
/// cache: NULs stripped, lowercased.
pub(super) fn email_key(address: &str) -> String {
    address.replace('\0', "").to_lowercase()
}

/// The `users` row an event writes: the profile, or a tombstone.
pub(super) fn user_row(change: &Change) -> users::Model {
    match change {
        Change::Upsert(profile) => row_from_profile(profile),
        Change::Delete {
            user_id,
            deleted_at,
        } => tombstone(user_id, *deleted_at),
    }
}

pub(super) fn profile_from_row(row: users::Model) -> Result<Profile, Error> {
    let corrupt = |what: &str| Error::Corrupt(format!("user {}: {what}", row.id));
    fn parse_json<T: serde::de::DeserializeOwned + Default>(
        json: &Option<String>,
    ) -> Result<T, ()> {
        json.as_deref().map_or(Ok(T::default()), |json| {
            serde_json::from_str(json).map_err(|_| ())
        })
    }
    let email_addresses: Vec<StoredEmail> =
        parse_json(&row.email_addresses).map_err(|()| corrupt("email_addresses"))?;
    let email_addresses = email_addresses
        .into_iter()
        .map(|email| email.upgrade(row.primary_email_address.as_deref()))
        .collect();
    let display_name = row.display_name.clone().unwrap_or_else(|| row.id.clone());
    Ok(Profile {
        primary_email_address: row.primary_email_address,
        email_addresses,
        primary_phone_number: row.primary_phone_number,
        phone_numbers: parse_json(&row.phone_numbers).map_err(|()| corrupt("phone_numbers"))?,
        first_name: row.first_name,
        last_name: row.last_name,
        display_name,
        username: row.username,
        image_url: row.image_url,
        has_image: row.has_image,
        external_id: row.external_id,
        public_metadata: parse_json(&row.public_metadata)
            .map_err(|()| corrupt("public_metadata"))?,
        private_metadata: match &row.private_metadata {
            Some(_) => {
                Some(parse_json(&row.private_metadata).map_err(|()| corrupt("private_metadata"))?)
            }
            None => None,
        },
        created_at: row.created_at,
        updated_at: row.updated_at,
        last_sign_in_at: row.last_sign_in_at,
        last_active_at: row.last_active_at,
        legal_accepted_at: row.legal_accepted_at,
        state: AccountState {
            banned: row.banned,
            locked: row.locked,
            locked_until: row.locked_until,
            two_factor_enabled: row.two_factor_enabled,
            totp_enabled: row.totp_enabled,
            backup_codes_enabled: row.backup_code_enabled,
        },
        external_accounts: parse_json(&row.external_accounts)
            .map_err(|()| corrupt("external_accounts"))?,
        id: UserId::parse(row.id, "id").map_err(|_| Error::Corrupt("empty user id".into()))?,
    })
}

/// An entry of the stored `email_addresses`: today's object, or the bare
/// string of a row written before verification was tracked.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum StoredEmail {
    Current(EmailAddress),
    Legacy(String),
}

impl StoredEmail {
    /// A legacy address counts as unverified: nothing recorded that it was.
    fn upgrade(self, primary: Option<&str>) -> EmailAddress {
        match self {
            Self::Current(email) => email,
            Self::Legacy(address) => EmailAddress {
                primary: primary == Some(address.as_str()),
                address,
                verified: false,
            },
        }
    }
}

pub(super) fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}

fn row_from_profile(profile: &Profile) -> users::Model {
    let state = &profile.state;
    // U+0000 leaves text columns (PostgreSQL refuses it) and the addresses
    // and numbers in JSON too, so they match the plain columns and the index.
    let email_addresses: Vec<_> = profile
        .email_addresses
        .iter()
        .cloned()
        .map(|mut email| {
            email.address = without_nul(&email.address);
            email
        })
        .collect();
    let phone_numbers: Vec<_> = profile
        .phone_numbers
        .iter()
        .cloned()
        .map(|mut phone| {
            phone.number = without_nul(&phone.number);
            phone
        })
        .collect();
    let display_name = Some(without_nul(&profile.display_name).trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| profile.id.as_str().to_owned());
    users::Model {
        id: profile.id.as_str().to_owned(),
        primary_email_address: text(&profile.primary_email_address),
        email_addresses: Some(to_json(&email_addresses)),
        primary_phone_number: text(&profile.primary_phone_number),
        phone_numbers: Some(to_json(&phone_numbers)),
        first_name: text(&profile.first_name),
        last_name: text(&profile.last_name),
        display_name: Some(display_name),
        username: text(&profile.username),
        image_url: text(&profile.image_url),
        has_image: profile.has_image,
        external_id: text(&profile.external_id),
        public_metadata: Some(to_json(&profile.public_metadata)),
        private_metadata: profile.private_metadata.as_ref().map(to_json),
        created_at: profile.created_at,
        updated_at: profile.updated_at,
        last_sign_in_at: profile.last_sign_in_at,
        last_active_at: profile.last_active_at,
        legal_accepted_at: profile.legal_accepted_at,
        banned: state.banned,
        locked: state.locked,
        locked_until: state.locked_until,
        two_factor_enabled: state.two_factor_enabled,
        totp_enabled: state.totp_enabled,
        backup_code_enabled: state.backup_codes_enabled,
        external_accounts: Some(to_json(&profile.external_accounts)),
        profile_format: PROFILE_FORMAT,
        deleted_at: None,
    }
}

fn tombstone(user_id: &UserId, deleted_at: Millis) -> users::Model {
    users::Model {
        id: user_id.as_str().to_owned(),
        primary_email_address: None,
        email_addresses: None,
        primary_phone_number: None,
        phone_numbers: None,
        first_name: None,
        last_name: None,
        display_name: None,
        username: None,
        image_url: None,
        has_image: false,
        external_id: None,
        public_metadata: None,
        private_metadata: None,
        created_at: None,
        // A user first seen as deleted has no version: the deletion time stands in.
        updated_at: deleted_at,
        last_sign_in_at: None,
        last_active_at: None,
        legal_accepted_at: None,
        banned: false,
        locked: false,
        locked_until: None,
        two_factor_enabled: false,
        totp_enabled: false,
        backup_code_enabled: false,
        external_accounts: None,
        profile_format: PROFILE_FORMAT,
        deleted_at: Some(deleted_at),
    }
}

/// `value` without U+0000.
fn without_nul(value: &str) -> String {
    value.replace('\0', "")
}

/// An optional text column without U+0000; unset when nothing else is left.
fn text(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(without_nul)
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_removed_from_text_and_empty_text_is_unset() {
        assert_eq!(text(&Some("A\0da".into())), Some("Ada".into()));
        assert_eq!(text(&Some("\0\0".into())), None);
        assert_eq!(text(&None), None);
        assert_eq!(without_nul("a\0@x.io"), "a@x.io");
    }
}
