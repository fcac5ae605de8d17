//! Organizations, memberships, invitations, roles and permissions, applied
//! with the users' rules and read back for `OrganizationDirectoryService`.
//!
//! Each event is one transaction: the ledger row first (a write, so SQLite
//! takes its write lock at once; its key is the duplicate check), then one
//! conditional upsert keyed by id, so concurrent events for the same row
//! cannot both win: a row changes only for a newer `updated_at` and never
//! once it is a tombstone. Organization and membership events are rare next
//! to user events, so they do not go through the user batches.
//!
//! Deleting an organization ends its memberships and invitations (their
//! addresses erased); deleting a user ends
//! theirs (`end_memberships_of`, called once the user's deletion commits,
//! and by the periodic sweep). Until then, reads skip memberships whose
//! organization or user is a tombstone.

use std::{collections::HashMap, sync::Arc};

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait, TransactionTrait,
    sea_query::{Expr, ExprTrait, OnConflict},
};

use clerk_sync_common::time::now_millis;

use super::{
    Store,
    cache::{MAX_CACHED_MEMBERSHIPS, Memberships},
    entity::{
        organization_invitations as invitations, organization_memberships as memberships,
        organization_permissions as permissions, organization_roles as roles, organizations,
        processed_events as ledger, users,
    },
    members::{deleted_users, live_memberships, members_counts},
    organization_feed::{self, Logged},
};
use crate::{
    domain::{EventId, Outcome, UserId},
    error::Error,
    metrics,
};

/// A stored organization.
pub(crate) type Organization = organizations::Model;
/// A stored membership.
pub(crate) type Membership = memberships::Model;
/// A stored invitation.
pub(crate) type Invitation = invitations::Model;
/// A stored role.
pub(crate) type Role = roles::Model;
/// A stored permission.
pub(crate) type StoredPermission = permissions::Model;

/// Invitation statuses as stored; a pending one is the only one that moves.
pub(crate) const INVITATION_PENDING: &str = "pending";

/// An organization or membership event, parsed at the gRPC edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OrganizationEvent {
    /// organization.created / organization.updated.
    OrganizationUpserted(Organization),
    /// organization.deleted, at `deleted_at` (Unix ms).
    OrganizationDeleted { id: String, deleted_at: i64 },
    /// organizationMembership.created / .updated.
    MembershipUpserted(Membership),
    /// organizationMembership.deleted: the membership as it was, ended at
    /// `deleted_at` (Unix ms).
    MembershipDeleted {
        membership: Membership,
        deleted_at: i64,
    },
    /// organizationInvitation.created / .accepted / .revoked.
    InvitationChanged(Invitation),
    /// role.created / role.updated, with the permissions it embeds.
    RoleChanged {
        role: Role,
        permissions: Vec<StoredPermission>,
    },
    /// role.deleted, at `deleted_at` (Unix ms).
    RoleDeleted { id: String, deleted_at: i64 },
    /// permission.created / permission.updated.
    PermissionChanged(StoredPermission),
    /// permission.deleted, at `deleted_at` (Unix ms).
    PermissionDeleted { id: String, deleted_at: i64 },
}

impl OrganizationEvent {
    /// The ledger's kind.
    fn kind(&self) -> &'static str {
        match self {
            Self::OrganizationUpserted(_) => "organization.upserted",
            Self::OrganizationDeleted { .. } => "organization.deleted",
            Self::MembershipUpserted(_) => "organizationMembership.upserted",
            Self::MembershipDeleted { .. } => "organizationMembership.deleted",
            Self::InvitationChanged(_) => "organizationInvitation.changed",
            Self::RoleChanged { .. } => "role.changed",
            Self::RoleDeleted { .. } => "role.deleted",
            Self::PermissionChanged(_) => "permission.changed",
            Self::PermissionDeleted { .. } => "permission.deleted",
        }
    }

    /// Whether it can change the organizations' change feed (organizations
    /// and memberships are in it; invitations, roles and permissions not).
    fn feeds(&self) -> bool {
        matches!(
            self,
            Self::OrganizationUpserted(_)
                | Self::OrganizationDeleted { .. }
                | Self::MembershipUpserted(_)
                | Self::MembershipDeleted { .. }
        )
    }

    /// The id of the row it is about.
    fn subject(&self) -> &str {
        match self {
            Self::OrganizationUpserted(organization) => &organization.id,
            Self::OrganizationDeleted { id, .. } => id,
            Self::MembershipUpserted(membership) | Self::MembershipDeleted { membership, .. } => {
                &membership.id
            }
            Self::InvitationChanged(invitation) => &invitation.id,
            Self::RoleChanged { role, .. } => &role.id,
            Self::PermissionChanged(permission) => &permission.id,
            Self::RoleDeleted { id, .. } | Self::PermissionDeleted { id, .. } => id,
        }
    }
}

