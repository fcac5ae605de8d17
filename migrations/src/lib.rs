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
//!   their raw body and the user they are about, for operators to inspect,
//!   retry or drop.
//! - `user_changes` and `feed_head`: the change feed's log (one entry per
//!   user, at the position of its latest change) and its position counter.
//! - `reconcile_passes` and `reconcile_lease`: every backfill pass (status,
//!   cursor, counts) and the lease that lets one run at a time.
//! - `organizations` and `organization_memberships`: Clerk's organizations
//!   and their members' roles and permissions, with tombstones like users;
//!   `organization_invitations`, `organization_roles` and
//!   `organization_permissions` beside them.
//! - `organization_changes`: the organizations' and memberships' entries in
//!   the change feed's log, positioned by the same `feed_head`.
//!
//! On PostgreSQL the function `clerk_sync_apply_batch` applies a batch of
//! events in one round trip ([`APPLY_BATCH_FUNCTION`]).
//!
//! # A released migration never changes
//!
//! A database records each migration it ran by name and never runs it again,
//! so a migration edited after its release upgrades nobody: the databases
//! that ran it keep what it did then. Once a migration has shipped, its file
//! and every file it includes are frozen, and a change to the schema, to a
//! function or to a view is a new migration. A function's versions are files
//! of their own (`apply_batch_v1.sql`, `apply_batch_v3.sql` to `apply_batch_v5.sql`, …): the
//! migration that introduced a version keeps including it, and the next
//! version's migration installs its file with `CREATE OR REPLACE` and, going
//! down, re-installs the version before. (Version 2 of
//! `clerk_sync_apply_batch` shipped only as an edit of the first migration's
//! file, the mistake this rule stops; version 3's migration replaces it.) The
//! sync-service's upgrade test builds a database at every earlier release and
//! checks that migrating it ends at the current schema and function.

pub use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

mod m20261127_000001_create_directory;
mod m20261128_000001_account_state;
mod m20261128_100001_index_ledger_processed_at;
mod m20261128_100002_create_quarantine;
mod m20261128_200001_create_change_feed;
mod m20261129_000001_apply_batch_function;
mod m20261203_000001_apply_batch_function_v3;
mod m20261203_000002_apply_batch_function_v4;
mod m20261203_000003_quarantine_user;
mod m20261203_000004_reconcile_passes;
mod m20261203_000005_organizations;
mod m20261203_000006_organization_changes;
mod m20261203_000007_apply_batch_function_v5;

/// The current definition of the PostgreSQL function `clerk_sync_apply_batch`
/// (`CREATE OR REPLACE FUNCTION …`): what the latest of its migrations
/// installs, and what the sync-service's batches call.
pub const APPLY_BATCH_FUNCTION: &str = include_str!("apply_batch_v5.sql");

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
            Box::new(m20261203_000001_apply_batch_function_v3::Migration),
            Box::new(m20261203_000002_apply_batch_function_v4::Migration),
            Box::new(m20261203_000003_quarantine_user::Migration),
            Box::new(m20261203_000004_reconcile_passes::Migration),
            Box::new(m20261203_000005_organizations::Migration),
            Box::new(m20261203_000006_organization_changes::Migration),
            Box::new(m20261203_000007_apply_batch_function_v5::Migration),
        ]
    }
}

/// Runs `sql` on PostgreSQL; nothing on SQLite, which has no stored functions.
async fn on_postgres(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() == DbBackend::Postgres {
        manager.get_connection().execute_unprepared(sql).await?;
    }
    Ok(())
}
