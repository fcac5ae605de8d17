//! The change feed's log: every committed change (an upsert or a tombstone)
//! gets a position, and positions grow in commit order, on SQLite and on
//! PostgreSQL with any number of replicas.
//!
//! How commit order is kept: a sequence would hand positions out in one order
//! while transactions commit in another, so a reader that has seen position 7
//! could later find a 6 committed behind it. Instead every write transaction,
//! as its last statement before COMMIT, bumps the one-row counter
//! `feed_head` (`UPDATE … SET position = position + n`) and labels its
//! changes with the n positions it got (PostgreSQL's function reads them from
//! `RETURNING`; SQLite's entries read the counter back in the same call). The
//! counter's row lock is held until COMMIT, so a second writer's bump waits
//! for the first writer to commit (PostgreSQL releases row locks only once
//! the commit is visible), and reads the committed value: whoever gets larger
//! positions commits later.
//! SQLite has a single writer, so the same statement is trivially ordered.
//! The cost is one statement per batch (group commit already batches events)
//! and commits of concurrent batches are serialised for the short span from
//! the bump to COMMIT; the counter is taken last, after every user row lock,
//! so the lock order stays deadlock-free.
//!
//! Compaction is by construction: `user_changes` is keyed by user id and a new
//! change moves the user's row to its new position, so the log holds one entry
//! per user (the latest) and readers join `users` for the current state. A
//! reader resuming after P gets every user whose latest change is after P, in
//! its current state: exactly what it needs to catch up. Deletion entries are
//! the exception that is pruned: after a retention period
//! ([`Store::prune_deletions`]), and `feed_head.pruned_through` remembers how
//! far, so a reader resuming from before it (it could miss a deletion) is told
//! to restart from a snapshot instead.
//!
//! The log has two tables: `user_changes`, here, and `organization_changes`
//! (organizations and memberships; `organization_feed`), numbered by the one
//! counter, each with its own pruning horizon.
//!
//! Reads of the counter and of the log happen in one snapshot (a REPEATABLE
//! READ transaction on PostgreSQL, a read transaction in WAL mode on SQLite),
//! so the position a page ends at never runs ahead of what the page saw.

use std::{collections::HashSet, sync::Arc};

use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseTransaction, DbErr,
    EntityTrait, IsolationLevel, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
    sea_query::{Expr, ExprTrait, OnConflict, Query, QueryStatementBuilder},
};
use tokio::sync::watch;

use super::{
    Store,
    entity::{feed_head, organization_changes, user_changes, user_email_addresses, users},
    rows::profile_from_row,
    script::Script,
};
use crate::{
    domain::{Millis, StoredUser, UserId},
    error::Error,
};

/// The id of `feed_head`'s one row.
const HEAD_ROW: i32 = 1;

/// Rows per change-log insert: 4 parameters each, far under every backend's
/// bind-parameter limit.
const INSERT_CHUNK: usize = 1000;

/// Records the changes of one write transaction (SQLite): the users in
/// `upserted` and `tombstoned` (disjoint sets of user ids written by it) each
/// get the next position, in user id order. Appended last to the
/// transaction's last [`Script`]: the bump of the counter, then the entries,
/// which read their positions back from the counter.
pub(super) fn record(
    script: &mut Script,
    upserted: &HashSet<String>,
    tombstoned: &HashSet<String>,
    now: Millis,
) {
    let count = (upserted.len() + tombstoned.len()) as i64;
    if count == 0 {
        return;
    }
    script.push(
        &Query::update()
            .table(feed_head::Entity)
            .value(
                feed_head::Column::Position,
                Expr::col(feed_head::Column::Position).add(count),
            )
            .and_where(Expr::col(feed_head::Column::Id).eq(HEAD_ROW))
            .to_owned(),
    );
    // The positions handed out are head - count + 1 ..= head.
    let head = Query::select()
        .column(feed_head::Column::Position)
        .from(feed_head::Entity)
        .and_where(Expr::col(feed_head::Column::Id).eq(HEAD_ROW))
        .to_owned();
    let position = |offset: i64| Expr::from(head.clone().into_sub_query_statement()).add(offset);

    let mut written: Vec<(&str, bool)> = upserted
        .iter()
        .map(|id| (id.as_str(), false))
        .chain(tombstoned.iter().map(|id| (id.as_str(), true)))
        .collect();
    written.sort_unstable();
    let mut next = 1 - count;
    for chunk in written.chunks(INSERT_CHUNK) {
        let mut insert = Query::insert();
        insert.into_table(user_changes::Entity).columns([
            user_changes::Column::UserId,
            user_changes::Column::Position,
            user_changes::Column::Deleted,
            user_changes::Column::ChangedAt,
        ]);
        for &(user_id, deleted) in chunk {
            insert.values_panic([user_id.into(), position(next), deleted.into(), now.into()]);
            next += 1;
        }
        insert.on_conflict(
            OnConflict::column(user_changes::Column::UserId)
                .update_columns([
                    user_changes::Column::Position,
                    user_changes::Column::Deleted,
                    user_changes::Column::ChangedAt,
                ])
                .to_owned(),
        );
        script.push(&insert);
    }
}

