//! What change-feed watchers may hold: so many per server and per token,
//! and a bounded buffer each, after which a client that does not read is
//! told where to resume. Run on SQLite: the limits are the server's, not the
//! database's.

use std::time::Duration;

use clerk_sync_api::v1::{
    WatchUsersRequest, WatchUsersResponse,
    user_directory_service_client::UserDirectoryServiceClient, watch_users_request::Start,
    watch_users_response::Event,
};
use clerk_sync_service::{Config, auth::TokenList};
use tonic::{Code, Status, Streaming, transport::Endpoint};

use crate::helpers::{Backend, TestApp, TestDb, authorized, user};

const WATCHERS: &str = "clerk_sync_service_change_feed_watchers";
const READ_TOKEN: &str = "read-token-Hs72kQmzP01c";
const OTHER_READ_TOKEN: &str = "read-token-other-0000001";
const WRITE_TOKEN: &str = "write-token-4Jq8Z1x0Lw6p";

async fn start_watch(
    app: &TestApp,
    start: Start,
    token: Option<&str>,
) -> Result<Streaming<WatchUsersResponse>, Status> {
    let request = authorized(WatchUsersRequest { start: Some(start) }, token);
    Ok(app
        .directory
        .clone()
        .watch_users(request)
        .await?
        .into_inner())
}

/// A client on its own connection with the smallest HTTP/2 windows: what
/// it does not read soon stays in the server's buffer.
pub(crate) async fn slow_client(
    app: &TestApp,
) -> UserDirectoryServiceClient<tonic::transport::Channel> {
    let channel = Endpoint::from_shared(format!("http://{}", app.address))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    UserDirectoryServiceClient::new(channel)
}

/// Waits until the server reports `count` open watchers.
pub(crate) async fn wait_for_watchers(app: &TestApp, count: f64) {
    for _ in 0..200 {
        if app.scrape().await.value(WATCHERS) == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server never reported {count} watchers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_are_capped_per_token_and_a_slot_comes_back_when_a_stream_ends() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = Config::with_database(&db.url);
    config.write_tokens = TokenList::parse(WRITE_TOKEN).unwrap();
    config.read_tokens = TokenList::parse(&format!("{READ_TOKEN} {OTHER_READ_TOKEN}")).unwrap();
    config.limits.max_watchers_per_token = 2;
    let app = TestApp::spawn_with(config).await;

    let first = start_watch(&app, Start::Now(()), Some(READ_TOKEN))
        .await
        .unwrap();
    let _second = start_watch(&app, Start::Now(()), Some(READ_TOKEN))
        .await
        .unwrap();
    let refused = start_watch(&app, Start::Now(()), Some(READ_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("SYNC_SERVICE_MAX_WATCHERS_PER_TOKEN"),
        "{refused:?}"
    );
    assert!(!refused.message().contains(READ_TOKEN), "{refused:?}");
    // Another token has its own count.
    let _other = start_watch(&app, Start::Now(()), Some(OTHER_READ_TOKEN))
        .await
        .unwrap();
    wait_for_watchers(&app, 3.0).await;

    drop(first);
    wait_for_watchers(&app, 2.0).await;
    start_watch(&app, Start::Now(()), Some(READ_TOKEN))
        .await
        .unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_are_capped_per_server() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = Config::with_database(&db.url);
    config.limits.max_watchers = 2;
    let app = TestApp::spawn_with(config).await;
    let _held = [
        start_watch(&app, Start::Now(()), None).await.unwrap(),
        start_watch(&app, Start::Snapshot(()), None).await.unwrap(),
    ];
    let refused = start_watch(&app, Start::Now(()), None).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("SYNC_SERVICE_MAX_WATCHERS"),
        "{refused:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_does_not_read_is_ended_with_where_to_resume() {
    const USERS: usize = 120;
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = Config::with_database(&db.url);
    config.limits.watch_buffer_bytes = 8 * 1024;
    config.limits.watch_stall_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(config).await;
    // About 2 KB each: far more than the buffer and the client's window.
    for n in 0..USERS {
        let mut profile = user(&format!("user_{n:03}"), 100);
        profile.public_metadata = Some(clerk_sync_api::json::struct_from_json(
            serde_json::json!({ "bio": "b".repeat(2000) })
                .as_object()
                .unwrap()
                .clone(),
        ));
        app.created(&format!("msg_{n:03}"), profile).await;
    }

    // A client with small HTTP/2 windows that does not read for a while.
    let mut slow = slow_client(&app).await;
    let mut stream = slow
        .watch_users(WatchUsersRequest {
            start: Some(Start::Snapshot(())),
        })
        .await
        .unwrap()
        .into_inner();
    wait_for_watchers(&app, 1.0).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Then it reads what was sent, and learns where to resume.
    let mut seen = std::collections::BTreeSet::new();
    let mut last = 0;
    let ended = loop {
        match stream.message().await {
            Ok(Some(message)) => {
                last = message.position;
                if let Some(Event::User(user)) = message.event {
                    seen.insert(user.id);
                }
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    assert!(
        ended
            .message()
            .contains(&format!("resume with after_position {last}")),
        "last position {last}: {ended:?}"
    );
    assert!(seen.len() < USERS, "the whole snapshot was buffered");
    wait_for_watchers(&app, 0.0).await;

    // Resuming there brings the rest, nothing lost.
    let mut resumed = start_watch(&app, Start::AfterPosition(last), None)
        .await
        .unwrap();
    loop {
        let message = crate::feed::next(&mut resumed).await;
        match message.event {
            Some(Event::User(user)) => {
                seen.insert(user.id);
            }
            Some(Event::CaughtUp(_)) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen.len(), USERS);
    app.stop().await;
}
