//! Keeps a copy of the clerk-sync directory in memory by following the change
//! feed: a snapshot first, then every change as it commits, resuming after a
//! disconnect from the last position applied.
//!
//! `cargo run --example follow_directory -- http://127.0.0.1:50051`

use std::{collections::HashMap, time::Duration};

use clerk_sync_api::v1::{
    User, WatchUsersRequest, user_directory_service_client::UserDirectoryServiceClient,
    watch_users_request::Start, watch_users_response::Event,
};
use tonic::Code;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned());
    let channel = tonic::transport::Endpoint::from_shared(address)?.connect_lazy();
    let mut client = UserDirectoryServiceClient::new(channel);

    // A real service keeps these two in its own database, in one transaction.
    let mut users: HashMap<String, User> = HashMap::new();
    let mut position: Option<i64> = None;

    loop {
        let start = match position {
            Some(after) => Start::AfterPosition(after),
            None => Start::Snapshot(()),
        };
        let request = WatchUsersRequest { start: Some(start) };
        let mut stream = match client.watch_users(request).await {
            Ok(response) => response.into_inner(),
            // Too far behind (a deletion it needs was compacted away): start over.
            Err(status) if status.code() == Code::FailedPrecondition => {
                users.clear();
                position = None;
                continue;
            }
            Err(status) => {
                eprintln!("cannot watch: {status}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Ends when the server shuts down or the network is cut: then resume
        // after `position`.
        while let Ok(Some(message)) = stream.message().await {
            match message.event {
                Some(Event::User(user)) => {
                    users.insert(user.id.clone(), user);
                }
                Some(Event::Deleted(deleted)) => {
                    users.remove(&deleted.id);
                }
                Some(Event::CaughtUp(_)) => println!("caught up: {} users", users.len()),
                None => {}
            }
            position = Some(message.position);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
