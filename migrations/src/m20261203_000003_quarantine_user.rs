//! `quarantined_events.user_id`: the user a quarantined delivery is about,
//! so deleting the user erases the personal data its bodies hold; and an
//! index on `last_seen_at`, so the quarantine's retention finds old records
//! without a scan. Records quarantined before this migration have no user.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum QuarantinedEvents {
    Table,
    UserId,
    LastSeenAt,
}

const USER_INDEX: &str = "idx_quarantined_events_user_id";
const AGE_INDEX: &str = "idx_quarantined_events_last_seen_at";

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(QuarantinedEvents::Table)
                    .add_column(ColumnDef::new(QuarantinedEvents::UserId).text().null())
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            (USER_INDEX, QuarantinedEvents::UserId),
            (AGE_INDEX, QuarantinedEvents::LastSeenAt),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(QuarantinedEvents::Table)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [USER_INDEX, AGE_INDEX] {
            manager
                .drop_index(
                    Index::drop()
                        .name(name)
                        .table(QuarantinedEvents::Table)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(QuarantinedEvents::Table)
                    .drop_column(QuarantinedEvents::UserId)
                    .to_owned(),
            )
            .await
    }
}
