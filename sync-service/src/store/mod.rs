//! The directory's database: connecting (SQLite or PostgreSQL, one code path),
//! applying events ([`Store::apply_batch`]) and answering queries. gRPC
//! handlers call in here and never touch SQL themselves.
//!
//! How the sync semantics are made atomic, on both backends:
//! - deduplication: the event id goes into `processed_events` with
//!   `ON CONFLICT DO NOTHING` in the same transaction as the change it guards;
//!   zero rows inserted means duplicate;
//! - last write wins: one conditional upsert,
//!   `ON CONFLICT (id) DO UPDATE … WHERE users.deleted_at IS NULL AND
//!   users.updated_at < excluded.updated_at`; the database evaluates the guard
//!   on the row it locked, so concurrent writers (other replicas included)
//!   cannot interleave a read and a write;
//! - deletes: an upsert that turns the row into a tombstone whatever it held,
//!   which every later upsert's guard then refuses.

pub(crate) mod entity;
mod page;

use std::{path::Path, str::FromStr, time::Duration};

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, JoinType, QueryFilter, QueryOrder, QuerySelect, RelationTrait, TransactionTrait,
    sea_query::{Alias, Expr, ExprTrait, OnConflict},
    sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};

use crate::{
    domain::{Change, Event, Millis, Outcome, Profile, UserId},
    error::Error,
};
use clerk_sync_migrations::{Migrator, MigratorTrait};
use entity::{processed_events, user_email_addresses, users};
pub use page::{DEFAULT_PAGE_SIZE, ListQuery, MAX_PAGE_SIZE, Page};

/// How to reach the database.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `sqlite://path?mode=rwc` or `postgres://…`.
    pub database_url: String,
    /// Upper bound of the connection pool.
    pub max_connections: u32,
    /// How long to wait for a connection (also SQLite's busy timeout).
    pub acquire_timeout: Duration,
}

