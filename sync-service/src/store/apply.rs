//! The write path. A batch of events is applied with a fixed handful of
//! set-based statements in one transaction, whatever the batch size, so that
//! group commit saves statements as well as commits:
//!
//! 1. the ledger: `INSERT … ON CONFLICT DO NOTHING RETURNING event_id`; event
//!    ids it does not return were applied before (duplicates);
//! 2. one winner per user among the fresh events: a delete beats every
//!    upsert, otherwise the newest `updated_at` (the first on ties); the others
//!    are stale, or ignored if the user ends deleted;
//! 3. the winners' upserts and tombstones together, in one multi-row
//!    `INSERT … ON CONFLICT (id) DO UPDATE … WHERE <guard> RETURNING id,
//!    deleted_at`; the database evaluates the guard on the row it has locked,
//!    so concurrent writers (other replicas included) never interleave a read
//!    and a write;
//! 4. the email index of every user written.
//!
//! Lock order: every batch takes its ledger rows in event id order, then its
//! `users` rows in user id order (upserts and tombstones in the same statement,
//! so `{upsert U2, delete U1}` and `{upsert U1, delete U2}` cannot deadlock),
//! then the email index of those users.
//!
//! A statement never carries more bind parameters than the backend allows
//! (SQLite 32766, PostgreSQL 65535): large batches and users with thousands of
//! addresses are written in consecutive chunks, still in the same order.
//!
//! Text the directory stores is free of U+0000: PostgreSQL refuses it in
//! `text` columns and SQLite would keep it, so it is removed before writing,
//! on both backends alike (JSON columns keep it escaped as `\u0000`).

use std::collections::{BTreeMap, HashSet, btree_map::Entry};

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseTransaction, DbErr, EntityTrait,
    Iterable, QueryFilter, QuerySelect, QueryTrait,
    sea_query::{Alias, Expr, ExprTrait, OnConflict},
};

use super::entity::{processed_events, user_email_addresses, users};
use crate::domain::{Change, Event, Millis, Outcome, Profile, UserId};

/// Applies `events` inside `txn` and returns one outcome per event, in order.
pub(super) async fn apply_events(
    txn: &DatabaseTransaction,
    events: &[Event],
    now: Millis,
) -> Result<Vec<Outcome>, DbErr> {
    let mut outcomes = vec![Outcome::Duplicate; events.len()];

    // 1. Only the first copy of an event id in the batch may be fresh.
    let mut seen = HashSet::new();
    let candidates: Vec<usize> = (0..events.len())
        .filter(|&i| seen.insert(events[i].id.as_str()))
        .collect();
    let recorded = record_events(txn, events, &candidates, now).await?;
    let fresh: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| recorded.contains(events[i].id.as_str()))
        .collect();

    // 2. One winner per user, in user id order.
    let mut winners: BTreeMap<&UserId, usize> = BTreeMap::new();
    for &i in &fresh {
        match winners.entry(events[i].user_id()) {
            Entry::Vacant(entry) => {
                entry.insert(i);
            }
            Entry::Occupied(mut entry) => {
                if supersedes(&events[i], &events[*entry.get()]) {
                    entry.insert(i);
                }
            }
        }
    }

    // 3. Write the winners: one statement, in user id order.
    let (upserts, deletes): (Vec<usize>, Vec<usize>) = winners
        .values()
        .partition(|&&i| matches!(events[i].change, Change::Upsert(_)));
    let ordered: Vec<usize> = winners.values().copied().collect();
    let (upserted, tombstoned) = write_users(txn, events, &ordered).await?;
    let refused: Vec<&str> = upserts
        .iter()
        .map(|&i| events[i].user_id().as_str())
        .filter(|id| !upserted.contains(*id))
        .collect();
    let already_deleted = deleted_among(txn, &refused).await?;

    for &i in &upserts {
        let id = events[i].user_id().as_str();
        outcomes[i] = if upserted.contains(id) {
            Outcome::Applied
        } else if already_deleted.contains(id) {
            Outcome::UserDeleted
        } else {
            Outcome::Stale
        };
    }
    for &i in &deletes {
        outcomes[i] = if tombstoned.contains(events[i].user_id().as_str()) {
            Outcome::Applied
        } else {
            Outcome::UserDeleted
        };
    }
    for &i in &fresh {
        let winner = winners[events[i].user_id()];
        if winner != i {
            outcomes[i] = match (&events[winner].change, outcomes[winner]) {
                (Change::Delete { .. }, _) | (_, Outcome::UserDeleted) => Outcome::UserDeleted,
                _ => Outcome::Stale,
            };
        }
    }

    // 4. The email index follows every written user.
    let written_upserts: Vec<&Profile> = upserts
        .iter()
        .filter_map(|&i| match &events[i].change {
            Change::Upsert(profile) if upserted.contains(profile.id.as_str()) => Some(&**profile),
            _ => None,
        })
        .collect();
    let mut written: Vec<&str> = upserted.iter().map(String::as_str).collect();
    written.extend(tombstoned.iter().map(String::as_str));
    replace_email_index(txn, &written, &written_upserts).await?;

    Ok(outcomes)
}

