//! Property: any permutation, with any duplicates, of any set of creates,
//! updates and deletes ends in the state in-order delivery gives: of users,
//! and of an organization with its members' users and memberships (whose
//! change feed must also end there, in its order). Checked on SQLite and on
//! PostgreSQL with two sync-service instances taking the deliveries
//! concurrently. Case counts stay modest so the suite stays fast.

use futures::future::join_all;
use proptest::{
    prelude::*,
    test_runner::{Config as ProptestConfig, TestCaseError, TestRunner},
};
use tonic::Code;

use clerk_sync_api::v1::{
    self, CheckPermissionRequest, DenialReason, GetOrganizationRequest, ListMembershipsRequest,
    OrganizationDeleted,
};

use crate::{
    helpers::{Backend, TestApp, TestDb, meta, user},
    organization_feed::OrganizationMirror,
    organizations::{Clients, apply, clients, joined, left, membership, organization, upserted},
};

/// One delivery: which user, and a version (`Some`) or a delete (`None`).
#[derive(Clone, Debug)]
struct Delivery {
    event_id: String,
    user: usize,
    version: Option<i64>,
}

/// The history of up to three users (one to four versions each, maybe a
/// delete), every event delivered one to three times, in any order.
fn histories() -> impl Strategy<Value = (Vec<(u8, bool)>, Vec<Delivery>)> {
    prop::collection::vec((1u8..=4, any::<bool>()), 1..=3).prop_flat_map(|users| {
        let mut events = Vec::new();
        for (u, &(versions, deleted)) in users.iter().enumerate() {
            for v in 1..=i64::from(versions) {
                events.push((u, Some(v * 10)));
            }
            if deleted {
                events.push((u, None));
            }
        }
        let copies = prop::collection::vec(1usize..=3, events.len());
        (Just(users), Just(events), copies).prop_flat_map(|(users, events, copies)| {
            let mut deliveries = Vec::new();
            for (index, ((user, version), copies)) in events.iter().zip(copies).enumerate() {
                for _ in 0..copies {
                    deliveries.push(Delivery {
                        event_id: format!("e{index}"),
                        user: *user,
                        version: *version,
                    });
                }
            }
            (Just(users), Just(deliveries).prop_shuffle())
        })
    })
}

async fn deliver(app: &TestApp, case: u32, delivery: &Delivery) {
    let user_id = format!("user_{case}_{}", delivery.user);
    let event_id = format!("msg_{case}_{}_{}", delivery.user, delivery.event_id);
    match delivery.version {
        Some(10) => app.created(&event_id, user(&user_id, 10)).await,
        Some(version) => app.updated(&event_id, user(&user_id, version)).await,
        None => app.deleted(&event_id, &user_id, 1_000).await,
    };
}

/// Runs `cases` histories against `apps` (deliveries alternate between them,
/// all at once) and checks each user ends as in-order delivery leaves it.
async fn check(apps: &[&TestApp], cases: u32) {
    run_cases(cases, histories(), async |case, (users, deliveries)| {
        join_all(
            deliveries
                .iter()
                .enumerate()
                .map(|(i, delivery)| deliver(apps[i % apps.len()], case, delivery)),
        )
        .await;
        for (u, &(versions, deleted)) in users.iter().enumerate() {
            let id = format!("user_{case}_{u}");
            let stored = apps[0].get(&id).await;
            if deleted {
                prop_assert_eq!(stored.map_err(|s| s.code()), Err(Code::NotFound));
            } else {
                let expected = user(&id, i64::from(versions) * 10);
                prop_assert_eq!(stored.map_err(|s| s.code()), Ok(expected));
            }
        }
        Ok(())
    });
}

