//! The directory's database: connecting (SQLite or PostgreSQL, one code path),
//! applying events ([`Store::apply_batch`]) and answering queries. gRPC
//! handlers call in here and never touch SQL themselves.
//!
//! How the sync semantics are made atomic, on both backends, is the `apply`
//! module's story: deduplication by a ledger insert in the same transaction as
//! the change, last write wins and final deletes by conditional upserts.
//! Next to it: `quarantine` (deliveries that cannot be applied) and `prune`
//! (the ledger's retention).
//! The `changes` module keeps the change feed's log in the same transaction
//! and serves it; `cache` keeps hot users in memory, coherent with both.

mod apply;
mod cache;
mod changes;
pub(crate) mod entity;
mod page;
mod prune;
mod quarantine;

use std::{collections::HashMap, path::Path, str::FromStr, sync::Arc, time::Duration};

use sea_orm::{
    ColumnTrait, ConnectOptions, Database, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
    sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};

use crate::{
    domain::{AccountState, EmailAddress, Event, Millis, Outcome, Profile, UserId},
    error::Error,
    metrics,
};
use cache::{ReadCache, has_verified};
pub use changes::{ChangePage, FeedChange, FeedEntry, Position};
use clerk_sync_migrations::{Migrator, MigratorTrait};
use entity::{user_email_addresses, users};
pub use page::{DEFAULT_PAGE_SIZE, ListQuery, MAX_PAGE_SIZE, Page};
pub use quarantine::{NewQuarantined, Quarantined};

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
        if url.starts_with("sqlite:") {
            create_sqlite_parent_dir(url)?;
        } else if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            // Named without echoing the URL: it may hold a password.
            return Err(Error::invalid(
                "DATABASE_URL",
                "must start with sqlite: or postgres://",
            ));
        }
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
        Ok(Self {
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
    pub async fn apply_batch(&self, events: &[Event]) -> Vec<Result<Outcome, Error>> {
        match self.apply_in_transaction(events).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(err) if events.len() == 1 => vec![Err(err)],
            Err(err) => {
                tracing::warn!(error = %err, events = events.len(), "batch failed, applying its events one by one");
                let mut outcomes = Vec::with_capacity(events.len());
                for event in events {
                    let outcome = self
                        .apply_in_transaction(std::slice::from_ref(event))
                        .await
                        .map(|mut o| o.remove(0));
                    outcomes.push(outcome);
                }
                outcomes
            }
        }
    }

    async fn apply_in_transaction(&self, events: &[Event]) -> Result<Vec<Outcome>, Error> {
        // Marked before the transaction, invalidated after it, whatever
        // happens to it: see the `cache` module.
        let writing = self.cache.as_deref().map(|cache| cache.begin_write(events));
        let outcomes = apply::apply_batch(&self.db, events, now_millis()).await?;
        // Before the outcome is returned and the watchers wake.
        drop(writing);
        if outcomes.contains(&Outcome::Applied) {
            self.signal.ring();
        }
        Ok(outcomes)
    }

    /// The live user with this id.
    pub async fn get_user(&self, id: &UserId) -> Result<Profile, Error> {
        self.cached_user(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("user {} not found", id.as_str())))
    }

    /// The live user with this id, from the cache or else the database.
    async fn cached_user(&self, id: &UserId) -> Result<Option<Profile>, Error> {
        let Some(cache) = self.cache.as_deref() else {
            return self.load_user(id).await;
        };
        if let Some(user) = cache.user(id) {
            metrics::record_user_cache("id", true);
            return Ok(Some(Profile::clone(&user)));
        }
        metrics::record_user_cache("id", false);
        let ticket = cache.user_ticket(id);
        let user = self.load_user(id).await?;
        if let Some(user) = &user {
            cache.fill_user(ticket, user);
        }
        Ok(user)
    }

    async fn load_user(&self, id: &UserId) -> Result<Option<Profile>, Error> {
        users::Entity::find_by_id(id.as_str())
            .filter(users::Column::DeletedAt.is_null())
            .one(&self.reads)
            .await?
            .map(profile_from_row)
            .transpose()
    }

    /// The live users among `ids`, in no particular order.
    pub async fn get_users(&self, ids: &[UserId]) -> Result<Vec<Profile>, Error> {
        let Some(cache) = self.cache.as_deref() else {
            return self.load_users(ids.iter()).await;
        };
        let mut found = Vec::with_capacity(ids.len());
        let mut missed = HashMap::new();
        for id in ids {
            let cached = cache.user(id);
            metrics::record_user_cache("id", cached.is_some());
            match cached {
                Some(user) => found.push(Profile::clone(&user)),
                None => {
                    missed.insert(id, cache.user_ticket(id));
                }
            }
        }
        if missed.is_empty() {
            return Ok(found);
        }
        let loaded = self.load_users(missed.keys().copied()).await?;
        for user in &loaded {
            if let Some(&ticket) = missed.get(&user.id) {
                cache.fill_user(ticket, user);
            }
        }
        found.extend(loaded);
        Ok(found)
    }

    async fn load_users(&self, ids: impl Iterator<Item = &UserId>) -> Result<Vec<Profile>, Error> {
        users::Entity::find()
            .filter(users::Column::Id.is_in(ids.map(UserId::as_str)))
            .filter(users::Column::DeletedAt.is_null())
            .all(&self.reads)
            .await?
            .into_iter()
            .map(profile_from_row)
            .collect()
    }

    /// The live user owning `email` (any of their verified addresses,
    /// case-insensitive); if several have it verified, the most recently
    /// updated.
    pub async fn find_by_email(&self, email: &str) -> Result<Profile, Error> {
        let key = email.to_lowercase();
        let owner = match self.cache.as_deref() {
            None => self.load_by_email(&key).await?,
            Some(cache) => self.cached_by_email(cache, key).await?,
        };
        // The address is personal data: the answer does not repeat it.
        owner.ok_or_else(|| Error::NotFound("no user has this verified email address".into()))
    }

    /// The owner of the address `key`: the cached owner if it is live and
    /// still has the address verified (a newer owner's write would have
    /// dropped the entry), else the database's answer.
    async fn cached_by_email(
        &self,
        cache: &ReadCache,
        key: String,
    ) -> Result<Option<Profile>, Error> {
        if let Some(owner) = cache.email_owner(&key) {
            match self.cached_user(&owner).await? {
                Some(user) if has_verified(&user, &key) => {
                    metrics::record_user_cache("email", true);
                    return Ok(Some(user));
                }
                // Dropping an entry can never make the cache stale.
                _ => cache.forget_email(&key),
            }
        }
        metrics::record_user_cache("email", false);
        let ticket = cache.email_ticket(&key);
        let owner = self.load_by_email(&key).await?;
        if let Some(owner) = &owner {
            cache.fill_email(ticket, key, owner.id.clone());
        }
        Ok(owner)
    }

    async fn load_by_email(&self, key: &str) -> Result<Option<Profile>, Error> {
        // Two lookups by key rather than one join: a join leaves the planner
        // free to scan `users` (PostgreSQL did, with statistics taken while
        // the table was still small); these cannot be planned but by index.
        let holders: Vec<String> = user_email_addresses::Entity::find()
            .select_only()
            .column(user_email_addresses::Column::UserId)
            .filter(user_email_addresses::Column::EmailLower.eq(key))
            .into_tuple()
            .all(&self.reads)
            .await?;
        if holders.is_empty() {
            return Ok(None);
        }
        users::Entity::find()
            .filter(users::Column::Id.is_in(holders))
            .filter(users::Column::DeletedAt.is_null())
            .order_by_desc(users::Column::UpdatedAt)
            .order_by_asc(users::Column::Id)
            .one(&self.reads)
            .await?
            .map(profile_from_row)
            .transpose()
    }

    /// One page of live users in (updated_at, id) order.
    pub async fn list_users(&self, query: &ListQuery) -> Result<Page, Error> {
        let mut select = users::Entity::find().filter(users::Column::DeletedAt.is_null());
        if let Some(banned) = query.banned {
            select = select.filter(users::Column::Banned.eq(banned));
        }
        // One lower bound, the tighter of the two, so that both planners
        // start the index range at it: a page costs its own rows however
        // deep into the directory it is. The row value is what they turn
        // into a range; `updated_at > x OR (updated_at = x AND id > y)` had
        // each page walk the index from the start (a full pass grew with the
        // square of the directory).
        let after = (query.after.as_ref()).filter(|(updated_at, _)| {
            (query.changed_since).is_none_or(|since| *updated_at >= since)
        });
        select = match (after, query.changed_since) {
            (Some((updated_at, id)), _) => select.filter(
                Expr::tuple([
                    Expr::col(users::Column::UpdatedAt),
                    Expr::col(users::Column::Id),
                ])
                .gt(Expr::tuple([(*updated_at).into(), id.as_str().into()])),
            ),
            (None, Some(since)) => select.filter(users::Column::UpdatedAt.gte(since)),
            (None, None) => select,
        };
        let mut rows = select
            .order_by_asc(users::Column::UpdatedAt)
            .order_by_asc(users::Column::Id)
            .limit(u64::from(query.page_size) + 1)
            .all(&self.reads)
            .await?;
        let has_more = rows.len() > query.page_size as usize;
        rows.truncate(query.page_size as usize);
        let users = rows
            .into_iter()
            .map(profile_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(query.page(users, has_more))
    }
}

fn profile_from_row(row: users::Model) -> Result<Profile, Error> {
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

fn create_sqlite_parent_dir(url: &str) -> Result<(), Error> {
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
    Ok(())
}

pub(crate) fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}
