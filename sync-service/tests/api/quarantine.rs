//! What the quarantine keeps, and for how long: no private metadata the
//! directory does not keep, nothing about a user once the user is deleted,
//! and no more than its size cap.

use clerk_sync_api::v1::{
    GetQuarantinedRequest, Outcome, QuarantineRequest,
    quarantine_service_client::QuarantineServiceClient,
};
use clerk_sync_service::{Config, store::Store};
use tonic::Code;

use crate::helpers::{Backend, TestApp, TestDb, ts, user};

crate::on_both_backends!(
    private_metadata_never_reaches_the_quarantine_unless_it_is_stored,
    a_deleted_users_quarantined_deliveries_are_erased,
    the_quarantine_refuses_deliveries_past_its_size_cap,
    old_records_and_records_of_deleted_users_are_pruned,
);

fn delivery(event_id: &str, user_id: &str, private: &str) -> QuarantineRequest {
    let body = serde_json::json!({
        "type": "user.updated",
        "data": {
            "id": user_id,
            "email_addresses": [{"email_address": "ada@example.com"}],
            "private_metadata": {"ssn": private},
        },
    });
    QuarantineRequest {
        event_id: event_id.into(),
        event_type: "user.updated".into(),
        reason: "cannot be carried".into(),
        body: body.to_string().into_bytes(),
        delivered_at: Some(ts(1_700_000_000_000)),
    }
}

async fn stored_body(app: &TestApp, event_id: &str) -> Result<String, tonic::Status> {
    let record = QuarantineServiceClient::new(app.channel.clone())
        .get_quarantined(GetQuarantinedRequest {
            event_id: event_id.into(),
        })
        .await?
        .into_inner()
        .event
        .unwrap();
    Ok(String::from_utf8(record.body).unwrap())
}

async fn private_metadata_never_reaches_the_quarantine_unless_it_is_stored(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let mut quarantine = QuarantineServiceClient::new(app.channel.clone());
    quarantine
        .quarantine(delivery("msg_q1", "user_1", "078-05-1120"))
        .await
        .unwrap();
    let body = stored_body(&app, "msg_q1").await.unwrap();
    assert!(!body.contains("078-05-1120"), "{body}");
    assert!(!body.contains("private_metadata"), "{body}");
    assert!(body.contains("ada@example.com"), "{body}");
    app.stop().await;

    // With private metadata stored, the body is kept as it came.
    let mut config = Config::with_database(&db.url);
    config.store_private_metadata = true;
    let app = TestApp::spawn_with(config).await;
    let request = delivery("msg_q2", "user_2", "078-05-1120");
    QuarantineServiceClient::new(app.channel.clone())
        .quarantine(request.clone())
        .await
        .unwrap();
    let body = stored_body(&app, "msg_q2").await.unwrap();
    assert_eq!(body.as_bytes(), request.body);
    app.stop().await;
}

async fn a_deleted_users_quarantined_deliveries_are_erased(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let mut quarantine = QuarantineServiceClient::new(app.channel.clone());
    for (event_id, user_id) in [
        ("msg_a1", "user_a"),
        ("msg_a2", "user_a"),
        ("msg_b1", "user_b"),
    ] {
        quarantine
            .quarantine(delivery(event_id, user_id, "x"))
            .await
            .unwrap();
    }
    app.created("msg_create_a", user("user_a", 100)).await;
    assert_eq!(
        app.deleted("msg_delete_a", "user_a", 200).await,
        Outcome::Applied
    );

    for event_id in ["msg_a1", "msg_a2"] {
        let gone = stored_body(&app, event_id).await.unwrap_err();
        assert_eq!(gone.code(), Code::NotFound, "{event_id}");
    }
    stored_body(&app, "msg_b1").await.unwrap();
    app.stop().await;
}

async fn the_quarantine_refuses_deliveries_past_its_size_cap(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = Config::with_database(&db.url);
    config.quarantine_max_bytes = 1024 * 1024;
    let app = TestApp::spawn_with(config).await;
    let mut quarantine = QuarantineServiceClient::new(app.channel.clone());
    let large = |event_id: &str| QuarantineRequest {
        body: vec![b'x'; 400 * 1024],
        ..delivery(event_id, "user_c", "x")
    };
    quarantine.quarantine(large("msg_c1")).await.unwrap();
    quarantine.quarantine(large("msg_c2")).await.unwrap();
    let refused = quarantine.quarantine(large("msg_c3")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("SYNC_QUARANTINE_MAX_BYTES"),
        "{refused:?}"
    );
    // Nothing of it was stored; a small one still fits.
    assert_eq!(
        stored_body(&app, "msg_c3").await.unwrap_err().code(),
        Code::NotFound
    );
    quarantine
        .quarantine(delivery("msg_c4", "user_c", "x"))
        .await
        .unwrap();
    app.stop().await;
}

async fn old_records_and_records_of_deleted_users_are_pruned(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    let mut quarantine = QuarantineServiceClient::new(app.channel.clone());
    quarantine
        .quarantine(delivery("msg_old", "user_live", "x"))
        .await
        .unwrap();
    app.created("msg_create_gone", user("user_gone", 100)).await;
    app.deleted("msg_delete_gone", "user_gone", 200).await;
    // Quarantined after the deletion (a late redelivery): the sweep takes it.
    quarantine
        .quarantine(delivery("msg_late", "user_gone", "x"))
        .await
        .unwrap();
    let store = Store::connect(&Config::with_database(&db.url).store_options())
        .await
        .unwrap();

    // Records seen since the cut-off stay, except those of deleted users.
    assert_eq!(store.prune_quarantine(0).await.unwrap(), 1);
    assert_eq!(
        stored_body(&app, "msg_late").await.unwrap_err().code(),
        Code::NotFound
    );
    stored_body(&app, "msg_old").await.unwrap();
    // Past their retention, records go.
    let later = clerk_sync_common::time::now_millis() + 1;
    assert_eq!(store.prune_quarantine(later).await.unwrap(), 1);
    assert_eq!(store.quarantine_size().await.unwrap(), (0, 0));
    app.stop().await;
}
