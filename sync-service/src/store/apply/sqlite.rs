//! The SQLite write path: the whole batch in one hand-off.
//!
//! SQLite runs in-process, so a statement costs no round trip, but sqlx runs
//! each connection on a thread of its own and every call is a hand-off to that
//! thread and back: five calls a batch spent more CPU switching threads than
//! running SQL. Here the batch writer owns a connection of its own (rusqlite,
//! on the same bundled SQLite) and each batch is one hand-off: the events go
//! to a blocking thread, which runs BEGIN IMMEDIATE, the steps and COMMIT, and
//! the outcomes come back. Its statements stay prepared for the connection's
//! life.
//!
//! The steps are the same sea-query statements as ever, numbered as in the
//! parent module; only their runner changed. A statement never carries more
//! bind parameters than SQLite allows (32766): large batches and users with
//! thousands of addresses are written in consecutive chunks, in the same order.
//!
//! The write pool's sqlx connections stay for the other writers (quarantine,
//! organizations, pruning, reconcile); SQLite serialises every writer, this one
//! included, with its write lock and busy timeout.

use std::{
    collections::HashSet,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params_from_iter, types::Value};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, DbBackend, DbErr, EntityTrait, QueryFilter, QuerySelect, QueryTrait, Statement,
    StatementBuilder,
    sea_query::{Alias, Expr, ExprTrait, OnConflict},
};

use super::{
    super::{
        changes,
        entity::{processed_events, user_email_addresses, users},
        rows::user_row,
        script::Script,
    },
    BIND_LIMIT, Batch, PROFILE_COLUMNS, Written, ledger_row, rows_per_statement,
};
use crate::{
    domain::{Change, Event, Millis, Outcome},
    error::Error,
};

/// Prepared statements kept by the writer's connection: every row count of
/// every batch statement, with room to spare.
const STATEMENT_CACHE_CAPACITY: usize = 2048;

/// The batch writer's connection. Batches take it in turn (SQLite has one
/// writer at a time anyway).
#[derive(Debug)]
pub(crate) struct SqliteWriter {
    connection: Arc<Mutex<Connection>>,
}

impl SqliteWriter {
    /// Opens the database file at `path` (which the write pool created), with
    /// the write pool's settings: WAL, FULL sync (a 200 to Svix must survive a
    /// power loss), `busy_timeout`, foreign keys.
    pub(crate) fn open(path: &Path, busy_timeout: Duration) -> Result<Self, Error> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(busy_timeout)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Applies `events` atomically on the writer's thread; returns one
    /// outcome per event, in order.
    pub(crate) async fn apply(
        &self,
        events: Arc<[Event]>,
        now: Millis,
    ) -> Result<Vec<Outcome>, Error> {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            // A batch that panicked rolled its transaction back as it
            // unwound: the connection is fine to use.
            let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
            let batch = Batch::new(&events);
            let txn = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let written = apply_step_by_step(&txn, &batch, now)?;
            txn.commit()?;
            Ok(batch.outcomes(&written))
        })
        .await
        .map_err(|failed| {
            Error::Database(DbErr::Custom(format!(
                "the SQLite batch writer failed: {failed}"
            )))
        })?
    }
}

/// The steps as statements on `txn`.
pub(super) fn apply_step_by_step(
    txn: &Connection,
    batch: &Batch<'_>,
    now: Millis,
) -> Result<Written, Error> {
    let events = batch.events;
    let mut written = Written {
        fresh: record_events(txn, events, &batch.candidates, now)?,
        ..Written::default()
    };
    let winners: Vec<usize> = batch.winners(&written.fresh).into_values().collect();
    (written.upserted, written.tombstoned) = write_users(txn, events, &winners)?;
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

    let mut rest = Script::new(DbBackend::Sqlite);
    select_deleted(&mut rest, &refused);
    replace_email_index(&mut rest, &users, &Batch::index_rows(profiles));
    changes::record(&mut rest, &written.upserted, &written.tombstoned, now);
    // Only step 4's selects return rows.
    for statement in rest.statements() {
        for row in run(txn, statement)? {
            written.deleted.insert(text(row, "id")?);
        }
    }
    Ok(written)
}