/// Whether `challenger` should replace `holder` as the event that decides a
/// user's state in this batch.
fn supersedes(challenger: &Event, holder: &Event) -> bool {
    match (&challenger.change, &holder.change) {
        (Change::Delete { .. }, Change::Upsert(_)) => true,
        (Change::Upsert(new), Change::Upsert(old)) => new.updated_at > old.updated_at,
        _ => false,
    }
}

/// Inserts the ledger rows of `candidates`; returns the event ids inserted
/// (the others were already there).
async fn record_events(
    txn: &DatabaseTransaction,
    events: &[Event],
    candidates: &[usize],
    now: Millis,
) -> Result<HashSet<String>, DbErr> {
    if candidates.is_empty() {
        return Ok(HashSet::new());
    }
    let mut ordered = candidates.to_vec();
    ordered.sort_by(|&a, &b| events[a].id.cmp(&events[b].id));
    let mut recorded = HashSet::new();
    for chunk in ordered.chunks(rows_per_statement::<processed_events::Entity>(txn)) {
        let rows = chunk.iter().map(|&i| processed_events::ActiveModel {
            event_id: Set(events[i].id.as_str().to_owned()),
            user_id: Set(events[i].user_id().as_str().to_owned()),
            kind: Set(events[i].kind.as_str().to_owned()),
            processed_at: Set(now),
        });
        let mut insert = processed_events::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::column(processed_events::Column::EventId)
                    .do_nothing()
                    .to_owned(),
            )
            .into_query();
        insert.returning_col(processed_events::Column::EventId);
        for row in txn.query_all(&insert).await? {
            recorded.insert(row.try_get::<String>("", "event_id")?);
        }
    }
    Ok(recorded)
}

/// How many rows of `E` (one bind parameter per column) fit in one statement
/// on this backend (SQLite allows 32766 parameters, PostgreSQL 65535).
fn rows_per_statement<E: EntityTrait>(txn: &DatabaseTransaction) -> usize {
    (bind_limit(txn) / E::Column::iter().count()).max(1)
}

/// Most bind parameters one statement may carry on this backend.
fn bind_limit(txn: &DatabaseTransaction) -> usize {
    match txn.get_database_backend() {
        DatabaseBackend::Sqlite => 32_766,
        _ => 65_535,
    }
}

