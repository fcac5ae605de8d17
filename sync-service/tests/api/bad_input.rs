//! Every malformed request gets INVALID_ARGUMENT naming the field, and
//! changes nothing.

use clerk_sync_api::v1::{
    self, BatchGetUsersRequest, FindUserByEmailRequest, GetUserRequest, ListUsersRequest,
};
use tonic::Code;

use crate::helpers::{Backend, TestApp, TestDb, meta, user};

crate::on_both_backends!(
    malformed_events_are_rejected_and_write_nothing,
    malformed_queries_are_rejected,
);

async fn malformed_events_are_rejected_and_write_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let mut sync = app.sync.clone();
    let created =
        |meta: Option<v1::EventMeta>, user: Option<v1::User>| v1::ApplyUserCreatedRequest {
            event: Some(v1::UserCreated { meta, user }),
        };
    let mut no_version = user("user_1", 100);
    no_version.updated_at = None;
    let mut no_id = user("", 100);
    no_id.id = String::new();

    let cases = vec![
        (
            v1::ApplyUserCreatedRequest { event: None },
            "event is required",
        ),
        (
            created(None, Some(user("user_1", 100))),
            "event.meta is required",
        ),
        (
            created(Some(meta("", 0)), Some(user("user_1", 100))),
            "event.meta.event_id must not be empty",
        ),
        (
            created(Some(meta("msg_1", 0)), None),
            "event.user is required",
        ),
        (
            created(Some(meta("msg_1", 0)), Some(no_id)),
            "event.user.id must not be empty",
        ),
        (
            created(Some(meta("msg_1", 0)), Some(no_version)),
            "event.user.updated_at is required",
        ),
    ];
    for (request, message) in cases {
        let status = sync.apply_user_created(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{message}");
        assert_eq!(status.message(), message);
    }

    let status = sync
        .apply_user_deleted(v1::ApplyUserDeletedRequest {
            event: Some(v1::UserDeleted {
                meta: Some(v1::EventMeta {
                    event_id: "msg_2".into(),
                    occurred_at: None,
                }),
                user_id: "user_1".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "event.meta.occurred_at is required");
    let status = sync
        .apply_user_deleted(v1::ApplyUserDeletedRequest {
            event: Some(v1::UserDeleted {
                meta: Some(meta("msg_3", 5)),
                user_id: " ".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.message(), "event.user_id must not be empty");

    // Nothing was written, not even the event ids: a corrected retry applies.
    assert_eq!(app.get("user_1").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        app.created("msg_1", user("user_1", 100)).await,
        v1::Outcome::Applied
    );
    assert_eq!(
        app.deleted("msg_2", "user_1", 200).await,
        v1::Outcome::Applied
    );
}

async fn malformed_queries_are_rejected(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let mut directory = app.directory.clone();

    invalid(
        directory
            .get_user(GetUserRequest { id: String::new() })
            .await,
        "id must not be empty",
    );
    invalid(
        directory
            .batch_get_users(BatchGetUsersRequest { ids: vec![] })
            .await,
        "ids must not be empty",
    );
    invalid(
        directory
            .batch_get_users(BatchGetUsersRequest {
                ids: (0..101).map(|n| format!("user_{n}")).collect(),
            })
            .await,
        "ids must hold at most 100 ids, got 101",
    );
    invalid(
        directory
            .batch_get_users(BatchGetUsersRequest {
                ids: vec!["user_1".into(), String::new()],
            })
            .await,
        "ids[1] must not be empty",
    );
    invalid(
        directory
            .find_user_by_email(FindUserByEmailRequest {
                email_address: " ".into(),
            })
            .await,
        "email_address must not be empty",
    );
    let list = |page_size: i32, page_token: &str| ListUsersRequest {
        page_size,
        page_token: page_token.into(),
        changed_since: None,
        ..Default::default()
    };
    invalid(
        directory.list_users(list(-1, "")).await,
        "page_size must not be negative",
    );
    invalid(
        directory.list_users(list(1001, "")).await,
        "page_size must be at most 1000",
    );
    invalid(
        directory.list_users(list(10, "not-a-token")).await,
        "page_token is not a token this server issued",
    );
    // The largest page is fine.
    directory.list_users(list(1000, "")).await.unwrap();
}

fn invalid<T>(result: Result<T, tonic::Status>, message: &str) {
    let Err(status) = result else {
        panic!("expected INVALID_ARGUMENT: {message}")
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{message}");
    assert_eq!(status.message(), message);
}