/// Runs `cases` cases drawn from `strategy` through the async `check`, on
/// the test's runtime, each with its number: ids made from it are fresh, so
/// one database serves every case. Panics with the failing (shrunk) case.
fn run_cases<S: Strategy>(
    cases: u32,
    strategy: S,
    check: impl AsyncFn(u32, S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let handle = tokio::runtime::Handle::current();
    let counter = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&strategy, |value| {
        let case = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::block_in_place(|| handle.block_on(check(case, value)))
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_permutation_with_duplicates_ends_in_order_on_sqlite() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db.url).await;
    check(&[&app], 24).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_permutation_with_duplicates_ends_in_order_on_postgres_with_two_instances() {
    let db = TestDb::new(Backend::Postgres).await;
    let first = TestApp::spawn(&db.url).await;
    let second = TestApp::spawn(&db.url).await;
    check(&[&first, &second], 24).await;
}

/// What one member of an organization's history does: its user may be
/// deleted, its membership promoted (to teacher, who may publish) and left.
#[derive(Clone, Copy, Debug)]
struct Member {
    user_deleted: bool,
    promoted: bool,
    left: bool,
}

/// An organization's history: created, maybe updated, maybe deleted; one to
/// three members.
#[derive(Clone, Debug)]
struct OrganizationHistory {
    updated: bool,
    deleted: bool,
    members: Vec<Member>,
}

/// One event of such a history.
#[derive(Clone, Copy, Debug)]
enum OrganizationStep {
    Created,
    Updated,
    Deleted,
    UserCreated(usize),
    UserDeleted(usize),
    Joined(usize),
    Promoted(usize),
    Left(usize),
}

const PUBLISH: &str = "org:courses:publish";

impl OrganizationHistory {
    fn steps(&self) -> Vec<OrganizationStep> {
        use OrganizationStep::*;
        let mut steps = vec![Created];
        steps.extend(self.updated.then_some(Updated));
        for (m, member) in self.members.iter().enumerate() {
            steps.extend([UserCreated(m), Joined(m)]);
            steps.extend(member.promoted.then_some(Promoted(m)));
            steps.extend(member.left.then_some(Left(m)));
            steps.extend(member.user_deleted.then_some(UserDeleted(m)));
        }
        steps.extend(self.deleted.then_some(Deleted));
        steps
    }
}

/// Histories, every event delivered one to three times, in any order.
fn organization_histories()
-> impl Strategy<Value = (OrganizationHistory, Vec<(usize, OrganizationStep)>)> {
    let member =
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(user_deleted, promoted, left)| {
            Member {
                user_deleted,
                promoted,
                left,
            }
        });
    (
        any::<bool>(),
        prop::bool::weighted(0.3),
        prop::collection::vec(member, 1..=3),
    )
        .prop_map(|(updated, deleted, members)| OrganizationHistory {
            updated,
            deleted,
            members,
        })
        .prop_flat_map(|history| {
            let steps = history.steps();
            let copies = prop::collection::vec(1usize..=3, steps.len());
            (Just(history), Just(steps), copies).prop_flat_map(|(history, steps, copies)| {
                let deliveries: Vec<(usize, OrganizationStep)> = steps
                    .into_iter()
                    .enumerate()
                    .zip(copies)
                    .flat_map(|(step, copies)| std::iter::repeat_n(step, copies))
                    .collect();
                (Just(history), Just(deliveries).prop_shuffle())
            })
        })
}

/// Case `case`'s ids: its organization, and member `m`'s user and membership.
fn organization_id(case: u32) -> String {
    format!("org_{case}")
}

fn member_ids(case: u32, m: usize) -> (String, String) {
    (format!("user_{case}_{m}"), format!("orgmem_{case}_{m}"))
}

async fn deliver_step(
    app: &TestApp,
    case: u32,
    history: &OrganizationHistory,
    (index, step): (usize, OrganizationStep),
) {
    use OrganizationStep::*;
    let c = clients(app);
    let event_id = format!("msg_{case}_{index}");
    let org = organization_id(case);
    let member = |m: usize, promoted: bool| {
        let (user_id, id) = member_ids(case, m);
        if promoted {
            membership(&id, &org, &user_id, "org:teacher", &[PUBLISH], 20)
        } else {
            membership(&id, &org, &user_id, "org:member", &[], 10)
        }
    };
    match step {
        Created => apply(&c, upserted(&event_id, organization(&org, "v10", 10))).await,
        Updated => apply(&c, upserted(&event_id, organization(&org, "v20", 20))).await,
        Deleted => {
            let deleted = OrganizationDeleted {
                meta: Some(meta(&event_id, 5_000)),
                organization_id: org.clone(),
            };
            let event = v1::apply_organization_event_request::Event::OrganizationDeleted(deleted);
            apply(&c, event).await
        }
        UserCreated(m) => {
            app.created(&event_id, user(&member_ids(case, m).0, 10))
                .await
        }
        UserDeleted(m) => app.deleted(&event_id, &member_ids(case, m).0, 5_000).await,
        Joined(m) => apply(&c, joined(&event_id, member(m, false))).await,
        Promoted(m) => apply(&c, joined(&event_id, member(m, true))).await,
        // Clerk's deletion carries the membership as it last was.
        Left(m) => {
            let last = member(m, history.members[m].promoted);
            apply(&c, left(&event_id, last)).await
        }
    };
}

/// Checks case `case` ended as in-order delivery of `history` leaves it, in
/// the directory and in `mirror` (the feed, caught up).
async fn check_organization(
    c: &Clients,
    case: u32,
    history: &OrganizationHistory,
    mirror: &OrganizationMirror,
) -> Result<(), TestCaseError> {
    let org = organization_id(case);
    let stored = c
        .directory
        .clone()
        .get_organization(GetOrganizationRequest {
            id: org.clone(),
            slug: String::new(),
        })
        .await;
    // Who is a member in the end, with which role.
    let mut members = std::collections::BTreeMap::new();
    for (m, member) in history.members.iter().enumerate() {
        let (user_id, _) = member_ids(case, m);
        let live = !history.deleted && !member.user_deleted && !member.left;
        let role = if member.promoted {
            "org:teacher"
        } else {
            "org:member"
        };
        if live {
            members.insert(user_id.clone(), role.to_owned());
        }
        let answer = c
            .directory
            .clone()
            .check_permission(CheckPermissionRequest {
                user_id: user_id.clone(),
                organization_id: org.clone(),
                permission: PUBLISH.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let reason = if member.user_deleted {
            DenialReason::UserDeleted
        } else if !live {
            DenialReason::NoMembership
        } else if !member.promoted {
            DenialReason::RoleLacksPermission
        } else {
            DenialReason::Unspecified
        };
        prop_assert_eq!(
            (answer.allowed, answer.reason()),
            (live && member.promoted, reason)
        );
    }
    if history.deleted {
        prop_assert_eq!(
            stored.map(|_| ()).map_err(|s| s.code()),
            Err(Code::NotFound)
        );
        prop_assert!(!mirror.organizations.contains_key(&org));
    } else {
        let stored = stored.unwrap().into_inner().organization.unwrap();
        let name = if history.updated { "v20" } else { "v10" };
        prop_assert_eq!(&stored.name, name);
        prop_assert_eq!(stored.members_count as usize, members.len());
        let listed: std::collections::BTreeMap<String, String> = c
            .directory
            .clone()
            .list_memberships(ListMembershipsRequest {
                organization_id: org.clone(),
                page_size: 10,
                ..ListMembershipsRequest::default()
            })
            .await
            .unwrap()
            .into_inner()
            .memberships
            .into_iter()
            .map(|m| (m.user_id, m.role))
            .collect();
        prop_assert_eq!(&listed, &members);
        prop_assert_eq!(
            mirror.organizations.get(&org).map(|o| o.name.as_str()),
            Some(name)
        );
    }
    prop_assert_eq!(mirror.members_of(&org), members);
    Ok(())
}

/// Runs `cases` organization histories against `apps` (deliveries
/// alternate between them, all at once), then checks each against the
/// directory and the organizations' feed.
async fn check_organizations(apps: &[&TestApp], cases: u32) {
    let c = clients(apps[0]);
    let mirror = tokio::sync::Mutex::new(OrganizationMirror::default());
    run_cases(
        cases,
        organization_histories(),
        async |case, (history, deliveries)| {
            join_all(deliveries.iter().enumerate().map(|(i, &delivery)| {
                deliver_step(apps[i % apps.len()], case, &history, delivery)
            }))
            .await;
            // The feed, read on from where the last case left it.
            let mut mirror = mirror.lock().await;
            mirror.catch_up(&c).await;
            check_organization(&c, case, &history, &mirror).await
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organizations_end_in_order_from_any_permutation_on_sqlite() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db.url).await;
    check_organizations(&[&app], 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organizations_end_in_order_from_any_permutation_on_postgres_with_two_instances() {
    let db = TestDb::new(Backend::Postgres).await;
    let first = TestApp::spawn(&db.url).await;
    let second = TestApp::spawn(&db.url).await;
    check_organizations(&[&first, &second], 16).await;
}
