//! Account state and verification: the columns for what Clerk says about a
//! user's standing (banned, locked, second factors, activity), their phone
//! numbers, linked accounts and opt-in private metadata; the mapping version
//! that lets a re-delivery fill them in for rows written before; and an email
//! index that holds verified addresses only.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    PhoneNumbers,
    HasImage,
    PrivateMetadata,
    LastActiveAt,
    LegalAcceptedAt,
    Banned,
    Locked,
    LockedUntil,
    TwoFactorEnabled,
    TotpEnabled,
    BackupCodeEnabled,
    ExternalAccounts,
    ProfileFormat,
    UpdatedAt,
    Id,
}

#[derive(DeriveIden)]
enum UserEmailAddresses {
    Table,
}

/// `NOT NULL DEFAULT false`: what an older payload without the field means.
fn flag(column: Users) -> ColumnDef {
    ColumnDef::new(column)
        .boolean()
        .not_null()
        .default(false)
        .to_owned()
}

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let columns = [
            ColumnDef::new(Users::PhoneNumbers).text().null().to_owned(),
            flag(Users::HasImage),
            ColumnDef::new(Users::PrivateMetadata)
                .text()
                .null()
                .to_owned(),
            ColumnDef::new(Users::LastActiveAt)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(Users::LegalAcceptedAt)
                .big_integer()
                .null()
                .to_owned(),
            flag(Users::Banned),
            flag(Users::Locked),
            ColumnDef::new(Users::LockedUntil)
                .big_integer()
                .null()
                .to_owned(),
            flag(Users::TwoFactorEnabled),
            flag(Users::TotpEnabled),
            flag(Users::BackupCodeEnabled),
            ColumnDef::new(Users::ExternalAccounts)
                .text()
                .null()
                .to_owned(),
            // Rows already stored were written by mapping version 1.
            ColumnDef::new(Users::ProfileFormat)
                .integer()
                .not_null()
                .default(1)
                .to_owned(),
        ];
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for mut column in columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(Users::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        // ListUsers can select banned users (or leave them out) in page order.
        manager
            .create_index(
                Index::create()
                    .name("idx_users_banned_updated_at_id")
                    .table(Users::Table)
                    .col(Users::Banned)
                    .col(Users::UpdatedAt)
                    .col(Users::Id)
                    .to_owned(),
            )
            .await?;
        // The index held every address, verified or not, and which were
        // verified was never stored: none of them proves ownership any more.
        // Each user's verified addresses come back with their next event (or
        // a backfill, which the mapping version lets through).
        manager
            .exec_stmt(
                Query::delete()
                    .from_table(UserEmailAddresses::Table)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_users_banned_updated_at_id")
                    .table(Users::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            Users::PhoneNumbers,
            Users::HasImage,
            Users::PrivateMetadata,
            Users::LastActiveAt,
            Users::LegalAcceptedAt,
            Users::Banned,
            Users::Locked,
            Users::LockedUntil,
            Users::TwoFactorEnabled,
            Users::TotpEnabled,
            Users::BackupCodeEnabled,
            Users::ExternalAccounts,
            Users::ProfileFormat,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Users::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
