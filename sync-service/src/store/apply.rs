//! The write path. A batch of events is applied with a fixed handful of
//! set-based steps in one transaction, whatever the batch size, so that group
//! commit saves statements as well as commits:
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
//! 4. which refused upserts met a tombstone (only when some were refused);
//! 5. the email index of every user written;
//! 6. the change feed: each user written gets the next position
//!    ([`super::changes::record`], last, as its lock order requires).
//!
//! Lock order: every batch takes its ledger rows in event id order, then its
//! `users` rows in user id order (upserts and tombstones in the same statement,
//! so `{upsert U2, delete U1}` and `{upsert U1, delete U2}` cannot deadlock),
//! then the email index of those users, then the feed's counter.
//!
//! **SQLite** runs in-process: the batch writer has a connection of its own
//! and runs the steps as sea-query statements on its thread, the whole batch
//! in one hand-off (`sqlite`; five calls through sqlx cost more in thread
//! switches than the SQL did).
//!
//! **PostgreSQL** would pay a network round trip per statement (seven a
//! batch), so the same steps run inside the server: the batch goes as three
//! JSON documents to the function `clerk_sync_apply_batch`
//! ([`clerk_sync_migrations::APPLY_BATCH_FUNCTION`]), called as one statement
//! outside any explicit
//! transaction, so BEGIN, the steps and COMMIT cost one round trip. The SQL
//! text never changes with the batch (one prepared statement) and no bind
//! limit applies. Both backends get the same preference order of candidates
//! from [`Batch`] and return the same [`Written`], from which the outcomes are
//! derived by one function.
//!
//! The steps therefore exist twice, as SQLite statements and in PL/pgSQL. The
//! tests below keep them one: the function's column lists must be the
//! entity's and [`PROFILE_COLUMNS`], and the same batches applied by the
//! SQLite writer and by the function must leave identical tables and
//! outcomes.
//!
//! Text the directory stores is free of U+0000: PostgreSQL refuses it in
//! `text` columns and SQLite would keep it, so it is removed before writing,
//! on both backends alike (JSON columns keep it escaped as `\u0000`).

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, Iterable, Statement,
};

use super::{
    entity::{processed_events, user_email_addresses, users},
    rows::{email_key, to_json, user_row},
};
use crate::{
    domain::{Change, Event, Millis, Outcome, Profile, UserId},
    error::Error,
};
pub(super) use sqlite::SqliteWriter;

/// Where batches are written.
#[derive(Clone, Debug)]
pub(super) enum Writer {
    /// The writer's own connection, on a thread of its own.
    Sqlite(Arc<SqliteWriter>),
    /// The write pool, one function call a batch.
    Postgres(DatabaseConnection),
}

impl Writer {
    /// Applies `events` atomically and returns one outcome per event, in
    /// order.
    pub(super) async fn apply_batch(
        &self,
        events: Arc<[Event]>,
        now: Millis,
    ) -> Result<Vec<Outcome>, Error> {
        match self {
            Self::Sqlite(writer) => writer.apply(events, now).await,
            Self::Postgres(db) => {
                let batch = Batch::new(&events);
                let written = apply_on_postgres(db, &batch, now).await?;
                Ok(batch.outcomes(&written))
            }
        }
    }
}

/// A batch of events and the order in which they may decide their users.
struct Batch<'a> {
    events: &'a [Event],
    /// The first copy of each event id (only it may be fresh), by user id,
    /// then in preference: deletes first (in batch order), then upserts newest
    /// first (in batch order on ties). A user's winner is its first fresh
    /// candidate.
    candidates: Vec<usize>,
}

/// What the database did with a batch.
#[derive(Debug, Default, PartialEq)]
struct Written {
    /// Event ids the ledger did not hold yet.
    fresh: HashSet<String>,
    /// Users whose row the batch upserted.
    upserted: HashSet<String>,
    /// Users the batch deleted.
    tombstoned: HashSet<String>,
    /// Users whose winning upsert was refused because they are deleted.
    deleted: HashSet<String>,
}

impl<'a> Batch<'a> {
    fn new(events: &'a [Event]) -> Self {
        let mut seen = HashSet::new();
        let mut candidates: Vec<usize> = (0..events.len())
            .filter(|&i| seen.insert(events[i].id.as_str()))
            .collect();
        candidates.sort_by_key(|&i| {
            let rank = match &events[i].change {
                Change::Delete { .. } => None,
                Change::Upsert(profile) => Some(Reverse(profile.updated_at)),
            };
            (events[i].user_id(), rank, i)
        });
        Self { events, candidates }
    }