/// Who a [`Store::list_memberships`] call asks about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MembersOf {
    Organization(String),
    User(String),
}

/// What [`Store::check_permission`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Permission {
    Allowed { role: String },
    NoMembership,
    RoleLacks { role: String },
    UserBanned,
    UserDeleted,
}

/// An empty JSON object: what a tombstone keeps of metadata.
const EMPTY: &str = "{}";

impl Store {
    /// Applies `event` (id `event_id`); durable on return.
    pub(crate) async fn apply_organization_event(
        &self,
        event_id: &EventId,
        event: OrganizationEvent,
    ) -> Result<Outcome, Error> {
        // Marked before the transaction, invalidated after it (see the
        // `cache` module).
        let _writing = self.cache.as_deref().and_then(|cache| match &event {
            OrganizationEvent::MembershipUpserted(membership)
            | OrganizationEvent::MembershipDeleted { membership, .. } => {
                Some(cache.begin_member_write(vec![membership.user_id.clone()]))
            }
            OrganizationEvent::OrganizationDeleted { .. } => Some(cache.begin_every_member_write()),
            _ => None,
        });
        let txn = self.db.begin().await?;
        if event.feeds() {
            organization_feed::lock_log(&txn).await?;
        }
        let recorded = ledger::Entity::insert(ledger::ActiveModel {
            event_id: Set(event_id.as_str().to_owned()),
            user_id: Set(event.subject().to_owned()),
            kind: Set(event.kind().to_owned()),
            processed_at: Set(now_millis()),
        })
        .on_conflict(
            OnConflict::column(ledger::Column::EventId)
                .do_nothing()
                .to_owned(),
        )
        .into_query();
        if txn.execute(&recorded).await?.rows_affected() == 0 {
            return Ok(Outcome::Duplicate);
        }
        let mut logged = Vec::new();
        let outcome = match event {
            OrganizationEvent::OrganizationUpserted(organization) => {
                upsert_organization(&txn, organization, &mut logged).await?
            }
            OrganizationEvent::OrganizationDeleted { id, deleted_at } => {
                delete_organization(&txn, id, deleted_at, &mut logged).await?
            }
            OrganizationEvent::MembershipUpserted(membership) => {
                upsert_membership(&txn, membership, &mut logged).await?
            }
            OrganizationEvent::MembershipDeleted {
                membership,
                deleted_at,
            } => end_membership(&txn, membership, deleted_at, &mut logged).await?,
            OrganizationEvent::InvitationChanged(invitation) => {
                upsert_invitation(&txn, invitation).await?
            }
            OrganizationEvent::RoleChanged { role, permissions } => {
                for permission in permissions {
                    upsert_permission(&txn, permission).await?;
                }
                upsert_role(&txn, role).await?
            }
            OrganizationEvent::PermissionChanged(permission) => {
                upsert_permission(&txn, permission).await?
            }
            OrganizationEvent::RoleDeleted { id, deleted_at } => {
                let tombstone = roles::ActiveModel {
                    id: Set(id),
                    key: Set(String::new()),
                    name: Set(String::new()),
                    description: Set(String::new()),
                    is_creator_eligible: Set(false),
                    permission_ids: Set("[]".to_owned()),
                    created_at: Set(None),
                    updated_at: Set(deleted_at),
                    deleted_at: Set(Some(deleted_at)),
                };
                tombstone_row::<roles::Entity, _>(
                    &txn,
                    tombstone,
                    roles::Column::Id,
                    roles::Column::DeletedAt,
                )
                .await?
            }
            OrganizationEvent::PermissionDeleted { id, deleted_at } => {
                let tombstone = permissions::ActiveModel {
                    id: Set(id),
                    key: Set(String::new()),
                    name: Set(String::new()),
                    description: Set(String::new()),
                    kind: Set(String::new()),
                    created_at: Set(None),
                    updated_at: Set(deleted_at),
                    deleted_at: Set(Some(deleted_at)),
                };
                tombstone_row::<permissions::Entity, _>(
                    &txn,
                    tombstone,
                    permissions::Column::Id,
                    permissions::Column::DeletedAt,
                )
                .await?
            }
        };
        organization_feed::record(&txn, &logged, now_millis()).await?;
        txn.commit().await?;
        if !logged.is_empty() {
            self.signal.ring();
        }
        Ok(outcome)
    }

