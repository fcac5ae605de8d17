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
//! **SQLite** runs in-process, and sqlx runs each connection on a thread of
//! its own: every call costs a hand-off to that thread and back, not a round
//! trip. The steps are sea-query statements in a transaction. Steps 1 and 3
//! are a call each, as their results decide what follows; steps 4 to 6 travel
//! together as one [`Script`], so a batch costs five calls (BEGIN, ledger,
//! users, the rest, COMMIT) where one per statement took eight or nine. A
//! statement never carries more bind parameters than SQLite allows (32766):
//! large batches and users with thousands of addresses are written in
//! consecutive chunks, still in the same order.
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
//! The steps therefore exist twice, here and in PL/pgSQL. The tests below
//! keep them one: the function's column lists must be the entity's and
//! [`PROFILE_COLUMNS`], and the same batches applied through the statements
//! (which run on PostgreSQL too) and through the function must leave
//! identical tables and outcomes.
//!
//! Text the directory stores is free of U+0000: PostgreSQL refuses it in
//! `text` columns and SQLite would keep it, so it is removed before writing,
//! on both backends alike (JSON columns keep it escaped as `\u0000`).

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashSet},
};

use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, Iterable, QueryFilter, QuerySelect, QueryTrait, Statement, TransactionTrait,
    sea_query::{Alias, Expr, ExprTrait, OnConflict},
};

use super::{
    changes,
    entity::{processed_events, user_email_addresses, users},
    rows::{email_key, to_json, user_row},
    script::Script,
};
use crate::domain::{Change, Event, Millis, Outcome, Profile, UserId};

/// Applies `events` atomically and returns one outcome per event, in order.
pub(super) async fn apply_batch(
    db: &DatabaseConnection,
    events: &[Event],
    now: Millis,
) -> Result<Vec<Outcome>, DbErr> {
    let batch = Batch::new(events);
    let written = match db.get_database_backend() {
        DbBackend::Postgres => apply_on_postgres(db, &batch, now).await?,
        _ => {
            let txn = db.begin().await?;
            let written = apply_step_by_step(&txn, &batch, now).await?;
            txn.commit().await?;
            written
        }
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

/// The steps as statements in `txn` (SQLite; portable).
async fn apply_step_by_step(
    txn: &DatabaseTransaction,
    batch: &Batch<'_>,
    now: Millis,
) -> Result<Written, DbErr> {
    let events = batch.events;
    let mut written = Written {
        fresh: record_events(txn, events, &batch.candidates, now).await?,
        ..Written::default()
    };
    let winners: Vec<usize> = batch.winners(&written.fresh).into_values().collect();
    (written.upserted, written.tombstoned) = write_users(txn, events, &winners).await?;
    let refused: Vec<&str> = winners
        .iter()
        .filter(|&&i| matches!(events[i].change, Change::Upsert(_)))
        .map(|&i| events[i].user_id().as_str())
        .filter(|id| !written.upserted.contains(*id))
        .collect();
    let profiles = winners.iter().filter_map(|&i| match &events[i].change {
        Change::Upsert(profile) if written.upserted.contains(profile.id.as_str()) => {
            Some(&**profile)
        }
        _ => None,
    });
    let mut users: Vec<&str> = written.upserted.iter().map(String::as_str).collect();
    users.extend(written.tombstoned.iter().map(String::as_str));

    let mut rest = Script::new(txn.get_database_backend());
    select_deleted(&mut rest, &refused);
    replace_email_index(&mut rest, &users, &Batch::index_rows(profiles));
    changes::record(&mut rest, &written.upserted, &written.tombstoned, now);
    for row in rest.run(txn).await? {
        written.deleted.insert(row.try_get("", "id")?);
    }
    Ok(written)
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
    for chunk in ordered.chunks(rows_per_statement::<processed_events::Entity>()) {
        let rows = chunk
            .iter()
            .map(|&i| processed_events::ActiveModel::from(ledger_row(&events[i], now)).reset_all());
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

/// Most bind parameters one statement may carry (SQLite's limit, the
/// smallest of the backends').
const BIND_LIMIT: usize = 32_766;

/// How many rows of `E` (one bind parameter per column) fit in one statement.
fn rows_per_statement<E: EntityTrait>() -> usize {
    (BIND_LIMIT / E::Column::iter().count()).max(1)
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
    for chunk in ordered.chunks(rows_per_statement::<users::Entity>()) {
        let rows = chunk
            .iter()
            .map(|&i| users::ActiveModel::from(user_row(&events[i].change)).reset_all());
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

/// Selects the `id` of each of `ids` that is a tombstone.
fn select_deleted(script: &mut Script, ids: &[&str]) {
    for chunk in ids.chunks(BIND_LIMIT) {
        script.push(
            &users::Entity::find()
                .select_only()
                .column(users::Column::Id)
                .filter(users::Column::Id.is_in(chunk.iter().copied()))
                .filter(users::Column::DeletedAt.is_not_null())
                .into_query(),
        );
    }
}

/// Rebuilds the email index of the `written` users from `rows` (the
/// verified addresses of those upserted; tombstones keep no address).
fn replace_email_index(script: &mut Script, written: &[&str], rows: &[(&str, String)]) {
    let mut written = written.to_vec();
    written.sort_unstable();
    for chunk in written.chunks(BIND_LIMIT) {
        script.push(
            &user_email_addresses::Entity::delete_many()
                .filter(user_email_addresses::Column::UserId.is_in(chunk.iter().copied()))
                .into_query(),
        );
    }
    for chunk in rows.chunks(rows_per_statement::<user_email_addresses::Entity>()) {
        script.push(
            &user_email_addresses::Entity::insert_many(chunk.iter().map(|(user_id, email)| {
                user_email_addresses::ActiveModel {
                    email_lower: Set(email.clone()),
                    user_id: Set((*user_id).to_owned()),
                }
            }))
            .into_query(),
        );
    }
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

#[cfg(test)]
mod tests;
