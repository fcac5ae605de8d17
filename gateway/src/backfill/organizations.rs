//! The organizations part of a pass: copies Clerk's roles (with their
//! permissions), organizations, memberships (the instance-wide list) and
//! invitations into the directory and, with `--reconcile`, tombstones the
//! organizations, memberships and roles Clerk no longer has.
//!
//! Every listed object goes through the webhook path: mapped by
//! [`crate::organizations`] exactly like the `data` of an
//! `organization.updated`, `organizationMembership.updated`,
//! `organizationInvitation.*` or `role.updated` payload, checked by the
//! webhooks' carriability check, and applied through
//! `OrganizationSyncService` under the event id `backfill_<id>_<updated_at>`
//! (a role's id also carries a digest of its permissions' ids and versions,
//! since a permission can change without its role). A rerun is all
//! duplicates; last write wins keeps what a newer webhook brought. An
//! invitation Clerk lists as `expired` is skipped and counted: the
//! directory has no such status.
//!
//! The lists have offset paging only; [`super::offset_listing`] says how a
//! listing stays trustworthy while objects are deleted under it (pages
//! overlap, each must start with an object already listed, the length must
//! agree with Clerk's `total_count`). A listing that fails a check stops
//! the pass with an error naming it, and nothing is tombstoned.
//!
//! What the directory held is read first (`OrganizationDirectoryService`:
//! every organization and role, and the memberships and invitations of
//! every organization held or listed), to tell a repair from a rerun, to
//! compare in a dry run, and to find what reconcile considers.
//!
//! Reconcile runs only after every kind was listed completely, and only
//! considers live local objects missing from their listing whose
//! `updated_at` is older than the listing's start minus
//! [`RECONCILE_MARGIN`]. More of a kind than `--max-tombstone-share` of the
//! directory's live ones of that kind stops the pass unless `--force`.
//! Each is then asked for by id: an organization or role Clerk answers 404
//! for is tombstoned (an organization's memberships and invitations end
//! with it); a membership is tombstoned when Clerk's memberships of that
//! user in that organization no longer include it (or the organization is
//! gone). Whatever Clerk still returns is applied instead, so a bad listing
//! can cost requests, never data. Invitations and permissions are never
//! tombstoned here: Clerk ends invitations by status, and they end with
//! their organization; permissions go with `permission.deleted`.
//!
//! An instance with organizations turned off answers the organization
//! endpoints 403 `organization_not_enabled_in_instance`: the pass reports it
//! and goes on; nothing of the directory's organizations is touched.

use std::{
    collections::{HashMap, HashSet},
    fmt,
};

use clerk_sync_api::v1::{
    self, EventMeta, ListInvitationsRequest, ListMembershipsRequest, ListOrganizationsRequest,
    ListRolesRequest, MembershipDeleted, OrganizationDeleted, Outcome, RoleDeleted,
    apply_organization_event_request::Event,
};
use clerk_sync_common::time::{millis_from_timestamp, now_millis, timestamp_from_millis};
use futures::{StreamExt as _, stream};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    Backfill, BackfillError, NAMED_REJECTIONS, RECONCILE_MARGIN, Resume, Shutdown,
    WHOLE_BATCH_REFUSED,
    clerk_api::{ClerkApiError, OrgKind},
    offset_listing::{self, OffsetListing},
    refusal, refused_for_the_user, retrying,
};
use crate::{
    Error, organizations,
    pipeline::{self, Carriage},
    verify::Delivery,
};

/// Page size of the directory reads.
const DIRECTORY_PAGE: i32 = 1000;

/// What a pass did with one kind of object (dry run: would do).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectCounts {
    /// Objects Clerk listed (each once, however often re-read).
    pub fetched: u64,
    /// Objects written: new to the directory or newer than its copy.
    pub applied: u64,
    /// Of `applied`: objects the directory did not have.
    pub repaired_missed: u64,
    /// Of `applied`: objects the directory held an older copy of.
    pub repaired_stale: u64,
    /// Objects the directory already held at this version.
    pub unchanged: u64,
    /// Objects the directory holds a newer version of.
    pub stale: u64,
    /// Of `stale`: objects deleted (or ended) locally.
    pub deleted_locally: u64,
    /// Objects unusable or refused by the sync-service, skipped.
    pub rejected: u64,
    /// Invitations Clerk lists as expired, which the directory has no
    /// status for: skipped.
    pub expired: u64,
    /// Local objects tombstoned, each confirmed gone by Clerk.
    pub tombstoned: u64,
    /// Local objects the listing lacked but Clerk still returned: applied
    /// instead of tombstoned.
    pub missed_by_listing: u64,
}

