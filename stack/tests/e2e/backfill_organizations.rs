//! `clerk-sync-gateway backfill` copying organizations, memberships,
//! invitations and roles from a fake Clerk into the real sync-service, read
//! back with `OrganizationDirectoryService`: a first fill (through a 429 and
//! a 500), a rerun of duplicates, an organization deleted between two offset
//! pages, reconcile of what Clerk lost (and not of what changed since), a
//! dry run, and an instance with organizations turned off.

use clerk_sync_api::v1::{
    GetMembershipRequest, GetOrganizationRequest, InvitationStatus, ListInvitationsRequest,
    ListMembershipsRequest, ListOrganizationsRequest, ListRolesRequest, Membership, Organization,
    Role, organization_directory_service_client::OrganizationDirectoryServiceClient,
};
use clerk_sync_gateway::backfill::{
    BackfillError, ObjectCounts, OrganizationsStatus, Summary, clerk_api::OrgKind,
};
use http::StatusCode;
use serde_json::{Value, json};
use tonic::{Code, transport::Channel};

use crate::backfill::{EPOCH_MS, backfill_command, clerk_users, run_backfill};
use crate::fake_clerk::{
    FakeClerk, Fault, Orgs, clerk_invitation, clerk_membership, clerk_organization, clerk_role,
};
use crate::helpers::{Backend, Stack};

crate::on_both_backends!(
    organizations_are_copied_and_a_rerun_is_all_duplicates,
    an_organization_deleted_between_pages_loses_no_other,
    reconcile_tombstones_what_clerk_lost_and_not_what_changed_since,
    a_dry_run_writes_no_organization,
    an_instance_without_organizations_is_reported_and_its_users_copied,
);

const ORGANIZATIONS: usize = 8;

fn org_id(i: usize) -> String {
    format!("org_{i:02}")
}

fn user_id(i: usize) -> String {
    format!("user_{i:05}")
}

/// Eight organizations; org_00 has two members, every other one; three
/// roles; four invitations (one expired).
fn clerk_orgs() -> Orgs {
    let at = |i: usize| EPOCH_MS + i as i64 * 1000;
    let mut orgs = Orgs::default();
    for i in 0..ORGANIZATIONS {
        orgs.organizations
            .push(clerk_organization(&org_id(i), at(i), at(i) + 500));
        orgs.memberships.push(clerk_membership(
            &format!("orgmem_{i:02}"),
            &org_id(i),
            &user_id(i % 6),
            if i == 0 { "org:admin" } else { "org:member" },
            at(i),
            at(i) + 600,
        ));
    }
    orgs.memberships.push(clerk_membership(
        "orgmem_teacher",
        &org_id(0),
        &user_id(1),
        "org:teacher",
        at(20),
        at(20) + 1,
    ));
    orgs.roles = vec![
        clerk_role(
            "role_admin",
            "org:admin",
            &["org:sys_memberships:manage"],
            at(0),
            at(0),
        ),
        clerk_role(
            "role_member",
            "org:member",
            &["org:sys_memberships:read"],
            at(1),
            at(1),
        ),
        clerk_role(
            "role_teacher",
            "org:teacher",
            &["org:courses:publish", "org:courses:read"],
            at(2),
            at(2),
        ),
    ];
    orgs.invitations = vec![
        clerk_invitation("orginv_0", &org_id(0), "pending", at(30), at(30)),
        clerk_invitation("orginv_1", &org_id(0), "accepted", at(31), at(32)),
        clerk_invitation("orginv_2", &org_id(1), "revoked", at(33), at(34)),
        clerk_invitation("orginv_3", &org_id(2), "expired", at(35), at(35)),
    ];
    orgs
}

async fn start(backend: Backend) -> (Stack, FakeClerk) {
    let stack = Stack::start(backend).await;
    let clerk = FakeClerk::start(clerk_users(6)).await;
    clerk.change_orgs(|orgs| *orgs = clerk_orgs());
    (stack, clerk)
}

async fn pass(stack: &Stack, clerk: &FakeClerk, extra: &[&str]) -> Result<Summary, BackfillError> {
    let mut args = vec!["--page-size", "3"];
    args.extend_from_slice(extra);
    run_backfill(&backfill_command(stack, clerk, &args)).await
}

async fn directory(stack: &Stack) -> OrganizationDirectoryServiceClient<Channel> {
    OrganizationDirectoryServiceClient::connect(format!("http://{}", stack.sync_address))
        .await
        .unwrap()
}

