//! The whole stack for a test: a fresh database, the real sync-service and the
//! real gateway on 127.0.0.1:0, an HTTP client that signs like Svix (with the
//! svix crate) and a gRPC directory client.

#[path = "../../../tests/support/scrape.rs"]
mod scrape;
#[path = "../../../tests/support/webhooks.rs"]
mod webhooks;

pub(crate) use scrape::scrape;

pub(crate) use webhooks::{fixture, now, signed_headers};

#[path = "../../../tests/support/certs.rs"]
mod certs;
#[path = "../../../tests/support/tcp_proxy.rs"]
mod tcp_proxy;
#[path = "../../../tests/support/test_db.rs"]
mod test_db;

use std::net::SocketAddr;

use bytes::Bytes;
use clerk_sync_api::v1::{
    self, quarantine_service_client::QuarantineServiceClient,
    user_directory_service_client::UserDirectoryServiceClient,
};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub(crate) use certs::TestCerts;
pub(crate) use tcp_proxy::TcpProxy;
pub(crate) use test_db::{Backend, TestDb};

/// The signing secret the gateway is configured with.
pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

struct Running<T> {
    stop: oneshot::Sender<()>,
    task: JoinHandle<T>,
}

impl<T> Running<T> {
    async fn stop(self) -> T {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// Token the gateway applies events with, in a secured stack.
pub(crate) const WRITE_TOKEN: &str = "gateway-write-token-x81Kq0";
/// Token the test's directory client reads with, in a secured stack.
pub(crate) const READ_TOKEN: &str = "service-read-token-Pz40mN";

/// A running gateway + sync-service over one test database.
pub(crate) struct Stack {
    _db: TestDb,
    database_url: String,
    /// Set for a stack whose sync-service requires mutual TLS and tokens.
    certs: Option<TestCerts>,
    pub(crate) sync_address: SocketAddr,
    sync: Option<Running<anyhow::Result<()>>>,
    gateway_address: SocketAddr,
    gateway: Option<Running<Result<(), clerk_sync_gateway::Error>>>,
    http: HttpClient,
    pub(crate) directory: UserDirectoryServiceClient<Channel>,
    /// Where the gateway's metrics are served.
    pub(crate) gateway_metrics: SocketAddr,
    /// Where the sync-service's metrics are served.
    pub(crate) sync_metrics: SocketAddr,
    pub(crate) quarantine: QuarantineServiceClient<Channel>,
}

/// What the gateway answered.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: String,
}

impl Stack {
    pub(crate) async fn start(backend: Backend) -> Self {
        let db = TestDb::new(backend).await;
        let database_url = db.url.clone();
        Self::start_on(db, database_url).await
    }

    /// Starts the stack over `db`, reaching it through `database_url`.
    pub(crate) async fn start_on(db: TestDb, database_url: String) -> Self {
        Self::start_with(db, database_url, None).await
    }

    /// A stack as production runs it: the sync-service requires TLS with
    /// client certificates from the test CA and bearer tokens; the gateway
    /// speaks `https://` with its own certificate and the write token.
    pub(crate) async fn start_secured(backend: Backend) -> Self {
        let db = TestDb::new(backend).await;
        let database_url = db.url.clone();
        Self::start_with(db, database_url, Some(TestCerts::new())).await
    }

