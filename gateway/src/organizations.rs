//! Clerk's organization, membership, invitation, role and permission
//! webhooks (`organization.*`, `organizationMembership.*`,
//! `organizationInvitation.*`, `role.*`, `permission.*`), parsed from the verified body and mapped onto
//! the event `OrganizationSyncService` applies. An invitation's acceptance
//! link (`url`) is never forwarded: its token lets whoever holds it join.
//!
//! A membership event embeds a snapshot of its organization whose
//! `members_count` moves while its `updated_at` does not: only the
//! organization's id is taken from it; the sync-service counts members from
//! the memberships it holds.

use clerk_sync_api::{
    json::struct_from_json,
    v1::{
        self, EventMeta, InvitationChanged, InvitationStatus, MembershipDeleted,
        MembershipUpserted, OrganizationDeleted, OrganizationUpserted, PermissionChanged,
        PermissionDeleted, RoleChanged, RoleDeleted, apply_organization_event_request::Event,
    },
};
use clerk_sync_common::time::timestamp_from_millis;
use prost_types::Timestamp;
use serde::Deserialize;
use serde_json::{Map, Value, value::RawValue};

use crate::{Error, verify::Delivery};

/// The event types mapped here.
pub const EVENT_TYPES: [&str; 15] = [
    "organization.created",
    "organization.updated",
    "organization.deleted",
    "organizationMembership.created",
    "organizationMembership.updated",
    "organizationMembership.deleted",
    "organizationInvitation.created",
    "organizationInvitation.accepted",
    "organizationInvitation.revoked",
    "role.created",
    "role.updated",
    "role.deleted",
    "permission.created",
    "permission.updated",
    "permission.deleted",
];

/// A Clerk organization object; optional where Clerk may send `null`.
#[derive(Debug, Deserialize)]
struct ClerkOrganization {
    id: Option<String>,
    name: Option<String>,
    slug: Option<String>,
    image_url: Option<String>,
    has_image: Option<bool>,
    max_allowed_memberships: Option<u32>,
    admin_delete_enabled: Option<bool>,
    public_metadata: Option<Map<String, Value>>,
    private_metadata: Option<Map<String, Value>>,
    created_by: Option<String>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
}

