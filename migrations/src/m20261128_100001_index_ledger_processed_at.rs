//! An index on `processed_events.processed_at`, so the sync-service's ledger
//! pruning finds the oldest rows without scanning the ledger.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ProcessedEvents {
    Table,
    ProcessedAt,
}

const INDEX: &str = "idx_processed_events_processed_at";

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(ProcessedEvents::Table)
                    .col(ProcessedEvents::ProcessedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(INDEX)
                    .table(ProcessedEvents::Table)
                    .to_owned(),
            )
            .await
    }
}