/// A position in the change log. 0 is before the first change.
pub type Position = i64;

/// One entry of the change log: a user's (`C` = [`FeedChange`]) or an
/// organization's or membership's.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedEntry<C = FeedChange> {
    /// Where the change sits in the log.
    pub position: Position,
    /// The object's state after it.
    pub change: C,
}

/// What a change log entry says about its user.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedChange {
    /// The user is live, in this state.
    Upsert(Arc<StoredUser>),
    /// The user is deleted.
    Deleted {
        /// The deleted user.
        id: UserId,
        /// When Clerk deleted the user.
        deleted_at: Millis,
    },
}

/// One page of the change log.
#[derive(Clone, Debug)]
pub struct ChangePage<C = FeedChange> {
    /// Entries in position order.
    pub entries: Vec<FeedEntry<C>>,
    /// Where the next read starts: the last entry's position while more
    /// follow, otherwise the log's head as of this read.
    pub next_after: Position,
    /// Whether entries after `next_after` were already committed.
    pub has_more: bool,
}

/// The keys one page of the log changed; see [`Store::changed_keys_after`].
#[derive(Debug)]
pub(super) struct ChangedKeys {
    /// The users changed, in position order.
    pub(super) users: Vec<UserId>,
    /// The email index keys those users hold now.
    pub(super) emails: Vec<String>,
    /// As in [`ChangePage`].
    pub(super) next_after: Position,
    /// As in [`ChangePage`].
    pub(super) has_more: bool,
}

/// This process's side of the feed: what wakes its watchers, and the bound
/// on their reads.
#[derive(Debug)]
pub(super) struct Signal {
    /// Local commits ring it at once; the poller
    /// ([`Store::follow_other_writers`]) rings it when another replica moved
    /// the log's head. The value is only a counter: the change feed's
    /// shared readers (one per log and server) read the log to learn what
    /// changed.
    wake: watch::Sender<u64>,
    /// Log reads running at once. Watchers catching up read by themselves
    /// (after that, each commit is read once for all of them); this keeps
    /// those reads to a share of the pool, so queries always find a
    /// connection however many clients watch.
    reads: tokio::sync::Semaphore,
}

impl Signal {
    /// `pool_size`: the store's connection pool; a quarter of it may read
    /// the log at once.
    pub(super) fn new(pool_size: u32) -> Self {
        Self {
            wake: watch::Sender::new(0),
            reads: tokio::sync::Semaphore::new((pool_size as usize / 4).max(1)),
        }
    }

    pub(super) fn ring(&self) {
        self.wake
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }
}