/// How the organizations part of a pass went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OrganizationsStatus {
    /// Not listed (a `--user` resync).
    #[default]
    NotListed,
    /// The instance has organizations turned off: Clerk's answer.
    Disabled(String),
    /// Every kind was listed to its end and judged complete.
    Listed,
}

/// A listed organization object that was not applied, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedObject {
    /// What it is.
    pub kind: OrgKind,
    /// Its id (empty when it has none).
    pub id: String,
    /// Why: the sync-service's gRPC code, or what is unusable.
    pub why: String,
}

/// What the organizations part of a pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrganizationsSummary {
    /// Whether it ran, and whether the instance has organizations.
    pub status: OrganizationsStatus,
    /// Organizations.
    pub organizations: ObjectCounts,
    /// Memberships.
    pub memberships: ObjectCounts,
    /// Invitations.
    pub invitations: ObjectCounts,
    /// Roles (their permissions ride along).
    pub roles: ObjectCounts,
    /// The first [`NAMED_REJECTIONS`] rejected objects.
    pub rejections: Vec<SkippedObject>,
}

impl OrganizationsSummary {
    /// The counts of `kind`.
    pub fn counts(&self, kind: OrgKind) -> &ObjectCounts {
        match kind {
            OrgKind::Organizations => &self.organizations,
            OrgKind::Memberships => &self.memberships,
            OrgKind::Invitations => &self.invitations,
            OrgKind::Roles => &self.roles,
        }
    }

    fn counts_mut(&mut self, kind: OrgKind) -> &mut ObjectCounts {
        match kind {
            OrgKind::Organizations => &mut self.organizations,
            OrgKind::Memberships => &mut self.memberships,
            OrgKind::Invitations => &mut self.invitations,
            OrgKind::Roles => &mut self.roles,
        }
    }

    /// Writes the summary's part after the users', `; organizations: …`,
    /// in the words of a run (`applied`) or a dry run (`would apply`).
    pub(super) fn write(&self, f: &mut fmt::Formatter<'_>, dry_run: bool) -> fmt::Result {
        let (applied, tombstoned) = if dry_run {
            ("would apply", "would tombstone")
        } else {
            ("applied", "tombstoned")
        };
        match &self.status {
            OrganizationsStatus::NotListed => return Ok(()),
            OrganizationsStatus::Disabled(why) => {
                return write!(
                    f,
                    "; organizations: not enabled on this Clerk instance, none listed or \
                     reconciled ({why})"
                );
            }
            OrganizationsStatus::Listed => {}
        }
        for kind in [
            OrgKind::Organizations,
            OrgKind::Memberships,
            OrgKind::Invitations,
            OrgKind::Roles,
        ] {
            let c = self.counts(kind);
            write!(
                f,
                "; {kind}: fetched {}, {applied} {} ({} missing, {} older locally), unchanged {}, \
                 stale {} ({} deleted locally), rejected {}, {tombstoned} {}",
                c.fetched,
                c.applied,
                c.repaired_missed,
                c.repaired_stale,
                c.unchanged,
                c.stale,
                c.deleted_locally,
                c.rejected,
                c.tombstoned,
            )?;
            if c.expired > 0 {
                write!(f, ", skipped {} expired", c.expired)?;
            }
            if c.missed_by_listing > 0 {
                write!(
                    f,
                    ", {} the listing missed were still in Clerk (not tombstoned)",
                    c.missed_by_listing
                )?;
            }
        }
        if !self.rejections.is_empty() {
            let named: Vec<String> = self
                .rejections
                .iter()
                .map(|r| format!("{:?} ({})", r.id, r.why))
                .collect();
            write!(f, "; rejected organization objects: {}", named.join(", "))?;
        }
        Ok(())
    }
}

/// What the directory held when the organizations part began.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// Each live object's version (Unix ms), by kind and id.
    versions: HashMap<OrgKind, HashMap<String, i64>>,
    /// The live memberships, by id: what a tombstone names.
    memberships: HashMap<String, v1::Membership>,
}

impl Held {
    fn of(&self, kind: OrgKind) -> &HashMap<String, i64> {
        static EMPTY: std::sync::LazyLock<HashMap<String, i64>> =
            std::sync::LazyLock::new(HashMap::new);
        self.versions.get(&kind).unwrap_or(&EMPTY)
    }
}

/// Complete listings of every kind, for reconcile.
pub(super) struct OrgListings {
    /// When the organizations part began (Unix ms).
    started_at: i64,
    listings: HashMap<OrgKind, OffsetListing>,
    held: Held,
}