    /// Each user's winner among the `fresh` events, in user id order.
    fn winners(&self, fresh: &HashSet<String>) -> BTreeMap<&'a UserId, usize> {
        let mut winners = BTreeMap::new();
        for &i in &self.candidates {
            let event = &self.events[i];
            if fresh.contains(event.id.as_str()) {
                winners.entry(event.user_id()).or_insert(i);
            }
        }
        winners
    }

    fn outcomes(&self, written: &Written) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Duplicate; self.events.len()];
        let winners = self.winners(&written.fresh);
        for &i in winners.values() {
            let id = self.events[i].user_id().as_str();
            outcomes[i] = match self.events[i].change {
                Change::Upsert(_) if written.upserted.contains(id) => Outcome::Applied,
                Change::Upsert(_) if written.deleted.contains(id) => Outcome::UserDeleted,
                Change::Upsert(_) => Outcome::Stale,
                Change::Delete { .. } if written.tombstoned.contains(id) => Outcome::Applied,
                Change::Delete { .. } => Outcome::UserDeleted,
            };
        }
        for &i in &self.candidates {
            let event = &self.events[i];
            let Some(&winner) = winners.get(event.user_id()) else {
                continue;
            };
            if winner != i && written.fresh.contains(event.id.as_str()) {
                outcomes[i] = match (&self.events[winner].change, outcomes[winner]) {
                    (Change::Delete { .. }, _) | (_, Outcome::UserDeleted) => Outcome::UserDeleted,
                    _ => Outcome::Stale,
                };
            }
        }
        outcomes
    }

    /// The email index rows of every candidate upsert: its verified
    /// addresses, lower-cased, sorted, without repeats.
    fn index_rows<'p>(profiles: impl Iterator<Item = &'p Profile>) -> Vec<(&'p str, String)> {
        let mut rows: Vec<(&str, String)> = profiles
            .flat_map(|profile| {
                profile
                    .email_addresses
                    .iter()
                    .filter(|email| email.verified)
                    .map(|email| (profile.id.as_str(), email_key(&email.address)))
            })
            .collect();
        rows.sort();
        rows.dedup();
        rows
    }
}

/// The steps in one call of `clerk_sync_apply_batch` (PostgreSQL).
async fn apply_on_postgres(
    db: &DatabaseConnection,
    batch: &Batch<'_>,
    now: Millis,
) -> Result<Written, DbErr> {
    #[derive(serde::Serialize)]
    struct Candidate<'e> {
        event_id: &'e str,
        #[serde(flatten)]
        row: users::Model,
    }
    let events = batch.events;
    let ledger: Vec<_> = batch
        .candidates
        .iter()
        .map(|&i| ledger_row(&events[i], now))
        .collect();
    let candidates: Vec<_> = batch
        .candidates
        .iter()
        .map(|&i| Candidate {
            event_id: events[i].id.as_str(),
            row: user_row(&events[i].change),
        })
        .collect();
    // Every candidate upsert's index rows, each with its event: the function
    // indexes the winners' only.
    #[derive(serde::Serialize)]
    struct IndexRow<'e> {
        event_id: &'e str,
        #[serde(flatten)]
        row: user_email_addresses::Model,
    }
    let emails: Vec<_> = batch
        .candidates
        .iter()
        .filter_map(|&i| match &events[i].change {
            Change::Upsert(profile) => Some((events[i].id.as_str(), &**profile)),
            Change::Delete { .. } => None,
        })
        .flat_map(|(event_id, profile)| {
            Batch::index_rows(std::iter::once(profile)).into_iter().map(
                move |(user_id, email_lower)| IndexRow {
                    event_id,
                    row: user_email_addresses::Model {
                        email_lower,
                        user_id: user_id.to_owned(),
                    },
                },
            )
        })
        .collect();
    let call = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT outcome, key FROM clerk_sync_apply_batch($1::json, $2::json, $3::json, $4)",
        [
            to_json(&ledger).into(),
            to_json(&candidates).into(),
            to_json(&emails).into(),
            now.into(),
        ],
    );
    let mut written = Written::default();
    for row in db.query_all_raw(call).await? {
        let key: String = row.try_get("", "key")?;
        let set = match row.try_get::<String>("", "outcome")?.as_str() {
            "fresh" => &mut written.fresh,
            "upserted" => &mut written.upserted,
            "tombstoned" => &mut written.tombstoned,
            "deleted" => &mut written.deleted,
            other => {
                return Err(DbErr::Custom(format!(
                    "clerk_sync_apply_batch returned an unknown outcome {other:?}"
                )));
            }
        };
        set.insert(key);
    }
    Ok(written)
}

fn ledger_row(event: &Event, now: Millis) -> processed_events::Model {
    processed_events::Model {
        event_id: event.id.as_str().to_owned(),
        user_id: event.user_id().as_str().to_owned(),
        kind: event.kind.as_str().to_owned(),
        processed_at: now,
    }
}

/// Most bind parameters one statement may carry (SQLite's limit, the
/// smallest of the backends').
const BIND_LIMIT: usize = 32_766;

/// How many rows of `E` (one bind parameter per column) fit in one statement.
fn rows_per_statement<E: EntityTrait>() -> usize {
    (BIND_LIMIT / E::Column::iter().count()).max(1)
}

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

mod sqlite;
#[cfg(test)]
mod tests;
