//! The clerk-sync schema, owned by one sea-orm-migration [`Migrator`]. The
//! sync-service runs it at start-up and through its `migrate` command; the same
//! migrations serve SQLite and PostgreSQL.
//!
//! Tables:
//! - `users`: one row per Clerk user. A deleted user keeps a tombstone row
//!   (`deleted_at` set, personal data erased) so late events cannot revive it.
//! - `user_email_addresses`: every verified address of every live user,
//!   lower-cased, so find-by-email hits an index whichever of the user's
//!   addresses is asked for, and an unverified address never matches.
//! - `processed_events`: every applied event id; its primary key makes
//!   deduplication atomic with the write it guards; indexed by `processed_at`
//!   so old rows are pruned cheaply.
//! - `quarantined_events`: verified deliveries that cannot be applied, with
//!   their raw body, for operators to inspect, retry or drop.
//! - `user_changes` and `feed_head`: the change feed's log (one entry per
//!   user, at the position of its latest change) and its position counter.
//!
//! On PostgreSQL the function `clerk_sync_apply_batch` applies a batch of
//! events in one round trip (`apply_batch.sql`).

pub use sea_orm_migration::prelude::*;

mod m20261127_000001_create_directory;
mod m20261128_000001_account_state;
mod m20261128_100001_index_ledger_processed_at;
mod m20261128_100002_create_quarantine;
mod m20261128_200001_create_change_feed;
mod m20261129_000001_apply_batch_function;

/// Applies the clerk-sync schema, in order.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_create_directory::Migration),
            Box::new(m20261128_000001_account_state::Migration),
            Box::new(m20261128_100001_index_ledger_processed_at::Migration),
            Box::new(m20261128_100002_create_quarantine::Migration),
            Box::new(m20261128_200001_create_change_feed::Migration),
            Box::new(m20261129_000001_apply_batch_function::Migration),
        ]
    }
}
