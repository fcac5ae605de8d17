//! `quarantined_events`: verified deliveries that cannot be applied (a body
//! that is not the JSON Clerk documents, a value the database refuses, a shape
//! protobuf cannot carry), kept with their raw body so an operator can inspect,
//! retry or drop them.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum QuarantinedEvents {
    Table,
    EventId,
    EventType,
    Body,
    SvixTimestamp,
    Reason,
    FirstSeenAt,
    LastSeenAt,
    SeenCount,
}

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(QuarantinedEvents::Table)
                    // The svix-id: a redelivery updates the record it already has.
                    .col(
                        ColumnDef::new(QuarantinedEvents::EventId)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    // The payload's `type` when it could be read (text without U+0000).
                    .col(ColumnDef::new(QuarantinedEvents::EventType).text().null())
                    // The verified body, byte for byte (it may not be UTF-8).
                    .col(ColumnDef::new(QuarantinedEvents::Body).blob().not_null())
                    // The signed svix-timestamp (Unix seconds), needed to re-map it.
                    .col(
                        ColumnDef::new(QuarantinedEvents::SvixTimestamp)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(QuarantinedEvents::Reason).text().not_null())
                    // Unix milliseconds, like every time column.
                    .col(
                        ColumnDef::new(QuarantinedEvents::FirstSeenAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QuarantinedEvents::LastSeenAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QuarantinedEvents::SeenCount)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // The operator's list is ordered by first sighting.
        manager
            .create_index(
                Index::create()
                    .name("idx_quarantined_events_first_seen_at")
                    .table(QuarantinedEvents::Table)
                    .col(QuarantinedEvents::FirstSeenAt)
                    .col(QuarantinedEvents::EventId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(QuarantinedEvents::Table).to_owned())
            .await
    }
}
