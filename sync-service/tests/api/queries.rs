//! The directory queries: batch get, find by email, and paging.

use clerk_sync_api::v1::{BatchGetUsersRequest, FindUserByEmailRequest, ListUsersRequest};
use tonic::Code;

use crate::helpers::{Backend, TestApp, TestDatabase, TestDb, email, ts, user};

crate::on_both_backends!(
    batch_get_keeps_request_order_and_reports_missing_ids,
    find_by_email_matches_any_address_case_insensitively,
    list_pages_through_every_live_user_once,
    list_filters_on_changed_since,
);

async fn batch_get_keeps_request_order_and_reports_missing_ids(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    for id in ["user_a", "user_b", "user_c"] {
        app.created(&format!("msg_{id}"), user(id, 100)).await;
    }
    app.deleted("msg_del_c", "user_c", 200).await;

    let response = app
        .directory
        .clone()
        .batch_get_users(BatchGetUsersRequest {
            ids: ["user_b", "user_nope", "user_a", "user_b", "user_c"]
                .map(String::from)
                .to_vec(),
        })
        .await
        .unwrap()
        .into_inner();

    let ids: Vec<_> = response.users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["user_b", "user_a"]);
    assert_eq!(response.missing_ids, ["user_nope", "user_c"]);
}

pub(crate) async fn find_by_email_matches_any_address_case_insensitively(db: impl TestDatabase) {
    let db = db.open().await;
    let app = TestApp::spawn(&db.url).await;
    app.created("msg_1", user("user_1", 100)).await;
    let find = |email: &str| {
        let mut directory = app.directory.clone();
        let email_address = email.to_owned();
        async move {
            directory
                .find_user_by_email(FindUserByEmailRequest { email_address })
                .await
                .map(|r| r.into_inner().user.unwrap().id)
        }
    };

    assert_eq!(find("USER_1@example.com").await.unwrap(), "user_1");
    assert_eq!(find("Other.User_1@Example.Net").await.unwrap(), "user_1");

    // An update that drops an address drops it from the index too.
    let mut changed = user("user_1", 200);
    changed.email_addresses = vec![email("user_1@Example.COM", true, true)];
    app.updated("msg_2", changed).await;
    let status = find("other.user_1@example.net").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // The searched address is personal data: the answer does not repeat it.
    assert_eq!(status.message(), "no user has this verified email address");
    assert_eq!(find("user_1@example.com").await.unwrap(), "user_1");
}

async fn list_pages_through_every_live_user_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    // Several users share an updated_at, so the id breaks ties across pages.
    for n in 0..8 {
        let id = format!("user_{n}");
        app.created(&format!("msg_{n}"), user(&id, 100 + (n % 3)))
            .await;
    }
    app.deleted("msg_del", "user_4", 500).await;

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .directory
            .clone()
            .list_users(ListUsersRequest {
                page_size: 3,
                page_token: page_token.clone(),
                changed_since: None,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.users.len() <= 3);
        seen.extend(page.users.into_iter().map(|u| {
            let updated = u.updated_at.unwrap();
            (
                updated.seconds * 1000 + i64::from(updated.nanos / 1_000_000),
                u.id,
            )
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }

    assert_eq!(pages, 3);
    let mut expected: Vec<(i64, String)> = (0..8)
        .filter(|n| *n != 4)
        .map(|n| (100 + (n % 3), format!("user_{n}")))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
}

async fn list_filters_on_changed_since(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    app.created("msg_old", user("user_old", 1_000)).await;
    app.created("msg_edge", user("user_edge", 2_000)).await;
    app.created("msg_new", user("user_new", 3_000)).await;

    let first = app
        .directory
        .clone()
        .list_users(ListUsersRequest {
            page_size: 1,
            page_token: String::new(),
            changed_since: Some(ts(2_000)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.users[0].id, "user_edge");
    let second = app
        .directory
        .clone()
        .list_users(ListUsersRequest {
            page_size: 1,
            page_token: first.next_page_token.clone(),
            changed_since: Some(ts(2_000)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.users[0].id, "user_new");
    assert!(second.next_page_token.is_empty());

    // The token belongs to its filter.
    let status = app
        .directory
        .clone()
        .list_users(ListUsersRequest {
            page_size: 1,
            page_token: first.next_page_token,
            changed_since: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "page_token was issued for different changed_since or banned filters"
    );
}