    async fn start_with(db: TestDb, database_url: String, certs: Option<TestCerts>) -> Self {
        let sync_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sync_address = sync_listener.local_addr().unwrap();
        let sync = Some(spawn_sync(sync_listener, &database_url, certs.as_ref()));

        let gateway_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_address = gateway_listener.local_addr().unwrap();
        let scheme = if certs.is_some() { "https" } else { "http" };
        let mut config = clerk_sync_gateway::Config::new(
            SECRET.parse().unwrap(),
            vec![format!("{scheme}://{sync_address}").parse().unwrap()],
        );
        config.sync_service.connect_timeout = std::time::Duration::from_millis(200);
        if let Some(certs) = &certs {
            config.sync_service.ca = Some(certs.path("ca.pem"));
            config.sync_service.client_cert = Some(certs.path("client.pem"));
            config.sync_service.client_key = Some(certs.path("client-key.pem"));
            config.sync_service.token =
                Some(clerk_sync_common::settings::BearerToken::parse(WRITE_TOKEN).unwrap());
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(clerk_sync_gateway::run(gateway_listener, config, async {
            let _ = stopped.await;
        }));

        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{sync_address}")).unwrap();
        if let Some(certs) = &certs {
            let read = |file: &str| std::fs::read(certs.path(file)).unwrap();
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read("ca.pem")))
                .identity(Identity::from_pem(
                    read("client.pem"),
                    read("client-key.pem"),
                ));
            endpoint = endpoint.tls_config(tls).unwrap();
        }
        let channel = endpoint.connect_lazy();
        // Each service's registry is process-wide, so its endpoint outlives
        // restarts of the service (as in `clerk_sync_stack::run`).
        let gateway_metrics = spawn_metrics(clerk_sync_gateway::metrics::render).await;
        let sync_metrics = spawn_metrics(clerk_sync_service::metrics::render).await;
        let stack = Self {
            _db: db,
            database_url,
            certs,
            sync_address,
            sync,
            gateway_address,
            gateway: Some(Running { stop, task }),
            http: http_client(),
            directory: UserDirectoryServiceClient::new(channel.clone()),
            quarantine: QuarantineServiceClient::new(channel),
            gateway_metrics,
            sync_metrics,
        };
        stack.wait_until_ready().await;
        stack
    }

