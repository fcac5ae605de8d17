//! PostgreSQL only: the function `clerk_sync_apply_batch` as first released
//! (`apply_batch_v1.sql`, which explains it), so that the sync-service applies
//! a batch of events in one round trip instead of one per statement. SQLite
//! runs in-process: its statements cost no round trip, and it has no such
//! functions.
//!
//! Released, so pinned: this migration installs version 1 forever; later
//! versions come with migrations of their own (see the crate's documentation).

use sea_orm_migration::prelude::*;

use crate::on_postgres;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(manager, include_str!("apply_batch_v1.sql")).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(
            manager,
            "DROP FUNCTION IF EXISTS clerk_sync_apply_batch(json, json, json, bigint)",
        )
        .await
    }
}
