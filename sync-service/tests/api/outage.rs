//! The database going away under a running sync-service: callers get
//! UNAVAILABLE (retryable, no internals), health turns NOT_SERVING, and both
//! recover once the database is back, with nothing lost.

use clerk_sync_api::v1::{self, Outcome};
use clerk_sync_service::Config;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::helpers::{Backend, TcpProxy, TestApp, TestDb, meta, user};

async fn health(app: &TestApp) -> i32 {
    let mut client = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_unavailable_then_recovers() {
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let mut config = Config::with_database(proxy.route(&db.url));
    config.database_timeout_ms = 300;
    let app = TestApp::spawn_with(config).await;
    assert_eq!(
        app.created("msg_1", user("user_1", 100)).await,
        Outcome::Applied
    );

    proxy.cut().await;

    let status = app
        .sync
        .clone()
        .apply_user_updated(v1::ApplyUserUpdatedRequest {
            event: Some(v1::UserUpdated {
                meta: Some(meta("msg_2", 0)),
                user: Some(user("user_1", 200)),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "database unavailable");
    let status = app.get("user_1").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let mut serving = health(&app).await;
    for _ in 0..100 {
        if serving == ServingStatus::NotServing as i32 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        serving = health(&app).await;
    }
    assert_eq!(serving, ServingStatus::NotServing as i32);

    proxy.restore().await;
    app.wait_until_serving().await;

    // The failed event was not recorded: its retry applies.
    assert_eq!(
        app.updated("msg_2", user("user_1", 200)).await,
        Outcome::Applied
    );
    assert_eq!(app.get("user_1").await.unwrap(), user("user_1", 200));
}
