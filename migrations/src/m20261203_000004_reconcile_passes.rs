//! `reconcile_passes` and `reconcile_lease`: the record of every backfill
//! pass (who ran it, how it ended, how far it got, what it counted) and the
//! one-row lease that lets a single pass run at a time. Acquiring the lease
//! is one conditional upsert of its row (granted only when the row is absent
//! or expired), so two gateways asking at once cannot both be granted.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ReconcilePasses {
    Table,
    Id,
    Holder,
    Status,
    Reconcile,
    EveryMs,
    StartedAt,
    EndedAt,
    LeaseExpiresAt,
    ResumedAfter,
    Cursor,
    Fetched,
    Applied,
    Unchanged,
    Stale,
    Tombstoned,
    Rejected,
    Quarantined,
    RepairedMissed,
    RepairedStale,
    Error,
}

#[derive(DeriveIden)]
enum ReconcileLease {
    Table,
    Name,
    PassId,
    ExpiresAt,
}

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let count = |column| {
            ColumnDef::new(column)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned()
        };
        manager
            .create_table(
                Table::create()
                    .table(ReconcilePasses::Table)
                    .col(
                        ColumnDef::new(ReconcilePasses::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ReconcilePasses::Holder).text().not_null())
                    // running, complete, failed or abandoned.
                    .col(ColumnDef::new(ReconcilePasses::Status).text().not_null())
                    .col(
                        ColumnDef::new(ReconcilePasses::Reconcile)
                            .boolean()
                            .not_null(),
                    )
                    // The scheduler's interval; NULL for a one-off run.
                    .col(
                        ColumnDef::new(ReconcilePasses::EveryMs)
                            .big_integer()
                            .null(),
                    )
                    // Unix milliseconds, like every time column.
                    .col(
                        ColumnDef::new(ReconcilePasses::StartedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ReconcilePasses::EndedAt)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ReconcilePasses::LeaseExpiresAt)
                            .big_integer()
                            .null(),
                    )
                    // NULL: the listing started at the first user.
                    .col(ColumnDef::new(ReconcilePasses::ResumedAfter).text().null())
                    .col(ColumnDef::new(ReconcilePasses::Cursor).text().null())
                    .col(count(ReconcilePasses::Fetched))
                    .col(count(ReconcilePasses::Applied))
                    .col(count(ReconcilePasses::Unchanged))
                    .col(count(ReconcilePasses::Stale))
                    .col(count(ReconcilePasses::Tombstoned))
                    .col(count(ReconcilePasses::Rejected))
                    .col(count(ReconcilePasses::Quarantined))
                    .col(count(ReconcilePasses::RepairedMissed))
                    .col(count(ReconcilePasses::RepairedStale))
                    .col(ColumnDef::new(ReconcilePasses::Error).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ReconcileLease::Table)
                    // One row per lease; the backfill's is named `backfill`.
                    .col(
                        ColumnDef::new(ReconcileLease::Name)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ReconcileLease::PassId)
                            .big_integer()
                            .not_null(),
                    )
                    // Unix milliseconds.
                    .col(
                        ColumnDef::new(ReconcileLease::ExpiresAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ReconcileLease::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ReconcilePasses::Table).to_owned())
            .await
    }
}