impl Store {
    /// A receiver that changes whenever the change log may have grown.
    /// Subscribe before reading the log, so no commit slips between the read
    /// and the wait.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.signal.wake.subscribe()
    }

    /// The last position handed out.
    pub async fn feed_head(&self) -> Result<Position, Error> {
        Ok(head_row(&self.reads).await?.position)
    }

    /// Up to `limit` change log entries after position `after`, in order.
    /// Deletion entries at or below `hide_deletions_through` are skipped (a
    /// snapshot: the reader never had those users).
    ///
    /// FAILED_PRECONDITION when `after` is ahead of the log (another
    /// database's position) or older than a pruned deletion the reader might
    /// need.
    pub async fn changes_after(
        &self,
        after: Position,
        limit: u32,
        hide_deletions_through: Position,
    ) -> Result<ChangePage, Error> {
        let read = self
            .begin_log_read(Log::Users, after, hide_deletions_through)
            .await?;
        let mut rows = log_after(after, limit)
            .find_also_related(users::Entity)
            .all(&read.txn)
            .await?;
        read.txn.commit().await?;

        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_after = page_end(
            rows.last().map(|(last, _)| last.position),
            has_more,
            &read.head,
        );
        let mut entries = Vec::with_capacity(rows.len());
        for (change, user) in rows {
            if change.deleted && change.position <= hide_deletions_through {
                continue;
            }
            let user = user.ok_or_else(|| {
                Error::Corrupt(format!(
                    "change log entry of {} has no user",
                    change.user_id
                ))
            })?;
            entries.push(FeedEntry {
                position: change.position,
                change: entry_change(user)?,
            });
        }
        Ok(ChangePage {
            entries,
            next_after,
            has_more,
        })
    }

    /// What changed after `after`, as the keys a cache must drop: up to
    /// `limit` users, and the addresses the email index holds for them.
    /// Cheaper than [`Store::changes_after`]: neither profiles nor their
    /// JSON are read.
    pub(super) async fn changed_keys_after(
        &self,
        after: Position,
        limit: u32,
    ) -> Result<ChangedKeys, Error> {
        let read = self.begin_log_read(Log::Users, after, 0).await?;
        let mut rows: Vec<(Position, String)> = log_after(after, limit)
            .select_only()
            .columns([user_changes::Column::Position, user_changes::Column::UserId])
            .into_tuple()
            .all(&read.txn)
            .await?;
        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_after = page_end(
            rows.last().map(|(position, _)| *position),
            has_more,
            &read.head,
        );
        let ids: Vec<String> = rows.into_iter().map(|(_, id)| id).collect();
        let emails = user_email_addresses::Entity::find()
            .select_only()
            .column(user_email_addresses::Column::EmailLower)
            .filter(user_email_addresses::Column::UserId.is_in(ids.iter().map(String::as_str)))
            .into_tuple()
            .all(&read.txn)
            .await?;
        read.txn.commit().await?;
        let users = ids
            .into_iter()
            .map(|id| {
                UserId::parse(id, "user_id")
                    .map_err(|_| Error::Corrupt("change log entry with an empty user id".into()))
            })
            .collect::<Result<_, _>>()?;
        Ok(ChangedKeys {
            users,
            emails,
            next_after,
            has_more,
        })
    }

    /// Opens one snapshot for reading `log` after `after`, once the log's
    /// head shows it can serve that reader (see [`Store::changes_after`]).
    pub(super) async fn begin_log_read(
        &self,
        log: Log,
        after: Position,
        hide_deletions_through: Position,
    ) -> Result<LogRead<'_>, Error> {
        let permit = self
            .signal
            .reads
            .acquire()
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let txn = self.begin_snapshot().await?;
        let head = head_row(&txn).await?;
        if after > head.position {
            return Err(Error::FailedPrecondition(format!(
                "position {after} is ahead of this directory's change log (at {}): it was \
                 issued by another database; restart from a snapshot",
                head.position
            )));
        }
        let pruned_through = match log {
            Log::Users => head.pruned_through,
            Log::Organizations => head.organizations_pruned_through,
        };
        if after > 0 && after < pruned_through && pruned_through > hide_deletions_through {
            return Err(Error::FailedPrecondition(format!(
                "position {after} is older than the change log keeps: deletions up to position \
                 {pruned_through} were compacted away; restart from a snapshot"
            )));
        }
        Ok(LogRead {
            _permit: permit,
            txn,
            head,
        })
    }

    /// Drops the deletion entries (of users, organizations and memberships)
    /// committed before `before` (local Unix milliseconds) and raises each
    /// table's pruning horizon past them. Returns how many were dropped. The
    /// tombstones themselves stay.
    pub async fn prune_deletions(&self, before: Millis) -> Result<u64, Error> {
        let txn = self.db.begin().await?;
        let users =
            prune_table::<user_changes::Entity>(&txn, before, feed_head::Column::PrunedThrough)
                .await?;
        let organizations = prune_table::<organization_changes::Entity>(
            &txn,
            before,
            feed_head::Column::OrganizationsPrunedThrough,
        )
        .await?;
        txn.commit().await?;
        Ok(users + organizations)
    }

    /// Rings the watchers of this process whenever the log's head moves,
    /// checking every `interval`: how changes committed through other
    /// replicas reach them. Runs until the task is aborted.
    pub async fn follow_other_writers(&self, interval: std::time::Duration) {
        let mut last = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.feed_head().await {
                Ok(head) if last != Some(head) => {
                    last = Some(head);
                    self.signal.ring();
                }
                Ok(_) => {}
                // The health check reports the database; watchers retry.
                Err(error) => tracing::debug!(%error, "change feed poll failed"),
            }
        }
    }

    /// A read-only transaction whose reads share one snapshot.
    async fn begin_snapshot(&self) -> Result<DatabaseTransaction, DbErr> {
        match self.reads.get_database_backend() {
            // A deferred SQLite transaction reads one WAL snapshot from its
            // first read on; it takes no isolation level.
            DatabaseBackend::Sqlite => self.reads.begin().await,
            _ => {
                self.reads
                    .begin_with_config(
                        Some(IsolationLevel::RepeatableRead),
                        Some(AccessMode::ReadOnly),
                    )
                    .await
            }
        }
    }
}