    /// Ends the live memberships of `users` (just deleted) and erases the
    /// personal data they hold; returns how many.
    pub async fn end_memberships_of(&self, users: &[&str]) -> Result<u64, Error> {
        let mut ended = 0;
        for chunk in users.chunks(1000) {
            let _writing = self.cache.as_deref().map(|cache| {
                cache.begin_member_write(chunk.iter().map(|&id| id.to_owned()).collect())
            });
            ended += self
                .end_memberships_where(memberships::Column::UserId.is_in(chunk.iter().copied()))
                .await?;
        }
        Ok(ended)
    }

    /// Ends the live memberships of every deleted user (the sweep behind
    /// [`Store::end_memberships_of`]); returns how many.
    pub async fn end_memberships_of_deleted_users(&self) -> Result<u64, Error> {
        let _writing = self
            .cache
            .as_deref()
            .map(|cache| cache.begin_every_member_write());
        self.end_memberships_where(memberships::Column::UserId.in_subquery(deleted_users()))
            .await
    }

    /// Ends the live memberships `which` selects, in one transaction with
    /// their change feed entries; returns how many.
    async fn end_memberships_where(
        &self,
        which: impl sea_orm::sea_query::IntoCondition,
    ) -> Result<u64, Error> {
        let txn = self.db.begin().await?;
        organization_feed::lock_log(&txn).await?;
        let mut logged = Vec::new();
        end_memberships(&txn, which, now_millis(), &mut logged).await?;
        organization_feed::record(&txn, &logged, now_millis()).await?;
        txn.commit().await?;
        if !logged.is_empty() {
            self.signal.ring();
        }
        Ok(logged.len() as u64)
    }

    /// The live organization with `id`, or the live one holding `slug`.
    pub(crate) async fn get_organization(
        &self,
        id: Option<&str>,
        slug: Option<&str>,
    ) -> Result<(Organization, u64), Error> {
        let mut find =
            organizations::Entity::find().filter(organizations::Column::DeletedAt.is_null());
        if let Some(id) = id {
            find = find.filter(organizations::Column::Id.eq(id));
        }
        if let Some(slug) = slug {
            find = find.filter(organizations::Column::Slug.eq(slug));
        }
        let organization = find
            .order_by_desc(organizations::Column::UpdatedAt)
            .one(&self.reads)
            .await?
            .ok_or_else(|| Error::NotFound("no such organization".to_owned()))?;
        let counts = self.members_counts(&[organization.id.as_str()]).await?;
        let count = counts.get(&organization.id).copied().unwrap_or(0);
        Ok((organization, count))
    }

    /// Up to `limit` live organizations after id `after`, in id order, each
    /// with its members count.
    pub(crate) async fn list_organizations(
        &self,
        limit: u64,
        after: Option<&str>,
    ) -> Result<Vec<(Organization, u64)>, Error> {
        let mut find =
            organizations::Entity::find().filter(organizations::Column::DeletedAt.is_null());
        if let Some(after) = after {
            find = find.filter(organizations::Column::Id.gt(after));
        }
        let page = find
            .order_by_asc(organizations::Column::Id)
            .limit(limit)
            .all(&self.reads)
            .await?;
        let ids: Vec<&str> = page.iter().map(|o| o.id.as_str()).collect();
        let counts = self.members_counts(&ids).await?;
        Ok(page
            .into_iter()
            .map(|organization| {
                let count = counts.get(&organization.id).copied().unwrap_or(0);
                (organization, count)
            })
            .collect())
    }

    /// The live membership of `user_id` in `organization_id`: from the
    /// user's memberships in the read cache, or else the database.
    pub(crate) async fn get_membership(
        &self,
        organization_id: &str,
        user_id: &str,
    ) -> Result<Membership, Error> {
        let found = match self.memberships_of(user_id).await? {
            Some(all) => membership_in(&all, organization_id).cloned(),
            None => {
                live_memberships()
                    .filter(memberships::Column::OrganizationId.eq(organization_id))
                    .filter(memberships::Column::UserId.eq(user_id))
                    .order_by_desc(memberships::Column::UpdatedAt)
                    .one(&self.reads)
                    .await?
            }
        };
        found.ok_or_else(|| {
            Error::NotFound(format!(
                "{user_id:?} has no membership in {organization_id:?}"
            ))
        })
    }

