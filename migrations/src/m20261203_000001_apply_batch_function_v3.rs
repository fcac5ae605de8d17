//! PostgreSQL only: `clerk_sync_apply_batch` version 3 (`apply_batch_v3.sql`),
//! which replaces whichever version a database holds. Version 2 joined the
//! arrays of written users instead of `= ANY`, version 3 plans every call for
//! the tables as they are (`plan_cache_mode = force_custom_plan`); both were
//! released as edits of the first migration's file, which a database that had
//! run it never saw.

use sea_orm_migration::prelude::*;

use crate::on_postgres;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(manager, include_str!("apply_batch_v3.sql")).await
    }

    /// Back to the function the migration before this one installs.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(manager, include_str!("apply_batch_v1.sql")).await
    }
}