/// Handle to the directory database; cheap to clone (it is a pool).
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    /// Connects to the database, creating a SQLite file and its directory if
    /// they do not exist yet. Does not migrate: see [`Store::migrate`].
    pub async fn connect(options: &StoreOptions) -> Result<Self, Error> {
        let url = &options.database_url;
        if url.starts_with("sqlite:") {
            create_sqlite_parent_dir(url)?;
        }
        let busy_timeout = options.acquire_timeout;
        let mut connect = ConnectOptions::new(url.clone());
        connect
            .max_connections(options.max_connections)
            .min_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_timeout(options.acquire_timeout)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(move |sqlite| {
                // WAL lets readers run beside the one writer; NORMAL sync is
                // durable in WAL mode across process crashes.
                sqlite
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(busy_timeout)
                    .foreign_keys(true)
            });
        let db = Database::connect(connect).await?;
        Ok(Self { db })
    }

    /// Brings the schema up to date.
    pub async fn migrate(&self) -> Result<(), Error> {
        Migrator::up(&self.db, None).await?;
        Ok(())
    }

    /// Answers whether the database is reachable.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.ping().await?;
        Ok(())
    }

    /// Applies events in one transaction (group commit: one commit, one fsync
    /// for all of them) and returns one outcome per event, in input order.
    ///
    /// Events are applied in (user id, event id) order so that concurrent
    /// batches on other replicas take row locks in the same order. If the
    /// transaction fails, each event is retried alone so that one bad event
    /// cannot fail its neighbours.
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
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by(|&a, &b| {
            (events[a].user_id(), &events[a].id).cmp(&(events[b].user_id(), &events[b].id))
        });
        let now = now_millis();
        let txn = self.db.begin().await?;
        let mut outcomes = vec![Outcome::Duplicate; events.len()];
        for i in order {
            outcomes[i] = apply_one(&txn, &events[i], now).await?;
        }
        txn.commit().await?;
        Ok(outcomes)
    }

    /// The live user with this id.
    pub async fn get_user(&self, id: &UserId) -> Result<Profile, Error> {
        users::Entity::find_by_id(id.as_str())
            .filter(users::Column::DeletedAt.is_null())
            .one(&self.db)
            .await?
            .map(profile_from_row)
            .transpose()?
            .ok_or_else(|| Error::NotFound(format!("user {} not found", id.as_str())))
    }

    /// The live users among `ids`, in no particular order.
    pub async fn get_users(&self, ids: &[UserId]) -> Result<Vec<Profile>, Error> {
        users::Entity::find()
            .filter(users::Column::Id.is_in(ids.iter().map(UserId::as_str)))
            .filter(users::Column::DeletedAt.is_null())
            .all(&self.db)
            .await?
            .into_iter()
            .map(profile_from_row)
            .collect()
    }

    /// The live user owning `email` (any of their addresses, case-insensitive);
    /// if several claim it, the most recently updated.
    pub async fn find_by_email(&self, email: &str) -> Result<Profile, Error> {
        users::Entity::find()
            .join(
                JoinType::InnerJoin,
                user_email_addresses::Relation::User.def().rev(),
            )
            .filter(user_email_addresses::Column::EmailLower.eq(email.to_lowercase()))
            .filter(users::Column::DeletedAt.is_null())
            .order_by_desc(users::Column::UpdatedAt)
            .order_by_asc(users::Column::Id)
            .one(&self.db)
            .await?
            .map(profile_from_row)
            .transpose()?
            .ok_or_else(|| Error::NotFound(format!("no user has email address {email}")))
    }

    /// One page of live users in (updated_at, id) order.
    pub async fn list_users(&self, query: &ListQuery) -> Result<Page, Error> {
        let mut select = users::Entity::find().filter(users::Column::DeletedAt.is_null());
        if let Some(since) = query.changed_since {
            select = select.filter(users::Column::UpdatedAt.gte(since));
        }
        if let Some((updated_at, id)) = &query.after {
            select = select.filter(
                Expr::col(users::Column::UpdatedAt)
                    .gt(*updated_at)
                    .or(Expr::col(users::Column::UpdatedAt)
                        .eq(*updated_at)
                        .and(Expr::col(users::Column::Id).gt(id.as_str()))),
            );
        }
        let mut rows = select
            .order_by_asc(users::Column::UpdatedAt)
            .order_by_asc(users::Column::Id)
            .limit(u64::from(query.page_size) + 1)
            .all(&self.db)
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

/// Applies one event inside `txn`; see the module docs for why each step is
/// atomic.
async fn apply_one(
    txn: &DatabaseTransaction,
    event: &Event,
    now: Millis,
) -> Result<Outcome, DbErr> {
    let ledger = processed_events::ActiveModel {
        event_id: Set(event.id.as_str().to_owned()),
        user_id: Set(event.user_id().as_str().to_owned()),
        kind: Set(event.kind.as_str().to_owned()),
        processed_at: Set(now),
    };
    let recorded = processed_events::Entity::insert(ledger)
        .on_conflict(
            OnConflict::column(processed_events::Column::EventId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    if recorded == 0 {
        return Ok(Outcome::Duplicate);
    }

    let live = Expr::col((users::Entity, users::Column::DeletedAt)).is_null();
    let (row, stamp, guard) = match &event.change {
        // Only a live row holding an older version may be overwritten.
        Change::Upsert(profile) => (
            row_from_profile(profile),
            users::Column::UpdatedAt,
            live.and(
                Expr::col((users::Entity, users::Column::UpdatedAt)).lt(Expr::col((
                    Alias::new("excluded"),
                    users::Column::UpdatedAt,
                ))),
            ),
        ),
        // Any live row becomes a tombstone, whatever its version.
        Change::Delete {
            user_id,
            deleted_at,
        } => (
            tombstone(user_id, *deleted_at),
            users::Column::DeletedAt,
            live,
        ),
    };
    let written = users::Entity::insert(row)
        .on_conflict(
            OnConflict::column(users::Column::Id)
                .update_columns(PROFILE_COLUMNS.into_iter().chain([stamp]))
                .action_and_where(guard)
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;

    if written == 0 {
        let deleted = users::Entity::find_by_id(event.user_id().as_str())
            .select_only()
            .column(users::Column::DeletedAt)
            .into_tuple::<Option<Millis>>()
            .one(txn)
            .await?
            .flatten()
            .is_some();
        return Ok(if deleted {
            Outcome::UserDeleted
        } else {
            Outcome::Stale
        });
    }

    user_email_addresses::Entity::delete_many()
        .filter(user_email_addresses::Column::UserId.eq(event.user_id().as_str()))
        .exec(txn)
        .await?;
    if let Change::Upsert(profile) = &event.change {
        let mut addresses: Vec<String> = profile
            .email_addresses
            .iter()
            .chain(&profile.primary_email_address)
            .map(|email| email.to_lowercase())
            .collect();
        addresses.sort();
        addresses.dedup();
        if !addresses.is_empty() {
            user_email_addresses::Entity::insert_many(addresses.into_iter().map(|email| {
                user_email_addresses::ActiveModel {
                    email_lower: Set(email),
                    user_id: Set(profile.id.as_str().to_owned()),
                }
            }))
            .exec_without_returning(txn)
            .await?;
        }
    }
    Ok(Outcome::Applied)
}

/// The columns holding what Clerk tells about a user: a newer version
/// overwrites them, a delete erases them.
const PROFILE_COLUMNS: [users::Column; 12] = [
    users::Column::PrimaryEmailAddress,
    users::Column::EmailAddresses,
    users::Column::PrimaryPhoneNumber,
    users::Column::FirstName,
    users::Column::LastName,
    users::Column::DisplayName,
    users::Column::Username,
    users::Column::ImageUrl,
    users::Column::ExternalId,
    users::Column::PublicMetadata,
    users::Column::CreatedAt,
    users::Column::LastSignInAt,
];

fn row_from_profile(profile: &Profile) -> users::ActiveModel {
    users::ActiveModel {
        id: Set(profile.id.as_str().to_owned()),
        primary_email_address: Set(profile.primary_email_address.clone()),
        email_addresses: Set(Some(
            serde_json::to_string(&profile.email_addresses).expect("strings serialise"),
        )),
        primary_phone_number: Set(profile.primary_phone_number.clone()),
        first_name: Set(profile.first_name.clone()),
        last_name: Set(profile.last_name.clone()),
        display_name: Set(Some(profile.display_name.clone())),
        username: Set(profile.username.clone()),
        image_url: Set(profile.image_url.clone()),
        external_id: Set(profile.external_id.clone()),
        public_metadata: Set(Some(
            serde_json::to_string(&profile.public_metadata).expect("JSON values serialise"),
        )),
        created_at: Set(profile.created_at),
        updated_at: Set(profile.updated_at),
        last_sign_in_at: Set(profile.last_sign_in_at),
        deleted_at: Set(None),
    }
}

fn tombstone(user_id: &UserId, deleted_at: Millis) -> users::ActiveModel {
    users::ActiveModel {
        id: Set(user_id.as_str().to_owned()),
        primary_email_address: Set(None),
        email_addresses: Set(None),
        primary_phone_number: Set(None),
        first_name: Set(None),
        last_name: Set(None),
        display_name: Set(None),
        username: Set(None),
        image_url: Set(None),
        external_id: Set(None),
        public_metadata: Set(None),
        created_at: Set(None),
        // A user first seen as deleted has no version: the deletion time stands in.
        updated_at: Set(deleted_at),
        last_sign_in_at: Set(None),
        deleted_at: Set(Some(deleted_at)),
    }
}

fn profile_from_row(row: users::Model) -> Result<Profile, Error> {
    let corrupt = |what: &str| Error::Corrupt(format!("user {}: {what}", row.id));
    let email_addresses = match &row.email_addresses {
        Some(json) => serde_json::from_str(json).map_err(|_| corrupt("email_addresses"))?,
        None => Vec::new(),
    };
    let public_metadata = match &row.public_metadata {
        Some(json) => serde_json::from_str(json).map_err(|_| corrupt("public_metadata"))?,
        None => serde_json::Map::new(),
    };
    let display_name = row.display_name.clone().unwrap_or_else(|| row.id.clone());
    Ok(Profile {
        id: UserId::parse(row.id, "id").map_err(|_| Error::Corrupt("empty user id".into()))?,
        primary_email_address: row.primary_email_address,
        email_addresses,
        primary_phone_number: row.primary_phone_number,
        first_name: row.first_name,
        last_name: row.last_name,
        display_name,
        username: row.username,
        image_url: row.image_url,
        external_id: row.external_id,
        public_metadata,
        created_at: row.created_at,
        updated_at: row.updated_at,
        last_sign_in_at: row.last_sign_in_at,
    })
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

fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}