impl OrgListings {
    fn listed(&self, kind: OrgKind, id: &str) -> bool {
        self.listings
            .get(&kind)
            .is_some_and(|listing| listing.contains(id))
    }

    /// Live local objects of `kind` the listing lacks, older than `cutoff`.
    fn gone(&self, kind: OrgKind, cutoff: i64) -> Vec<String> {
        let mut gone: Vec<String> = self
            .held
            .of(kind)
            .iter()
            .filter(|(id, version)| **version < cutoff && !self.listed(kind, id))
            .map(|(id, _)| id.clone())
            .collect();
        gone.sort();
        gone
    }
}

/// A listed object, mapped for the sync-service.
struct Mapped {
    id: String,
    /// `updated_at`, or for a role the newest of it and its permissions'.
    version: i64,
    event_id: String,
    event: Event,
}

/// What a listed object is keyed by.
#[derive(Deserialize)]
struct Key {
    id: Option<String>,
    updated_at: Option<i64>,
    status: Option<String>,
}

/// A role's permission, as far as its version goes.
#[derive(Deserialize)]
struct PermissionKey {
    id: Option<String>,
    updated_at: Option<i64>,
}

#[derive(Deserialize)]
struct RoleKey {
    permissions: Option<Vec<PermissionKey>>,
}

/// The webhook type whose `data` a listed object of `kind` is mapped as.
/// (The three invitation types map alike; the status comes from the object.)
fn event_type(kind: OrgKind) -> &'static str {
    match kind {
        OrgKind::Organizations => "organization.updated",
        OrgKind::Memberships => "organizationMembership.updated",
        OrgKind::Invitations => "organizationInvitation.created",
        OrgKind::Roles => "role.updated",
    }
}

