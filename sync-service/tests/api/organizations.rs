//! Organizations and memberships through `OrganizationSyncService` and
//! `OrganizationDirectoryService`: the users' rules (idempotent by event id,
//! last write wins, deletions final), Clerk's quirks (a deletion wins a tie,
//! a membership before its organization, members counted from memberships),
//! deletions that end memberships (an organization's, a user's), the
//! permission check's answers, paging, bad requests, roles and grpcurl.

use clerk_sync_api::v1::{
    self, ApplyOrganizationEventRequest, CheckPermissionRequest, DenialReason,
    GetMembershipRequest, GetOrganizationRequest, InvitationChanged, InvitationStatus,
    ListInvitationsRequest, ListMembershipsRequest, ListOrganizationsRequest, ListRolesRequest,
    MembershipDeleted, MembershipUpserted, OrganizationDeleted, OrganizationUpserted, Outcome,
    PermissionChanged, PermissionDeleted, RoleChanged, RoleDeleted,
    apply_organization_event_request::Event,
    organization_directory_service_client::OrganizationDirectoryServiceClient,
    organization_sync_service_client::OrganizationSyncServiceClient,
};
use clerk_sync_service::{Config, auth::TokenList};
use tonic::{Code, transport::Channel};

use crate::helpers::{Backend, TestApp, TestDb, authorized, connect_sql, grpcurl, meta, ts, user};

crate::on_both_backends!(
    organizations_and_memberships_follow_the_users_rules,
    deletions_end_memberships_and_the_permission_check_says_why,
    lists_are_paged_and_bad_requests_name_the_field,
    invitations_move_once_and_end_with_their_organization,
    roles_list_the_permissions_they_carry,
);

pub(crate) struct Clients {
    pub(crate) sync: OrganizationSyncServiceClient<Channel>,
    pub(crate) directory: OrganizationDirectoryServiceClient<Channel>,
}

pub(crate) fn clients(app: &TestApp) -> Clients {
    Clients {
        sync: OrganizationSyncServiceClient::new(app.channel.clone()),
        directory: OrganizationDirectoryServiceClient::new(app.channel.clone()),
    }
}

pub(crate) fn organization(id: &str, name: &str, updated_at: i64) -> v1::Organization {
    v1::Organization {
        id: id.into(),
        name: name.into(),
        slug: Some(format!("{id}-slug")),
        public_metadata: Some(prost_types::Struct::default()),
        private_metadata: Some(prost_types::Struct {
            fields: [(
                "billing_id".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("cus_1".into())),
                },
            )]
            .into(),
        }),
        created_at: Some(ts(1)),
        updated_at: Some(ts(updated_at)),
        ..v1::Organization::default()
    }
}

pub(crate) fn membership(
    id: &str,
    organization_id: &str,
    user_id: &str,
    role: &str,
    permissions: &[&str],
    updated_at: i64,
) -> v1::Membership {
    v1::Membership {
        id: id.into(),
        organization_id: organization_id.into(),
        user_id: user_id.into(),
        role: role.into(),
        role_name: role.trim_start_matches("org:").into(),
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
        public_user_data: Some(v1::PublicUserData {
            user_id: user_id.into(),
            first_name: Some("Ada".into()),
            identifier: Some(format!("{user_id}@example.com")),
            ..v1::PublicUserData::default()
        }),
        created_at: Some(ts(1)),
        updated_at: Some(ts(updated_at)),
        ..v1::Membership::default()
    }
}

pub(crate) fn upserted(event_id: &str, o: v1::Organization) -> Event {
    Event::OrganizationUpserted(OrganizationUpserted {
        meta: Some(meta(event_id, 1_000)),
        organization: Some(o),
    })
}

pub(crate) fn joined(event_id: &str, m: v1::Membership) -> Event {
    Event::MembershipUpserted(MembershipUpserted {
        meta: Some(meta(event_id, 1_000)),
        membership: Some(m),
    })
}

