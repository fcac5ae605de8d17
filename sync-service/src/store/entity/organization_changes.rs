//! `organization_changes`: the organizations' and memberships' entries in the
//! change feed's log, compacted like `user_changes`: one row per object
//! (`kind` `organization` or `membership`, and its id) at the position of its
//! latest change. Positions come from `feed_head`, as the users' do.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "organization_changes")]
pub(crate) struct Model {
    /// `organization` or `membership`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) kind: String,
    /// The organization's or the membership's id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) id: String,
    /// Position of the object's latest change; unique, grows in commit order.
    pub(crate) position: i64,
    /// Whether that change is the object's deletion.
    pub(crate) deleted: bool,
    /// Local Unix milliseconds of the change (deletion entries are pruned by it).
    pub(crate) changed_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
