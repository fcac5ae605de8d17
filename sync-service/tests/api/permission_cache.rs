//! `CheckPermission` and `GetMembership` from memory: with a warm cache they
//! are answered without the database (a user's memberships are cached
//! whole, so "no membership" too), every apply that returned on the same
//! replica is seen by the next check (a promotion, a membership's end, its
//! organization's or its user's deletion), and another replica's commits
//! within the feed's poll interval.

use std::time::{Duration, Instant};

use clerk_sync_api::v1::{DenialReason, OrganizationDeleted, apply_organization_event_request};
use clerk_sync_service::Config;
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, TestDb, meta, user},
    organizations::{
        Clients, apply, check, clients, get_membership, joined, left, membership, organization,
        upserted,
    },
};

crate::on_both_backends!(permission_checks_are_served_from_memory_and_see_every_write_at_once);

const MEMBERSHIP_HITS: &str =
    r#"clerk_sync_service_user_cache_requests_total{key="memberships",result="hit"}"#;
const PUBLISH: &str = "org:courses:publish";

fn member(
    id: &str,
    organization_id: &str,
    teacher: bool,
    updated_at: i64,
) -> clerk_sync_api::v1::Membership {
    if teacher {
        membership(
            id,
            organization_id,
            "user_1",
            "org:teacher",
            &[PUBLISH],
            updated_at,
        )
    } else {
        membership(id, organization_id, "user_1", "org:member", &[], updated_at)
    }
}

fn organization_deleted(event_id: &str, id: &str) -> apply_organization_event_request::Event {
    apply_organization_event_request::Event::OrganizationDeleted(OrganizationDeleted {
        meta: Some(meta(event_id, 5_000)),
        organization_id: id.into(),
    })
}

/// Lets the cache follower pass this replica's own writes (it forgets the
/// keys they touched), then warms `user_1`'s entries with two checks.
async fn warm(c: &Clients, organization_id: &str) {
    let poll = Duration::from_millis(Config::with_database("").feed_poll_interval_ms);
    tokio::time::sleep(poll * 3).await;
    for _ in 0..2 {
        check(c, "user_1", organization_id, PUBLISH).await;
    }
}

async fn permission_checks_are_served_from_memory_and_see_every_write_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let c = clients(&app);
    app.created("msg_u1", user("user_1", 100)).await;
    apply(&c, upserted("msg_o1", organization("org_1", "One", 100))).await;
    apply(
        &c,
        joined("msg_m1", member("orgmem_1", "org_1", false, 100)),
    )
    .await;

    // Warm: answered from memory, "no membership" elsewhere too.
    warm(&c, "org_1").await;
    let before = app.scrape().await;
    assert_eq!(
        check(&c, "user_1", "org_1", PUBLISH).await,
        (
            false,
            "org:member".into(),
            DenialReason::RoleLacksPermission
        )
    );
    assert_eq!(
        check(&c, "user_1", "org_other", PUBLISH).await.2,
        DenialReason::NoMembership
    );
    assert_eq!(
        get_membership(&c, "org_1", "user_1").await.unwrap().role,
        "org:member"
    );
    assert!(app.scrape().await.delta(&before, MEMBERSHIP_HITS) >= 3.0);

    // Each write below is seen by the very next check.
    apply(
        &c,
        joined("msg_m1b", member("orgmem_1", "org_1", true, 200)),
    )
    .await;
    assert_eq!(
        check(&c, "user_1", "org_1", PUBLISH).await,
        (true, "org:teacher".into(), DenialReason::Unspecified)
    );
    apply(
        &c,
        left("msg_m1del", member("orgmem_1", "org_1", true, 200)),
    )
    .await;
    assert_eq!(
        check(&c, "user_1", "org_1", PUBLISH).await.2,
        DenialReason::NoMembership
    );
    let status = get_membership(&c, "org_1", "user_1").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    apply(&c, joined("msg_m2", member("orgmem_2", "org_1", true, 300))).await;
    warm(&c, "org_1").await;
    assert!(check(&c, "user_1", "org_1", PUBLISH).await.0);
    apply(&c, organization_deleted("msg_o1del", "org_1")).await;
    assert_eq!(
        check(&c, "user_1", "org_1", PUBLISH).await.2,
        DenialReason::NoMembership
    );

    apply(&c, upserted("msg_o2", organization("org_2", "Two", 100))).await;
    apply(&c, joined("msg_m3", member("orgmem_3", "org_2", true, 100))).await;
    warm(&c, "org_2").await;
    assert!(check(&c, "user_1", "org_2", PUBLISH).await.0);
    app.deleted("msg_u1del", "user_1", 5_000).await;
    assert_eq!(
        check(&c, "user_1", "org_2", PUBLISH).await.2,
        DenialReason::UserDeleted
    );
    let status = get_membership(&c, "org_2", "user_1").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replicas_membership_changes_reach_a_warm_cache_within_the_poll_interval() {
    const POLL_MS: u64 = 100;
    let db = TestDb::new(Backend::Postgres).await;
    let replica = || {
        let mut config = Config::with_database(&db.url);
        config.feed_poll_interval_ms = POLL_MS;
        TestApp::spawn_with(config)
    };
    let (reader, writer) = (replica().await, replica().await);
    let (r, w) = (clients(&reader), clients(&writer));
    writer.created("msg_u1", user("user_1", 100)).await;
    apply(&w, upserted("msg_o1", organization("org_1", "One", 100))).await;
    apply(
        &w,
        joined("msg_m1", member("orgmem_1", "org_1", false, 100)),
    )
    .await;
    warm(&r, "org_1").await;
    assert!(!check(&r, "user_1", "org_1", PUBLISH).await.0);

    // Waits until `reader` answers `reason`; returns how long that took.
    async fn until(r: &Clients, reason: DenialReason) -> Duration {
        let start = Instant::now();
        while check(r, "user_1", "org_1", PUBLISH).await.2 != reason {
            assert!(start.elapsed() < Duration::from_secs(10), "never seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }
    apply(
        &w,
        joined("msg_m1b", member("orgmem_1", "org_1", true, 200)),
    )
    .await;
    let promotion = until(&r, DenialReason::Unspecified).await;
    warm(&r, "org_1").await;
    apply(&w, organization_deleted("msg_o1del", "org_1")).await;
    let deletion = until(&r, DenialReason::NoMembership).await;

    println!(
        "another replica's changes seen after {promotion:?} (promotion), {deletion:?} (organization deleted)"
    );
    let bound = Duration::from_millis(POLL_MS + 1_500);
    assert!(
        promotion < bound && deletion < bound,
        "{promotion:?} {deletion:?}"
    );
    reader.stop().await;
    writer.stop().await;
}