pub(crate) fn left(event_id: &str, m: v1::Membership) -> Event {
    Event::MembershipDeleted(MembershipDeleted {
        meta: Some(meta(event_id, 5_000)),
        membership: Some(m),
    })
}

pub(crate) async fn apply(clients: &Clients, event: Event) -> Outcome {
    clients
        .sync
        .clone()
        .apply_organization_event(ApplyOrganizationEventRequest { event: Some(event) })
        .await
        .unwrap()
        .into_inner()
        .outcome()
}

pub(crate) async fn get_organization(
    clients: &Clients,
    id: &str,
) -> Result<v1::Organization, tonic::Status> {
    clients
        .directory
        .clone()
        .get_organization(GetOrganizationRequest {
            id: id.into(),
            slug: String::new(),
        })
        .await
        .map(|r| r.into_inner().organization.unwrap())
}

pub(crate) async fn get_membership(
    clients: &Clients,
    organization_id: &str,
    user_id: &str,
) -> Result<v1::Membership, tonic::Status> {
    clients
        .directory
        .clone()
        .get_membership(GetMembershipRequest {
            organization_id: organization_id.into(),
            user_id: user_id.into(),
        })
        .await
        .map(|r| r.into_inner().membership.unwrap())
}

pub(crate) async fn check(
    clients: &Clients,
    user_id: &str,
    organization_id: &str,
    permission: &str,
) -> (bool, String, DenialReason) {
    let answer = clients
        .directory
        .clone()
        .check_permission(CheckPermissionRequest {
            user_id: user_id.into(),
            organization_id: organization_id.into(),
            permission: permission.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (answer.allowed, answer.role.clone(), answer.reason())
}

async fn organizations_and_memberships_follow_the_users_rules(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let c = clients(&app);

    // Idempotent by event id; last write wins by updated_at.
    assert_eq!(
        apply(&c, upserted("msg_o1", organization("org_1", "One", 100))).await,
        Outcome::Applied
    );
    assert_eq!(
        apply(&c, upserted("msg_o1", organization("org_1", "One", 100))).await,
        Outcome::Duplicate
    );
    assert_eq!(
        apply(&c, upserted("msg_o0", organization("org_1", "Zero", 90))).await,
        Outcome::Stale
    );
    assert_eq!(
        apply(&c, upserted("msg_o2", organization("org_1", "Two", 200))).await,
        Outcome::Applied
    );
    let by_slug = c
        .directory
        .clone()
        .get_organization(GetOrganizationRequest {
            id: String::new(),
            slug: "org_1-slug".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(
        (by_slug.id.as_str(), by_slug.name.as_str()),
        ("org_1", "Two")
    );
    assert_eq!(by_slug.members_count, 0);
    // Private metadata is not kept unless SYNC_STORE_PRIVATE_METADATA.
    assert_eq!(by_slug.private_metadata, None);
    let sql = connect_sql(&db.url).await;
    use sea_orm::ConnectionTrait as _;
    let row = sql
        .query_one_raw(sea_orm::Statement::from_string(
            sql.get_database_backend(),
            "SELECT COUNT(*) AS n FROM organizations WHERE private_metadata IS NOT NULL",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<i64>("", "n").unwrap(), 0);

    // A membership before its organization (and its user) is kept and served;
    // the organization, once it comes, counts it.
    let admin = ["org:sys_memberships:manage", "org:courses:publish"];
    let m = membership("orgmem_1", "org_2", "user_1", "org:admin", &admin, 100);
    assert_eq!(apply(&c, joined("msg_m1", m)).await, Outcome::Applied);
    assert_eq!(
        get_membership(&c, "org_2", "user_1").await.unwrap().role,
        "org:admin"
    );
    assert_eq!(
        get_organization(&c, "org_2").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        apply(
            &c,
            upserted("msg_o3", organization("org_2", "Riverside", 100))
        )
        .await,
        Outcome::Applied
    );
    assert_eq!(
        get_organization(&c, "org_2").await.unwrap().members_count,
        1
    );
    assert_eq!(
        check(&c, "user_1", "org_2", "org:courses:publish").await,
        (true, "org:admin".to_owned(), DenialReason::Unspecified)
    );

    // The role changes; an older snapshot does not bring it back.
    let member = membership(
        "orgmem_1",
        "org_2",
        "user_1",
        "org:member",
        &["org:courses:read"],
        200,
    );
    assert_eq!(
        apply(&c, joined("msg_m2", member.clone())).await,
        Outcome::Applied
    );
    let older = membership("orgmem_1", "org_2", "user_1", "org:admin", &admin, 150);
    assert_eq!(apply(&c, joined("msg_m1b", older)).await, Outcome::Stale);
    assert_eq!(
        check(&c, "user_1", "org_2", "org:courses:publish").await,
        (
            false,
            "org:member".to_owned(),
            DenialReason::RoleLacksPermission
        )
    );

    // organizationMembership.deleted carries updated_at unchanged: the
    // deletion wins the tie, and is final.
    assert_eq!(
        apply(&c, left("msg_m3", member.clone())).await,
        Outcome::Applied
    );
    assert_eq!(
        get_membership(&c, "org_2", "user_1")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let revived = membership("orgmem_1", "org_2", "user_1", "org:admin", &admin, 900);
    assert_eq!(apply(&c, joined("msg_m4", revived)).await, Outcome::Deleted);
    assert_eq!(
        get_organization(&c, "org_2").await.unwrap().members_count,
        0
    );
    assert_eq!(
        check(&c, "user_1", "org_2", "org:courses:read").await,
        (false, String::new(), DenialReason::NoMembership)
    );
    app.stop().await;
}

async fn deletions_end_memberships_and_the_permission_check_says_why(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let c = clients(&app);
    let perms = ["org:courses:read"];
    apply(&c, upserted("msg_o1", organization("org_1", "One", 100))).await;
    for (i, user_id) in ["user_1", "user_2", "user_3"].iter().enumerate() {
        app.created(&format!("msg_u{i}"), user(user_id, 100)).await;
        let m = membership(
            &format!("orgmem_{i}"),
            "org_1",
            user_id,
            "org:member",
            &perms,
            100,
        );
        assert_eq!(
            apply(&c, joined(&format!("msg_m{i}"), m)).await,
            Outcome::Applied
        );
    }
    assert_eq!(
        get_organization(&c, "org_1").await.unwrap().members_count,
        3
    );

    // A banned user is denied; a deleted one loses the membership.
    let mut banned = user("user_2", 200);
    banned.banned = true;
    app.updated("msg_ban", banned).await;
    assert_eq!(
        check(&c, "user_2", "org_1", "org:courses:read").await,
        (false, String::new(), DenialReason::UserBanned)
    );
    app.deleted("msg_del_u3", "user_3", 300).await;
    assert_eq!(
        check(&c, "user_3", "org_1", "org:courses:read").await,
        (false, String::new(), DenialReason::UserDeleted)
    );
    assert_eq!(
        get_membership(&c, "org_1", "user_3")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        get_organization(&c, "org_1").await.unwrap().members_count,
        2
    );
    // Its personal data is gone from the stored membership too.
    let sql = connect_sql(&db.url).await;
    use sea_orm::ConnectionTrait as _;
    let row = sql
        .query_one_raw(sea_orm::Statement::from_string(
            sql.get_database_backend(),
            "SELECT public_user_data, deleted_at FROM organization_memberships WHERE id = 'orgmem_2'",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<String>("", "public_user_data").unwrap(), "{}");
    assert!(
        row.try_get::<Option<i64>>("", "deleted_at")
            .unwrap()
            .is_some()
    );

    // Deleting the organization ends every membership; nothing revives it.
    let deleted = Event::OrganizationDeleted(OrganizationDeleted {
        meta: Some(meta("msg_odel", 5_000)),
        organization_id: "org_1".into(),
    });
    assert_eq!(apply(&c, deleted.clone()).await, Outcome::Applied);
    assert_eq!(apply(&c, deleted).await, Outcome::Duplicate);
    assert_eq!(
        get_organization(&c, "org_1").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        get_membership(&c, "org_1", "user_1")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        check(&c, "user_1", "org_1", "org:courses:read").await,
        (false, String::new(), DenialReason::NoMembership)
    );
    assert_eq!(
        apply(
            &c,
            upserted("msg_o_late", organization("org_1", "Back", 9_000))
        )
        .await,
        Outcome::Deleted
    );
    let late = membership("orgmem_9", "org_1", "user_1", "org:member", &perms, 9_000);
    assert_eq!(
        apply(&c, joined("msg_m_late", late)).await,
        Outcome::Deleted
    );
    let memberships = c
        .directory
        .clone()
        .list_memberships(ListMembershipsRequest {
            user_id: "user_1".into(),
            ..ListMembershipsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .memberships;
    assert!(memberships.is_empty(), "{memberships:?}");
    // An organization never seen can be deleted: the tombstone stops a late
    // creation.
    let unseen = Event::OrganizationDeleted(OrganizationDeleted {
        meta: Some(meta("msg_odel2", 5_000)),
        organization_id: "org_unseen".into(),
    });
    assert_eq!(apply(&c, unseen).await, Outcome::Applied);
    assert_eq!(
        apply(
            &c,
            upserted("msg_o_unseen", organization("org_unseen", "Late", 1))
        )
        .await,
        Outcome::Deleted
    );
    app.stop().await;
}

async fn lists_are_paged_and_bad_requests_name_the_field(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let c = clients(&app);
    for i in 0..5 {
        let id = format!("org_{i}");
        apply(
            &c,
            upserted(&format!("msg_o{i}"), organization(&id, "Org", 100)),
        )
        .await;
        for (j, role) in ["org:admin", "org:member", "org:member"].iter().enumerate() {
            let m = membership(
                &format!("orgmem_{i}_{j}"),
                &id,
                &format!("user_{j}"),
                role,
                &[],
                100,
            );
            apply(&c, joined(&format!("msg_m{i}_{j}"), m)).await;
        }
    }
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .directory
            .clone()
            .list_organizations(ListOrganizationsRequest {
                page_size: 2,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(
            page.organizations
                .iter()
                .map(|o| (o.id.clone(), o.members_count)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        ids,
        (0..5).map(|i| (format!("org_{i}"), 3)).collect::<Vec<_>>()
    );
    let members = |request: ListMembershipsRequest| {
        let mut directory = c.directory.clone();
        async move { directory.list_memberships(request).await }
    };
    let page = members(ListMembershipsRequest {
        user_id: "user_1".into(),
        role: "org:member".into(),
        page_size: 3,
        ..ListMembershipsRequest::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(page.memberships.len(), 3);
    assert!(
        page.memberships
            .iter()
            .all(|m| m.role == "org:member" && m.user_id == "user_1")
    );
    // The token only continues the listing it came from.
    let other = members(ListMembershipsRequest {
        user_id: "user_2".into(),
        page_token: page.next_page_token.clone(),
        ..ListMembershipsRequest::default()
    })
    .await
    .unwrap_err();
    assert_eq!(other.code(), Code::InvalidArgument);
    assert!(other.message().starts_with("page_token"), "{other:?}");
    let rest = members(ListMembershipsRequest {
        user_id: "user_1".into(),
        role: "org:member".into(),
        page_size: 3,
        page_token: page.next_page_token,
        ..ListMembershipsRequest::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        (rest.memberships.len(), rest.next_page_token.as_str()),
        (2, "")
    );

    // Bad events and queries are refused, naming the field; nothing is written.
    let mut nameless = organization("org_x", "", 100);
    nameless.name = String::new();
    let mut nul = organization("org_x", "a\0b", 100);
    nul.slug = None;
    let mut roleless = membership("orgmem_x", "org_0", "user_9", "", &[], 100);
    roleless.role = String::new();
    let bad_permission = membership(
        "orgmem_x",
        "org_0",
        "user_9",
        "org:admin",
        &["a\u{1}b"],
        100,
    );
    let cases = [
        (None, "event"),
        (
            Some(Event::OrganizationUpserted(OrganizationUpserted {
                meta: None,
                organization: Some(organization("org_x", "X", 1)),
            })),
            "organization_upserted.meta",
        ),
        (
            Some(upserted("msg_x1", nameless)),
            "organization_upserted.organization.name",
        ),
        (
            Some(upserted("msg_x2", nul)),
            "organization_upserted.organization.name",
        ),
        (
            Some(joined("msg_x3", roleless)),
            "membership_upserted.membership.role",
        ),
        (
            Some(joined("msg_x4", bad_permission)),
            "membership_upserted.membership.permissions[0]",
        ),
        (
            Some(Event::OrganizationDeleted(OrganizationDeleted {
                meta: Some(meta("msg_x5", 0)),
                organization_id: String::new(),
            })),
            "organization_deleted.organization_id",
        ),
    ];
    for (event, field) in cases {
        let status = c
            .sync
            .clone()
            .apply_organization_event(ApplyOrganizationEventRequest { event })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {status:?}");
    }
    assert_eq!(
        get_organization(&c, "org_x").await.unwrap_err().code(),
        Code::NotFound
    );
    let both = c
        .directory
        .clone()
        .get_organization(GetOrganizationRequest {
            id: "org_0".into(),
            slug: "org_0-slug".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);
    let neither = members(ListMembershipsRequest::default())
        .await
        .unwrap_err();
    assert!(
        neither.message().starts_with("organization_id"),
        "{neither:?}"
    );
    let no_permission = c
        .directory
        .clone()
        .check_permission(CheckPermissionRequest {
            user_id: "user_1".into(),
            organization_id: "org_0".into(),
            permission: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        no_permission.message().starts_with("permission"),
        "{no_permission:?}"
    );
    app.stop().await;
}

fn invitation(id: &str, status: InvitationStatus, updated_at: i64) -> Event {
    Event::InvitationChanged(InvitationChanged {
        meta: Some(meta(
            &format!("msg_{id}_{updated_at}_{}", status as i32),
            1_000,
        )),
        invitation: Some(v1::Invitation {
            id: id.into(),
            organization_id: "org_1".into(),
            email_address: format!("{id}@example.com"),
            role: "org:teacher".into(),
            role_name: "Teacher".into(),
            status: status.into(),
            updated_at: Some(ts(updated_at)),
            ..v1::Invitation::default()
        }),
    })
}

async fn invitations(
    clients: &Clients,
    status: InvitationStatus,
) -> Result<Vec<(String, InvitationStatus)>, tonic::Status> {
    Ok(clients
        .directory
        .clone()
        .list_invitations(ListInvitationsRequest {
            organization_id: "org_1".into(),
            status: status.into(),
            ..ListInvitationsRequest::default()
        })
        .await?
        .into_inner()
        .invitations
        .into_iter()
        .map(|i| (i.id.clone(), i.status()))
        .collect())
}

async fn invitations_move_once_and_end_with_their_organization(backend: Backend) {
    use InvitationStatus::{Accepted, Pending, Revoked, Unspecified};
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let c = clients(&app);
    apply(&c, upserted("msg_o1", organization("org_1", "One", 100))).await;
    assert_eq!(
        apply(&c, invitation("orginv_1", Pending, 100)).await,
        Outcome::Applied
    );
    assert_eq!(
        apply(&c, invitation("orginv_1", Accepted, 200)).await,
        Outcome::Applied
    );
    // A late creation does not bring it back to pending.
    assert_eq!(
        apply(&c, invitation("orginv_1", Pending, 100)).await,
        Outcome::Duplicate
    );
    assert_eq!(
        apply(&c, invitation("orginv_1", Pending, 150)).await,
        Outcome::Stale
    );
    // On a tie, a revocation wins over pending.
    assert_eq!(
        apply(&c, invitation("orginv_2", Pending, 300)).await,
        Outcome::Applied
    );
    assert_eq!(
        apply(&c, invitation("orginv_2", Revoked, 300)).await,
        Outcome::Applied
    );
    assert_eq!(
        apply(&c, invitation("orginv_3", Pending, 300)).await,
        Outcome::Applied
    );
    assert_eq!(
        invitations(&c, Unspecified).await.unwrap(),
        [
            ("orginv_1".to_owned(), Accepted),
            ("orginv_2".to_owned(), Revoked),
            ("orginv_3".to_owned(), Pending)
        ]
    );
    assert_eq!(
        invitations(&c, Pending).await.unwrap(),
        [("orginv_3".to_owned(), Pending)]
    );

    // A bad status is refused by name.
    let mut bad = invitation("orginv_4", Pending, 1);
    if let Event::InvitationChanged(changed) = &mut bad {
        changed.invitation.as_mut().unwrap().status = Unspecified.into();
    }
    let status = c
        .sync
        .clone()
        .apply_organization_event(ApplyOrganizationEventRequest { event: Some(bad) })
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .starts_with("invitation_changed.invitation.status"),
        "{status:?}"
    );

    // The organization's deletion ends them all, addresses erased.
    let deleted = Event::OrganizationDeleted(OrganizationDeleted {
        meta: Some(meta("msg_odel", 5_000)),
        organization_id: "org_1".into(),
    });
    assert_eq!(apply(&c, deleted).await, Outcome::Applied);
    assert!(invitations(&c, Unspecified).await.unwrap().is_empty());
    assert_eq!(
        apply(&c, invitation("orginv_5", Pending, 9_000)).await,
        Outcome::Deleted
    );
    let sql = connect_sql(&db.url).await;
    use sea_orm::ConnectionTrait as _;
    let row = sql
        .query_one_raw(sea_orm::Statement::from_string(
            sql.get_database_backend(),
            "SELECT COUNT(*) AS n FROM organization_invitations WHERE email_address <> ''",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<i64>("", "n").unwrap(), 0);
    app.stop().await;
}

fn permission(id: &str, key: &str, name: &str, updated_at: i64) -> v1::Permission {
    v1::Permission {
        id: id.into(),
        key: key.into(),
        name: name.into(),
        r#type: "custom".into(),
        updated_at: Some(ts(updated_at)),
        ..v1::Permission::default()
    }
}

fn role_changed(event_id: &str, updated_at: i64, permissions: Vec<v1::Permission>) -> Event {
    Event::RoleChanged(RoleChanged {
        meta: Some(meta(event_id, 1_000)),
        role: Some(v1::Role {
            id: "role_1".into(),
            key: "org:teacher".into(),
            name: "Teacher".into(),
            permissions,
            updated_at: Some(ts(updated_at)),
            ..v1::Role::default()
        }),
    })
}

/// Each live role's key and its permissions' (key, name).
async fn roles(clients: &Clients) -> Vec<(String, Vec<(String, String)>)> {
    clients
        .directory
        .clone()
        .list_roles(ListRolesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .roles
        .into_iter()
        .map(|role| {
            let permissions = role
                .permissions
                .into_iter()
                .map(|p| (p.key, p.name))
                .collect();
            (role.key, permissions)
        })
        .collect()
}

async fn roles_list_the_permissions_they_carry(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let c = clients(&app);
    let publish = permission("perm_1", "org:courses:publish", "Publish", 100);
    let read = permission("perm_2", "org:courses:read", "Read", 100);
    let teacher = role_changed("msg_r1", 100, vec![publish, read]);
    assert_eq!(apply(&c, teacher).await, Outcome::Applied);
    let named = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, n)| (k.to_string(), n.to_string()))
            .collect()
    };
    assert_eq!(
        roles(&c).await,
        [(
            "org:teacher".to_owned(),
            named(&[
                ("org:courses:publish", "Publish"),
                ("org:courses:read", "Read")
            ])
        )]
    );
    // A permission renamed later shows in its roles; an older role does not
    // bring the old name back.
    let renamed = Event::PermissionChanged(PermissionChanged {
        meta: Some(meta("msg_p1", 1_000)),
        permission: Some(permission(
            "perm_1",
            "org:courses:publish",
            "Publish courses",
            200,
        )),
    });
    assert_eq!(apply(&c, renamed).await, Outcome::Applied);
    let older = role_changed(
        "msg_r0",
        50,
        vec![permission("perm_1", "org:courses:publish", "Publish", 100)],
    );
    assert_eq!(apply(&c, older).await, Outcome::Stale);
    // A deleted permission leaves its roles.
    let removed = Event::PermissionDeleted(PermissionDeleted {
        meta: Some(meta("msg_p2", 1_000)),
        permission_id: "perm_2".into(),
    });
    assert_eq!(apply(&c, removed).await, Outcome::Applied);
    assert_eq!(
        roles(&c).await,
        [(
            "org:teacher".to_owned(),
            named(&[("org:courses:publish", "Publish courses")])
        )]
    );
    // A deleted role is gone for good.
    let deleted = Event::RoleDeleted(RoleDeleted {
        meta: Some(meta("msg_r2", 5_000)),
        role_id: "role_1".into(),
    });
    assert_eq!(apply(&c, deleted).await, Outcome::Applied);
    assert!(roles(&c).await.is_empty());
    assert_eq!(
        apply(&c, role_changed("msg_r3", 9_000, vec![])).await,
        Outcome::Deleted
    );

    // Bad roles are refused by name.
    let mut keyless = role_changed("msg_r4", 1, vec![]);
    if let Event::RoleChanged(changed) = &mut keyless {
        changed.role.as_mut().unwrap().key = String::new();
    }
    let idless = role_changed("msg_r5", 1, vec![permission("", "org:x", "X", 1)]);
    for (event, field) in [
        (keyless, "role_changed.role.key"),
        (idless, "role_changed.role.permissions[0].id"),
    ] {
        let status = c
            .sync
            .clone()
            .apply_organization_event(ApplyOrganizationEventRequest { event: Some(event) })
            .await
            .unwrap_err();
        assert!(status.message().starts_with(field), "{field}: {status:?}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_query_organizations_writers_apply_them_and_grpcurl_reaches_them() {
    const WRITE_TOKEN: &str = "write-token-4Jq8Z1x0Lw6p";
    const READ_TOKEN: &str = "read-token-Hs72kQmzP01c";
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = Config::with_database(&db.url);
    config.write_tokens = TokenList::parse(WRITE_TOKEN).unwrap();
    config.read_tokens = TokenList::parse(READ_TOKEN).unwrap();
    config.store_private_metadata = true;
    let app = TestApp::spawn_with(config).await;
    let mut c = clients(&app);
    let request = |token| {
        authorized(
            ApplyOrganizationEventRequest {
                event: Some(upserted("msg_o1", organization("org_1", "One", 100))),
            },
            token,
        )
    };
    let refused = c
        .sync
        .apply_organization_event(request(Some(READ_TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    c.sync
        .apply_organization_event(request(Some(WRITE_TOKEN)))
        .await
        .unwrap();
    let get = GetOrganizationRequest {
        id: "org_1".into(),
        slug: String::new(),
    };
    let status = c
        .directory
        .get_organization(authorized(get.clone(), None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let found = c
        .directory
        .get_organization(authorized(get, Some(READ_TOKEN)))
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    // Stored, and served to a caller with a token.
    assert!(
        found
            .private_metadata
            .unwrap()
            .fields
            .contains_key("billing_id")
    );

    let address = app.address.to_string();
    let authorization = format!("authorization: Bearer {READ_TOKEN}");
    let output = grpcurl(&[
        "-plaintext",
        "-H",
        &authorization,
        "-d",
        r#"{"slug": "org_1-slug"}"#,
        &address,
        "clerk.sync.v1.OrganizationDirectoryService/GetOrganization",
    ])
    .await;
    assert!(output.status.success(), "{}", output.stderr);
    let answer: serde_json::Value = serde_json::from_str(&output.stdout).unwrap();
    assert_eq!(answer["organization"]["name"], "One");
    app.stop().await;
}
