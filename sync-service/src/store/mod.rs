//! The directory's database: connecting (SQLite or PostgreSQL, one code path),
//! applying events ([`Store::apply_batch`]) and answering queries. gRPC
//! handlers call in here with typed values and never touch SQL themselves.
//!
//! The modules, each importing only those below it:
//! - `read`: the user reads (by id, by address, a page), through `cache`;
//! - `cache`: hot users in memory, coherent with local writes and, through
//!   the change feed, with other replicas' (its module doc argues how);
//! - `apply`: the write path, and how the sync semantics are made atomic on
//!   both backends: deduplication by a ledger insert in the same transaction
//!   as the change, last write wins and final deletes by conditional upserts;
//! - `organizations`: organizations, memberships, invitations, roles and
//!   permissions, applied and read, through `organization_feed` (their
//!   entries in the change feed's log, in order) and `members` (the
//!   live-membership rule);
//! - `changes`: the change feed's log, kept in the writers' transactions, and
//!   its reads;
//! - `page`: ListUsers' typed query and its opaque page token;
//! - `quarantine` (deliveries that cannot be applied) and `prune` (the
//!   ledger's retention);
//! - `script`: statements of one transaction, in order (the SQLite write
//!   path's last steps and the change log's entries);
//! - `rows`: the `users` row ⇄ profile mapping and the email index's key;
//! - `entity`: the tables, as sea-orm entities.

mod apply;
mod cache;
mod changes;
pub(crate) mod entity;
mod members;
mod organization_feed;
mod organizations;
mod page;
mod prune;
mod quarantine;
mod read;
mod reconcile;
mod rows;
mod script;

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use sea_orm::{
    ColumnTrait, ConnectOptions, Database, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    sea_query::Expr,
    sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};

use crate::{
    domain::{Change, Event, Outcome},
    error::Error,
};
use cache::ReadCache;
pub use changes::{ChangePage, FeedChange, FeedEntry, Position};
use clerk_sync_common::time::now_millis;
use clerk_sync_migrations::{Migrator, MigratorTrait};
use entity::users;
pub(crate) use organization_feed::OrganizationFeedChange;
pub(crate) use organizations::{
    INVITATION_PENDING, Invitation, MembersOf, Membership, Organization, OrganizationEvent,
    Permission, Role, StoredPermission,
};
pub use page::{ListQuery, Page};
pub use quarantine::{NewQuarantined, Quarantined};
pub(crate) use reconcile::{
    Begun, NewPass, Pass, PassStatus, Progress, ReconcileHealth, Repairs, counts,
};

/// Prepared statements kept per connection: every row count of every batch
/// statement, with room to spare (sqlx's default of 100 thrashes).
const STATEMENT_CACHE_CAPACITY: usize = 2048;

/// How to reach the database.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `sqlite://path?mode=rwc` or `postgres://…`.
    pub database_url: String,
    /// Connections of the read pool: queries and change-feed reads.
    pub max_connections: u32,
    /// Connections of the write pool: the batch writers, the quarantine and
    /// pruning. Reads never take one, so they never wait behind a write, and
    /// a storm of reads cannot starve the writers.
    pub write_connections: u32,
    /// How long to wait for a connection (also SQLite's busy timeout).
    pub acquire_timeout: Duration,
    /// PostgreSQL `statement_timeout` of every connection.
    pub statement_timeout: Duration,
    /// PostgreSQL `lock_timeout` of every connection.
    pub lock_timeout: Duration,
    /// Most users the read cache holds; 0 turns it off.
    pub user_cache_capacity: u64,
}

/// Handle to the directory database; cheap to clone (it is two pools).
#[derive(Clone, Debug)]
pub struct Store {
    /// Writes, migrations and whatever must see them in one transaction.
    db: DatabaseConnection,
    /// Reads: read-only connections (on SQLite, WAL readers beside the one
    /// writer), so that a write through them is refused.
    reads: DatabaseConnection,
    /// Where event batches go: on SQLite a connection of their own, on
    /// PostgreSQL the write pool.
    writer: apply::Writer,
    /// Wakes this process's change-feed watchers after a commit.
    signal: Arc<changes::Signal>,
    /// Hot users in memory; `None` when turned off.
    cache: Option<Arc<ReadCache>>,
}

