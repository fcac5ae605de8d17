//! PostgreSQL only: `clerk_sync_apply_batch` version 4 (`apply_batch_v4.sql`).
//! Versions 1 to 3 indexed the verified addresses of every candidate upsert
//! of a written user, not only the winner's: a batch holding an older and a
//! newer profile of one user left the older one's addresses in the email
//! index, so `FindUserByEmail` could answer with a user for an address they
//! no longer have. Version 4 takes each address row with the event it comes
//! from and indexes the winning events' rows only, as the portable path does.

use sea_orm_migration::prelude::*;

use crate::on_postgres;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(manager, include_str!("apply_batch_v4.sql")).await
    }

    /// Back to version 3.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(manager, include_str!("apply_batch_v3.sql")).await
    }
}
