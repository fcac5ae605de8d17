//! `organizations` and `organization_memberships`: Clerk's organizations and
//! who belongs to them with which role. Like `users`, a deleted row stays as
//! a tombstone (`deleted_at` set, names and metadata erased) so late events
//! cannot revive it. A membership is stored whether or not its organization
//! or user is known yet; queries join what is there.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Organizations {
    Table,
    Id,
    Name,
    Slug,
    ImageUrl,
    HasImage,
    MaxAllowedMemberships,
    AdminDeleteEnabled,
    PublicMetadata,
    PrivateMetadata,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
}

#[derive(DeriveIden)]
enum OrganizationMemberships {
    Table,
    Id,
    OrganizationId,
    UserId,
    Role,
    RoleName,
    Permissions,
    PublicMetadata,
    PrivateMetadata,
    PublicUserData,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
}

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Organizations::Table)
                    .col(
                        ColumnDef::new(Organizations::Id)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Organizations::Name).text().not_null())
                    .col(ColumnDef::new(Organizations::Slug).text().null())
                    .col(ColumnDef::new(Organizations::ImageUrl).text().null())
                    .col(ColumnDef::new(Organizations::HasImage).boolean().not_null())
                    .col(
                        ColumnDef::new(Organizations::MaxAllowedMemberships)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Organizations::AdminDeleteEnabled)
                            .boolean()
                            .not_null(),
                    )
                    // JSON objects as text, like the users' metadata.
                    .col(
                        ColumnDef::new(Organizations::PublicMetadata)
                            .text()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Organizations::PrivateMetadata).text().null())
                    .col(ColumnDef::new(Organizations::CreatedBy).text().null())
                    // Unix milliseconds, like every time column.
                    .col(
                        ColumnDef::new(Organizations::CreatedAt)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Organizations::UpdatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Organizations::DeletedAt)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        // GetOrganization by slug (tombstones have none).
        manager
            .create_index(
                Index::create()
                    .name("idx_organizations_slug")
                    .table(Organizations::Table)
                    .col(Organizations::Slug)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OrganizationMemberships::Table)
                    .col(
                        ColumnDef::new(OrganizationMemberships::Id)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(OrganizationMemberships::OrganizationId)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OrganizationMemberships::UserId)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OrganizationMemberships::Role)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OrganizationMemberships::RoleName)
                            .text()
                            .not_null(),
                    )
                    // A JSON array of permission keys.
                    .col(
                        ColumnDef::new(OrganizationMemberships::Permissions)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OrganizationMemberships::PublicMetadata)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OrganizationMemberships::PrivateMetadata)
                            .text()
                            .null(),
                    )
                    // The member's public data as Clerk embeds it (JSON); erased
                    // with the membership or the user.
                    .col(
                        ColumnDef::new(OrganizationMemberships::PublicUserData)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OrganizationMemberships::CreatedAt)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(OrganizationMemberships::UpdatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OrganizationMemberships::DeletedAt)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        // By organization (a roster, an organization's deletion) and by user
        // (a user's organizations, CheckPermission, a user's deletion).
        for (name, first, second) in [
            (
                "idx_organization_memberships_organization",
                OrganizationMemberships::OrganizationId,
                OrganizationMemberships::UserId,
            ),
            (
                "idx_organization_memberships_user",
                OrganizationMemberships::UserId,
                OrganizationMemberships::OrganizationId,
            ),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(OrganizationMemberships::Table)
                        .col(first)
                        .col(second)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(OrganizationMemberships::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(Organizations::Table).to_owned())
            .await
    }
}
