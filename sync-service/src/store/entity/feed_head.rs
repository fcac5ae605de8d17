//! `feed_head`: one row (id 1) holding the last position the change feed
//! handed out. Writers bump it in their transaction; its row lock is what puts
//! positions in commit order (see `store::changes`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "feed_head")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) id: i32,
    /// The last position handed out.
    pub(crate) position: i64,
    /// Deletion entries of `user_changes` at or below this position may
    /// have been pruned.
    pub(crate) pruned_through: i64,
    /// The same for `organization_changes`.
    pub(crate) organizations_pruned_through: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
