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
//! 6. the change feed: each user written gets the next position (last, as
//!    the `changes` module's lock order requires).
//!
//! Lock order (PostgreSQL; SQLite has one writer): every batch takes its ledger rows in event id order, then its
//! `users` rows in user id order (upserts and tombstones in the same statement,
//! so `{upsert U2, delete U1}` and `{upsert U1, delete U2}` cannot deadlock),
//! then the email index of those users, then the feed's counter.
//!
//! Both backends run these steps inside the database, as one call whose
//! SQL text never changes with the batch: the batch travels as three JSON
//! documents ([`Documents`]), so the statements are prepared once and kept.
//!
//! - **PostgreSQL** would pay a network round trip per statement, so the
//!   steps are the function `clerk_sync_apply_batch`
//!   ([`clerk_sync_migrations::APPLY_BATCH_FUNCTION`]), called as one
//!   statement outside any explicit transaction: BEGIN, the steps and COMMIT
//!   cost one round trip.
//! - **SQLite** runs in-process, and sqlx runs each connection on a thread of
//!   its own: every call costs a hand-off to that thread and back (two
//!   context switches and their wake-ups), which cost more than the
//!   statements of a batch. The steps are one script (`apply/sqlite_batch.sql`,
//!   BEGIN IMMEDIATE to COMMIT), sent as one call on a connection of the
//!   write pool: one hand-off a batch, where a transaction of statements took
//!   five. A script that fails part-way is rolled back on the same
//!   connection; one that cannot be, or whose caller went away mid-call, is
//!   closed instead of going back to the pool (SQLite rolls back what a
//!   closed connection left open).
//!
//! Both return the same [`Written`], from which the outcomes are derived by
//! one function. The steps therefore exist twice, in PL/pgSQL and in the
//! script; the tests below keep them one: the column lists of both must be
//! the entity's and [`PROFILE_COLUMNS`], and the same batches applied on
//! SQLite and on PostgreSQL must leave identical tables and outcomes.
//!
//! Text the directory stores is free of U+0000: PostgreSQL refuses it in
//! `text` columns and SQLite would keep it, so it is removed before writing,
//! on both backends alike (JSON columns keep it escaped as `\u0000`).

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashSet},
};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, RuntimeErr, Statement,
    sqlx::{self, Row as _, Sqlite, pool::PoolConnection},
};

use super::{
    entity::{processed_events, user_email_addresses, users},
    rows::{email_key, to_json, user_row},
};
use crate::domain::{Change, Event, Millis, Outcome, Profile, UserId};

/// The batch's steps on SQLite, one script.
const SQLITE_BATCH: &str = include_str!("apply/sqlite_batch.sql");

/// Applies `events` atomically and returns one outcome per event, in order.
pub(super) async fn apply_batch(
    db: &DatabaseConnection,
    events: &[Event],
    now: Millis,
) -> Result<Vec<Outcome>, DbErr> {
    let batch = Batch::new(events);
    let documents = Documents::new(&batch, now);
    let written = match db.get_database_backend() {
        DbBackend::Postgres => apply_on_postgres(db, &documents, now).await?,
        _ => apply_on_sqlite(db, documents, now).await?,
    };
    Ok(batch.outcomes(&written))
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

impl Written {
    /// Files one row of a backend's answer: `outcome` names the set `key`
    /// belongs to.
    fn insert(&mut self, outcome: &str, key: String) -> Result<(), DbErr> {
        let set = match outcome {
            "fresh" => &mut self.fresh,
            "upserted" => &mut self.upserted,
            "tombstoned" => &mut self.tombstoned,
            "deleted" => &mut self.deleted,
            other => {
                return Err(DbErr::Custom(format!(
                    "the batch returned an unknown outcome {other:?}"
                )));
            }
        };
        set.insert(key);
        Ok(())
    }
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

    /// The email index rows of a candidate upsert: its verified addresses,
    /// lower-cased, sorted, without repeats.
    fn index_rows(profile: &Profile) -> Vec<(&str, String)> {
        let mut rows: Vec<(&str, String)> = profile
            .email_addresses
            .iter()
            .filter(|email| email.verified)
            .map(|email| (profile.id.as_str(), email_key(&email.address)))
            .collect();
        rows.sort();
        rows.dedup();
        rows
    }
}

/// A batch as both backends take it: three JSON documents.
struct Documents {
    /// The `processed_events` rows of the candidates, in preference order.
    ledger: String,
    /// The candidates' `users` rows, each with its `event_id`, in preference
    /// order (a user's winner is its first fresh one).
    candidates: String,
    /// Every candidate upsert's email index rows, each with its `event_id`:
    /// only the winners' are written.
    emails: String,
}

impl Documents {
    fn new(batch: &Batch<'_>, now: Millis) -> Self {
        #[derive(serde::Serialize)]
        struct Candidate<'e> {
            event_id: &'e str,
            #[serde(flatten)]
            row: users::Model,
        }
        #[derive(serde::Serialize)]
        struct IndexRow<'e> {
            event_id: &'e str,
            #[serde(flatten)]
            row: user_email_addresses::Model,
        }
        let events = batch.events;
        let candidates = || batch.candidates.iter().map(|&i| &events[i]);
        let ledger: Vec<_> = candidates().map(|event| ledger_row(event, now)).collect();
        let rows: Vec<_> = candidates()
            .map(|event| Candidate {
                event_id: event.id.as_str(),
                row: user_row(&event.change),
            })
            .collect();
        let emails: Vec<_> = candidates()
            .filter_map(|event| match &event.change {
                Change::Upsert(profile) => Some((event.id.as_str(), &**profile)),
                Change::Delete { .. } => None,
            })
            .flat_map(|(event_id, profile)| {
                Batch::index_rows(profile)
                    .into_iter()
                    .map(move |(user_id, email_lower)| IndexRow {
                        event_id,
                        row: user_email_addresses::Model {
                            email_lower,
                            user_id: user_id.to_owned(),
                        },
                    })
            })
            .collect();
        Self {
            ledger: to_json(&ledger),
            candidates: to_json(&rows),
            emails: to_json(&emails),
        }
    }
}