    /// Every live membership of `user_id`, through the read cache; `None`
    /// when there is no cache or the user has too many to cache (then ask
    /// the database for the one wanted).
    async fn memberships_of(&self, user_id: &str) -> Result<Option<Memberships>, Error> {
        let Some(cache) = self.cache.as_deref() else {
            return Ok(None);
        };
        if let Some(all) = cache.memberships_of(user_id) {
            metrics::record_user_cache("memberships", true);
            return Ok(Some(all));
        }
        metrics::record_user_cache("memberships", false);
        let ticket = cache.member_ticket(user_id);
        let all = live_memberships()
            .filter(memberships::Column::UserId.eq(user_id))
            .limit(MAX_CACHED_MEMBERSHIPS as u64 + 1)
            .all(&self.reads)
            .await?;
        if all.len() > MAX_CACHED_MEMBERSHIPS {
            return Ok(None);
        }
        let all: Memberships = all.into();
        cache.fill_memberships(ticket, user_id, Arc::clone(&all));
        Ok(Some(all))
    }

    /// Up to `limit` live memberships of `of` (with `role`, if given) after
    /// membership id `after`, in id order.
    pub(crate) async fn list_memberships(
        &self,
        of: &MembersOf,
        role: Option<&str>,
        limit: u64,
        after: Option<&str>,
    ) -> Result<Vec<Membership>, Error> {
        let mut find = match of {
            MembersOf::Organization(id) => {
                live_memberships().filter(memberships::Column::OrganizationId.eq(id.as_str()))
            }
            MembersOf::User(id) => {
                live_memberships().filter(memberships::Column::UserId.eq(id.as_str()))
            }
        };
        if let Some(role) = role {
            find = find.filter(memberships::Column::Role.eq(role));
        }
        if let Some(after) = after {
            find = find.filter(memberships::Column::Id.gt(after));
        }
        Ok(find
            .order_by_asc(memberships::Column::Id)
            .limit(limit)
            .all(&self.reads)
            .await?)
    }

    /// Up to `limit` live invitations of `organization_id` (in `status`, if
    /// given) after invitation id `after`, in id order.
    pub(crate) async fn list_invitations(
        &self,
        organization_id: &str,
        status: Option<&str>,
        limit: u64,
        after: Option<&str>,
    ) -> Result<Vec<Invitation>, Error> {
        let mut find = invitations::Entity::find()
            .filter(invitations::Column::OrganizationId.eq(organization_id))
            .filter(invitations::Column::DeletedAt.is_null());
        if let Some(status) = status {
            find = find.filter(invitations::Column::Status.eq(status));
        }
        if let Some(after) = after {
            find = find.filter(invitations::Column::Id.gt(after));
        }
        Ok(find
            .order_by_asc(invitations::Column::Id)
            .limit(limit)
            .all(&self.reads)
            .await?)
    }

    /// Up to `limit` live roles after key `after`, in key order, each with
    /// its live permissions.
    pub(crate) async fn list_roles(
        &self,
        limit: u64,
        after: Option<&str>,
    ) -> Result<Vec<(Role, Vec<StoredPermission>)>, Error> {
        let mut find = roles::Entity::find().filter(roles::Column::DeletedAt.is_null());
        if let Some(after) = after {
            find = find.filter(roles::Column::Key.gt(after));
        }
        let page = find
            .order_by_asc(roles::Column::Key)
            .limit(limit)
            .all(&self.reads)
            .await?;
        let ids_of = |role: &Role| -> Result<Vec<String>, Error> {
            serde_json::from_str(&role.permission_ids)
                .map_err(|e| Error::Corrupt(format!("role permissions: {e}")))
        };
        let mut wanted = Vec::new();
        for role in &page {
            wanted.extend(ids_of(role)?);
        }
        let known: HashMap<String, StoredPermission> = permissions::Entity::find()
            .filter(permissions::Column::DeletedAt.is_null())
            .filter(permissions::Column::Id.is_in(wanted))
            .all(&self.reads)
            .await?
            .into_iter()
            .map(|permission| (permission.id.clone(), permission))
            .collect();
        page.into_iter()
            .map(|role| {
                let carried = ids_of(&role)?
                    .iter()
                    .filter_map(|id| known.get(id).cloned())
                    .collect();
                Ok((role, carried))
            })
            .collect()
    }