/// Writes the winners `ordered` (in user id order): upserts where the stored
/// row is live and older, tombstones where it is live. One multi-row statement
/// (chunked under the bind limit) for both, so every batch locks `users` rows
/// in one order. Returns the ids upserted and the ids tombstoned.
async fn write_users(
    txn: &DatabaseTransaction,
    events: &[Event],
    ordered: &[usize],
) -> Result<(HashSet<String>, HashSet<String>), DbErr> {
    let (mut upserted, mut tombstoned) = (HashSet::new(), HashSet::new());
    let excluded = |column| Expr::col((Alias::new("excluded"), column));
    let stored = |column| Expr::col((users::Entity, column));
    for chunk in ordered.chunks(rows_per_statement::<users::Entity>(txn)) {
        let rows = chunk.iter().map(|&i| match &events[i].change {
            Change::Upsert(profile) => row_from_profile(profile),
            Change::Delete {
                user_id,
                deleted_at,
            } => tombstone(user_id, *deleted_at),
        });
        // Deletes are final: only a live row changes. A tombstone always
        // applies to it; an upsert when newer by Clerk's version, or of the
        // same version over a row an older mapping wrote (it dropped fields
        // this one keeps).
        let newer = stored(users::Column::UpdatedAt)
            .lt(excluded(users::Column::UpdatedAt))
            .or(stored(users::Column::UpdatedAt)
                .eq(excluded(users::Column::UpdatedAt))
                .and(
                    stored(users::Column::ProfileFormat).lt(excluded(users::Column::ProfileFormat)),
                ));
        let guard = stored(users::Column::DeletedAt)
            .is_null()
            .and(excluded(users::Column::DeletedAt).is_not_null().or(newer));
        // A tombstone keeps the version the user had; an upsert brings its own.
        let version = Expr::case(
            excluded(users::Column::DeletedAt).is_null(),
            excluded(users::Column::UpdatedAt),
        )
        .finally(stored(users::Column::UpdatedAt));
        let mut insert = users::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::column(users::Column::Id)
                    .update_columns(
                        PROFILE_COLUMNS
                            .into_iter()
                            .chain([users::Column::DeletedAt]),
                    )
                    .value(users::Column::UpdatedAt, version)
                    .action_and_where(guard)
                    .to_owned(),
            )
            .into_query();
        insert.returning(
            sea_orm::sea_query::Query::returning()
                .columns([users::Column::Id, users::Column::DeletedAt]),
        );
        for row in txn.query_all(&insert).await? {
            let id: String = row.try_get("", "id")?;
            let deleted_at: Option<i64> = row.try_get("", "deleted_at")?;
            if deleted_at.is_some() {
                tombstoned.insert(id);
            } else {
                upserted.insert(id);
            }
        }
    }
    Ok((upserted, tombstoned))
}

/// Which of `ids` are tombstones.
async fn deleted_among(txn: &DatabaseTransaction, ids: &[&str]) -> Result<HashSet<String>, DbErr> {
    let mut deleted = HashSet::new();
    for chunk in ids.chunks(bind_limit(txn)) {
        let found: Vec<String> = users::Entity::find()
            .select_only()
            .column(users::Column::Id)
            .filter(users::Column::Id.is_in(chunk.iter().copied()))
            .filter(users::Column::DeletedAt.is_not_null())
            .into_tuple()
            .all(txn)
            .await?;
        deleted.extend(found);
    }
    Ok(deleted)
}

/// Rebuilds the email index of the `written` users from `profiles` (the
/// upserted ones; tombstones keep no address). Only verified addresses are
/// indexed: an address a user merely typed in identifies nobody.
async fn replace_email_index(
    txn: &DatabaseTransaction,
    written: &[&str],
    profiles: &[&Profile],
) -> Result<(), DbErr> {
    let mut written = written.to_vec();
    written.sort_unstable();
    for chunk in written.chunks(bind_limit(txn)) {
        user_email_addresses::Entity::delete_many()
            .filter(user_email_addresses::Column::UserId.is_in(chunk.iter().copied()))
            .exec(txn)
            .await?;
    }
    let mut rows: Vec<(&str, String)> = profiles
        .iter()
        .flat_map(|profile| {
            profile
                .email_addresses
                .iter()
                .filter(|email| email.verified)
                .map(|email| {
                    (
                        profile.id.as_str(),
                        without_nul(&email.address).to_lowercase(),
                    )
                })
        })
        .collect();
    rows.sort();
    rows.dedup();
    for chunk in rows.chunks(rows_per_statement::<user_email_addresses::Entity>(txn)) {
        user_email_addresses::Entity::insert_many(chunk.iter().map(|(user_id, email)| {
            user_email_addresses::ActiveModel {
                email_lower: Set(email.clone()),
                user_id: Set((*user_id).to_owned()),
            }
        }))
        .exec_without_returning(txn)
        .await?;
    }
    Ok(())
}

