//! `clerk.sync.v1.OrganizationSyncService` and `OrganizationDirectoryService`:
//! organization and membership events parsed into the store's values, and
//! the queries over them. Private metadata is kept only when the
//! sync-service stores it, and served only to callers that presented a token.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clerk_sync_api::{
    json::{json_from_struct, struct_from_json},
    v1::{
        self, ApplyOrganizationEventRequest, ApplyOrganizationEventResponse,
        CheckPermissionRequest, CheckPermissionResponse, DenialReason, GetMembershipRequest,
        GetMembershipResponse, GetOrganizationRequest, GetOrganizationResponse, InvitationStatus,
        ListInvitationsRequest, ListInvitationsResponse, ListMembershipsRequest,
        ListMembershipsResponse, ListOrganizationChangesRequest, ListOrganizationChangesResponse,
        ListOrganizationsRequest, ListOrganizationsResponse, ListRolesRequest, ListRolesResponse,
        WatchOrganizationsRequest, WatchOrganizationsResponse,
        apply_organization_event_request::Event, watch_organizations_request,
        watch_organizations_response, watch_users_request::Start,
    },
};
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::{
    auth::Caller,
    domain::{EventId, optional_time, page_size, parse_id, required_time, timestamp_from_millis},
    error::Error,
    grpc::{fanout::OrganizationLog, feed},
    store::{
        FeedEntry, INVITATION_PENDING, Invitation, MembersOf, Membership, Organization,
        OrganizationEvent, OrganizationFeedChange, Permission, Position, Role, Store,
        StoredPermission,
    },
};

/// Longest name, role or permission kept.
const MAX_TEXT_LEN: usize = 4096;

/// Serves `OrganizationSyncService`.
#[derive(Clone, Debug)]
pub(crate) struct OrganizationSyncService {
    pub(crate) store: Store,
    /// Whether private metadata is kept.
    pub(crate) store_private_metadata: bool,
}

/// Serves `OrganizationDirectoryService`.
#[derive(Clone, Debug)]
pub(crate) struct OrganizationDirectoryService {
    pub(crate) store: Store,
    /// Turns true when the server shuts down: ends the watchers.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
    /// The watchers of this server, `WatchUsers`' and these alike.
    pub(crate) watchers: std::sync::Arc<feed::Watchers>,
}

#[tonic::async_trait]
impl v1::organization_sync_service_server::OrganizationSyncService for OrganizationSyncService {
    async fn apply_organization_event(
        &self,
        request: Request<ApplyOrganizationEventRequest>,
    ) -> Result<Response<ApplyOrganizationEventResponse>, Status> {
        let (event_id, event) = parse_event(request.into_inner(), self.store_private_metadata)?;
        let span = tracing::info_span!(
            "apply_organization_event",
            event_id = event_id.as_str(),
            outcome = tracing::field::Empty,
        );
        let outcome = self
            .store
            .apply_organization_event(&event_id, event)
            .instrument(span.clone())
            .await?;
        span.record("outcome", tracing::field::debug(outcome));
        Ok(Response::new(ApplyOrganizationEventResponse {
            outcome: v1::Outcome::from(outcome).into(),
        }))
    }
}