    /// Whether `user_id` holds `permission` in `organization_id`.
    pub(crate) async fn check_permission(
        &self,
        user_id: &str,
        organization_id: &str,
        permission: &str,
    ) -> Result<Permission, Error> {
        // A live user from the cache; only one it does not hold (deleted, or
        // not known yet: a membership may come first) costs a query.
        let id = UserId::parse(user_id.to_owned(), "user_id")?;
        match self.live_user_banned(&id).await? {
            Some(true) => return Ok(Permission::UserBanned),
            Some(false) => {}
            None => {
                let deleted = users::Entity::find_by_id(user_id)
                    .filter(users::Column::DeletedAt.is_not_null())
                    .count(&self.reads)
                    .await?;
                if deleted > 0 {
                    return Ok(Permission::UserDeleted);
                }
            }
        }
        // The cached memberships are read in place, not copied.
        if let Some(all) = self.memberships_of(user_id).await? {
            return membership_in(&all, organization_id)
                .map_or(Ok(Permission::NoMembership), |m| decide(m, permission));
        }
        match self.get_membership(organization_id, user_id).await {
            Ok(membership) => decide(&membership, permission),
            Err(Error::NotFound(_)) => Ok(Permission::NoMembership),
            Err(error) => Err(error),
        }
    }

    /// Live members of each of `organizations`; see [`members_counts`].
    async fn members_counts(&self, organizations: &[&str]) -> Result<HashMap<String, u64>, Error> {
        members_counts(&self.reads, organizations).await
    }
}

/// The membership in `organization_id` among a user's live `memberships`
/// (the newest, should Clerk ever send two).
fn membership_in<'a>(
    memberships: &'a [Membership],
    organization_id: &str,
) -> Option<&'a Membership> {
    memberships
        .iter()
        .filter(|m| m.organization_id == organization_id)
        .max_by_key(|m| m.updated_at)
}

/// What `membership` allows of `permission`.
fn decide(membership: &Membership, permission: &str) -> Result<Permission, Error> {
    let permissions: Vec<String> = serde_json::from_str(&membership.permissions)
        .map_err(|e| Error::Corrupt(format!("membership permissions: {e}")))?;
    let role = membership.role.clone();
    Ok(if permissions.iter().any(|p| p == permission) {
        Permission::Allowed { role }
    } else {
        Permission::RoleLacks { role }
    })
}

/// Writes `organization` if it is new or newer than the stored one; then it
/// and its memberships not ended (in that order) are `logged`.
async fn upsert_organization(
    txn: &DatabaseTransaction,
    organization: Organization,
    logged: &mut Vec<Logged>,
) -> Result<Outcome, Error> {
    let id = organization.id.clone();
    let written = organizations::ActiveModel::from(organization);
    let columns = [
        organizations::Column::Name,
        organizations::Column::Slug,
        organizations::Column::ImageUrl,
        organizations::Column::HasImage,
        organizations::Column::MaxAllowedMemberships,
        organizations::Column::AdminDeleteEnabled,
        organizations::Column::PublicMetadata,
        organizations::Column::PrivateMetadata,
        organizations::Column::CreatedBy,
        organizations::Column::CreatedAt,
        organizations::Column::UpdatedAt,
    ];
    let outcome = last_write_wins(txn, written, &id, organizations::Column::Id, &columns).await?;
    if outcome == Outcome::Applied {
        // Every membership not ended, a deleted user's too until it is ended:
        // none may stay behind its organization.
        let members: Vec<String> = memberships::Entity::find()
            .select_only()
            .column(memberships::Column::Id)
            .filter(memberships::Column::OrganizationId.eq(id.as_str()))
            .filter(memberships::Column::DeletedAt.is_null())
            .order_by_asc(memberships::Column::Id)
            .into_tuple()
            .all(txn)
            .await?;
        logged.push(Logged::organization(&id, false));
        logged.extend(members.into_iter().map(|id| Logged::membership(id, false)));
    }
    Ok(outcome)
}

