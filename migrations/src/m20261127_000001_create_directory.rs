//! The first schema: users with tombstones, their email index, and the
//! processed-event ledger.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    PrimaryEmailAddress,
    EmailAddresses,
    PrimaryPhoneNumber,
    FirstName,
    LastName,
    DisplayName,
    Username,
    ImageUrl,
    ExternalId,
    PublicMetadata,
    CreatedAt,
    UpdatedAt,
    LastSignInAt,
    DeletedAt,
}

#[derive(DeriveIden)]
enum UserEmailAddresses {
    Table,
    EmailLower,
    UserId,
}

#[derive(DeriveIden)]
enum ProcessedEvents {
    Table,
    EventId,
    UserId,
    Kind,
    ProcessedAt,
}

// The trait is declared with `&SchemaManager`; spelling the lifetime out here
// would not match it.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Times are Unix milliseconds (BIGINT), as Clerk sends them: exact,
        // totally ordered and identical on both backends.
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(ColumnDef::new(Users::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(Users::PrimaryEmailAddress).string().null())
                    // JSON array of every address, in Clerk's order.
                    .col(ColumnDef::new(Users::EmailAddresses).text().null())
                    .col(ColumnDef::new(Users::PrimaryPhoneNumber).string().null())
                    .col(ColumnDef::new(Users::FirstName).string().null())
                    .col(ColumnDef::new(Users::LastName).string().null())
                    .col(ColumnDef::new(Users::DisplayName).string().null())
                    .col(ColumnDef::new(Users::Username).string().null())
                    .col(ColumnDef::new(Users::ImageUrl).text().null())
                    .col(ColumnDef::new(Users::ExternalId).string().null())
                    // JSON object (Clerk public_metadata).
                    .col(ColumnDef::new(Users::PublicMetadata).text().null())
                    .col(ColumnDef::new(Users::CreatedAt).big_integer().null())
                    .col(ColumnDef::new(Users::UpdatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Users::LastSignInAt).big_integer().null())
                    .col(ColumnDef::new(Users::DeletedAt).big_integer().null())
                    .to_owned(),
            )
            .await?;
        // ListUsers pages by (updated_at, id), optionally from a changed_since.
        manager
            .create_index(
                Index::create()
                    .name("idx_users_updated_at_id")
                    .table(Users::Table)
                    .col(Users::UpdatedAt)
                    .col(Users::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(UserEmailAddresses::Table)
                    .col(
                        ColumnDef::new(UserEmailAddresses::EmailLower)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UserEmailAddresses::UserId)
                            .string()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(UserEmailAddresses::EmailLower)
                            .col(UserEmailAddresses::UserId),
                    )
                    .to_owned(),
            )
            .await?;
        // Replacing a user's addresses deletes by user id.
        manager
            .create_index(
                Index::create()
                    .name("idx_user_email_addresses_user_id")
                    .table(UserEmailAddresses::Table)
                    .col(UserEmailAddresses::UserId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ProcessedEvents::Table)
                    .col(
                        ColumnDef::new(ProcessedEvents::EventId)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ProcessedEvents::UserId).string().not_null())
                    .col(ColumnDef::new(ProcessedEvents::Kind).string().not_null())
                    .col(
                        ColumnDef::new(ProcessedEvents::ProcessedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ProcessedEvents::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(UserEmailAddresses::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Users::Table).to_owned())
            .await
    }
}