/// Runs `statement` on `connection`, prepared once for the connection's life;
/// returns the rows it returns.
fn run(connection: &Connection, statement: &Statement) -> Result<Vec<Vec<Value>>, Error> {
    let mut prepared = connection.prepare_cached(&statement.sql)?;
    let columns = prepared.column_count();
    let values = statement.values.iter().flat_map(|values| &values.0);
    let values = values.map(bind).collect::<Result<Vec<_>, _>>()?;
    let mut rows = prepared.query(params_from_iter(values))?;
    let mut all = Vec::new();
    while let Some(row) = rows.next()? {
        all.push((0..columns).map(|i| row.get(i)).collect::<Result<_, _>>()?);
    }
    Ok(all)
}

/// Builds `statement` for SQLite and runs it.
fn query(
    connection: &Connection,
    statement: &impl StatementBuilder,
) -> Result<Vec<Vec<Value>>, Error> {
    run(connection, &DbBackend::Sqlite.build(statement))
}

/// `value` as SQLite stores it, as sqlx binds it (booleans are integers).
fn bind(value: &sea_orm::Value) -> Result<Value, Error> {
    use sea_orm::Value as V;
    let integer = |n: Option<i64>| n.map_or(Value::Null, Value::Integer);
    Ok(match value {
        V::Bool(b) => integer(b.map(i64::from)),
        V::TinyInt(n) => integer(n.map(i64::from)),
        V::SmallInt(n) => integer(n.map(i64::from)),
        V::Int(n) => integer(n.map(i64::from)),
        V::BigInt(n) => integer(*n),
        V::TinyUnsigned(n) => integer(n.map(i64::from)),
        V::SmallUnsigned(n) => integer(n.map(i64::from)),
        V::Unsigned(n) => integer(n.map(i64::from)),
        V::Float(n) => n.map_or(Value::Null, |n| Value::Real(n.into())),
        V::Double(n) => n.map_or(Value::Null, Value::Real),
        V::String(s) => s.clone().map_or(Value::Null, Value::Text),
        V::Char(c) => c.map_or(Value::Null, |c| Value::Text(c.to_string())),
        V::Bytes(b) => b.clone().map_or(Value::Null, Value::Blob),
        V::Json(j) => j
            .as_ref()
            .map_or(Value::Null, |j| Value::Text(j.to_string())),
        other => {
            return Err(Error::Database(DbErr::Custom(format!(
                "the SQLite batch writer cannot bind {other:?}"
            ))));
        }
    })
}

/// The text of a returned column.
fn text(row: Vec<Value>, column: &str) -> Result<String, Error> {
    match row.into_iter().next() {
        Some(Value::Text(text)) => Ok(text),
        other => Err(Error::Corrupt(format!(
            "the batch read {other:?} for {column}, not a text"
        ))),
    }
}

/// 1. Inserts the ledger rows of `candidates`; returns the event ids
///    inserted (the others were already there).
fn record_events(
    txn: &Connection,
    events: &[Event],
    candidates: &[usize],
    now: Millis,
) -> Result<HashSet<String>, Error> {
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
        for row in query(txn, &insert)? {
            recorded.insert(text(row, "event_id")?);
        }
    }
    Ok(recorded)
}

/// 3. Writes the winners `ordered` (in user id order): upserts where the
///    stored row is live and older, tombstones where it is live. One
///    multi-row statement (chunked under the bind limit) for both. Returns the
///    ids upserted and the ids tombstoned.
fn write_users(
    txn: &Connection,
    events: &[Event],
    ordered: &[usize],
) -> Result<(HashSet<String>, HashSet<String>), Error> {
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
        for row in query(txn, &insert)? {
            let deleted = !matches!(row.get(1), Some(Value::Null));
            let id = text(row, "id")?;
            if deleted {
                tombstoned.insert(id);
            } else {
                upserted.insert(id);
            }
        }
    }
    Ok((upserted, tombstoned))
}

/// 4. Selects the `id` of each of `ids` that is a tombstone.
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

/// 5. Rebuilds the email index of the `written` users from `rows` (the
///    verified addresses of those upserted; tombstones keep no address).
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