    /// Waits until the gateway's /readyz says the sync-service is SERVING.
    pub(crate) async fn wait_until_ready(&self) {
        for _ in 0..200 {
            if self
                .request(Method::GET, "/readyz", &[], Bytes::new())
                .await
                .status
                == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the stack never became ready");
    }

    /// Settings of a gateway talking to this stack's sync-service (for the
    /// operator's `quarantine` commands).
    pub(crate) fn gateway_config(&self) -> clerk_sync_gateway::Config {
        clerk_sync_gateway::Config::new(
            SECRET.parse().unwrap(),
            vec![format!("http://{}", self.sync_address).parse().unwrap()],
        )
    }

    /// Every quarantined delivery, oldest first.
    pub(crate) async fn quarantined(&self) -> Vec<v1::QuarantinedEvent> {
        self.quarantine
            .clone()
            .list_quarantined(v1::ListQuarantinedRequest {
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .events
    }

    /// Stops the sync-service (the gateway keeps running).
    pub(crate) async fn stop_sync(&mut self) {
        self.sync
            .take()
            .expect("sync-service running")
            .stop()
            .await
            .unwrap();
    }

    /// Starts the sync-service again, on the same address and database.
    pub(crate) async fn restart_sync(&mut self) {
        let listener = TcpListener::bind(self.sync_address).await.unwrap();
        self.sync = Some(spawn_sync(
            listener,
            &self.database_url,
            self.certs.as_ref(),
        ));
        self.wait_until_ready().await;
    }

    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Answer {
        send(
            &self.http,
            self.gateway_address,
            method,
            path,
            headers,
            body,
        )
        .await
    }

    /// Delivers `body` as Svix does: signed now with [`SECRET`], as JSON.
    pub(crate) async fn deliver(&self, msg_id: &str, body: &[u8]) -> Answer {
        deliver_to(&self.http, self.gateway_address, msg_id, body).await
    }

    /// `message` with the read token, in a secured stack.
    pub(crate) fn as_reader<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if self.certs.is_some() {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {READ_TOKEN}").parse().unwrap(),
            );
        }
        request
    }

    pub(crate) async fn get_user(&self, id: &str) -> Result<v1::User, tonic::Status> {
        self.directory
            .clone()
            .get_user(self.as_reader(v1::GetUserRequest { id: id.into() }))
            .await
            .map(|r| r.into_inner().user.unwrap())
    }

    /// The user owning `address`, verified.
    pub(crate) async fn find_by_email(&self, address: &str) -> Result<v1::User, tonic::Status> {
        self.directory
            .clone()
            .find_user_by_email(self.as_reader(v1::FindUserByEmailRequest {
                email_address: address.into(),
            }))
            .await
            .map(|r| r.into_inner().user.unwrap())
    }

    /// Every live user in the directory.
    pub(crate) async fn all_users(&self) -> Vec<v1::User> {
        self.directory
            .clone()
            .list_users(self.as_reader(v1::ListUsersRequest {
                page_size: 1000,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .users
    }

    /// The gateway's settings that reach this stack's sync-service (address,
    /// and in a secured stack the write token, CA and client certificate).
    pub(crate) fn sync_service_args(&self) -> Vec<String> {
        let Some(certs) = &self.certs else {
            return vec![
                "--sync-service-url".into(),
                format!("http://{}", self.sync_address),
            ];
        };
        let path = |file: &str| certs.path(file).display().to_string();
        vec![
            "--sync-service-url".into(),
            format!("https://{}", self.sync_address),
            "--sync-service-token".into(),
            WRITE_TOKEN.into(),
            "--sync-service-ca".into(),
            path("ca.pem"),
            "--sync-service-client-cert".into(),
            path("client.pem"),
            "--sync-service-client-key".into(),
            path("client-key.pem"),
        ]
    }

    /// Every live user in the directory, by id, however many pages.
    pub(crate) async fn all_users_paged(&self) -> std::collections::BTreeMap<String, v1::User> {
        let mut users = std::collections::BTreeMap::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .directory
                .clone()
                .list_users(self.as_reader(v1::ListUsersRequest {
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner();
            users.extend(page.users.into_iter().map(|u| (u.id.clone(), u)));
            if page.next_page_token.is_empty() {
                return users;
            }
            page_token = page.next_page_token;
        }
    }

    /// Stops the gateway, then the sync-service, and checks both ended well.
    pub(crate) async fn stop(mut self) {
        self.gateway.take().unwrap().stop().await.unwrap();
        if let Some(sync) = self.sync.take() {
            sync.stop().await.unwrap();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            let _ = gateway.stop.send(());
        }
        if let Some(sync) = self.sync.take() {
            let _ = sync.stop.send(());
        }
    }
}

/// Serves `render` on a fresh port, for the rest of the test.
async fn spawn_metrics(render: fn() -> String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(clerk_sync_common::runtime::serve_metrics(
        listener,
        render,
        std::future::pending(),
    ));
    address
}

fn spawn_sync(
    listener: TcpListener,
    database_url: &str,
    certs: Option<&TestCerts>,
) -> Running<anyhow::Result<()>> {
    let mut config = clerk_sync_service::Config::with_database(database_url);
    if let Some(certs) = certs {
        use clerk_sync_service::auth::TokenList;
        config.tls_cert = Some(certs.path("server.pem"));
        config.tls_key = Some(certs.path("server-key.pem"));
        config.tls_client_ca = Some(certs.path("ca.pem"));
        config.write_tokens = TokenList::parse(WRITE_TOKEN).unwrap();
        config.read_tokens = TokenList::parse(READ_TOKEN).unwrap();
    }
    config.health_check_interval_ms = 50;
    config.shutdown_timeout_secs = 5;
    config.database_max_connections = 5;
    // Fail fast when the database is cut, well within the gateway's deadline.
    config.database_timeout_ms = 500;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        clerk_sync_service::run(listener, &config, async {
            let _ = stopped.await;
        })
        .await
    });
    Running { stop, task }
}

/// A plain-HTTP client for talking to gateways.
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new [`HttpClient`].
pub(crate) fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends one request to the gateway at `gateway` (`host:port`).
pub(crate) async fn send(
    http: &HttpClient,
    gateway: impl std::fmt::Display,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{gateway}{path}"));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = http
        .request(request.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Delivers `body` to the gateway at `gateway` as Svix does: signed now with
/// [`SECRET`], as JSON. The one way every test posts a signed webhook.
pub(crate) async fn deliver_to(
    http: &HttpClient,
    gateway: impl std::fmt::Display,
    msg_id: &str,
    body: &[u8],
) -> Answer {
    let headers = signed_headers(SECRET, msg_id, now(), body);
    send(
        http,
        gateway,
        Method::POST,
        "/clerk",
        &headers,
        Bytes::copy_from_slice(body),
    )
    .await
}
