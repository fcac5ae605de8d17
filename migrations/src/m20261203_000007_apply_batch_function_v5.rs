//! PostgreSQL only: `clerk_sync_apply_batch` version 5 (`apply_batch_v5.sql`).
//! Versions 3 and 4 planned every statement at every call
//! (`plan_cache_mode = force_custom_plan`), because a cached plan of the email
//! index's DELETE had scanned the whole table once it grew. Only two
//! statements look rows up in growing tables; version 5 runs those two as
//! EXECUTE (planned at every call) and lets the others keep their plans:
//! about a fifth less of the server's CPU per event.

use sea_orm_migration::prelude::*;

use crate::{APPLY_BATCH_FUNCTION, on_postgres};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(manager, APPLY_BATCH_FUNCTION).await
    }

    /// Back to version 4.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(manager, include_str!("apply_batch_v4.sql")).await
    }
}
