//! Starts the real gateway on port 0 in front of a [`FakeSync`], and talks to it
//! over plain HTTP with requests signed by Svix's own library.

#[path = "../../../tests/support/scrape.rs"]
mod scrape;
#[path = "../../../tests/support/webhooks.rs"]
mod webhooks;

pub(crate) use scrape::Scrape;

pub(crate) use webhooks::{fixture, now, signed_headers};

#[path = "../../../tests/support/tcp_proxy.rs"]
#[allow(dead_code)] // `route` is for database URLs
mod tcp_proxy;

pub(crate) use tcp_proxy::TcpProxy;

use std::net::SocketAddr;

use bytes::Bytes;
use clerk_sync_gateway::{Config, Error};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use prost_types::Timestamp;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::fake_sync::FakeSync;

/// The signing secret the test gateway is configured with.
pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The fixture most tests deliver.
pub(crate) const USER_CREATED: &str = "user.created.json";

/// A protobuf timestamp.
pub(crate) fn ts(seconds: i64, millis: i32) -> Option<Timestamp> {
    Some(Timestamp {
        seconds,
        nanos: millis * 1_000_000,
    })
}

/// `headers` without `name`.
pub(crate) fn without(
    headers: &[(&'static str, String)],
    name: &str,
) -> Vec<(&'static str, String)> {
    headers
        .iter()
        .filter(|(n, _)| *n != name)
        .cloned()
        .collect()
}

/// `headers` with `name` set to `value` (only).
pub(crate) fn replaced(
    headers: &[(&'static str, String)],
    name: &'static str,
    value: &str,
) -> Vec<(&'static str, String)> {
    let mut headers = without(headers, name);
    headers.push((name, value.to_owned()));
    headers
}

/// A running gateway and the fake sync-service behind it.
pub(crate) struct TestApp {
    /// The gateway's address.
    pub(crate) addr: SocketAddr,
    /// The fake sync-service it forwards to.
    pub(crate) upstream: FakeSync,
    /// Where its metrics are served.
    pub(crate) metrics_addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), Error>>>,
}

/// A response, body read in full.
#[derive(Debug)]
pub(crate) struct TestResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl TestResponse {
    /// The body as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The `error` message of an error body.
    pub(crate) fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {:?}", self.body))
            .to_owned()
    }
}

impl TestApp {
    /// A gateway with default settings in front of a running fake.
    pub(crate) async fn spawn() -> Self {
        Self::spawn_with(FakeSync::start().await, |_| {}).await
    }

    /// A gateway in front of `upstream`, with settings adjusted by `configure`.
    pub(crate) async fn spawn_with(
        upstream: FakeSync,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = Config::new(SECRET.parse().unwrap(), vec![upstream.url()]);
        configure(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, shutdown_requested) = oneshot::channel::<()>();
        let server = tokio::spawn(clerk_sync_gateway::run(listener, config, async {
            let _ = shutdown_requested.await;
        }));
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics_listener.local_addr().unwrap();
        tokio::spawn(clerk_sync_common::runtime::serve_metrics(
            metrics_listener,
            clerk_sync_gateway::metrics::render,
            std::future::pending(),
        ));
        Self {
            addr,
            upstream,
            metrics_addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    /// Sends any request.
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        let response = self.client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    /// POSTs `body` to `/clerk` with exactly these headers.
    pub(crate) async fn post_clerk(
        &self,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        self.request(Method::POST, "/clerk", headers, body).await
    }

    /// Delivers `body` as Svix would: signed now, as JSON.
    pub(crate) async fn deliver(&self, msg_id: &str, body: impl Into<Bytes>) -> TestResponse {
        let body = body.into();
        let headers = signed_headers(SECRET, msg_id, now(), &body);
        self.post_clerk(&headers, body).await
    }

    /// Delivers `body` like [`deliver`](Self::deliver), but in the background
    /// and on a connection of its own, for tests that hold the call or stop
    /// the gateway meanwhile; the task ends with the answered status.
    pub(crate) fn deliver_in_background(
        &self,
        msg_id: &str,
        body: impl Into<Bytes>,
    ) -> JoinHandle<StatusCode> {
        let body = body.into();
        let mut request = Request::post(format!("http://{}/clerk", self.addr));
        for (name, value) in signed_headers(SECRET, msg_id, now(), &body) {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(body)).unwrap();
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        tokio::spawn(async move { client.request(request).await.unwrap().status() })
    }

    /// Scrapes the gateway's metrics endpoint.
    pub(crate) async fn scrape(&self) -> Scrape {
        scrape::scrape(self.metrics_addr).await
    }

    /// Completes the shutdown future given to `run`.
    pub(crate) fn request_shutdown(&mut self) {
        let _ = self.shutdown.take().expect("running").send(());
    }

    /// True when `run` has not returned within `grace`.
    pub(crate) async fn still_running_after(&mut self, grace: std::time::Duration) -> bool {
        let server = self.server.as_mut().expect("running");
        tokio::time::timeout(grace, server).await.is_err()
    }

    /// Waits until `run` returns, and returns what it did.
    pub(crate) async fn stopped(&mut self) -> Result<(), Error> {
        self.server.take().expect("running").await.unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}
