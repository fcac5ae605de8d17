//! The organizations' change feed: `organization_changes`, one entry per
//! organization and per membership holding the position of its latest
//! change, handed out by the same `feed_head` counter as the users' entries
//! (one log, two tables), and `feed_head.organizations_pruned_through`, the
//! horizon of its pruned deletion entries. Organizations already in the
//! directory are entered in (updated_at, id) order, then the memberships of
//! known organizations, so each organization comes before its memberships.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum OrganizationChanges {
    Table,
    Kind,
    Id,
    Position,
    Deleted,
    ChangedAt,
}

#[derive(DeriveIden)]
enum FeedHead {
    Table,
    OrganizationsPrunedThrough,
}

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OrganizationChanges::Table)
                    // `organization` or `membership`.
                    .col(
                        ColumnDef::new(OrganizationChanges::Kind)
                            .string()
                            .not_null(),
                    )
                    .col(ColumnDef::new(OrganizationChanges::Id).string().not_null())
                    .col(
                        ColumnDef::new(OrganizationChanges::Position)
                            .big_integer()
                            .not_null(),
                    )
                    // Whether the change is the deletion (the last one).
                    .col(
                        ColumnDef::new(OrganizationChanges::Deleted)
                            .boolean()
                            .not_null(),
                    )
                    // Local Unix milliseconds of the commit: deletion entries
                    // older than the retention are pruned.
                    .col(
                        ColumnDef::new(OrganizationChanges::ChangedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(OrganizationChanges::Kind)
                            .col(OrganizationChanges::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_organization_changes_position")
                    .table(OrganizationChanges::Table)
                    .col(OrganizationChanges::Position)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(FeedHead::Table)
                    .add_column(
                        ColumnDef::new(FeedHead::OrganizationsPrunedThrough)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;

        // Existing organizations, then the memberships of known ones, enter
        // the log after the head. Portable SQL (window functions exist on
        // SQLite >= 3.25 and PostgreSQL).
        let db = manager.get_connection();
        db.execute_unprepared(
            "INSERT INTO organization_changes (kind, id, position, deleted, changed_at) \
             SELECT 'organization', id, \
                    (SELECT position FROM feed_head WHERE id = 1) \
                      + ROW_NUMBER() OVER (ORDER BY updated_at, id), \
                    deleted_at IS NOT NULL, COALESCE(deleted_at, updated_at) \
             FROM organizations",
        )
        .await?;
        db.execute_unprepared(
            "INSERT INTO organization_changes (kind, id, position, deleted, changed_at) \
             SELECT 'membership', id, \
                    (SELECT position FROM feed_head WHERE id = 1) \
                      + (SELECT COUNT(*) FROM organizations) \
                      + ROW_NUMBER() OVER (ORDER BY updated_at, id), \
                    deleted_at IS NOT NULL, COALESCE(deleted_at, updated_at) \
             FROM organization_memberships \
             WHERE organization_id IN (SELECT id FROM organizations)",
        )
        .await?;
        db.execute_unprepared(
            "UPDATE feed_head \
             SET position = position + (SELECT COUNT(*) FROM organization_changes) \
             WHERE id = 1",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(FeedHead::Table)
                    .drop_column(FeedHead::OrganizationsPrunedThrough)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(OrganizationChanges::Table).to_owned())
            .await
    }
}