/// Which table of the log a reader follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Log {
    /// `user_changes`.
    Users,
    /// `organization_changes`.
    Organizations,
}

/// A read of the log in progress: its snapshot and its share of the pool.
pub(super) struct LogRead<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    pub(super) txn: DatabaseTransaction,
    /// The head row, read in `txn`.
    pub(super) head: feed_head::Model,
}

/// Drops `E`'s deletion entries committed before `before` and raises its
/// horizon (`horizon`, a column of `feed_head`) past them; returns how many.
/// `E` is a log table: `position`, `deleted` and `changed_at` columns.
async fn prune_table<E: EntityTrait>(
    txn: &DatabaseTransaction,
    before: Millis,
    horizon: feed_head::Column,
) -> Result<u64, Error> {
    let column = |name: &str| {
        <E::Column as std::str::FromStr>::from_str(name)
            .unwrap_or_else(|_| unreachable!("every log table has {name}"))
    };
    let (position, deleted) = (column("position"), column("deleted"));
    let pruned: Option<i64> = E::find()
        .select_only()
        .column_as(position.max(), "horizon")
        .filter(deleted.eq(true))
        .filter(column("changed_at").lt(before))
        .into_tuple::<Option<i64>>()
        .one(txn)
        .await?
        .flatten();
    let Some(pruned) = pruned else {
        return Ok(0);
    };
    let dropped = E::delete_many()
        .filter(deleted.eq(true))
        .filter(position.lte(pruned))
        .exec(txn)
        .await?
        .rows_affected;
    feed_head::Entity::update_many()
        .col_expr(horizon, Expr::value(pruned))
        .filter(feed_head::Column::Id.eq(HEAD_ROW))
        .filter(horizon.lt(pruned))
        .exec(txn)
        .await?;
    Ok(dropped)
}

/// Takes `count` positions for changes of the transaction `txn` as its
/// last statement (the counter's row lock puts them in commit order; see the
/// module doc) and returns the first; the others follow it.
pub(super) async fn take_positions(
    txn: &DatabaseTransaction,
    count: usize,
) -> Result<Position, DbErr> {
    let count = count as i64;
    feed_head::Entity::update_many()
        .col_expr(
            feed_head::Column::Position,
            Expr::col(feed_head::Column::Position).add(count),
        )
        .filter(feed_head::Column::Id.eq(HEAD_ROW))
        .exec(txn)
        .await?;
    Ok(head_row(txn).await?.position - count + 1)
}

/// The first `limit + 1` entries after `after`, in order (the extra one
/// tells whether more follow).
fn log_after(after: Position, limit: u32) -> sea_orm::Select<user_changes::Entity> {
    user_changes::Entity::find()
        .filter(user_changes::Column::Position.gt(after))
        .order_by_asc(user_changes::Column::Position)
        .limit(u64::from(limit) + 1)
}

/// Where the next read starts: the page's last position while more follow,
/// otherwise the head the page was read at.
pub(super) fn page_end(
    last: Option<Position>,
    has_more: bool,
    head: &feed_head::Model,
) -> Position {
    match last {
        Some(last) if has_more => last,
        _ => head.position,
    }
}

async fn head_row(db: &impl ConnectionTrait) -> Result<feed_head::Model, DbErr> {
    feed_head::Entity::find_by_id(HEAD_ROW)
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("feed_head row (run the migrations)".into()))
}

fn entry_change(user: users::Model) -> Result<FeedChange, Error> {
    match user.deleted_at {
        Some(deleted_at) => Ok(FeedChange::Deleted {
            id: UserId::parse(user.id, "id").map_err(|_| Error::Corrupt("empty user id".into()))?,
            deleted_at,
        }),
        None => Ok(FeedChange::Upsert(Arc::new(StoredUser::new(
            profile_from_row(user)?,
        )))),
    }
}