/// Writes `row` (id `id`) over the stored one of `E` only if it is newer and
/// not a tombstone, updating `columns`: `Applied` if written, else `Deleted`
/// (a tombstone) or `Stale`. Every entity here keeps `updated_at` and
/// `deleted_at` columns.
async fn last_write_wins<E, A>(
    txn: &DatabaseTransaction,
    row: A,
    id: &str,
    id_column: E::Column,
    columns: &[E::Column],
) -> Result<Outcome, Error>
where
    E: EntityTrait,
    A: sea_orm::ActiveModelTrait<Entity = E>,
{
    let column = |name: &str| {
        <E::Column as std::str::FromStr>::from_str(name)
            .unwrap_or_else(|_| unreachable!("every table here has {name}"))
    };
    let (updated_at, deleted_at) = (column("updated_at"), column("deleted_at"));
    let upsert = E::insert(row)
        .on_conflict(
            OnConflict::column(id_column)
                .update_columns(columns.iter().copied())
                .action_and_where(newer_than_a_live(updated_at, deleted_at))
                .to_owned(),
        )
        .into_query();
    if txn.execute(&upsert).await?.rows_affected() > 0 {
        return Ok(Outcome::Applied);
    }
    let tombstone = E::find()
        .filter(id_column.eq(id))
        .filter(deleted_at.is_not_null())
        .one(txn)
        .await?;
    Ok(if tombstone.is_some() {
        Outcome::Deleted
    } else {
        Outcome::Stale
    })
}

/// The condition of a last-write-wins upsert: the stored row is older than
/// the one offered and is not a tombstone.
fn newer_than_a_live(
    updated_at: impl ColumnTrait,
    deleted_at: impl ColumnTrait,
) -> sea_orm::sea_query::SimpleExpr {
    Expr::col((updated_at.entity_name(), updated_at))
        .lt(Expr::cust("excluded.updated_at"))
        .and(Expr::col((deleted_at.entity_name(), deleted_at)).is_null())
}

/// Why an upsert changed nothing: the row is a tombstone (deleted at
/// `deleted_at`), or holds the same or a newer version.
fn unchanged(deleted_at: Option<i64>) -> Outcome {
    match deleted_at {
        Some(_) => Outcome::Deleted,
        None => Outcome::Stale,
    }
}

/// Tombstones organization `id` (known or not) and ends its memberships
/// (`logged` after it).
async fn delete_organization(
    txn: &DatabaseTransaction,
    id: String,
    deleted_at: i64,
    logged: &mut Vec<Logged>,
) -> Result<Outcome, Error> {
    let tombstone = organizations::ActiveModel {
        id: Set(id.clone()),
        name: Set(String::new()),
        slug: Set(None),
        image_url: Set(None),
        has_image: Set(false),
        max_allowed_memberships: Set(0),
        admin_delete_enabled: Set(false),
        public_metadata: Set(EMPTY.to_owned()),
        private_metadata: Set(None),
        created_by: Set(None),
        created_at: Set(None),
        updated_at: Set(deleted_at),
        deleted_at: Set(Some(deleted_at)),
    };
    let upsert = organizations::Entity::insert(tombstone)
        .on_conflict(
            OnConflict::column(organizations::Column::Id)
                .update_columns([
                    organizations::Column::Name,
                    organizations::Column::Slug,
                    organizations::Column::ImageUrl,
                    organizations::Column::HasImage,
                    organizations::Column::PublicMetadata,
                    organizations::Column::PrivateMetadata,
                    organizations::Column::CreatedBy,
                    organizations::Column::DeletedAt,
                ])
                .action_and_where(
                    Expr::col((organizations::Entity, organizations::Column::DeletedAt)).is_null(),
                )
                .to_owned(),
        )
        .into_query();
    if txn.execute(&upsert).await?.rows_affected() == 0 {
        return Ok(Outcome::Deleted);
    }
    logged.push(Logged::organization(&id, true));
    end_memberships(
        txn,
        memberships::Column::OrganizationId.eq(id.as_str()),
        deleted_at,
        logged,
    )
    .await?;
    invitations::Entity::update_many()
        .col_expr(invitations::Column::DeletedAt, Expr::value(deleted_at))
        .col_expr(invitations::Column::EmailAddress, Expr::value(""))
        .col_expr(invitations::Column::PublicMetadata, Expr::value(EMPTY))
        .col_expr(
            invitations::Column::PrivateMetadata,
            Expr::value(Option::<String>::None),
        )
        .filter(invitations::Column::OrganizationId.eq(id.as_str()))
        .filter(invitations::Column::DeletedAt.is_null())
        .exec(txn)
        .await?;
    Ok(Outcome::Applied)
}