/// The organization a membership names: only its id is used.
#[derive(Debug, Deserialize)]
struct OrganizationRef {
    id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ClerkPublicUserData {
    user_id: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    image_url: Option<String>,
    has_image: Option<bool>,
    identifier: Option<String>,
}

/// A Clerk organization membership object.
#[derive(Debug, Deserialize)]
struct ClerkMembership {
    id: Option<String>,
    role: Option<String>,
    role_name: Option<String>,
    permissions: Option<Vec<String>>,
    public_metadata: Option<Map<String, Value>>,
    private_metadata: Option<Map<String, Value>>,
    organization: Option<OrganizationRef>,
    public_user_data: Option<ClerkPublicUserData>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
}

/// A Clerk organization invitation object (its `url` is not read).
#[derive(Debug, Deserialize)]
struct ClerkInvitation {
    id: Option<String>,
    organization_id: Option<String>,
    email_address: Option<String>,
    role: Option<String>,
    role_name: Option<String>,
    status: Option<String>,
    public_metadata: Option<Map<String, Value>>,
    private_metadata: Option<Map<String, Value>>,
    user_id: Option<String>,
    expires_at: Option<i64>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
}

/// A Clerk permission object, alone or inside a role.
#[derive(Debug, Deserialize)]
struct ClerkPermission {
    id: Option<String>,
    key: Option<String>,
    name: Option<String>,
    description: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
}

/// A Clerk role object with its permissions.
#[derive(Debug, Deserialize)]
struct ClerkRole {
    id: Option<String>,
    key: Option<String>,
    name: Option<String>,
    description: Option<String>,
    is_creator_eligible: Option<bool>,
    permissions: Option<Vec<ClerkPermission>>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
}

/// `organization.deleted`, `role.deleted` and `permission.deleted` carry
/// only the id (and a slug).
#[derive(Debug, Deserialize)]
struct Deleted {
    id: Option<String>,
}

/// Maps the `data` of an event of one of [`EVENT_TYPES`]; `timestamp_ms` is
/// the payload's `timestamp`, `delivery` gives the event id (and the time
/// when there is no timestamp). `private_metadata` says whether it is kept.
pub fn from_clerk(
    event_type: &str,
    timestamp_ms: Option<i64>,
    data: &RawValue,
    delivery: &Delivery<'_>,
    private_metadata: bool,
) -> Result<Event, Error> {
    let meta = EventMeta {
        event_id: delivery.id.to_owned(),
        occurred_at: Some(match timestamp_ms {
            Some(ms) => timestamp_from_millis(ms),
            None => Timestamp {
                seconds: delivery.timestamp,
                nanos: 0,
            },
        }),
    };
    Ok(match event_type {
        "organization.created" | "organization.updated" => {
            Event::OrganizationUpserted(OrganizationUpserted {
                meta: Some(meta),
                organization: Some(organization(parse(data)?, private_metadata)?),
            })
        }
        "organization.deleted" => {
            let deleted: Deleted = parse(data)?;
            Event::OrganizationDeleted(OrganizationDeleted {
                meta: Some(meta),
                organization_id: required(deleted.id, "data.id")?,
            })
        }
        "organizationMembership.created" | "organizationMembership.updated" => {
            Event::MembershipUpserted(MembershipUpserted {
                meta: Some(meta),
                membership: Some(membership(parse(data)?, private_metadata)?),
            })
        }
        "organizationMembership.deleted" => Event::MembershipDeleted(MembershipDeleted {
            meta: Some(meta),
            membership: Some(membership(parse(data)?, false)?),
        }),
        "organizationInvitation.created"
        | "organizationInvitation.accepted"
        | "organizationInvitation.revoked" => Event::InvitationChanged(InvitationChanged {
            meta: Some(meta),
            invitation: Some(invitation(parse(data)?, private_metadata)?),
        }),
        "role.created" | "role.updated" => Event::RoleChanged(RoleChanged {
            meta: Some(meta),
            role: Some(role(parse(data)?)?),
        }),
        "role.deleted" => Event::RoleDeleted(RoleDeleted {
            meta: Some(meta),
            role_id: required(parse::<Deleted>(data)?.id, "data.id")?,
        }),
        "permission.created" | "permission.updated" => {
            Event::PermissionChanged(PermissionChanged {
                meta: Some(meta),
                permission: Some(permission(parse(data)?, "data")?),
            })
        }
        "permission.deleted" => Event::PermissionDeleted(PermissionDeleted {
            meta: Some(meta),
            permission_id: required(parse::<Deleted>(data)?.id, "data.id")?,
        }),
        other => {
            return Err(Error::Unmappable(format!(
                "{other:?} is not an organization event"
            )));
        }
    })
}

/// The user a membership event is about, for the logs.
pub fn member_of(event: &Event) -> Option<&str> {
    match event {
        Event::MembershipUpserted(MembershipUpserted { membership, .. })
        | Event::MembershipDeleted(MembershipDeleted { membership, .. }) => {
            membership.as_ref().map(|m| m.user_id.as_str())
        }
        _ => None,
    }
}

fn parse<T: serde::de::DeserializeOwned>(data: &RawValue) -> Result<T, Error> {
    serde_json::from_str(data.get()).map_err(Error::InvalidJson)
}

fn required(value: Option<String>, field: &'static str) -> Result<String, Error> {
    value
        .filter(|value| !value.trim().is_empty())
        .ok_or(Error::MissingField(field))
}

fn organization(o: ClerkOrganization, private_metadata: bool) -> Result<v1::Organization, Error> {
    Ok(v1::Organization {
        id: required(o.id, "data.id")?,
        name: required(o.name, "data.name")?,
        slug: o.slug,
        image_url: o.image_url,
        has_image: o.has_image.unwrap_or(false),
        // Counted by the sync-service from the memberships it holds.
        members_count: 0,
        max_allowed_memberships: o.max_allowed_memberships.unwrap_or(0),
        admin_delete_enabled: o.admin_delete_enabled.unwrap_or(false),
        public_metadata: Some(struct_from_json(o.public_metadata.unwrap_or_default())),
        private_metadata: o
            .private_metadata
            .filter(|_| private_metadata)
            .map(struct_from_json),
        created_by: o.created_by,
        created_at: o.created_at.map(timestamp_from_millis),
        updated_at: Some(timestamp_from_millis(
            o.updated_at.ok_or(Error::MissingField("data.updated_at"))?,
        )),
    })
}

fn role(r: ClerkRole) -> Result<v1::Role, Error> {
    Ok(v1::Role {
        id: required(r.id, "data.id")?,
        key: required(r.key, "data.key")?,
        name: r.name.unwrap_or_default(),
        description: r.description.unwrap_or_default(),
        is_creator_eligible: r.is_creator_eligible.unwrap_or(false),
        permissions: r
            .permissions
            .unwrap_or_default()
            .into_iter()
            .map(|p| permission(p, "data.permissions[]"))
            .collect::<Result<_, _>>()?,
        created_at: r.created_at.map(timestamp_from_millis),
        updated_at: Some(timestamp_from_millis(
            r.updated_at.ok_or(Error::MissingField("data.updated_at"))?,
        )),
    })
}

/// A permission at `at` (`data`, or `data.permissions[]` inside a role).
fn permission(p: ClerkPermission, at: &'static str) -> Result<v1::Permission, Error> {
    let (id, key, updated_at) = match at {
        "data" => ("data.id", "data.key", "data.updated_at"),
        _ => (
            "data.permissions[].id",
            "data.permissions[].key",
            "data.permissions[].updated_at",
        ),
    };
    Ok(v1::Permission {
        id: required(p.id, id)?,
        key: required(p.key, key)?,
        name: p.name.unwrap_or_default(),
        description: p.description.unwrap_or_default(),
        r#type: p.kind.unwrap_or_default(),
        created_at: p.created_at.map(timestamp_from_millis),
        updated_at: Some(timestamp_from_millis(
            p.updated_at.ok_or(Error::MissingField(updated_at))?,
        )),
    })
}

fn invitation(i: ClerkInvitation, private_metadata: bool) -> Result<v1::Invitation, Error> {
    let status = match required(i.status, "data.status")?.as_str() {
        "pending" => InvitationStatus::Pending,
        "accepted" => InvitationStatus::Accepted,
        "revoked" => InvitationStatus::Revoked,
        other => {
            return Err(Error::Unmappable(format!(
                "data.status {other:?} is not pending, accepted or revoked"
            )));
        }
    };
    Ok(v1::Invitation {
        id: required(i.id, "data.id")?,
        organization_id: required(i.organization_id, "data.organization_id")?,
        email_address: required(i.email_address, "data.email_address")?,
        role: i.role.unwrap_or_default(),
        role_name: i.role_name.unwrap_or_default(),
        status: status.into(),
        public_metadata: Some(struct_from_json(i.public_metadata.unwrap_or_default())),
        private_metadata: i
            .private_metadata
            .filter(|_| private_metadata)
            .map(struct_from_json),
        user_id: i.user_id,
        expires_at: i.expires_at.map(timestamp_from_millis),
        created_at: i.created_at.map(timestamp_from_millis),
        updated_at: Some(timestamp_from_millis(
            i.updated_at.ok_or(Error::MissingField("data.updated_at"))?,
        )),
    })
}

fn membership(m: ClerkMembership, private_metadata: bool) -> Result<v1::Membership, Error> {
    let user = m.public_user_data.unwrap_or_default();
    let user_id = required(user.user_id, "data.public_user_data.user_id")?;
    Ok(v1::Membership {
        id: required(m.id, "data.id")?,
        organization_id: required(m.organization.and_then(|o| o.id), "data.organization.id")?,
        role: required(m.role, "data.role")?,
        role_name: m.role_name.unwrap_or_default(),
        permissions: m.permissions.unwrap_or_default(),
        public_metadata: Some(struct_from_json(m.public_metadata.unwrap_or_default())),
        private_metadata: m
            .private_metadata
            .filter(|_| private_metadata)
            .map(struct_from_json),
        public_user_data: Some(v1::PublicUserData {
            user_id: user_id.clone(),
            first_name: user.first_name,
            last_name: user.last_name,
            image_url: user.image_url,
            has_image: user.has_image.unwrap_or(false),
            identifier: user.identifier,
        }),
        user_id,
        created_at: m.created_at.map(timestamp_from_millis),
        updated_at: Some(timestamp_from_millis(
            m.updated_at.ok_or(Error::MissingField("data.updated_at"))?,
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/../tests/fixtures/clerk/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn map(name: &str, private_metadata: bool) -> Result<Event, Error> {
        let body = fixture(name);
        let data = serde_json::value::to_raw_value(&body["data"]).unwrap();
        let delivery = Delivery {
            id: "msg_1",
            timestamp: 1,
        };
        from_clerk(
            body["type"].as_str().unwrap(),
            body["timestamp"].as_i64(),
            &data,
            &delivery,
            private_metadata,
        )
    }

    #[test]
    fn the_fixtures_map_with_ids_from_the_nested_objects() {
        let Event::MembershipUpserted(joined) =
            map("organizationMembership.created.json", false).unwrap()
        else {
            panic!()
        };
        let membership = joined.membership.unwrap();
        assert_eq!(
            membership.organization_id,
            "org_2mQ4dH7sLkP0wQe9RtYuIo3AsDf"
        );
        assert_eq!(membership.user_id, "user_29w83sxmDNGwOuEthce5gg56FcC");
        assert_eq!(membership.permissions.len(), 3);
        assert_eq!(
            joined.meta.unwrap().occurred_at.unwrap().seconds,
            1_764_500_000
        );

        let Event::OrganizationUpserted(created) = map("organization.created.json", true).unwrap()
        else {
            panic!()
        };
        let organization = created.organization.unwrap();
        assert_eq!(organization.members_count, 0, "never taken from Clerk");
        assert!(organization.private_metadata.is_some());
        let Event::OrganizationUpserted(created) = map("organization.created.json", false).unwrap()
        else {
            panic!()
        };
        assert_eq!(created.organization.unwrap().private_metadata, None);

        let Event::OrganizationDeleted(deleted) = map("organization.deleted.json", false).unwrap()
        else {
            panic!()
        };
        assert_eq!(deleted.organization_id, "org_2mQ4dH7sLkP0wQe9RtYuIo3AsDf");
        assert!(matches!(
            map("organizationMembership.deleted.json", true).unwrap(),
            Event::MembershipDeleted(MembershipDeleted { membership: Some(m), .. })
                if m.private_metadata.is_none()
        ));
    }

    #[test]
    fn missing_ids_name_the_field() {
        let delivery = Delivery {
            id: "msg_1",
            timestamp: 1,
        };
        let data = serde_json::value::to_raw_value(&serde_json::json!({
            "id": "orgmem_1", "role": "org:admin", "updated_at": 1,
            "public_user_data": {"user_id": "user_1"}, "organization": {}
        }))
        .unwrap();
        let error = from_clerk(
            "organizationMembership.created",
            None,
            &data,
            &delivery,
            false,
        )
        .unwrap_err();
        assert!(
            matches!(error, Error::MissingField("data.organization.id")),
            "{error}"
        );
    }
}