#[tonic::async_trait]
impl v1::organization_directory_service_server::OrganizationDirectoryService
    for OrganizationDirectoryService
{
    async fn get_organization(
        &self,
        request: Request<GetOrganizationRequest>,
    ) -> Result<Response<GetOrganizationResponse>, Status> {
        let private = Caller::of(&request).is_authenticated();
        let request = request.into_inner();
        let (id, slug) = match (request.id.is_empty(), request.slug.is_empty()) {
            (false, true) => (Some(parse_id(request.id, "id")?), None),
            (true, false) => (None, Some(parse_id(request.slug, "slug")?)),
            _ => return Err(Error::invalid("id", "or slug is required, not both").into()),
        };
        let (organization, members) = self
            .store
            .get_organization(id.as_deref(), slug.as_deref())
            .await?;
        Ok(Response::new(GetOrganizationResponse {
            organization: Some(organization_to_proto(organization, members, private)?),
        }))
    }

    async fn list_organizations(
        &self,
        request: Request<ListOrganizationsRequest>,
    ) -> Result<Response<ListOrganizationsResponse>, Status> {
        let private = Caller::of(&request).is_authenticated();
        let request = request.into_inner();
        let page_size = page_size(request.page_size)?;
        let after = decode_token(&request.page_token, "")?;
        let mut page = self
            .store
            .list_organizations(u64::from(page_size) + 1, after.as_deref())
            .await?;
        let next_page_token = next_token(&mut page, page_size, "", |(o, _)| &o.id);
        Ok(Response::new(ListOrganizationsResponse {
            organizations: page
                .into_iter()
                .map(|(organization, members)| {
                    organization_to_proto(organization, members, private)
                })
                .collect::<Result<_, _>>()?,
            next_page_token,
        }))
    }

    async fn get_membership(
        &self,
        request: Request<GetMembershipRequest>,
    ) -> Result<Response<GetMembershipResponse>, Status> {
        let private = Caller::of(&request).is_authenticated();
        let request = request.into_inner();
        let organization_id = parse_id(request.organization_id, "organization_id")?;
        let user_id = parse_id(request.user_id, "user_id")?;
        let membership = self
            .store
            .get_membership(&organization_id, &user_id)
            .await?;
        Ok(Response::new(GetMembershipResponse {
            membership: Some(membership_to_proto(membership, private)?),
        }))
    }

    async fn list_memberships(
        &self,
        request: Request<ListMembershipsRequest>,
    ) -> Result<Response<ListMembershipsResponse>, Status> {
        let private = Caller::of(&request).is_authenticated();
        let request = request.into_inner();
        let of = match (
            request.organization_id.is_empty(),
            request.user_id.is_empty(),
        ) {
            (false, true) => {
                MembersOf::Organization(parse_id(request.organization_id, "organization_id")?)
            }
            (true, false) => MembersOf::User(parse_id(request.user_id, "user_id")?),
            _ => {
                return Err(
                    Error::invalid("organization_id", "or user_id is required, not both").into(),
                );
            }
        };
        let role = match request.role.as_str() {
            "" => None,
            _ => Some(parse_id(request.role, "role")?),
        };
        let page_size = page_size(request.page_size)?;
        // A token only fits the query it came from.
        let query = match &of {
            MembersOf::Organization(id) => format!("o:{id}:{}", role.as_deref().unwrap_or("")),
            MembersOf::User(id) => format!("u:{id}:{}", role.as_deref().unwrap_or("")),
        };
        let after = decode_token(&request.page_token, &query)?;
        let mut page = self
            .store
            .list_memberships(
                &of,
                role.as_deref(),
                u64::from(page_size) + 1,
                after.as_deref(),
            )
            .await?;
        let next_page_token = next_token(&mut page, page_size, &query, |m| &m.id);
        Ok(Response::new(ListMembershipsResponse {
            memberships: page
                .into_iter()
                .map(|membership| membership_to_proto(membership, private))
                .collect::<Result<_, _>>()?,
            next_page_token,
        }))
    }

    async fn list_invitations(
        &self,
        request: Request<ListInvitationsRequest>,
    ) -> Result<Response<ListInvitationsResponse>, Status> {
        let private = Caller::of(&request).is_authenticated();
        let request = request.into_inner();
        let status = match request.status() {
            InvitationStatus::Unspecified => None,
            status => Some(invitation_status(status, "status")?),
        };
        let organization_id = parse_id(request.organization_id, "organization_id")?;
        let page_size = page_size(request.page_size)?;
        let query = format!("i:{organization_id}:{}", status.unwrap_or(""));
        let after = decode_token(&request.page_token, &query)?;
        let mut page = self
            .store
            .list_invitations(
                &organization_id,
                status,
                u64::from(page_size) + 1,
                after.as_deref(),
            )
            .await?;
        let next_page_token = next_token(&mut page, page_size, &query, |i| &i.id);
        Ok(Response::new(ListInvitationsResponse {
            invitations: page
                .into_iter()
                .map(|invitation| invitation_to_proto(invitation, private))
                .collect::<Result<_, _>>()?,
            next_page_token,
        }))
    }

    async fn list_roles(
        &self,
        request: Request<ListRolesRequest>,
    ) -> Result<Response<ListRolesResponse>, Status> {
        let request = request.into_inner();
        let page_size = page_size(request.page_size)?;
        let after = decode_token(&request.page_token, "r")?;
        let mut page = self
            .store
            .list_roles(u64::from(page_size) + 1, after.as_deref())
            .await?;
        let next_page_token = next_token(&mut page, page_size, "r", |(role, _)| &role.key);
        Ok(Response::new(ListRolesResponse {
            roles: page
                .into_iter()
                .map(|(role, permissions)| role_to_proto(role, permissions))
                .collect(),
            next_page_token,
        }))
    }

    async fn check_permission(
        &self,
        request: Request<CheckPermissionRequest>,
    ) -> Result<Response<CheckPermissionResponse>, Status> {
        let request = request.into_inner();
        let user_id = parse_id(request.user_id, "user_id")?;
        let organization_id = parse_id(request.organization_id, "organization_id")?;
        let permission = parse_id(request.permission, "permission")?;
        let found = self
            .store
            .check_permission(&user_id, &organization_id, &permission)
            .await?;
        let (allowed, role, reason) = match found {
            Permission::Allowed { role } => (true, role, DenialReason::Unspecified),
            Permission::RoleLacks { role } => (false, role, DenialReason::RoleLacksPermission),
            Permission::NoMembership => (false, String::new(), DenialReason::NoMembership),
            Permission::UserBanned => (false, String::new(), DenialReason::UserBanned),
            Permission::UserDeleted => (false, String::new(), DenialReason::UserDeleted),
        };
        Ok(Response::new(CheckPermissionResponse {
            allowed,
            role,
            reason: reason.into(),
        }))
    }

    type WatchOrganizationsStream = feed::WatchStream<WatchOrganizationsResponse>;

    async fn watch_organizations(
        &self,
        request: Request<WatchOrganizationsRequest>,
    ) -> Result<Response<Self::WatchOrganizationsStream>, Status> {
        let private = Caller::of(&request).is_authenticated();
        // Counted per token only once the token is known to be valid.
        let token = private
            .then(|| crate::auth::token_key(request.metadata()))
            .flatten();
        let start = feed::parse_start(request.into_inner().start.map(|start| match start {
            watch_organizations_request::Start::AfterPosition(p) => Start::AfterPosition(p),
            watch_organizations_request::Start::Now(()) => Start::Now(()),
            watch_organizations_request::Start::Snapshot(()) => Start::Snapshot(()),
        }))?;
        let stream = feed::watch(
            &self.store,
            &self.stopping,
            &self.watchers,
            token,
            start,
            Organizations { private },
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn list_organization_changes(
        &self,
        request: Request<ListOrganizationChangesRequest>,
    ) -> Result<Response<ListOrganizationChangesResponse>, Status> {
        let private = Caller::of(&request).is_authenticated();
        let request = request.into_inner();
        let (after, page_size) =
            feed::parse_changes_page(request.after_position, request.page_size)?;
        let page = self
            .store
            .organization_changes_after(after, page_size, 0)
            .await?;
        Ok(Response::new(ListOrganizationChangesResponse {
            changes: page
                .entries
                .into_iter()
                .map(|entry| change_to_proto(entry, private))
                .collect::<Result<_, _>>()?,
            next_after_position: page.next_after,
            has_more: page.has_more,
        }))
    }
}

/// The organizations' log, as `WatchOrganizations` sends it.
struct Organizations {
    /// Whether the caller may see private metadata.
    private: bool,
}

impl feed::Feed for Organizations {
    type Message = WatchOrganizationsResponse;
    type Log = OrganizationLog;

    fn message(
        &self,
        entry: &FeedEntry<OrganizationFeedChange>,
    ) -> Result<WatchOrganizationsResponse, Error> {
        let position = entry.position;
        let change = change_to_proto(entry.clone(), self.private)?;
        Ok(WatchOrganizationsResponse {
            position,
            event: Some(watch_organizations_response::Event::Change(change)),
        })
    }

    fn caught_up(position: Position) -> WatchOrganizationsResponse {
        WatchOrganizationsResponse {
            position,
            event: Some(watch_organizations_response::Event::CaughtUp(
                v1::CaughtUp {},
            )),
        }
    }
}

/// One entry of the organizations' log as the API shows it.
fn change_to_proto(
    entry: FeedEntry<OrganizationFeedChange>,
    private: bool,
) -> Result<v1::OrganizationChange, Error> {
    use v1::organization_change::Change;
    let change = match entry.change {
        OrganizationFeedChange::Organization {
            organization,
            members_count,
        } => Change::Organization(organization_to_proto(organization, members_count, private)?),
        OrganizationFeedChange::OrganizationDeleted { id, deleted_at } => {
            Change::OrganizationDeleted(v1::OrganizationDeletion {
                id,
                deleted_at: Some(timestamp_from_millis(deleted_at)),
            })
        }
        OrganizationFeedChange::Membership(membership) => {
            Change::Membership(membership_to_proto(membership, private)?)
        }
        OrganizationFeedChange::MembershipEnded(membership) => {
            Change::MembershipDeleted(v1::MembershipDeletion {
                deleted_at: membership.deleted_at.map(timestamp_from_millis),
                id: membership.id,
                organization_id: membership.organization_id,
                user_id: membership.user_id,
            })
        }
    };
    Ok(v1::OrganizationChange {
        position: entry.position,
        change: Some(change),
    })
}

/// Parses an ApplyOrganizationEvent request into its event id and event.
fn parse_event(
    request: ApplyOrganizationEventRequest,
    store_private_metadata: bool,
) -> Result<(EventId, OrganizationEvent), Error> {
    let event = request
        .event
        .ok_or_else(|| Error::invalid("event", "is required"))?;
    let (meta, field) = match &event {
        Event::OrganizationUpserted(e) => (&e.meta, "organization_upserted"),
        Event::OrganizationDeleted(e) => (&e.meta, "organization_deleted"),
        Event::MembershipUpserted(e) => (&e.meta, "membership_upserted"),
        Event::MembershipDeleted(e) => (&e.meta, "membership_deleted"),
        Event::InvitationChanged(e) => (&e.meta, "invitation_changed"),
        Event::RoleChanged(e) => (&e.meta, "role_changed"),
        Event::RoleDeleted(e) => (&e.meta, "role_deleted"),
        Event::PermissionChanged(e) => (&e.meta, "permission_changed"),
        Event::PermissionDeleted(e) => (&e.meta, "permission_deleted"),
    };
    let meta = meta
        .clone()
        .ok_or_else(|| Error::invalid(format!("{field}.meta"), "is required"))?;
    let event_id = EventId::parse(meta.event_id, &format!("{field}.meta.event_id"))?;
    let occurred_at = || required_time(meta.occurred_at, &format!("{field}.meta.occurred_at"));
    let event = match event {
        Event::OrganizationUpserted(e) => {
            OrganizationEvent::OrganizationUpserted(parse_organization(
                e.organization,
                "organization_upserted.organization",
                store_private_metadata,
            )?)
        }
        Event::OrganizationDeleted(e) => OrganizationEvent::OrganizationDeleted {
            id: parse_id(e.organization_id, "organization_deleted.organization_id")?,
            deleted_at: occurred_at()?,
        },
        Event::MembershipUpserted(e) => OrganizationEvent::MembershipUpserted(parse_membership(
            e.membership,
            "membership_upserted.membership",
            store_private_metadata,
            None,
        )?),
        Event::MembershipDeleted(e) => {
            let deleted_at = occurred_at()?;
            OrganizationEvent::MembershipDeleted {
                membership: parse_membership(
                    e.membership,
                    "membership_deleted.membership",
                    false,
                    Some(deleted_at),
                )?,
                deleted_at,
            }
        }
        Event::InvitationChanged(e) => OrganizationEvent::InvitationChanged(parse_invitation(
            e.invitation,
            "invitation_changed.invitation",
            store_private_metadata,
        )?),
        Event::RoleChanged(e) => {
            let field = "role_changed.role";
            let role = e.role.ok_or_else(|| Error::invalid(field, "is required"))?;
            let permissions = role
                .permissions
                .into_iter()
                .enumerate()
                .map(|(i, p)| parse_permission(p, &format!("{field}.permissions[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let ids: Vec<&str> = permissions.iter().map(|p| p.id.as_str()).collect();
            OrganizationEvent::RoleChanged {
                role: Role {
                    id: parse_id(role.id, &format!("{field}.id"))?,
                    key: parse_id(role.key, &format!("{field}.key"))?,
                    name: text(role.name, &format!("{field}.name"))?,
                    description: text(role.description, &format!("{field}.description"))?,
                    is_creator_eligible: role.is_creator_eligible,
                    permission_ids: Value::from(ids).to_string(),
                    created_at: optional_time(role.created_at, &format!("{field}.created_at"))?,
                    updated_at: required_time(role.updated_at, &format!("{field}.updated_at"))?,
                    deleted_at: None,
                },
                permissions,
            }
        }
        Event::RoleDeleted(e) => OrganizationEvent::RoleDeleted {
            id: parse_id(e.role_id, "role_deleted.role_id")?,
            deleted_at: occurred_at()?,
        },
        Event::PermissionChanged(e) => {
            let field = "permission_changed.permission";
            let permission = e
                .permission
                .ok_or_else(|| Error::invalid(field, "is required"))?;
            OrganizationEvent::PermissionChanged(parse_permission(permission, field)?)
        }
        Event::PermissionDeleted(e) => OrganizationEvent::PermissionDeleted {
            id: parse_id(e.permission_id, "permission_deleted.permission_id")?,
            deleted_at: occurred_at()?,
        },
    };
    Ok((event_id, event))
}

fn parse_invitation(
    invitation: Option<v1::Invitation>,
    field: &str,
    store_private_metadata: bool,
) -> Result<Invitation, Error> {
    let i = invitation.ok_or_else(|| Error::invalid(field, "is required"))?;
    let path = |name: &str| format!("{field}.{name}");
    let status = i.status();
    Ok(Invitation {
        id: parse_id(i.id, &path("id"))?,
        organization_id: parse_id(i.organization_id, &path("organization_id"))?,
        email_address: parse_id(i.email_address, &path("email_address"))?,
        role: text(i.role, &path("role"))?,
        role_name: text(i.role_name, &path("role_name"))?,
        status: invitation_status(status, &path("status"))?.to_owned(),
        public_metadata: metadata(i.public_metadata),
        private_metadata: i
            .private_metadata
            .filter(|_| store_private_metadata)
            .map(|m| metadata(Some(m))),
        user_id: i
            .user_id
            .filter(|id| !id.is_empty())
            .map(|id| parse_id(id, &path("user_id")))
            .transpose()?,
        expires_at: optional_time(i.expires_at, &path("expires_at"))?,
        created_at: optional_time(i.created_at, &path("created_at"))?,
        updated_at: required_time(i.updated_at, &path("updated_at"))?,
        deleted_at: None,
    })
}

fn parse_permission(p: v1::Permission, field: &str) -> Result<StoredPermission, Error> {
    let path = |name: &str| format!("{field}.{name}");
    Ok(StoredPermission {
        id: parse_id(p.id, &path("id"))?,
        key: parse_id(p.key, &path("key"))?,
        name: text(p.name, &path("name"))?,
        description: text(p.description, &path("description"))?,
        kind: text(p.r#type, &path("type"))?,
        created_at: optional_time(p.created_at, &path("created_at"))?,
        updated_at: required_time(p.updated_at, &path("updated_at"))?,
        deleted_at: None,
    })
}

/// An invitation status as stored.
fn invitation_status(status: InvitationStatus, field: &str) -> Result<&'static str, Error> {
    match status {
        InvitationStatus::Pending => Ok(INVITATION_PENDING),
        InvitationStatus::Accepted => Ok("accepted"),
        InvitationStatus::Revoked => Ok("revoked"),
        InvitationStatus::Unspecified => Err(Error::invalid(
            field,
            "must be PENDING, ACCEPTED or REVOKED",
        )),
    }
}

fn parse_organization(
    organization: Option<v1::Organization>,
    field: &str,
    store_private_metadata: bool,
) -> Result<Organization, Error> {
    let o = organization.ok_or_else(|| Error::invalid(field, "is required"))?;
    let name = text(o.name, &format!("{field}.name"))?;
    if name.trim().is_empty() {
        return Err(Error::invalid(format!("{field}.name"), "must not be empty"));
    }
    Ok(Organization {
        id: parse_id(o.id, &format!("{field}.id"))?,
        name,
        slug: o
            .slug
            .filter(|slug| !slug.is_empty())
            .map(|slug| parse_id(slug, &format!("{field}.slug")))
            .transpose()?,
        image_url: o
            .image_url
            .map(|url| text(url, &format!("{field}.image_url")))
            .transpose()?,
        has_image: o.has_image,
        max_allowed_memberships: i64::from(o.max_allowed_memberships),
        admin_delete_enabled: o.admin_delete_enabled,
        public_metadata: metadata(o.public_metadata),
        private_metadata: o
            .private_metadata
            .filter(|_| store_private_metadata)
            .map(|m| metadata(Some(m))),
        created_by: o
            .created_by
            .filter(|id| !id.is_empty())
            .map(|id| parse_id(id, &format!("{field}.created_by")))
            .transpose()?,
        created_at: optional_time(o.created_at, &format!("{field}.created_at"))?,
        updated_at: required_time(o.updated_at, &format!("{field}.updated_at"))?,
        deleted_at: None,
    })
}

/// A membership; for a deletion (`deleted_at` given) only the id is
/// required and a missing `updated_at` reads as the deletion time.
fn parse_membership(
    membership: Option<v1::Membership>,
    field: &str,
    store_private_metadata: bool,
    deleted_at: Option<i64>,
) -> Result<Membership, Error> {
    let m = membership.ok_or_else(|| Error::invalid(field, "is required"))?;
    let required_id = |value: String, name: &str| parse_id(value, &format!("{field}.{name}"));
    let optional_id = |value: String, name: &str| match (value.is_empty(), deleted_at) {
        (true, Some(_)) => Ok(String::new()),
        _ => required_id(value, name),
    };
    let permissions = m
        .permissions
        .into_iter()
        .enumerate()
        .map(|(i, permission)| parse_id(permission, &format!("{field}.permissions[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let user = m.public_user_data.unwrap_or_default();
    let public_user_data = serde_json::json!({
        "first_name": user.first_name,
        "last_name": user.last_name,
        "image_url": user.image_url,
        "has_image": user.has_image,
        "identifier": user.identifier,
    });
    let updated_at = match (m.updated_at, deleted_at) {
        (None, Some(deleted_at)) => deleted_at,
        (updated_at, _) => required_time(updated_at, &format!("{field}.updated_at"))?,
    };
    Ok(Membership {
        id: required_id(m.id, "id")?,
        organization_id: optional_id(m.organization_id, "organization_id")?,
        user_id: optional_id(m.user_id, "user_id")?,
        role: optional_id(m.role, "role")?,
        role_name: text(m.role_name, &format!("{field}.role_name"))?,
        permissions: Value::from(permissions).to_string(),
        public_metadata: metadata(m.public_metadata),
        private_metadata: m
            .private_metadata
            .filter(|_| store_private_metadata)
            .map(|m| metadata(Some(m))),
        public_user_data: public_user_data.to_string(),
        created_at: optional_time(m.created_at, &format!("{field}.created_at"))?,
        updated_at,
        deleted_at: None,
    })
}

/// Free text: at most [`MAX_TEXT_LEN`] bytes, no U+0000 (PostgreSQL refuses
/// it in text).
fn text(value: String, field: &str) -> Result<String, Error> {
    if value.contains('\0') {
        return Err(Error::invalid(field, "must not contain U+0000"));
    }
    if value.len() > MAX_TEXT_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_TEXT_LEN} bytes"),
        ));
    }
    Ok(value)
}

/// A metadata object as stored: JSON text (`{}` when absent).
fn metadata(value: Option<prost_types::Struct>) -> String {
    Value::Object(value.map(json_from_struct).unwrap_or_default()).to_string()
}

fn stored_object(text: &str, what: &str) -> Result<Map<String, Value>, Error> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

fn organization_to_proto(
    o: Organization,
    members: u64,
    private: bool,
) -> Result<v1::Organization, Error> {
    Ok(v1::Organization {
        public_metadata: Some(struct_from_json(stored_object(
            &o.public_metadata,
            "organization metadata",
        )?)),
        private_metadata: o
            .private_metadata
            .filter(|_| private)
            .map(|m| stored_object(&m, "organization metadata").map(struct_from_json))
            .transpose()?,
        id: o.id,
        name: o.name,
        slug: o.slug,
        image_url: o.image_url,
        has_image: o.has_image,
        members_count: u32::try_from(members).unwrap_or(u32::MAX),
        max_allowed_memberships: u32::try_from(o.max_allowed_memberships).unwrap_or(0),
        admin_delete_enabled: o.admin_delete_enabled,
        created_by: o.created_by,
        created_at: o.created_at.map(timestamp_from_millis),
        updated_at: Some(timestamp_from_millis(o.updated_at)),
    })
}

fn membership_to_proto(m: Membership, private: bool) -> Result<v1::Membership, Error> {
    let permissions: Vec<String> = serde_json::from_str(&m.permissions)
        .map_err(|e| Error::Corrupt(format!("membership permissions: {e}")))?;
    let user = stored_object(&m.public_user_data, "membership user data")?;
    let text = |key: &str| user.get(key).and_then(Value::as_str).map(str::to_owned);
    Ok(v1::Membership {
        public_metadata: Some(struct_from_json(stored_object(
            &m.public_metadata,
            "membership metadata",
        )?)),
        private_metadata: m
            .private_metadata
            .filter(|_| private)
            .map(|p| stored_object(&p, "membership metadata").map(struct_from_json))
            .transpose()?,
        public_user_data: Some(v1::PublicUserData {
            user_id: m.user_id.clone(),
            first_name: text("first_name"),
            last_name: text("last_name"),
            image_url: text("image_url"),
            has_image: user
                .get("has_image")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            identifier: text("identifier"),
        }),
        id: m.id,
        organization_id: m.organization_id,
        user_id: m.user_id,
        role: m.role,
        role_name: m.role_name,
        permissions,
        created_at: m.created_at.map(timestamp_from_millis),
        updated_at: Some(timestamp_from_millis(m.updated_at)),
    })
}

fn invitation_to_proto(i: Invitation, private: bool) -> Result<v1::Invitation, Error> {
    let status = match i.status.as_str() {
        INVITATION_PENDING => InvitationStatus::Pending,
        "accepted" => InvitationStatus::Accepted,
        "revoked" => InvitationStatus::Revoked,
        other => return Err(Error::Corrupt(format!("invitation status {other:?}"))),
    };
    Ok(v1::Invitation {
        public_metadata: Some(struct_from_json(stored_object(
            &i.public_metadata,
            "invitation metadata",
        )?)),
        private_metadata: i
            .private_metadata
            .filter(|_| private)
            .map(|p| stored_object(&p, "invitation metadata").map(struct_from_json))
            .transpose()?,
        id: i.id,
        organization_id: i.organization_id,
        email_address: i.email_address,
        role: i.role,
        role_name: i.role_name,
        status: status.into(),
        user_id: i.user_id,
        expires_at: i.expires_at.map(timestamp_from_millis),
        created_at: i.created_at.map(timestamp_from_millis),
        updated_at: Some(timestamp_from_millis(i.updated_at)),
    })
}

fn role_to_proto(role: Role, permissions: Vec<StoredPermission>) -> v1::Role {
    v1::Role {
        id: role.id,
        key: role.key,
        name: role.name,
        description: role.description,
        is_creator_eligible: role.is_creator_eligible,
        permissions: permissions
            .into_iter()
            .map(|p| v1::Permission {
                id: p.id,
                key: p.key,
                name: p.name,
                description: p.description,
                r#type: p.kind,
                created_at: p.created_at.map(timestamp_from_millis),
                updated_at: Some(timestamp_from_millis(p.updated_at)),
            })
            .collect(),
        created_at: role.created_at.map(timestamp_from_millis),
        updated_at: Some(timestamp_from_millis(role.updated_at)),
    }
}

/// Version tag of these page tokens.
const TOKEN_VERSION: &str = "g1";

/// Cuts `page` (fetched one longer than `page_size`) and returns the token
/// of the next page: the last id, bound to `query`.
fn next_token<T>(
    page: &mut Vec<T>,
    page_size: u32,
    query: &str,
    id: impl Fn(&T) -> &String,
) -> String {
    let has_more = page.len() > page_size as usize;
    page.truncate(page_size as usize);
    match page.last() {
        Some(last) if has_more => {
            URL_SAFE_NO_PAD.encode(format!("{TOKEN_VERSION}|{query}|{}", id(last)))
        }
        _ => String::new(),
    }
}

/// The last id of the previous page, if `token` continues a listing of
/// `query`.
fn decode_token(token: &str, query: &str) -> Result<Option<String>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        Error::invalid(
            "page_token",
            "is not a token this server issued for this query",
        )
    };
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let rest = raw
        .strip_prefix(TOKEN_VERSION)
        .and_then(|rest| rest.strip_prefix('|'))
        .and_then(|rest| rest.strip_prefix(query))
        .and_then(|rest| rest.strip_prefix('|'))
        .ok_or_else(invalid)?;
    Ok(Some(rest.to_owned()))
}