/// Writes `role` if it is new or newer than the stored one.
async fn upsert_role(txn: &DatabaseTransaction, role: Role) -> Result<Outcome, Error> {
    let id = role.id.clone();
    let written = roles::ActiveModel::from(role);
    let columns = [
        roles::Column::Key,
        roles::Column::Name,
        roles::Column::Description,
        roles::Column::IsCreatorEligible,
        roles::Column::PermissionIds,
        roles::Column::CreatedAt,
        roles::Column::UpdatedAt,
    ];
    last_write_wins(txn, written, &id, roles::Column::Id, &columns).await
}

/// Writes `permission` if it is new or newer than the stored one.
async fn upsert_permission(
    txn: &DatabaseTransaction,
    permission: StoredPermission,
) -> Result<Outcome, Error> {
    let id = permission.id.clone();
    let written = permissions::ActiveModel::from(permission);
    let columns = [
        permissions::Column::Key,
        permissions::Column::Name,
        permissions::Column::Description,
        permissions::Column::Kind,
        permissions::Column::CreatedAt,
        permissions::Column::UpdatedAt,
    ];
    last_write_wins(txn, written, &id, permissions::Column::Id, &columns).await
}

/// Stores `tombstone` unless its row is one already: `Applied` the first
/// time, `Deleted` after.
async fn tombstone_row<E, A>(
    txn: &DatabaseTransaction,
    tombstone: A,
    id: E::Column,
    deleted_at: E::Column,
) -> Result<Outcome, Error>
where
    E: EntityTrait,
    A: sea_orm::ActiveModelTrait<Entity = E>,
{
    let upsert = E::insert(tombstone)
        .on_conflict(
            OnConflict::column(id)
                .update_column(deleted_at)
                .action_and_where(Expr::col((deleted_at.entity_name(), deleted_at)).is_null())
                .to_owned(),
        )
        .into_query();
    Ok(if txn.execute(&upsert).await?.rows_affected() > 0 {
        Outcome::Applied
    } else {
        Outcome::Deleted
    })
}

/// Writes `invitation` if it is new or newer than the stored one (on a tie,
/// an accepted or revoked invitation wins over a pending one); an invitation
/// to a deleted organization is stored ended, its address erased.
async fn upsert_invitation(
    txn: &DatabaseTransaction,
    invitation: Invitation,
) -> Result<Outcome, Error> {
    let organization_deleted = organizations::Entity::find_by_id(&invitation.organization_id)
        .filter(organizations::Column::DeletedAt.is_not_null())
        .one(txn)
        .await?;
    let id = invitation.id.clone();
    let mut row = invitations::ActiveModel::from(invitation);
    if let Some(organization) = &organization_deleted {
        row.email_address = Set(String::new());
        row.public_metadata = Set(EMPTY.to_owned());
        row.private_metadata = Set(None);
        row.deleted_at = Set(organization.deleted_at);
    }
    let stored = |column| Expr::col((invitations::Entity, column));
    let settles_a_tie = stored(invitations::Column::UpdatedAt)
        .eq(Expr::cust("excluded.updated_at"))
        .and(stored(invitations::Column::Status).eq(INVITATION_PENDING))
        .and(Expr::cust("excluded.status").ne(INVITATION_PENDING));
    let upsert = invitations::Entity::insert(row)
        .on_conflict(
            OnConflict::column(invitations::Column::Id)
                .update_columns([
                    invitations::Column::OrganizationId,
                    invitations::Column::EmailAddress,
                    invitations::Column::Role,
                    invitations::Column::RoleName,
                    invitations::Column::Status,
                    invitations::Column::PublicMetadata,
                    invitations::Column::PrivateMetadata,
                    invitations::Column::UserId,
                    invitations::Column::ExpiresAt,
                    invitations::Column::CreatedAt,
                    invitations::Column::UpdatedAt,
                    invitations::Column::DeletedAt,
                ])
                .action_and_where(
                    newer_than_a_live(
                        invitations::Column::UpdatedAt,
                        invitations::Column::DeletedAt,
                    )
                    .or(settles_a_tie.and(stored(invitations::Column::DeletedAt).is_null())),
                )
                .to_owned(),
        )
        .into_query();
    let written = txn.execute(&upsert).await?.rows_affected() > 0;
    if organization_deleted.is_some() {
        return Ok(Outcome::Deleted);
    }
    if written {
        return Ok(Outcome::Applied);
    }
    let stored = invitations::Entity::find_by_id(id).one(txn).await?;
    Ok(unchanged(stored.and_then(|stored| stored.deleted_at)))
}

