//! Who is a member: the live-membership rule every organization read and
//! the change feed share.

use std::collections::HashMap;

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, ExprTrait as _, Query},
};

use super::entity::{organization_memberships as memberships, organizations, users};
use crate::error::Error;

/// Memberships not ended whose organization and user are not tombstones.
/// Each check is a correlated lookup by primary key (`NOT EXISTS`), so a
/// read of one user's or one organization's memberships costs index
/// lookups, never a scan of every tombstone.
pub(super) fn live_memberships() -> sea_orm::Select<memberships::Entity> {
    let deleted_user = Query::select()
        .expr(Expr::val(1))
        .from(users::Entity)
        .and_where(
            Expr::col((users::Entity, users::Column::Id))
                .equals((memberships::Entity, memberships::Column::UserId)),
        )
        .and_where(Expr::col((users::Entity, users::Column::DeletedAt)).is_not_null())
        .to_owned();
    let deleted_organization = Query::select()
        .expr(Expr::val(1))
        .from(organizations::Entity)
        .and_where(
            Expr::col((organizations::Entity, organizations::Column::Id))
                .equals((memberships::Entity, memberships::Column::OrganizationId)),
        )
        .and_where(
            Expr::col((organizations::Entity, organizations::Column::DeletedAt)).is_not_null(),
        )
        .to_owned();
    memberships::Entity::find()
        .filter(memberships::Column::DeletedAt.is_null())
        .filter(Expr::exists(deleted_user).not())
        .filter(Expr::exists(deleted_organization).not())
}

/// The ids of deleted users.
pub(super) fn deleted_users() -> sea_orm::sea_query::SelectStatement {
    Query::select()
        .column(users::Column::Id)
        .from(users::Entity)
        .and_where(users::Column::DeletedAt.is_not_null())
        .to_owned()
}

/// Live members of each of `organizations` (memberships not ended, whose
/// user is not deleted).
pub(super) async fn members_counts(
    db: &impl ConnectionTrait,
    organizations: &[&str],
) -> Result<HashMap<String, u64>, Error> {
    if organizations.is_empty() {
        return Ok(HashMap::new());
    }
    let counts: Vec<(String, i64)> = live_memberships()
        .select_only()
        .column(memberships::Column::OrganizationId)
        .column_as(memberships::Column::Id.count(), "members")
        .filter(memberships::Column::OrganizationId.is_in(organizations.iter().copied()))
        .group_by(memberships::Column::OrganizationId)
        .into_tuple()
        .all(db)
        .await?;
    Ok(counts
        .into_iter()
        .map(|(id, count)| (id, u64::try_from(count).unwrap_or(0)))
        .collect())
}
