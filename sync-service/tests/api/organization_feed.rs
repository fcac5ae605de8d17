//! The organizations' change feed: `WatchOrganizations` and
//! `ListOrganizationChanges`. An organization always comes before its
//! memberships (one that arrives first joins the feed with its
//! organization, and an organization's change moves its memberships after
//! it); a deletion is followed by its memberships' deletions; a user's
//! deletion ends theirs; positions are the users' log's; snapshots, resume,
//! pruning and bad requests follow `WatchUsers`' rules.

use std::{collections::BTreeMap, time::Duration};

use clerk_sync_api::v1::{
    self, ListChangesRequest, ListOrganizationChangesRequest, ListOrganizationChangesResponse,
    OrganizationDeleted, WatchOrganizationsRequest, WatchOrganizationsResponse,
    organization_change::Change, watch_organizations_request::Start,
    watch_organizations_response::Event,
};
use tonic::{Code, Streaming};

use crate::{
    helpers::{Backend, TestApp, TestDb, meta, user},
    organizations::{Clients, apply, clients, joined, left, membership, organization, upserted},
};

crate::on_both_backends!(
    each_organization_comes_before_its_memberships,
    deletions_follow_their_organization_and_the_stream_goes_live,
    pruned_foreign_and_bad_requests_are_refused,
);

/// A client's copy of organizations and memberships, built only from the
/// feed, checking the feed's order rules as it goes.
#[derive(Debug, Default)]
pub(crate) struct OrganizationMirror {
    pub(crate) organizations: BTreeMap<String, v1::Organization>,
    pub(crate) memberships: BTreeMap<String, v1::Membership>,
    /// Position of the last change applied.
    pub(crate) position: i64,
    /// Every change, in order (deletions as `-id`).
    pub(crate) seen: Vec<String>,
}

impl OrganizationMirror {
    /// Applies one change: positions grow, and a live membership's
    /// organization is always known live by then.
    pub(crate) fn apply(&mut self, change: v1::OrganizationChange) {
        assert!(change.position > self.position, "positions grow");
        self.position = change.position;
        match change.change.expect("every change has a kind") {
            Change::Organization(organization) => {
                self.seen.push(organization.id.clone());
                self.organizations
                    .insert(organization.id.clone(), organization);
            }
            Change::OrganizationDeleted(deleted) => {
                self.seen.push(format!("-{}", deleted.id));
                self.organizations.remove(&deleted.id);
            }
            Change::Membership(membership) => {
                assert!(
                    self.organizations.contains_key(&membership.organization_id),
                    "membership {} came before its organization {}",
                    membership.id,
                    membership.organization_id
                );
                self.seen.push(membership.id.clone());
                self.memberships.insert(membership.id.clone(), membership);
            }
            Change::MembershipDeleted(deleted) => {
                self.seen.push(format!("-{}", deleted.id));
                self.memberships.remove(&deleted.id);
            }
        }
    }

    /// Applies every page of `ListOrganizationChanges` after the mirror's
    /// position.
    pub(crate) async fn catch_up(&mut self, c: &Clients) {
        loop {
            let page = list(c, self.position, 7).await.unwrap();
            for change in page.changes {
                self.apply(change);
            }
            self.position = self.position.max(page.next_after_position);
            if !page.has_more {
                return;
            }
        }
    }

    /// The live memberships of `organization_id`, by user.
    pub(crate) fn members_of(&self, organization_id: &str) -> BTreeMap<String, String> {
        self.memberships
            .values()
            .filter(|m| m.organization_id == organization_id)
            .map(|m| (m.user_id.clone(), m.role.clone()))
            .collect()
    }
}