/// FNV-1a over `permissions` (id and version, sorted by id): a role's
/// event id changes when any permission it carries does.
fn permissions_digest(permissions: &mut [(String, i64)]) -> u64 {
    permissions.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (id, version) in permissions.iter() {
        for byte in id.bytes().chain(version.to_le_bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Maps a listed object of `kind` like the `data` of its webhook, readied
/// for the sync-service; `None` for an expired invitation.
fn map_listed(kind: OrgKind, raw: &RawValue, carriage: Carriage) -> Result<Option<Mapped>, Error> {
    let key: Key = serde_json::from_str(raw.get()).map_err(Error::InvalidJson)?;
    let id = key
        .id
        .filter(|id| !id.trim().is_empty())
        .ok_or(Error::MissingField("id"))?;
    let updated_at = key.updated_at.ok_or(Error::MissingField("updated_at"))?;
    if kind == OrgKind::Invitations && key.status.as_deref() == Some("expired") {
        return Ok(None);
    }
    let (version, event_id) = match kind {
        OrgKind::Roles => {
            let role: RoleKey = serde_json::from_str(raw.get()).map_err(Error::InvalidJson)?;
            let mut permissions: Vec<(String, i64)> = role
                .permissions
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p.id.unwrap_or_default(), p.updated_at.unwrap_or(0)))
                .collect();
            let newest = permissions
                .iter()
                .map(|(_, v)| *v)
                .fold(updated_at, i64::max);
            let digest = permissions_digest(&mut permissions);
            (newest, format!("backfill_{id}_{updated_at}_{digest:016x}"))
        }
        _ => (updated_at, format!("backfill_{id}_{updated_at}")),
    };
    let delivery = Delivery {
        id: &event_id,
        timestamp: updated_at.div_euclid(1000),
    };
    let event = organizations::from_clerk(
        event_type(kind),
        Some(updated_at),
        raw,
        &delivery,
        carriage.private_metadata,
    )?;
    pipeline::check_organization_carriable(&event, carriage.max_message_bytes)?;
    Ok(Some(Mapped {
        id,
        version,
        event_id,
        event,
    }))
}

/// A stored role's version: the newest of it and its permissions.
fn role_version(role: &v1::Role) -> i64 {
    let millis = |at: &Option<prost_types::Timestamp>| {
        at.as_ref().and_then(millis_from_timestamp).unwrap_or(0)
    };
    role.permissions
        .iter()
        .map(|p| millis(&p.updated_at))
        .fold(millis(&role.updated_at), i64::max)
}

fn version_of(at: &Option<prost_types::Timestamp>) -> i64 {
    at.as_ref().and_then(millis_from_timestamp).unwrap_or(0)
}

impl Backfill {
    /// Lists and applies Clerk's roles, organizations, memberships and
    /// invitations. `None` when the instance has organizations turned off
    /// (reported in the summary); else the complete listings.
    pub(super) async fn copy_organizations<F: Future<Output = ()>>(
        &mut self,
        shutdown: &mut Shutdown<'_, F>,
    ) -> Result<Option<OrgListings>, BackfillError> {
        let started_at = now_millis();
        let mut held = Held::default();
        let mut listings = HashMap::new();
        for kind in OrgKind::ALL {
            self.read_held(kind, &listings, &mut held).await?;
            match self.copy_kind(kind, held.of(kind), shutdown).await {
                Ok(listing) => {
                    listings.insert(kind, listing);
                }
                Err(BackfillError::Clerk {
                    source: ClerkApiError::OrganizationsDisabled { status, detail, .. },
                    ..
                }) => {
                    tracing::warn!(
                        %status,
                        detail,
                        "organizations are not enabled on this Clerk instance: none listed or \
                         reconciled"
                    );
                    self.summary.organizations.status =
                        OrganizationsStatus::Disabled(format!("Clerk answered {status}{detail}"));
                    return Ok(None);
                }
                Err(error) => return Err(error),
            }
        }
        self.summary.organizations.status = OrganizationsStatus::Listed;
        Ok(Some(OrgListings {
            started_at,
            listings,
            held,
        }))
    }

    /// Pages through Clerk's `kind` by offset and applies the new objects;
    /// `held` is what the directory had of them.
    async fn copy_kind<F: Future<Output = ()>>(
        &mut self,
        kind: OrgKind,
        held: &HashMap<String, i64>,
        shutdown: &mut Shutdown<'_, F>,
    ) -> Result<OffsetListing, BackfillError> {
        let mut listing = OffsetListing::new(kind, self.args.page_size);
        while !listing.done() {
            let resume = Resume(self.cursor.clone());
            let body = tokio::select! {
                body = self.api.list_page(kind, listing.offset(), listing.limit()) => body,
                () = shutdown.as_mut() => return Err(BackfillError::Interrupted { resume }),
            };
            let body = body.map_err(|source| clerk_error(source, &resume))?;
            let to_listing_error = |source| BackfillError::OrganizationListing {
                source,
                resume: resume.clone(),
            };
            let page = offset_listing::parse_page(&body, kind, listing.limit())
                .map_err(to_listing_error)?;
            let fresh = listing.accept(&page).map_err(to_listing_error)?;
            let counts = self.summary.organizations.counts_mut(kind);
            counts.fetched += fresh.fresh.len() as u64 + fresh.without_id;
            counts.rejected += fresh.without_id;
            let mut mapped = Vec::with_capacity(fresh.fresh.len());
            for raw in fresh.fresh {
                match map_listed(kind, raw, self.carriage) {
                    Ok(Some(object)) => mapped.push(object),
                    Ok(None) => self.summary.organizations.counts_mut(kind).expired += 1,
                    Err(error) => {
                        let id = offset_listing::object_id(raw).unwrap_or_default();
                        self.reject_object(kind, &id, format!("unusable: {error}"), "");
                    }
                }
            }
            let applied = async {
                if self.args.dry_run {
                    self.classify_objects(kind, mapped, held);
                    Ok(())
                } else {
                    self.apply_objects(kind, mapped, held, &resume).await
                }
            };
            tokio::select! {
                result = applied => result?,
                () = shutdown.as_mut() => return Err(BackfillError::Interrupted { resume }),
            }
            tracing::info!(
                %kind,
                fetched = self.summary.organizations.counts(kind).fetched,
                "backfill progress"
            );
        }
        listing
            .check_complete()
            .map_err(|source| BackfillError::OrganizationListing {
                source,
                resume: Resume(self.cursor.clone()),
            })?;
        Ok(listing)
    }

    /// Applies `objects` of `kind` through the sync-service, a few at a
    /// time; `held` tells a repair from a rerun.
    async fn apply_objects(
        &mut self,
        kind: OrgKind,
        objects: Vec<Mapped>,
        held: &HashMap<String, i64>,
        resume: &Resume,
    ) -> Result<(), BackfillError> {
        let batch = objects.len();
        let upstream = self.upstream.clone();
        let upstream = &upstream;
        let max_retries = self.args.max_retries;
        let mut outcomes = stream::iter(objects)
            .map(|object| async move {
                let outcome = retrying(max_retries, || {
                    upstream.forward_organization(object.event.clone(), &object.event_id)
                })
                .await;
                (object.id, outcome)
            })
            .buffer_unordered(self.args.concurrency as usize);
        let mut refused = 0;
        while let Some((id, outcome)) = outcomes.next().await {
            match outcome {
                Ok(outcome) => self.count_object(kind, outcome, held.contains_key(&id)),
                Err(Error::Upstream(status)) if refused_for_the_user(status.code()) => {
                    refused += 1;
                    if refused == batch && batch >= WHOLE_BATCH_REFUSED {
                        return Err(BackfillError::SyncService {
                            source: Error::Upstream(status),
                            resume: resume.clone(),
                        });
                    }
                    self.reject_object(kind, &id, refusal(&status), status.message());
                }
                Err(source) => {
                    return Err(BackfillError::SyncService {
                        source,
                        resume: resume.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Counts what applying an object did; `was_held`: whether the
    /// directory had it before.
    fn count_object(&mut self, kind: OrgKind, outcome: Outcome, was_held: bool) {
        let counts = self.summary.organizations.counts_mut(kind);
        match outcome {
            Outcome::Applied => count_repair(counts, was_held),
            Outcome::Duplicate => counts.unchanged += 1,
            Outcome::Stale => counts.stale += 1,
            Outcome::UserDeleted | Outcome::Deleted => {
                counts.stale += 1;
                counts.deleted_locally += 1;
            }
            Outcome::Unspecified => unreachable!("Upstream refuses unknown outcomes"),
        }
    }

    /// Dry run: compares `objects` with what the directory held.
    fn classify_objects(
        &mut self,
        kind: OrgKind,
        objects: Vec<Mapped>,
        held: &HashMap<String, i64>,
    ) {
        let counts = self.summary.organizations.counts_mut(kind);
        for object in objects {
            match held.get(&object.id) {
                Some(&stored) if stored == object.version => counts.unchanged += 1,
                Some(&stored) if stored > object.version => counts.stale += 1,
                stored => count_repair(counts, stored.is_some()),
            }
        }
    }

    /// Counts an object that is skipped, names it with `why` in the summary
    /// (the first few) and logs it with `detail` (the first many).
    fn reject_object(&mut self, kind: OrgKind, id: &str, why: String, detail: &str) {
        self.summary.organizations.counts_mut(kind).rejected += 1;
        if self.logs_left > 0 {
            self.logs_left -= 1;
            tracing::warn!(%kind, id, why, detail, "organization object skipped");
        }
        let rejections = &mut self.summary.organizations.rejections;
        if rejections.len() < NAMED_REJECTIONS {
            rejections.push(SkippedObject {
                kind,
                id: id.to_owned(),
                why,
            });
        }
    }

    /// Reads what the directory holds of `kind` into `held`: every role and
    /// organization; the memberships and invitations of every organization
    /// held or already `listed`.
    async fn read_held(
        &self,
        kind: OrgKind,
        listed: &HashMap<OrgKind, OffsetListing>,
        held: &mut Held,
    ) -> Result<(), BackfillError> {
        let mut versions = HashMap::new();
        match kind {
            OrgKind::Roles => {
                for role in self.directory_roles().await? {
                    versions.insert(role.id.clone(), role_version(&role));
                }
            }
            OrgKind::Organizations => {
                for organization in self.directory_organizations().await? {
                    versions.insert(organization.id, version_of(&organization.updated_at));
                }
            }
            OrgKind::Memberships | OrgKind::Invitations => {
                let mut organizations: Vec<String> = held
                    .of(OrgKind::Organizations)
                    .keys()
                    .map(String::as_str)
                    .chain(
                        listed
                            .get(&OrgKind::Organizations)
                            .into_iter()
                            .flat_map(OffsetListing::ids),
                    )
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                organizations.sort_unstable();
                for organization in &organizations {
                    if kind == OrgKind::Memberships {
                        for membership in self.directory_memberships(organization).await? {
                            versions
                                .insert(membership.id.clone(), version_of(&membership.updated_at));
                            held.memberships.insert(membership.id.clone(), membership);
                        }
                    } else {
                        for invitation in self.directory_invitations(organization).await? {
                            versions.insert(invitation.id, version_of(&invitation.updated_at));
                        }
                    }
                }
            }
        }
        held.versions.insert(kind, versions);
        Ok(())
    }

    /// Every live organization in the directory.
    async fn directory_organizations(&self) -> Result<Vec<v1::Organization>, BackfillError> {
        self.read_pages(|page_token| {
            let mut client = self.organization_directory.clone();
            let request = self.service.request(ListOrganizationsRequest {
                page_size: DIRECTORY_PAGE,
                page_token,
            });
            async move {
                let page = self
                    .service
                    .deadline(client.list_organizations(request), Error::Upstream)
                    .await?;
                Ok((page.organizations, page.next_page_token))
            }
        })
        .await
    }

    /// Every live role in the directory, with its permissions.
    async fn directory_roles(&self) -> Result<Vec<v1::Role>, BackfillError> {
        self.read_pages(|page_token| {
            let mut client = self.organization_directory.clone();
            let request = self.service.request(ListRolesRequest {
                page_size: DIRECTORY_PAGE,
                page_token,
            });
            async move {
                let page = self
                    .service
                    .deadline(client.list_roles(request), Error::Upstream)
                    .await?;
                Ok((page.roles, page.next_page_token))
            }
        })
        .await
    }

    /// The live memberships of `organization` in the directory.
    async fn directory_memberships(
        &self,
        organization: &str,
    ) -> Result<Vec<v1::Membership>, BackfillError> {
        self.read_pages(|page_token| {
            let mut client = self.organization_directory.clone();
            let request = self.service.request(ListMembershipsRequest {
                organization_id: organization.to_owned(),
                page_size: DIRECTORY_PAGE,
                page_token,
                ..ListMembershipsRequest::default()
            });
            async move {
                let page = self
                    .service
                    .deadline(client.list_memberships(request), Error::Upstream)
                    .await?;
                Ok((page.memberships, page.next_page_token))
            }
        })
        .await
    }

    /// The live invitations of `organization` in the directory.
    async fn directory_invitations(
        &self,
        organization: &str,
    ) -> Result<Vec<v1::Invitation>, BackfillError> {
        self.read_pages(|page_token| {
            let mut client = self.organization_directory.clone();
            let request = self.service.request(ListInvitationsRequest {
                organization_id: organization.to_owned(),
                page_size: DIRECTORY_PAGE,
                page_token,
                ..ListInvitationsRequest::default()
            });
            async move {
                let page = self
                    .service
                    .deadline(client.list_invitations(request), Error::Upstream)
                    .await?;
                Ok((page.invitations, page.next_page_token))
            }
        })
        .await
    }

    /// Every item of a paged directory read: `page` asks for the page at a
    /// token and answers its items and the next token (empty at the end).
    async fn read_pages<T, Fut>(
        &self,
        page: impl Fn(String) -> Fut,
    ) -> Result<Vec<T>, BackfillError>
    where
        Fut: Future<Output = Result<(Vec<T>, String), Error>>,
    {
        let mut items = Vec::new();
        let mut token = String::new();
        loop {
            let (more, next) = retrying(self.args.max_retries, || page(token.clone()))
                .await
                .map_err(|source| self.sync_service_error(source, &Resume(self.cursor.clone())))?;
            items.extend(more);
            if next.is_empty() {
                return Ok(items);
            }
            token = next;
        }
    }

    /// Tombstones the organizations, memberships and roles the complete
    /// `listed` lacked, whose last change is older than its start minus
    /// [`RECONCILE_MARGIN`], and that Clerk confirms gone; applies those
    /// Clerk still returns.
    pub(super) async fn reconcile_organizations<F: Future<Output = ()>>(
        &mut self,
        listed: &OrgListings,
        shutdown: &mut Shutdown<'_, F>,
    ) -> Result<(), BackfillError> {
        let cutoff = listed.started_at - RECONCILE_MARGIN.as_millis() as i64;
        let organizations = listed.gone(OrgKind::Organizations, cutoff);
        let roles = listed.gone(OrgKind::Roles, cutoff);
        let leaving: HashSet<&str> = organizations.iter().map(String::as_str).collect();
        // Memberships of an organization about to be asked for end with it
        // if it is gone: they are not counted against the share.
        let (of_leaving, memberships): (Vec<&v1::Membership>, Vec<&v1::Membership>) = listed
            .gone(OrgKind::Memberships, cutoff)
            .iter()
            .filter_map(|id| listed.held.memberships.get(id))
            .partition(|m| leaving.contains(m.organization_id.as_str()));
        for (kind, candidates) in [
            (OrgKind::Organizations, organizations.len()),
            (OrgKind::Memberships, memberships.len()),
            (OrgKind::Roles, roles.len()),
        ] {
            let live = listed.held.of(kind).len() as u64;
            tracing::info!(%kind, candidates, live, "local objects Clerk did not list (changed before the listing started)");
            let share = self.args.max_tombstone_share;
            if candidates as u64 > share.of(live) && !self.args.force {
                return Err(BackfillError::TooManyOrganizationTombstones {
                    kind,
                    candidates: candidates as u64,
                    live,
                    share,
                });
            }
        }
        let deleted_at = timestamp_from_millis(listed.started_at);
        let mut ended = HashSet::new();
        for id in &organizations {
            let answer = interruptible(self.api.get_organization(id), shutdown).await?;
            if self.confirm(OrgKind::Organizations, id, answer).await? {
                let event = Event::OrganizationDeleted(OrganizationDeleted {
                    meta: Some(reconcile_meta(id, deleted_at)),
                    organization_id: id.clone(),
                });
                self.tombstone_object(OrgKind::Organizations, id, event)
                    .await?;
                ended.insert(id.as_str());
            }
        }
        let still_held = of_leaving
            .into_iter()
            .filter(|m| !ended.contains(m.organization_id.as_str()));
        for membership in memberships.into_iter().chain(still_held) {
            let answer = interruptible(
                self.api
                    .memberships_of(&membership.organization_id, &membership.user_id),
                shutdown,
            )
            .await?;
            if self.confirm_membership(membership, answer).await? {
                let event = Event::MembershipDeleted(MembershipDeleted {
                    meta: Some(reconcile_meta(&membership.id, deleted_at)),
                    membership: Some(membership.clone()),
                });
                self.tombstone_object(OrgKind::Memberships, &membership.id, event)
                    .await?;
            }
        }
        for id in &roles {
            let answer = interruptible(self.api.get_role(id), shutdown).await?;
            if self.confirm(OrgKind::Roles, id, answer).await? {
                let event = Event::RoleDeleted(RoleDeleted {
                    meta: Some(reconcile_meta(id, deleted_at)),
                    role_id: id.clone(),
                });
                self.tombstone_object(OrgKind::Roles, id, event).await?;
            }
        }
        Ok(())
    }

    /// Whether Clerk's `answer` about object `id` confirms it gone (404);
    /// an object Clerk still returns is applied instead.
    async fn confirm(
        &mut self,
        kind: OrgKind,
        id: &str,
        answer: Option<bytes::Bytes>,
    ) -> Result<bool, BackfillError> {
        let Some(body) = answer else {
            return Ok(true);
        };
        let object = serde_json::from_slice::<&RawValue>(&body)
            .map_err(Error::InvalidJson)
            .and_then(|raw| map_listed(kind, raw, self.carriage));
        self.apply_missed(kind, id, object).await?;
        Ok(false)
    }

    /// Whether Clerk's memberships of the member in the organization
    /// (`answer`; `None`: no such organization) lack `membership`; one
    /// Clerk still lists is applied instead.
    async fn confirm_membership(
        &mut self,
        membership: &v1::Membership,
        answer: Option<bytes::Bytes>,
    ) -> Result<bool, BackfillError> {
        let Some(body) = answer else {
            return Ok(true);
        };
        let kind = OrgKind::Memberships;
        let page = offset_listing::parse_page(&body, kind, u32::MAX).map_err(|source| {
            BackfillError::ReconcileClerk(ClerkApiError::InvalidAnswer {
                path: "/v1/organizations/{organization_id}/memberships",
                reason: source.to_string(),
            })
        })?;
        let Some(raw) = page
            .items
            .into_iter()
            .find(|raw| offset_listing::object_id(raw).as_deref() == Some(&membership.id))
        else {
            return Ok(true);
        };
        let object = map_listed(kind, raw, self.carriage);
        self.apply_missed(kind, &membership.id, object).await?;
        Ok(false)
    }

    /// Applies an object the listing missed but Clerk returned by id.
    async fn apply_missed(
        &mut self,
        kind: OrgKind,
        id: &str,
        object: Result<Option<Mapped>, Error>,
    ) -> Result<(), BackfillError> {
        self.summary
            .organizations
            .counts_mut(kind)
            .missed_by_listing += 1;
        tracing::warn!(%kind, id, "Clerk still has an object its listing lacked: applied, not tombstoned");
        let held = HashMap::from([(id.to_owned(), 0)]);
        match object {
            Ok(Some(object)) if object.id == id => {
                if self.args.dry_run {
                    self.classify_objects(kind, vec![object], &held);
                    Ok(())
                } else {
                    self.apply_objects(kind, vec![object], &held, &Resume::default())
                        .await
                }
            }
            Ok(Some(_)) => {
                self.reject_object(kind, id, "Clerk answered with another id".to_owned(), "");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(error) => {
                self.reject_object(kind, id, format!("unusable: {error}"), "");
                Ok(())
            }
        }
    }

    /// Tombstones local object `id` of `kind` with `event` (dry run: counts).
    async fn tombstone_object(
        &mut self,
        kind: OrgKind,
        id: &str,
        event: Event,
    ) -> Result<(), BackfillError> {
        if self.args.dry_run {
            self.summary.organizations.counts_mut(kind).tombstoned += 1;
            return Ok(());
        }
        let event_id = format!("reconcile_{id}");
        let upstream = &self.upstream;
        let outcome = retrying(self.args.max_retries, || {
            upstream.forward_organization(event.clone(), &event_id)
        })
        .await;
        match outcome {
            Ok(Outcome::Applied) => {
                self.summary.organizations.counts_mut(kind).tombstoned += 1;
                tracing::info!(%kind, id, "tombstoned: Clerk no longer has it");
            }
            Ok(_) => {}
            Err(Error::Upstream(status)) if refused_for_the_user(status.code()) => {
                self.reject_object(kind, id, refusal(&status), status.message());
            }
            Err(error) => return Err(BackfillError::Reconcile(error)),
        }
        Ok(())
    }
}

/// Counts an object written over an older local copy (`was_held`) or none.
fn count_repair(counts: &mut ObjectCounts, was_held: bool) {
    counts.applied += 1;
    if was_held {
        counts.repaired_stale += 1;
    } else {
        counts.repaired_missed += 1;
    }
}

/// The metadata of reconcile's tombstone of `id`.
fn reconcile_meta(id: &str, deleted_at: prost_types::Timestamp) -> EventMeta {
    EventMeta {
        event_id: format!("reconcile_{id}"),
        occurred_at: Some(deleted_at),
    }
}

/// A Clerk failure of the organizations part as the pass reports it.
fn clerk_error(source: ClerkApiError, resume: &Resume) -> BackfillError {
    match source {
        ClerkApiError::Unauthorized(_) => BackfillError::Unauthorized(source),
        source => BackfillError::Clerk {
            source,
            resume: resume.clone(),
        },
    }
}

/// Reconcile's question to Clerk, stopped by `shutdown`.
async fn interruptible<F: Future<Output = ()>>(
    answer: impl Future<Output = Result<Option<bytes::Bytes>, ClerkApiError>>,
    shutdown: &mut Shutdown<'_, F>,
) -> Result<Option<bytes::Bytes>, BackfillError> {
    let answer = tokio::select! {
        answer = answer => answer,
        () = shutdown.as_mut() => {
            return Err(BackfillError::Interrupted { resume: Resume::default() });
        }
    };
    answer.map_err(|error| match error {
        ClerkApiError::Unauthorized(_) => BackfillError::Unauthorized(error),
        error => BackfillError::ReconcileClerk(error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carriage() -> Carriage {
        Carriage {
            max_message_bytes: 4 * 1024 * 1024,
            private_metadata: false,
        }
    }

    fn raw(value: serde_json::Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&value).unwrap()
    }

    #[test]
    fn listed_objects_map_like_their_webhooks() {
        let organization = raw(serde_json::json!({
            "object": "organization", "id": "org_1", "name": "Acme", "slug": "acme",
            "members_count": 7, "private_metadata": {"secret": 1},
            "public_metadata": {}, "created_at": 1, "updated_at": 2_000
        }));
        let mapped = map_listed(OrgKind::Organizations, &organization, carriage())
            .unwrap()
            .unwrap();
        assert_eq!(mapped.event_id, "backfill_org_1_2000");
        let Event::OrganizationUpserted(upserted) = mapped.event else {
            panic!("not an organization");
        };
        let organization = upserted.organization.unwrap();
        assert_eq!(organization.members_count, 0, "counted by the directory");
        assert_eq!(organization.private_metadata, None, "not forwarded");

        let expired = raw(serde_json::json!({
            "id": "orginv_1", "organization_id": "org_1", "email_address": "a@b.c",
            "status": "expired", "updated_at": 5
        }));
        assert!(
            map_listed(OrgKind::Invitations, &expired, carriage())
                .unwrap()
                .is_none()
        );
        let nameless = raw(serde_json::json!({"id": "org_2", "updated_at": 5}));
        assert!(map_listed(OrgKind::Organizations, &nameless, carriage()).is_err());
    }

    #[test]
    fn a_role_changes_its_event_id_when_a_permission_changes() {
        let role = |permission_updated_at: i64| {
            raw(serde_json::json!({
                "object": "role", "id": "role_1", "key": "org:teacher", "name": "Teacher",
                "is_creator_eligible": false, "created_at": 1, "updated_at": 10,
                "permissions": [{"object": "permission", "id": "perm_1", "key": "org:x:y",
                    "name": "X", "type": "user", "created_at": 1,
                    "updated_at": permission_updated_at}]
            }))
        };
        let before = map_listed(OrgKind::Roles, &role(5), carriage())
            .unwrap()
            .unwrap();
        let after = map_listed(OrgKind::Roles, &role(50), carriage())
            .unwrap()
            .unwrap();
        assert_ne!(before.event_id, after.event_id);
        assert!(before.event_id.starts_with("backfill_role_1_10_"));
        assert_eq!((before.version, after.version), (10, 50));
    }
}