/// Version of the Clerk-to-row mapping this code writes. Bumped whenever the
/// mapping starts keeping something it dropped before, so that the same Clerk
/// version of a user, delivered again (a backfill), fills the row in.
pub(super) const PROFILE_FORMAT: i32 = 2;

/// The columns holding what Clerk tells about a user: a newer version
/// overwrites them, a delete erases them.
const PROFILE_COLUMNS: [users::Column; 25] = [
    users::Column::PrimaryEmailAddress,
    users::Column::EmailAddresses,
    users::Column::PrimaryPhoneNumber,
    users::Column::PhoneNumbers,
    users::Column::FirstName,
    users::Column::LastName,
    users::Column::DisplayName,
    users::Column::Username,
    users::Column::ImageUrl,
    users::Column::HasImage,
    users::Column::ExternalId,
    users::Column::PublicMetadata,
    users::Column::PrivateMetadata,
    users::Column::CreatedAt,
    users::Column::LastSignInAt,
    users::Column::LastActiveAt,
    users::Column::LegalAcceptedAt,
    users::Column::Banned,
    users::Column::Locked,
    users::Column::LockedUntil,
    users::Column::TwoFactorEnabled,
    users::Column::TotpEnabled,
    users::Column::BackupCodeEnabled,
    users::Column::ExternalAccounts,
    users::Column::ProfileFormat,
];

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}

fn row_from_profile(profile: &Profile) -> users::ActiveModel {
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
    users::ActiveModel {
        id: Set(profile.id.as_str().to_owned()),
        primary_email_address: Set(text(&profile.primary_email_address)),
        email_addresses: Set(Some(to_json(&email_addresses))),
        primary_phone_number: Set(text(&profile.primary_phone_number)),
        phone_numbers: Set(Some(to_json(&phone_numbers))),
        first_name: Set(text(&profile.first_name)),
        last_name: Set(text(&profile.last_name)),
        display_name: Set(Some(display_name)),
        username: Set(text(&profile.username)),
        image_url: Set(text(&profile.image_url)),
        has_image: Set(profile.has_image),
        external_id: Set(text(&profile.external_id)),
        public_metadata: Set(Some(to_json(&profile.public_metadata))),
        private_metadata: Set(profile.private_metadata.as_ref().map(to_json)),
        created_at: Set(profile.created_at),
        updated_at: Set(profile.updated_at),
        last_sign_in_at: Set(profile.last_sign_in_at),
        last_active_at: Set(profile.last_active_at),
        legal_accepted_at: Set(profile.legal_accepted_at),
        banned: Set(state.banned),
        locked: Set(state.locked),
        locked_until: Set(state.locked_until),
        two_factor_enabled: Set(state.two_factor_enabled),
        totp_enabled: Set(state.totp_enabled),
        backup_code_enabled: Set(state.backup_codes_enabled),
        external_accounts: Set(Some(to_json(&profile.external_accounts))),
        profile_format: Set(PROFILE_FORMAT),
        deleted_at: Set(None),
    }
}

fn tombstone(user_id: &UserId, deleted_at: Millis) -> users::ActiveModel {
    users::ActiveModel {
        id: Set(user_id.as_str().to_owned()),
        primary_email_address: Set(None),
        email_addresses: Set(None),
        primary_phone_number: Set(None),
        phone_numbers: Set(None),
        first_name: Set(None),
        last_name: Set(None),
        display_name: Set(None),
        username: Set(None),
        image_url: Set(None),
        has_image: Set(false),
        external_id: Set(None),
        public_metadata: Set(None),
        private_metadata: Set(None),
        created_at: Set(None),
        // A user first seen as deleted has no version: the deletion time stands in.
        updated_at: Set(deleted_at),
        last_sign_in_at: Set(None),
        last_active_at: Set(None),
        legal_accepted_at: Set(None),
        banned: Set(false),
        locked: Set(false),
        locked_until: Set(None),
        two_factor_enabled: Set(false),
        totp_enabled: Set(false),
        backup_code_enabled: Set(false),
        external_accounts: Set(None),
        profile_format: Set(PROFILE_FORMAT),
        deleted_at: Set(Some(deleted_at)),
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