/// Writes `membership` if it is new or newer than the stored one (`logged`
/// if its organization is known); a membership of a deleted organization or
/// user is stored ended.
async fn upsert_membership(
    txn: &DatabaseTransaction,
    membership: Membership,
    logged: &mut Vec<Logged>,
) -> Result<Outcome, Error> {
    let organization: Option<Option<i64>> =
        organizations::Entity::find_by_id(&membership.organization_id)
            .select_only()
            .column(organizations::Column::DeletedAt)
            .into_tuple()
            .one(txn)
            .await?;
    let organization_deleted = matches!(organization, Some(Some(_)));
    let user_deleted = users::Entity::find_by_id(&membership.user_id)
        .filter(users::Column::DeletedAt.is_not_null())
        .one(txn)
        .await?
        .is_some();
    if organization_deleted || user_deleted {
        let deleted_at = membership.updated_at;
        end_membership(txn, membership, deleted_at, logged).await?;
        return Ok(Outcome::Deleted);
    }
    let id = membership.id.clone();
    let written = memberships::ActiveModel::from(membership);
    let columns = [
        memberships::Column::OrganizationId,
        memberships::Column::UserId,
        memberships::Column::Role,
        memberships::Column::RoleName,
        memberships::Column::Permissions,
        memberships::Column::PublicMetadata,
        memberships::Column::PrivateMetadata,
        memberships::Column::PublicUserData,
        memberships::Column::CreatedAt,
        memberships::Column::UpdatedAt,
    ];
    let outcome = last_write_wins(txn, written, &id, memberships::Column::Id, &columns).await?;
    if outcome == Outcome::Applied && organization.is_some() {
        logged.push(Logged::membership(id, false));
    }
    Ok(outcome)
}

/// Stores `membership` ended at `deleted_at`, its personal data erased,
/// whatever its version (a deletion wins a tie: Clerk keeps the deleted
/// membership's updated_at); `logged` if it was not ended already.
async fn end_membership(
    txn: &DatabaseTransaction,
    membership: Membership,
    deleted_at: i64,
    logged: &mut Vec<Logged>,
) -> Result<Outcome, Error> {
    let id = membership.id.clone();
    let tombstone = memberships::ActiveModel {
        public_metadata: Set(EMPTY.to_owned()),
        private_metadata: Set(None),
        public_user_data: Set(EMPTY.to_owned()),
        deleted_at: Set(Some(deleted_at)),
        ..memberships::ActiveModel::from(membership)
    };
    let upsert = memberships::Entity::insert(tombstone)
        .on_conflict(
            OnConflict::column(memberships::Column::Id)
                .update_columns([
                    memberships::Column::PublicMetadata,
                    memberships::Column::PrivateMetadata,
                    memberships::Column::PublicUserData,
                    memberships::Column::DeletedAt,
                ])
                .action_and_where(
                    Expr::col((memberships::Entity, memberships::Column::DeletedAt)).is_null(),
                )
                .to_owned(),
        )
        .into_query();
    if txn.execute(&upsert).await?.rows_affected() == 0 {
        return Ok(Outcome::Deleted);
    }
    logged.push(Logged::membership(id, true));
    Ok(Outcome::Applied)
}

/// Ends the live memberships `which` selects at `deleted_at`, erasing their
/// personal data; each is `logged`.
async fn end_memberships(
    txn: &DatabaseTransaction,
    which: impl sea_orm::sea_query::IntoCondition,
    deleted_at: i64,
    logged: &mut Vec<Logged>,
) -> Result<(), Error> {
    let ended: Vec<String> = memberships::Entity::find()
        .select_only()
        .column(memberships::Column::Id)
        .filter(
            Condition::all()
                .add(which)
                .add(memberships::Column::DeletedAt.is_null()),
        )
        .order_by_asc(memberships::Column::Id)
        .into_tuple()
        .all(txn)
        .await?;
    for chunk in ended.chunks(1000) {
        memberships::Entity::update_many()
            .col_expr(memberships::Column::DeletedAt, Expr::value(deleted_at))
            .col_expr(memberships::Column::PublicMetadata, Expr::value(EMPTY))
            .col_expr(
                memberships::Column::PrivateMetadata,
                Expr::value(Option::<String>::None),
            )
            .col_expr(memberships::Column::PublicUserData, Expr::value(EMPTY))
            .filter(memberships::Column::Id.is_in(chunk.iter().map(String::as_str)))
            .exec(txn)
            .await?;
    }
    logged.extend(ended.into_iter().map(|id| Logged::membership(id, true)));
    Ok(())
}
