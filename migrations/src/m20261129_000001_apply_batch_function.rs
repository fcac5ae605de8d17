//! PostgreSQL only: the function `clerk_sync_apply_batch` (in
//! `apply_batch.sql`, which explains it), so that the sync-service applies a
//! batch of events in one round trip instead of one per statement. SQLite runs
//! in-process: its statements cost no round trip, and it has no such functions.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(include_str!("apply_batch.sql"))
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(
                    "DROP FUNCTION IF EXISTS clerk_sync_apply_batch(json, json, json, bigint)",
                )
                .await?;
        }
        Ok(())
    }
}
