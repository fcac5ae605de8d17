//! `user_changes`: the change feed's log, compacted by construction: one row
//! per user, holding the position of the user's latest change. Readers join it
//! to `users` for the user's current state.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user_changes")]
pub(crate) struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub(crate) user_id: String,
    /// Position of the user's latest change; unique, grows in commit order.
    pub(crate) position: i64,
    /// Whether that change is the user's deletion.
    pub(crate) deleted: bool,
    /// Local Unix milliseconds of the change (deletion entries are pruned by it).
    pub(crate) changed_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub(crate) enum Relation {
    #[sea_orm(
        belongs_to = "super::users::Entity",
        from = "Column::UserId",
        to = "super::users::Column::Id"
    )]
    User,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
