//! Organizations for the `CheckPermission` and `GetMembership` figures:
//! `seed-organizations` puts the sampled users into organizations through
//! `OrganizationSyncService` (every other one a teacher who may publish, the
//! rest members who may not: both answers are measured), and
//! [`known_memberships`] finds who is in which organization for `query`.

use clerk_sync_api::v1::{
    self, ApplyOrganizationEventRequest, EventMeta, ListMembershipsRequest,
    ListOrganizationsRequest, ListUsersRequest, MembershipUpserted, OrganizationUpserted,
    apply_organization_event_request::Event,
    organization_directory_service_client::OrganizationDirectoryServiceClient,
    organization_sync_service_client::OrganizationSyncServiceClient,
    user_directory_service_client::UserDirectoryServiceClient,
};
use tonic::transport::Channel;

use crate::{cli::SeedArgs, target::GrpcTarget};

/// The permission teachers carry and members lack.
pub const PERMISSION: &str = "org:courses:publish";

/// `seed-organizations`: `--organizations` organizations and one membership
/// for each of up to `--sample` users (the directory's first, by id).
pub async fn seed(args: &SeedArgs) -> anyhow::Result<()> {
    let target = GrpcTarget::new(args.sync_service_url.clone(), args.token.as_deref())
        .map_err(anyhow::Error::msg)?;
    let channel = target.connect().await?;
    let users = first_users(&target, channel.clone(), args.sample).await?;
    let mut sync = OrganizationSyncServiceClient::new(channel);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let at = prost_types::Timestamp {
        seconds: now / 1000,
        nanos: 0,
    };
    let meta = |kind: &str, id: &str| {
        Some(EventMeta {
            event_id: format!("msg_bench_{kind}_{id}_{now}"),
            occurred_at: Some(at),
        })
    };
    let organizations: Vec<String> = (0..args.organizations)
        .map(|n| format!("org_bench_{n}"))
        .collect();
    let mut apply = async |event: Event| {
        sync.apply_organization_event(
            target.request(ApplyOrganizationEventRequest { event: Some(event) }),
        )
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "ApplyOrganizationEvent failed: {:?}: {}",
                s.code(),
                s.message()
            )
        })
    };
    for id in &organizations {
        apply(Event::OrganizationUpserted(OrganizationUpserted {
            meta: meta("org", id),
            organization: Some(v1::Organization {
                id: id.clone(),
                name: format!("Bench {id}"),
                public_metadata: Some(prost_types::Struct::default()),
                created_at: Some(at),
                updated_at: Some(at),
                ..v1::Organization::default()
            }),
        }))
        .await?;
    }
    for (n, user_id) in users.iter().enumerate() {
        let organization_id = &organizations[n % organizations.len()];
        let teacher = n % 2 == 0;
        let id = format!("orgmem_bench_{n}");
        apply(Event::MembershipUpserted(MembershipUpserted {
            meta: meta("membership", &id),
            membership: Some(v1::Membership {
                id,
                organization_id: organization_id.clone(),
                user_id: user_id.clone(),
                role: if teacher { "org:teacher" } else { "org:member" }.into(),
                role_name: if teacher { "Teacher" } else { "Member" }.into(),
                permissions: if teacher {
                    vec![PERMISSION.into()]
                } else {
                    Vec::new()
                },
                public_metadata: Some(prost_types::Struct::default()),
                public_user_data: Some(v1::PublicUserData {
                    user_id: user_id.clone(),
                    ..v1::PublicUserData::default()
                }),
                created_at: Some(at),
                updated_at: Some(at),
                ..v1::Membership::default()
            }),
        }))
        .await?;
    }
    println!(
        "seed: {} organizations, {} memberships",
        organizations.len(),
        users.len()
    );
    println!(
        "RESULT seed organizations={} memberships={}",
        organizations.len(),
        users.len()
    );
    Ok(())
}

/// The ids of the directory's first `count` live users.
async fn first_users(
    target: &GrpcTarget,
    channel: Channel,
    count: u32,
) -> anyhow::Result<Vec<String>> {
    let mut client = UserDirectoryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut ids = Vec::new();
    let mut page_token = String::new();
    while ids.len() < count as usize {
        let page = client
            .list_users(target.request(ListUsersRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            }))
            .await
            .map_err(|s| anyhow::anyhow!("ListUsers failed: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        ids.extend(page.users.into_iter().map(|user| user.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    ids.truncate(count as usize);
    if ids.is_empty() {
        anyhow::bail!("the directory has no users to seed: run `clerk-sync-bench ingest` first");
    }
    Ok(ids)
}

/// Up to `count` (user id, organization id) memberships the directory
/// holds, organization by organization.
pub async fn known_memberships(
    target: &GrpcTarget,
    channel: Channel,
    count: u32,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut client =
        OrganizationDirectoryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let failed = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    let mut known = Vec::new();
    let mut organizations_token = String::new();
    'organizations: loop {
        let page = client
            .list_organizations(target.request(ListOrganizationsRequest {
                page_size: 1000,
                page_token: organizations_token,
            }))
            .await
            .map_err(failed)?
            .into_inner();
        for organization in page.organizations {
            let mut page_token = String::new();
            loop {
                let members = client
                    .list_memberships(target.request(ListMembershipsRequest {
                        organization_id: organization.id.clone(),
                        page_size: 1000,
                        page_token,
                        ..Default::default()
                    }))
                    .await
                    .map_err(failed)?
                    .into_inner();
                for membership in members.memberships {
                    known.push((membership.user_id, membership.organization_id));
                    if known.len() >= count as usize {
                        break 'organizations;
                    }
                }
                if members.next_page_token.is_empty() {
                    break;
                }
                page_token = members.next_page_token;
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        organizations_token = page.next_page_token;
    }
    if known.is_empty() {
        anyhow::bail!(
            "the directory has no memberships to query: run `clerk-sync-bench seed-organizations` first"
        );
    }
    Ok(known)
}