impl Store {
    /// Connects to the database, creating a SQLite file and its directory if
    /// they do not exist yet. Does not migrate: see [`Store::migrate`].
    pub async fn connect(options: &StoreOptions) -> Result<Self, Error> {
        let url = &options.database_url;
        let sqlite_file = if url.starts_with("sqlite:") {
            Some(create_sqlite_parent_dir(url)?)
        } else if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            // Named without echoing the URL: it may hold a password.
            return Err(Error::invalid(
                "DATABASE_URL",
                "must start with sqlite: or postgres://",
            ));
        } else {
            None
        };
        let busy_timeout = options.acquire_timeout;
        // A statement or lock wait past these fails (as UNAVAILABLE: retry)
        // instead of holding a connection and its locks indefinitely.
        let server_settings = [
            (
                "statement_timeout",
                options.statement_timeout.as_millis().to_string(),
            ),
            ("lock_timeout", options.lock_timeout.as_millis().to_string()),
        ];
        let pool = |connections: u32, query_only: bool| {
            let mut server_settings = server_settings.to_vec();
            if query_only {
                server_settings.push(("default_transaction_read_only", "on".into()));
            }
            let mut connect = ConnectOptions::new(url.clone());
            connect
                .max_connections(connections)
                .min_connections(1)
                .acquire_timeout(options.acquire_timeout)
                .connect_timeout(options.acquire_timeout)
                .sqlx_logging(false)
                // Batch statements differ in their number of rows: keep every
                // shape prepared rather than re-preparing on each batch.
                .map_sqlx_postgres_opts(move |postgres| {
                    postgres
                        .statement_cache_capacity(STATEMENT_CACHE_CAPACITY)
                        .options(server_settings.clone())
                })
                .map_sqlx_sqlite_opts(move |sqlite| {
                    // WAL lets readers run beside the one writer. FULL syncs the
                    // WAL on every commit: a 200 to Svix must survive a power
                    // loss, not only a crash (group commit pays for it).
                    sqlite
                        .create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Full)
                        .busy_timeout(busy_timeout)
                        .foreign_keys(true)
                        .statement_cache_capacity(STATEMENT_CACHE_CAPACITY)
                        .pragma("query_only", if query_only { "ON" } else { "OFF" })
                });
            connect
        };
        // The write pool first: it creates the file and turns WAL on, which
        // a query-only connection could not.
        let db = Database::connect(pool(options.write_connections, false)).await?;
        let reads = Database::connect(pool(options.max_connections, true)).await?;
        let writer = match sqlite_file {
            Some(path) => {
                apply::Writer::Sqlite(Arc::new(apply::SqliteWriter::open(&path, busy_timeout)?))
            }
            None => apply::Writer::Postgres(db.clone()),
        };
        Ok(Self {
            writer,
            db,
            reads,
            signal: Arc::new(changes::Signal::new(options.max_connections)),
            cache: (options.user_cache_capacity > 0)
                .then(|| Arc::new(ReadCache::new(options.user_cache_capacity))),
        })
    }

    /// Brings the schema up to date.
    pub async fn migrate(&self) -> Result<(), Error> {
        Migrator::up(&self.db, None).await?;
        Ok(())
    }

    /// Erases every stored private_metadata: run at start-up when the
    /// operator has not opted in to keeping it (or has opted out since).
    /// Returns how many users held some.
    pub async fn erase_private_metadata(&self) -> Result<u64, Error> {
        let result = users::Entity::update_many()
            .col_expr(
                users::Column::PrivateMetadata,
                Expr::value(Option::<String>::None),
            )
            .filter(users::Column::PrivateMetadata.is_not_null())
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }

    /// Answers whether the database is reachable.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.ping().await?;
        self.reads.ping().await?;
        Ok(())
    }

    /// Each pool's connections: (pool, in use, idle), the pool being
    /// `write` or `read`.
    pub fn pool_connections(&self) -> [(&'static str, u32, u32); 2] {
        let count = |db: &DatabaseConnection| {
            let (size, idle) = match db.get_database_backend() {
                DbBackend::Sqlite => {
                    let pool = db.get_sqlite_connection_pool();
                    (pool.size(), pool.num_idle())
                }
                DbBackend::Postgres => {
                    let pool = db.get_postgres_connection_pool();
                    (pool.size(), pool.num_idle())
                }
                _ => (0, 0),
            };
            let idle = u32::try_from(idle).unwrap_or(u32::MAX);
            (size.saturating_sub(idle), idle)
        };
        let (write_in_use, write_idle) = count(&self.db);
        let (read_in_use, read_idle) = count(&self.reads);
        [
            ("write", write_in_use, write_idle),
            ("read", read_in_use, read_idle),
        ]
    }

    /// Applies events in one transaction (group commit: one commit, one fsync
    /// for all of them) and returns one outcome per event, in input order.
    ///
    /// If the transaction fails, each event is retried alone so that one bad
    /// event cannot fail its neighbours.
    pub async fn apply_batch(
        &self,
        events: impl Into<Arc<[Event]>>,
    ) -> Vec<Result<Outcome, Error>> {
        let events = events.into();
        match self.apply_in_transaction(Arc::clone(&events)).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(err) if events.len() == 1 => vec![Err(err)],
            Err(err) => {
                tracing::warn!(error = %err, events = events.len(), "batch failed, applying its events one by one");
                let mut outcomes = Vec::with_capacity(events.len());
                for event in events.iter() {
                    let outcome = self
                        .apply_in_transaction(Arc::from(std::slice::from_ref(event)))
                        .await
                        .map(|mut o| o.remove(0));
                    outcomes.push(outcome);
                }
                outcomes
            }
        }
    }

    async fn apply_in_transaction(&self, events: Arc<[Event]>) -> Result<Vec<Outcome>, Error> {
        // Marked before the transaction, invalidated after it, whatever
        // happens to it: see the `cache` module.
        let writing = self
            .cache
            .as_deref()
            .map(|cache| cache.begin_write(&events));
        let outcomes = self
            .writer
            .apply_batch(Arc::clone(&events), now_millis())
            .await?;
        // Before the outcome is returned and the watchers wake.
        drop(writing);
        if outcomes.contains(&Outcome::Applied) {
            self.signal.ring();
        }
        self.erase_what_deleted_users_leave(&events, &outcomes)
            .await;
        Ok(outcomes)
    }

    /// Erases the quarantine records about the users `events` just deleted
    /// (their bodies hold personal data the deletion erased everywhere else)
    /// and ends their memberships. A failure is logged; the periodic prune
    /// does it then.
    async fn erase_what_deleted_users_leave(&self, events: &[Event], outcomes: &[Outcome]) {
        let deleted: Vec<&str> = events
            .iter()
            .zip(outcomes)
            .filter(|(event, outcome)| {
                **outcome == Outcome::Applied && matches!(event.change, Change::Delete { .. })
            })
            .map(|(event, _)| event.user_id().as_str())
            .collect();
        if deleted.is_empty() {
            return;
        }
        match self.erase_quarantined_of(&deleted).await {
            Ok(0) => {}
            Ok(erased) => tracing::info!(erased, "quarantine records of deleted users erased"),
            Err(error) => {
                tracing::warn!(%error, "cannot erase the quarantine records of deleted users yet")
            }
        }
        match self.end_memberships_of(&deleted).await {
            Ok(0) => {}
            Ok(ended) => tracing::info!(ended, "memberships of deleted users ended"),
            Err(error) => {
                tracing::warn!(%error, "cannot end the memberships of deleted users yet")
            }
        }
    }
}

/// Creates the directory of the SQLite file `url` names; returns the file's
/// path.
fn create_sqlite_parent_dir(url: &str) -> Result<PathBuf, Error> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| Error::invalid("DATABASE_URL", format!("is not a valid SQLite URL: {e}")))?;
    let path: &Path = options.get_filename();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            Error::invalid(
                "DATABASE_URL",
                format!("directory {} cannot be created: {e}", parent.display()),
            )
        })?;
    }
    Ok(path.to_owned())
}
