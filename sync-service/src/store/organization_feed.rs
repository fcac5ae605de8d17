//! The organizations' side of the change feed: organizations and
//! memberships in the same log as users (positions from the one `feed_head`
//! counter), kept in `organization_changes` and read by `WatchOrganizations`
//! and `ListOrganizationChanges`. Compaction, pruning and the snapshot rule
//! are the users' (see `changes`).
//!
//! # Order
//!
//! Two rules the users' log does not need:
//! - an organization comes before its memberships: whenever an
//!   organization's entry moves (it was created or changed), its live
//!   memberships' entries move right after it, in the same transaction; and a
//!   membership enters the log only once its organization is known (one that
//!   arrives first is stored, and joins the feed with its organization);
//! - an organization's deletion is followed by its memberships' deletions:
//!   they are ended in the same transaction and get the next positions.
//!
//! The first rule reads "is the organization known?" and "which memberships
//! does it have?" inside the writing transaction, so every transaction that
//! writes this log first takes the counter's row lock ([`lock_log`]): two
//! such transactions never interleave (a membership committed beside its
//! organization's creation cannot be missed by both). On SQLite the one
//! writer already serialises them. Users' batches take the counter last, as
//! before, and never touch these tables, so no lock cycle forms. Moving an
//! organization's memberships costs one row per live member on each change of
//! the organization; Clerk changes an organization rarely (a membership
//! change does not change it).

use std::collections::HashMap;

use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, sea_query::OnConflict,
};

use super::{
    Store,
    changes::{ChangePage, FeedEntry, Log, Position, page_end, take_positions},
    entity::{
        feed_head, organization_changes, organization_memberships as memberships, organizations,
    },
    members::members_counts,
};
use crate::{domain::Millis, error::Error};

/// A stored organization.
type Organization = organizations::Model;
/// A stored membership.
type Membership = memberships::Model;

/// Rows per log insert: 5 parameters each, far under every backend's
/// bind-parameter limit.
const INSERT_CHUNK: usize = 1000;

/// What one entry of the organizations' log says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OrganizationFeedChange {
    /// A live organization, with its live members counted at the read.
    Organization {
        organization: Organization,
        members_count: u64,
    },
    /// A deleted organization.
    OrganizationDeleted { id: String, deleted_at: Millis },
    /// A live membership.
    Membership(Membership),
    /// An ended membership (its personal data erased).
    MembershipEnded(Membership),
}

/// What an entry of `organization_changes` is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Subject {
    Organization,
    Membership,
}

impl Subject {
    fn as_str(self) -> &'static str {
        match self {
            Self::Organization => "organization",
            Self::Membership => "membership",
        }
    }
}

/// One change a transaction made, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Logged {
    pub(super) subject: Subject,
    pub(super) id: String,
    pub(super) deleted: bool,
}

impl Logged {
    pub(super) fn organization(id: &str, deleted: bool) -> Self {
        Self {
            subject: Subject::Organization,
            id: id.to_owned(),
            deleted,
        }
    }

    pub(super) fn membership(id: String, deleted: bool) -> Self {
        Self {
            subject: Subject::Membership,
            id,
            deleted,
        }
    }
}

/// Takes the log's lock for the rest of `txn` (see the module doc): a no-op
/// write of the counter's row.
pub(super) async fn lock_log(txn: &DatabaseTransaction) -> Result<(), DbErr> {
    feed_head::Entity::update_many()
        .col_expr(
            feed_head::Column::Position,
            sea_orm::sea_query::Expr::col(feed_head::Column::Position),
        )
        .filter(feed_head::Column::Id.eq(1))
        .exec(txn)
        .await?;
    Ok(())
}

/// Records `changes`, in order, as the last statements of `txn` (at `now`,
/// local Unix ms). Each object appears at most once in `changes`.
pub(super) async fn record(
    txn: &DatabaseTransaction,
    changes: &[Logged],
    now: Millis,
) -> Result<(), DbErr> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut position = take_positions(txn, changes.len()).await?;
    for chunk in changes.chunks(INSERT_CHUNK) {
        let rows = chunk.iter().map(|change| {
            let row = organization_changes::ActiveModel {
                kind: Set(change.subject.as_str().to_owned()),
                id: Set(change.id.clone()),
                position: Set(position),
                deleted: Set(change.deleted),
                changed_at: Set(now),
            };
            position += 1;
            row
        });
        organization_changes::Entity::insert_many(rows.collect::<Vec<_>>())
            .on_conflict(
                OnConflict::columns([
                    organization_changes::Column::Kind,
                    organization_changes::Column::Id,
                ])
                .update_columns([
                    organization_changes::Column::Position,
                    organization_changes::Column::Deleted,
                    organization_changes::Column::ChangedAt,
                ])
                .to_owned(),
            )
            .exec(txn)
            .await?;
    }
    Ok(())
}