async fn organization(stack: &Stack, id: &str) -> Result<Organization, Code> {
    directory(stack)
        .await
        .get_organization(GetOrganizationRequest {
            id: id.into(),
            ..GetOrganizationRequest::default()
        })
        .await
        .map(|answer| answer.into_inner().organization.unwrap())
        .map_err(|status| status.code())
}

async fn all_organizations(stack: &Stack) -> Vec<String> {
    let answer = directory(stack)
        .await
        .list_organizations(ListOrganizationsRequest {
            page_size: 1000,
            ..ListOrganizationsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    answer.organizations.into_iter().map(|o| o.id).collect()
}

async fn memberships(stack: &Stack, request: ListMembershipsRequest) -> Vec<Membership> {
    directory(stack)
        .await
        .list_memberships(request)
        .await
        .unwrap()
        .into_inner()
        .memberships
}

async fn membership(stack: &Stack, organization: &str, user: &str) -> Result<Membership, Code> {
    directory(stack)
        .await
        .get_membership(GetMembershipRequest {
            organization_id: organization.into(),
            user_id: user.into(),
        })
        .await
        .map(|answer| answer.into_inner().membership.unwrap())
        .map_err(|status| status.code())
}

async fn roles(stack: &Stack) -> Vec<Role> {
    directory(stack)
        .await
        .list_roles(ListRolesRequest {
            page_size: 1000,
            ..ListRolesRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .roles
}

/// Counts of a first fill of `fetched` objects into an empty directory,
/// `skipped` of them expired.
fn first_fill(fetched: u64, expired: u64) -> ObjectCounts {
    ObjectCounts {
        fetched,
        applied: fetched - expired,
        repaired_missed: fetched - expired,
        expired,
        ..ObjectCounts::default()
    }
}

async fn deliver(stack: &Stack, msg_id: &str, event_type: &str, data: &Value) {
    let body = json!({
        "type": event_type,
        "object": "event",
        "timestamp": data["updated_at"],
        "data": data,
    });
    let answer = stack.deliver(msg_id, body.to_string().as_bytes()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn organizations_are_copied_and_a_rerun_is_all_duplicates(backend: Backend) {
    let (stack, clerk) = start(backend).await;
    // The second and fourth organization list requests: a 429, then a 500.
    clerk.fail_org_list(2, Fault::Throttle(1));
    clerk.fail_org_list(4, Fault::ServerError);

    let summary = pass(&stack, &clerk, &[]).await.unwrap();
    let orgs = &summary.organizations;
    assert_eq!(orgs.status, OrganizationsStatus::Listed, "{summary}");
    assert_eq!(orgs.organizations, first_fill(8, 0), "{summary}");
    assert_eq!(orgs.memberships, first_fill(9, 0), "{summary}");
    assert_eq!(orgs.invitations, first_fill(4, 1), "{summary}");
    assert_eq!(orgs.roles, first_fill(3, 0), "{summary}");
    assert!(orgs.rejections.is_empty(), "{summary}");
    assert_eq!(summary.applied, 6, "the users too: {summary}");
    let served = clerk.org_lists_served();
    assert_eq!(
        served.iter().filter(|p| *p == "/v1/organizations").count(),
        // Pages of 3 overlapping by 1 over 8: offsets 0, 2, 4, 6; one
        // throttled and one failed request asked again.
        5,
        "{served:?}"
    );
    let text = summary.to_string();
    assert!(
        text.contains("; organizations: fetched 8, applied 8 (8 missing, 0 older locally)"),
        "{text}"
    );
    assert!(text.contains("skipped 1 expired"), "{text}");

    // The directory answers like after the webhooks: members counted from
    // memberships, never Clerk's snapshot (99); private metadata not kept.
    let first = organization(&stack, "org_00").await.unwrap();
    assert_eq!(first.members_count, 2);
    assert_eq!(first.name, format!("Org org_00 v{}", EPOCH_MS + 500));
    assert_eq!(first.private_metadata, None);
    assert_eq!(all_organizations(&stack).await.len(), ORGANIZATIONS);
    let members = memberships(
        &stack,
        ListMembershipsRequest {
            organization_id: "org_00".into(),
            ..ListMembershipsRequest::default()
        },
    )
    .await;
    let roster: Vec<(&str, &str)> = members
        .iter()
        .map(|m| (m.user_id.as_str(), m.role.as_str()))
        .collect();
    assert_eq!(
        roster,
        [("user_00000", "org:admin"), ("user_00001", "org:teacher")]
    );
    let invitations = directory(&stack)
        .await
        .list_invitations(ListInvitationsRequest {
            organization_id: "org_00".into(),
            ..ListInvitationsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .invitations;
    let statuses: Vec<(&str, InvitationStatus)> = invitations
        .iter()
        .map(|i| (i.id.as_str(), i.status()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("orginv_0", InvitationStatus::Pending),
            ("orginv_1", InvitationStatus::Accepted)
        ]
    );
    let roles = roles(&stack).await;
    let teacher = roles.iter().find(|r| r.key == "org:teacher").unwrap();
    let mut permissions: Vec<&str> = teacher.permissions.iter().map(|p| p.key.as_str()).collect();
    permissions.sort();
    assert_eq!(permissions, ["org:courses:publish", "org:courses:read"]);
    assert_eq!(roles.len(), 3);

    // A rerun changes nothing: every object is a duplicate.
    clerk.reset_org_requests();
    let rerun = pass(&stack, &clerk, &[]).await.unwrap();
    for (kind, unchanged) in [
        (OrgKind::Organizations, 8),
        (OrgKind::Memberships, 9),
        (OrgKind::Invitations, 3),
        (OrgKind::Roles, 3),
    ] {
        let counts = rerun.organizations.counts(kind);
        assert_eq!(
            (counts.applied, counts.unchanged),
            (0, unchanged),
            "{kind}: {rerun}"
        );
    }
    stack.stop().await;
}

async fn an_organization_deleted_between_pages_loses_no_other(backend: Backend) {
    let (stack, clerk) = start(backend).await;
    pass(&stack, &clerk, &[]).await.unwrap();
    clerk.reset_org_requests();

    // Roles take requests 1 and 2 (3 roles, pages of 3 overlapping by 1);
    // organizations start at 3. Before their second page (offset 2), the
    // first two go: org_02.. move two places forward, and a listing that
    // trusted the offset would skip org_03.
    clerk.before_org_list(
        4,
        Box::new(|orgs: &mut Orgs| {
            orgs.delete_organization("org_00");
            orgs.delete_organization("org_01");
        }),
    );
    let summary = pass(&stack, &clerk, &["--reconcile", "--force"])
        .await
        .unwrap();
    let orgs = &summary.organizations;
    assert_eq!(orgs.organizations.fetched, 8, "{summary}");
    assert_eq!(orgs.organizations.unchanged, 8, "{summary}");
    // Nothing was missed, so no organization was asked for by id, and the
    // two deleted during the listing were listed: not tombstoned yet.
    assert_eq!(orgs.organizations.missed_by_listing, 0, "{summary}");
    assert_eq!(orgs.organizations.tombstoned, 0, "{summary}");
    let lookups = clerk.org_lookups();
    assert!(
        lookups
            .iter()
            .all(|id| !id.starts_with("org_0") || id.contains('/')),
        "{lookups:?}"
    );
    // Their memberships were gone by the time memberships were listed:
    // Clerk confirms them gone (no such organization), so they end.
    assert_eq!(orgs.memberships.tombstoned, 3, "{summary}");
    assert_eq!(
        organization(&stack, "org_00").await.unwrap().members_count,
        0
    );

    // The next pass tombstones the two organizations.
    clerk.reset_org_requests();
    let next = pass(&stack, &clerk, &["--reconcile", "--force"])
        .await
        .unwrap();
    assert_eq!(next.organizations.organizations.tombstoned, 2, "{next}");
    let mut expected: Vec<String> = (2..ORGANIZATIONS).map(org_id).collect();
    expected.sort();
    assert_eq!(all_organizations(&stack).await, expected);
    stack.stop().await;
}

async fn reconcile_tombstones_what_clerk_lost_and_not_what_changed_since(backend: Backend) {
    let (stack, clerk) = start(backend).await;
    pass(&stack, &clerk, &[]).await.unwrap();

    // Webhooks bring an organization and a membership Clerk's listing will
    // not contain, both changed just now.
    let now = now_ms();
    deliver(
        &stack,
        "msg_fresh_org",
        "organization.created",
        &clerk_organization("org_fresh", now, now),
    )
    .await;
    deliver(
        &stack,
        "msg_fresh_member",
        "organizationMembership.created",
        &clerk_membership(
            "orgmem_fresh",
            "org_03",
            "user_00005",
            "org:member",
            now,
            now,
        ),
    )
    .await;
    // Clerk loses an organization (and its membership), org_00's teacher
    // membership and the teacher role; their webhooks never came.
    clerk.change_orgs(|orgs| {
        orgs.delete_organization("org_01");
        orgs.memberships.retain(|m| m["id"] != "orgmem_teacher");
        orgs.roles.retain(|r| r["id"] != "role_teacher");
    });

    // One of three roles is over the default share (5 %): nothing changes.
    clerk.reset_org_requests();
    let error = pass(&stack, &clerk, &["--reconcile"]).await.unwrap_err();
    assert!(
        matches!(
            error,
            BackfillError::TooManyOrganizationTombstones {
                kind: OrgKind::Organizations,
                candidates: 1,
                live: 9,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("--force"), "{error}");
    assert!(organization(&stack, "org_01").await.is_ok());
    assert!(
        clerk.org_lookups().is_empty(),
        "asked nothing before the check"
    );

    clerk.reset_org_requests();
    let summary = pass(
        &stack,
        &clerk,
        &["--reconcile", "--max-tombstone-share", "50"],
    )
    .await
    .unwrap();
    let orgs = &summary.organizations;
    assert_eq!(
        (
            orgs.organizations.tombstoned,
            orgs.memberships.tombstoned,
            orgs.roles.tombstoned
        ),
        (1, 1, 1),
        "{summary}"
    );
    let mut lookups = clerk.org_lookups();
    lookups.sort();
    assert_eq!(lookups, ["org_00/user_00001", "org_01", "role_teacher"]);

    assert_eq!(
        organization(&stack, "org_01").await.unwrap_err(),
        Code::NotFound
    );
    // The organization's membership ended with it: user 1 is left with
    // org_07 only (its teacher membership in org_00 is gone too).
    let of_user_1: Vec<String> = memberships(
        &stack,
        ListMembershipsRequest {
            user_id: "user_00001".into(),
            ..ListMembershipsRequest::default()
        },
    )
    .await
    .into_iter()
    .map(|m| m.organization_id)
    .collect();
    assert_eq!(of_user_1, ["org_07"]);
    assert_eq!(
        membership(&stack, "org_00", "user_00001")
            .await
            .unwrap_err(),
        Code::NotFound
    );
    assert_eq!(
        organization(&stack, "org_00").await.unwrap().members_count,
        1
    );
    assert!(roles(&stack).await.iter().all(|r| r.key != "org:teacher"));
    // What changed after the listing started stays.
    assert!(organization(&stack, "org_fresh").await.is_ok());
    assert!(membership(&stack, "org_03", "user_00005").await.is_ok());
    stack.stop().await;
}

async fn a_dry_run_writes_no_organization(backend: Backend) {
    let (stack, clerk) = start(backend).await;
    let summary = pass(&stack, &clerk, &["--dry-run"]).await.unwrap();
    assert_eq!(
        summary.organizations.organizations,
        first_fill(8, 0),
        "{summary}"
    );
    assert_eq!(
        summary.organizations.memberships,
        first_fill(9, 0),
        "{summary}"
    );
    assert_eq!(summary.organizations.roles, first_fill(3, 0), "{summary}");
    assert!(
        summary
            .to_string()
            .contains("; organizations: fetched 8, would apply 8"),
        "{summary}"
    );
    assert!(all_organizations(&stack).await.is_empty());
    assert!(roles(&stack).await.is_empty());
    assert!(
        memberships(
            &stack,
            ListMembershipsRequest {
                user_id: "user_00000".into(),
                ..ListMembershipsRequest::default()
            }
        )
        .await
        .is_empty()
    );
    stack.stop().await;
}

async fn an_instance_without_organizations_is_reported_and_its_users_copied(backend: Backend) {
    let (stack, clerk) = start(backend).await;
    // The directory holds an organization from before; Clerk now refuses
    // every organization endpoint.
    deliver(
        &stack,
        "msg_old_org",
        "organization.created",
        &clerk_organization("org_old", EPOCH_MS, EPOCH_MS),
    )
    .await;
    clerk.disable_organizations();

    let summary = pass(&stack, &clerk, &["--reconcile", "--force"])
        .await
        .unwrap();
    assert!(summary.complete && summary.applied == 6, "{summary}");
    assert!(
        matches!(&summary.organizations.status, OrganizationsStatus::Disabled(why) if why.contains("403")),
        "{summary}"
    );
    let text = summary.to_string();
    assert!(
        text.contains("organizations: not enabled on this Clerk instance"),
        "{text}"
    );
    // Not a deletion: the organization stays.
    assert!(organization(&stack, "org_old").await.is_ok());
    assert_eq!(clerk.org_lists_served().len(), 0, "refused before any list");
    stack.stop().await;
}
