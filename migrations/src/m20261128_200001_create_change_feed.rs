//! The change feed: `user_changes`, one entry per user holding the position of
//! the user's latest change, and `feed_head`, the one-row counter that hands
//! positions out in commit order. Users already in the directory are entered
//! in the log, in (updated_at, id) order, so existing data is followed too.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum UserChanges {
    Table,
    UserId,
    Position,
    Deleted,
    ChangedAt,
}

#[derive(DeriveIden)]
enum FeedHead {
    Table,
    Id,
    Position,
    PrunedThrough,
}

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UserChanges::Table)
                    .col(
                        ColumnDef::new(UserChanges::UserId)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(UserChanges::Position)
                            .big_integer()
                            .not_null(),
                    )
                    // Whether the change is the user's deletion (the last one).
                    .col(ColumnDef::new(UserChanges::Deleted).boolean().not_null())
                    // Local Unix milliseconds of the commit: deletion entries
                    // older than the retention are pruned.
                    .col(
                        ColumnDef::new(UserChanges::ChangedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // Readers page by position; it is unique (one counter hands it out).
        manager
            .create_index(
                Index::create()
                    .name("idx_user_changes_position")
                    .table(UserChanges::Table)
                    .col(UserChanges::Position)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(FeedHead::Table)
                    .col(
                        ColumnDef::new(FeedHead::Id)
                            .integer()
                            .not_null()
                            .primary_key(),
                    )
                    // The last position handed out.
                    .col(ColumnDef::new(FeedHead::Position).big_integer().not_null())
                    // Deletion entries at or below this position may have been
                    // pruned: resuming from before it could miss one.
                    .col(
                        ColumnDef::new(FeedHead::PrunedThrough)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;

        // Existing users enter the log in (updated_at, id) order. Portable SQL:
        // window functions exist on SQLite >= 3.25 and PostgreSQL.
        let db = manager.get_connection();
        db.execute_unprepared(
            "INSERT INTO user_changes (user_id, position, deleted, changed_at) \
             SELECT id, ROW_NUMBER() OVER (ORDER BY updated_at, id), \
                    deleted_at IS NOT NULL, COALESCE(deleted_at, updated_at) \
             FROM users",
        )
        .await?;
        db.execute_unprepared(
            "INSERT INTO feed_head (id, position, pruned_through) \
             SELECT 1, COUNT(*), 0 FROM user_changes",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(FeedHead::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(UserChanges::Table).to_owned())
            .await
    }
}