impl Store {
    /// Up to `limit` entries of the organizations' log after `after`, in
    /// order, each object in its current state; deletions at or below
    /// `hide_deletions_through` are skipped (a snapshot). Errors as
    /// [`Store::changes_after`].
    pub(crate) async fn organization_changes_after(
        &self,
        after: Position,
        limit: u32,
        hide_deletions_through: Position,
    ) -> Result<ChangePage<OrganizationFeedChange>, Error> {
        let read = self
            .begin_log_read(Log::Organizations, after, hide_deletions_through)
            .await?;
        let mut rows = organization_changes::Entity::find()
            .filter(organization_changes::Column::Position.gt(after))
            .order_by_asc(organization_changes::Column::Position)
            .limit(u64::from(limit) + 1)
            .all(&read.txn)
            .await?;
        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_after = page_end(rows.last().map(|row| row.position), has_more, &read.head);

        let ids_of = |subject: Subject| -> Vec<&str> {
            rows.iter()
                .filter(|row| row.kind == subject.as_str())
                .map(|row| row.id.as_str())
                .collect()
        };
        let mut organizations = by_id(
            organizations::Entity::find()
                .filter(organizations::Column::Id.is_in(ids_of(Subject::Organization)))
                .all(&read.txn)
                .await?,
            |organization| organization.id.clone(),
        );
        let mut memberships = by_id(
            memberships::Entity::find()
                .filter(memberships::Column::Id.is_in(ids_of(Subject::Membership)))
                .all(&read.txn)
                .await?,
            |membership| membership.id.clone(),
        );
        let live: Vec<&str> = organizations
            .values()
            .filter(|organization| organization.deleted_at.is_none())
            .map(|organization| organization.id.as_str())
            .collect();
        let counts = members_counts(&read.txn, &live).await?;
        read.txn.commit().await?;

        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let change = match row.kind.as_str() {
                "organization" => organization_change(&mut organizations, &counts, &row.id)?,
                "membership" => membership_change(&mut memberships, &row.id)?,
                other => {
                    return Err(Error::Corrupt(format!(
                        "organization_changes entry of unknown kind {other:?}"
                    )));
                }
            };
            let deleted = matches!(
                change,
                OrganizationFeedChange::OrganizationDeleted { .. }
                    | OrganizationFeedChange::MembershipEnded(_)
            );
            if deleted && row.position <= hide_deletions_through {
                continue;
            }
            entries.push(FeedEntry {
                position: row.position,
                change,
            });
        }
        Ok(ChangePage {
            entries,
            next_after,
            has_more,
        })
    }
}

/// What one page of the organizations' log changed, as the read cache must
/// drop it; see [`Store::changed_members_after`].
#[derive(Debug)]
pub(super) struct ChangedMembers {
    /// The users of the memberships changed.
    pub(super) members: Vec<String>,
    /// Whether an organization changed (then anyone's memberships may have).
    pub(super) organizations_changed: bool,
    /// As in [`ChangePage`].
    pub(super) next_after: Position,
    /// As in [`ChangePage`].
    pub(super) has_more: bool,
}

impl Store {
    /// What up to `limit` entries of the organizations' log after `after`
    /// changed, as keys of the read cache: cheaper than
    /// [`Store::organization_changes_after`] (no objects are read).
    pub(super) async fn changed_members_after(
        &self,
        after: Position,
        limit: u32,
    ) -> Result<ChangedMembers, Error> {
        let read = self.begin_log_read(Log::Organizations, after, 0).await?;
        let mut rows: Vec<(Position, String, String)> = organization_changes::Entity::find()
            .select_only()
            .columns([
                organization_changes::Column::Position,
                organization_changes::Column::Kind,
                organization_changes::Column::Id,
            ])
            .filter(organization_changes::Column::Position.gt(after))
            .order_by_asc(organization_changes::Column::Position)
            .limit(u64::from(limit) + 1)
            .into_tuple()
            .all(&read.txn)
            .await?;
        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_after = page_end(rows.last().map(|row| row.0), has_more, &read.head);
        let organizations_changed = rows
            .iter()
            .any(|(_, kind, _)| kind == Subject::Organization.as_str());
        let changed = rows
            .iter()
            .filter(|(_, kind, _)| kind == Subject::Membership.as_str())
            .map(|(_, _, id)| id.as_str());
        let members = memberships::Entity::find()
            .select_only()
            .column(memberships::Column::UserId)
            .filter(memberships::Column::Id.is_in(changed))
            .into_tuple()
            .all(&read.txn)
            .await?;
        read.txn.commit().await?;
        Ok(ChangedMembers {
            members,
            organizations_changed,
            next_after,
            has_more,
        })
    }
}

fn by_id<T>(rows: Vec<T>, id: impl Fn(&T) -> String) -> HashMap<String, T> {
    rows.into_iter().map(|row| (id(&row), row)).collect()
}

/// The change an entry of organization `id` says (each object has one entry,
/// so its row is taken).
fn organization_change(
    organizations: &mut HashMap<String, Organization>,
    counts: &HashMap<String, u64>,
    id: &str,
) -> Result<OrganizationFeedChange, Error> {
    let organization = organizations.remove(id).ok_or_else(|| {
        Error::Corrupt(format!("change log entry of organization {id} has no row"))
    })?;
    Ok(match organization.deleted_at {
        Some(deleted_at) => OrganizationFeedChange::OrganizationDeleted {
            id: organization.id,
            deleted_at,
        },
        None => OrganizationFeedChange::Organization {
            members_count: counts.get(id).copied().unwrap_or(0),
            organization,
        },
    })
}

/// As [`organization_change`], for membership `id`.
fn membership_change(
    memberships: &mut HashMap<String, Membership>,
    id: &str,
) -> Result<OrganizationFeedChange, Error> {
    let membership = memberships
        .remove(id)
        .ok_or_else(|| Error::Corrupt(format!("change log entry of membership {id} has no row")))?;
    Ok(if membership.deleted_at.is_some() {
        OrganizationFeedChange::MembershipEnded(membership)
    } else {
        OrganizationFeedChange::Membership(membership)
    })
}