/// The steps in one call of `clerk_sync_apply_batch` (PostgreSQL).
async fn apply_on_postgres(
    db: &DatabaseConnection,
    documents: &Documents,
    now: Millis,
) -> Result<Written, DbErr> {
    let call = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT outcome, key FROM clerk_sync_apply_batch($1::json, $2::json, $3::json, $4)",
        [
            documents.ledger.as_str().into(),
            documents.candidates.as_str().into(),
            documents.emails.as_str().into(),
            now.into(),
        ],
    );
    let mut written = Written::default();
    for row in db.query_all_raw(call).await? {
        written.insert(
            &row.try_get::<String>("", "outcome")?,
            row.try_get("", "key")?,
        )?;
    }
    Ok(written)
}

/// The steps in one call of the SQLite script, on a connection of `db`'s
/// pool.
async fn apply_on_sqlite(
    db: &DatabaseConnection,
    documents: Documents,
    now: Millis,
) -> Result<Written, DbErr> {
    let connection = db
        .get_sqlite_connection_pool()
        .acquire()
        .await
        .map_err(|err| DbErr::Conn(RuntimeErr::SqlxError(err.into())))?;
    let mut connection = Lent(Some(connection));
    let run = sqlx::query(SQLITE_BATCH)
        .bind(documents.ledger)
        .bind(documents.candidates)
        .bind(documents.emails)
        .bind(now)
        .fetch_all(connection.get())
        .await;
    match run {
        Ok(rows) => {
            connection.give_back();
            let mut written = Written::default();
            for row in rows {
                let outcome: String = row.try_get(0).map_err(query_error)?;
                written.insert(&outcome, row.try_get(1).map_err(query_error)?)?;
            }
            Ok(written)
        }
        Err(err) => {
            // BEGIN may have failed (nothing to roll back: the ROLLBACK fails
            // too and the connection is closed, which is harmless) or a step
            // (the ROLLBACK ends the transaction).
            if sqlx::query("ROLLBACK")
                .execute(connection.get())
                .await
                .is_ok()
            {
                connection.give_back();
            }
            Err(query_error(err))
        }
    }
}

fn query_error(err: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(err.into()))
}

/// A write-pool connection that may hold an open transaction: closed when
/// dropped (SQLite rolls the transaction back), unless given back once the
/// transaction has ended.
struct Lent(Option<PoolConnection<Sqlite>>);

impl Lent {
    fn get(&mut self) -> &mut sqlx::SqliteConnection {
        self.0.as_mut().expect("not given back yet")
    }

    /// Returns the connection to the pool: its transaction has ended.
    fn give_back(&mut self) {
        self.0.take();
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(connection) = self.0.take() {
            drop(connection.detach());
        }
    }
}

fn ledger_row(event: &Event, now: Millis) -> processed_events::Model {
    processed_events::Model {
        event_id: event.id.as_str().to_owned(),
        user_id: event.user_id().as_str().to_owned(),
        kind: event.kind.as_str().to_owned(),
        processed_at: now,
    }
}

/// The columns holding what Clerk tells about a user: a newer version
/// overwrites them, a delete erases them. Both backends' SQL lists them; the
/// tests hold the lists to this one.
#[cfg(test)]
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

#[cfg(test)]
mod tests;
