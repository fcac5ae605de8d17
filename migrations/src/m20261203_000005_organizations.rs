//! `organizations`, `organization_memberships`, `organization_invitations`,
//! `organization_roles` and `organization_permissions`: Clerk's
//! organizations, who belongs to them with which role, who is invited, and
//! what each role may do. Like `users`, a deleted row stays as
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

#[derive(DeriveIden)]
enum OrganizationInvitations {
    Table,
    Id,
    OrganizationId,
    EmailAddress,
    Role,
    RoleName,
    Status,
    PublicMetadata,
    PrivateMetadata,
    UserId,
    ExpiresAt,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
}

#[derive(DeriveIden)]
enum OrganizationRoles {
    Table,
    Id,
    Key,
    Name,
    Description,
    IsCreatorEligible,
    PermissionIds,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
}

#[derive(DeriveIden)]
enum OrganizationPermissions {
    Table,
    Id,
    Key,
    Name,
    Description,
    Type,
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
        manager
            .create_table(
                Table::create()
                    .table(OrganizationInvitations::Table)
                    .col(
                        ColumnDef::new(OrganizationInvitations::Id)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(OrganizationInvitations::OrganizationId)
                            .string()
                            .not_null(),
                    )
                    .col(text(OrganizationInvitations::EmailAddress))
                    .col(text(OrganizationInvitations::Role))
                    .col(text(OrganizationInvitations::RoleName))
                    // pending, accepted or revoked.
                    .col(text(OrganizationInvitations::Status))
                    .col(text(OrganizationInvitations::PublicMetadata))
                    .col(
                        ColumnDef::new(OrganizationInvitations::PrivateMetadata)
                            .text()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(OrganizationInvitations::UserId)
                            .text()
                            .null(),
                    )
                    .col(time(OrganizationInvitations::ExpiresAt))
                    .col(time(OrganizationInvitations::CreatedAt))
                    .col(
                        ColumnDef::new(OrganizationInvitations::UpdatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    // Set when the organization is deleted (address erased).
                    .col(time(OrganizationInvitations::DeletedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_organization_invitations_organization")
                    .table(OrganizationInvitations::Table)
                    .col(OrganizationInvitations::OrganizationId)
                    .col(OrganizationInvitations::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OrganizationRoles::Table)
                    .col(
                        ColumnDef::new(OrganizationRoles::Id)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(text(OrganizationRoles::Key))
                    .col(text(OrganizationRoles::Name))
                    .col(text(OrganizationRoles::Description))
                    .col(
                        ColumnDef::new(OrganizationRoles::IsCreatorEligible)
                            .boolean()
                            .not_null(),
                    )
                    // A JSON array of permission ids.
                    .col(text(OrganizationRoles::PermissionIds))
                    .col(time(OrganizationRoles::CreatedAt))
                    .col(
                        ColumnDef::new(OrganizationRoles::UpdatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(time(OrganizationRoles::DeletedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OrganizationPermissions::Table)
                    .col(
                        ColumnDef::new(OrganizationPermissions::Id)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(text(OrganizationPermissions::Key))
                    .col(text(OrganizationPermissions::Name))
                    .col(text(OrganizationPermissions::Description))
                    .col(text(OrganizationPermissions::Type))
                    .col(time(OrganizationPermissions::CreatedAt))
                    .col(
                        ColumnDef::new(OrganizationPermissions::UpdatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(time(OrganizationPermissions::DeletedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            OrganizationPermissions::Table.into_iden(),
            OrganizationRoles::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        manager
            .drop_table(
                Table::drop()
                    .table(OrganizationInvitations::Table)
                    .to_owned(),
            )
            .await?;
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

/// A required text column.
fn text(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).text().not_null().to_owned()
}

/// An optional time column (Unix milliseconds).
fn time(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).big_integer().null().to_owned()
}