pub(crate) async fn list(
    c: &Clients,
    after_position: i64,
    page_size: i32,
) -> Result<ListOrganizationChangesResponse, tonic::Status> {
    c.directory
        .clone()
        .list_organization_changes(ListOrganizationChangesRequest {
            after_position,
            page_size,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn watch(c: &Clients, start: Start) -> Streaming<WatchOrganizationsResponse> {
    c.directory
        .clone()
        .watch_organizations(WatchOrganizationsRequest { start: Some(start) })
        .await
        .unwrap()
        .into_inner()
}

/// The next message of `stream`, within 10 s.
async fn next(stream: &mut Streaming<WatchOrganizationsResponse>) -> WatchOrganizationsResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .expect("the stream stays up")
        .expect("the stream does not end")
}

/// Reads `stream` into `mirror` up to its caught_up marker; returns its
/// position.
async fn through_caught_up(
    stream: &mut Streaming<WatchOrganizationsResponse>,
    mirror: &mut OrganizationMirror,
) -> i64 {
    loop {
        let message = next(stream).await;
        match message.event.expect("every message has an event") {
            Event::Change(change) => {
                assert_eq!(change.position, message.position);
                mirror.apply(change);
            }
            Event::CaughtUp(_) => return message.position,
        }
    }
}

fn deleted_organization(event_id: &str, id: &str) -> v1::apply_organization_event_request::Event {
    v1::apply_organization_event_request::Event::OrganizationDeleted(OrganizationDeleted {
        meta: Some(meta(event_id, 5_000)),
        organization_id: id.into(),
    })
}

async fn each_organization_comes_before_its_memberships(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let c = clients(&app);

    // A membership before its organization: stored, not in the feed yet.
    let early = membership("orgmem_1", "org_a", "user_1", "org:member", &[], 100);
    apply(&c, joined("msg_m1", early)).await;
    let page = list(&c, 0, 100).await.unwrap();
    assert!(page.changes.is_empty(), "{:?}", page.changes);
    let before = page.next_after_position;

    // The organization arrives: it, then the membership that waited.
    apply(&c, upserted("msg_oa", organization("org_a", "A", 100))).await;
    let mut mirror = OrganizationMirror::default();
    mirror.catch_up(&c).await;
    assert_eq!(mirror.seen, ["org_a", "orgmem_1"]);
    assert_eq!(mirror.organizations["org_a"].members_count, 1);
    assert!(mirror.position > before);

    // A user's change takes the next position of the same log: positions
    // are shared, never reused.
    app.created("msg_u9", user("user_9", 100)).await;
    let second = membership("orgmem_2", "org_a", "user_2", "org:member", &[], 100);
    apply(&c, joined("msg_m2", second)).await;
    mirror.catch_up(&c).await;
    assert_eq!(mirror.seen, ["org_a", "orgmem_1", "orgmem_2"]);
    let users = app
        .directory
        .clone()
        .list_changes(ListChangesRequest {
            after_position: 0,
            page_size: 100,
        })
        .await
        .unwrap()
        .into_inner();
    let organization_positions: Vec<i64> = list(&c, 0, 100)
        .await
        .unwrap()
        .changes
        .iter()
        .map(|change| change.position)
        .collect();
    assert_eq!(users.changes.len(), 1);
    let user_position = users.changes[0].position;
    assert!(!organization_positions.contains(&user_position));
    assert!(organization_positions[1] < user_position && user_position < organization_positions[2]);

    // The organization changes: its memberships move after it, so a reader
    // starting from scratch still meets it first.
    apply(&c, upserted("msg_oa2", organization("org_a", "A2", 200))).await;
    let mut fresh = OrganizationMirror::default();
    fresh.catch_up(&c).await;
    assert_eq!(fresh.seen, ["org_a", "orgmem_1", "orgmem_2"]);
    assert_eq!(fresh.organizations["org_a"].name, "A2");
    let mut snapshot = OrganizationMirror::default();
    let mut stream = watch(&c, Start::Snapshot(())).await;
    let caught_up = through_caught_up(&mut stream, &mut snapshot).await;
    assert_eq!(snapshot.seen, ["org_a", "orgmem_1", "orgmem_2"]);
    assert_eq!(caught_up, fresh.position);

    // A membership's own change moves only it.
    let promoted = membership(
        "orgmem_1",
        "org_a",
        "user_1",
        "org:teacher",
        &["org:courses:publish"],
        300,
    );
    apply(&c, joined("msg_m1b", promoted)).await;
    let message = next(&mut stream).await;
    let Some(Event::Change(v1::OrganizationChange {
        change: Some(Change::Membership(moved)),
        ..
    })) = message.event
    else {
        panic!("expected the membership, got {message:?}");
    };
    assert_eq!(moved.role, "org:teacher");
    assert_eq!(moved.permissions, ["org:courses:publish"]);
    // An event that changes nothing (stale) writes nothing to the feed.
    let head = list(&c, 0, 100).await.unwrap().next_after_position;
    apply(&c, upserted("msg_oa0", organization("org_a", "A0", 50))).await;
    assert_eq!(list(&c, 0, 100).await.unwrap().next_after_position, head);
    drop(stream);
    app.stop().await;
}

async fn deletions_follow_their_organization_and_the_stream_goes_live(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let c = clients(&app);
    apply(&c, upserted("msg_ob", organization("org_b", "B", 100))).await;
    for (event, id, user_id) in [
        ("msg_m3", "orgmem_3", "user_3"),
        ("msg_m4", "orgmem_4", "user_4"),
        ("msg_m5", "orgmem_5", "user_5"),
    ] {
        let m = membership(id, "org_b", user_id, "org:member", &[], 100);
        apply(&c, joined(event, m)).await;
    }
    apply(&c, upserted("msg_oc", organization("org_c", "C", 100))).await;
    let m6 = membership("orgmem_6", "org_c", "user_6", "org:member", &[], 100);
    apply(&c, joined("msg_m6", m6)).await;

    let mut live = OrganizationMirror::default();
    let mut stream = watch(&c, Start::Now(())).await;
    let now = through_caught_up(&mut stream, &mut live).await;
    assert!(live.seen.is_empty(), "from now: nothing before");
    live.position = now;

    // A membership ends: one deletion. A user's deletion ends theirs.
    let m4 = membership("orgmem_4", "org_b", "user_4", "org:member", &[], 100);
    apply(&c, left("msg_m4del", m4)).await;
    app.deleted("msg_u6del", "user_6", 5_000).await;
    // The organization's deletion, then each of its memberships' still
    // open, at the very next positions.
    apply(&c, deleted_organization("msg_obdel", "org_b")).await;
    let mut positions = Vec::new();
    while live.seen.len() < 5 {
        let message = next(&mut stream).await;
        let Some(Event::Change(change)) = message.event else {
            panic!("only changes after caught_up: {message:?}");
        };
        positions.push(change.position);
        if let Some(Change::MembershipDeleted(deleted)) = &change.change {
            assert!(deleted.deleted_at.is_some());
            assert!(!deleted.organization_id.is_empty() && !deleted.user_id.is_empty());
        }
        live.apply(change);
    }
    assert_eq!(
        live.seen,
        ["-orgmem_4", "-orgmem_6", "-org_b", "-orgmem_3", "-orgmem_5"]
    );
    assert_eq!(positions[3], positions[2] + 1);
    assert_eq!(positions[4], positions[2] + 2);

    // Polling from the same start tells the same story, compacted.
    let mut polled = OrganizationMirror {
        position: now,
        ..OrganizationMirror::default()
    };
    polled.catch_up(&c).await;
    assert_eq!(polled.seen, live.seen);

    // A snapshot leaves deletions out: org_c alone, without members.
    let mut snapshot = OrganizationMirror::default();
    let mut from_scratch = watch(&c, Start::Snapshot(())).await;
    through_caught_up(&mut from_scratch, &mut snapshot).await;
    assert_eq!(snapshot.seen, ["org_c"]);
    assert_eq!(snapshot.organizations["org_c"].members_count, 0);
    // Resuming after a position replays what followed it.
    let mut resumed = OrganizationMirror {
        position: positions[1],
        ..OrganizationMirror::default()
    };
    let mut again = watch(&c, Start::AfterPosition(positions[1])).await;
    through_caught_up(&mut again, &mut resumed).await;
    assert_eq!(resumed.seen, ["-org_b", "-orgmem_3", "-orgmem_5"]);
    drop((stream, from_scratch, again));
    app.stop().await;
}

async fn pruned_foreign_and_bad_requests_are_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = clerk_sync_service::Config::with_database(&db.url);
    config.feed_deletion_retention_secs = 1;
    let app = TestApp::spawn_with(config).await;
    let c = clients(&app);
    apply(&c, upserted("msg_od", organization("org_d", "D", 100))).await;
    let before_deletion = list(&c, 0, 100).await.unwrap().next_after_position;
    apply(&c, deleted_organization("msg_oddel", "org_d")).await;

    // A reader that saw org_d and resumes from before its deletion would miss
    // it once pruned: refused, on both calls.
    let mut refusal = None;
    for _ in 0..100 {
        match list(&c, before_deletion, 10).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let refusal = refusal.expect("the deletion entry is pruned within 10 s");
    assert_eq!(refusal.code(), Code::FailedPrecondition);
    assert!(refusal.message().contains("restart from a snapshot"));
    let status = c
        .directory
        .clone()
        .watch_organizations(WatchOrganizationsRequest {
            start: Some(Start::AfterPosition(before_deletion)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let head = list(&c, 0, 10).await.unwrap().next_after_position;
    let foreign = list(&c, head + 1_000, 10).await.unwrap_err();
    assert_eq!(foreign.code(), Code::FailedPrecondition);
    assert!(foreign.message().contains("another database"));

    for (after_position, page_size, field) in [
        (-1, 10, "after_position"),
        (0, -1, "page_size"),
        (0, 1_001, "page_size"),
    ] {
        let status = list(&c, after_position, page_size).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{}", status.message());
    }
    for (start, field) in [
        (None, "start is required"),
        (Some(Start::AfterPosition(-5)), "after_position"),
    ] {
        let status = c
            .directory
            .clone()
            .watch_organizations(WatchOrganizationsRequest { start })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{}", status.message());
    }
    app.stop().await;
}
