//! Traces across the hop: the `clerk-sync` binary, told to export traces to
//! an OTLP receiver this test serves, sends one trace per delivery in which
//! the gateway's `webhook` span is the parent of the sync-service's `grpc`
//! span, itself the parent of `apply_event`, itself the parent of the
//! batch's `commit_batch`; a directory caller's own `traceparent` is
//! honoured; and no span attribute carries personal data (ids only).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use clerk_sync_api::v1::{
    GetUserRequest, user_directory_service_client::UserDirectoryServiceClient,
};
use http::StatusCode;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use tonic::transport::server::TcpIncoming;

use crate::{
    USER,
    helpers::{deliver_to, fixture, http_client},
    operability::StackProcess,
};

/// An OTLP/gRPC trace receiver keeping every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Serves on 127.0.0.1:0; returns the address.
    async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        address
    }

    /// Waits (up to 20 s) until a span matches `wanted`; returns it.
    async fn wait_for(&self, what: &str, wanted: impl Fn(&Span) -> bool) -> Span {
        for _ in 0..400 {
            if let Some(span) = self.spans.lock().unwrap().iter().find(|s| wanted(s)) {
                return span.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let names: Vec<String> = self
            .spans
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        panic!("no {what} span among {names:?}");
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(text) => Some(text.clone()),
            Value::IntValue(number) => Some(number.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_delivery_is_one_trace_across_the_hop() {
    let receiver = Receiver::default();
    let endpoint = format!("http://{}", receiver.serve().await);
    let stack = StackProcess::start_with(
        "text",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // Export every 100 ms rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    stack.wait_until_ready().await;
    let created = fixture("user.created.json");
    let answer = deliver_to(&http_client(), stack.gateway, "msg_trace_1", &created).await;
    assert_eq!(answer.status, StatusCode::OK);

    let webhook = receiver
        .wait_for("webhook", |s| {
            s.name == "webhook" && attribute(s, "event_id").as_deref() == Some("msg_trace_1")
        })
        .await;
    assert_eq!(
        attribute(&webhook, "event_type").as_deref(),
        Some("user.created")
    );
    assert_eq!(attribute(&webhook, "user_id").as_deref(), Some(USER));
    assert_eq!(attribute(&webhook, "status").as_deref(), Some("200"));
    assert_eq!(
        attribute(&webhook, "outcome").as_deref(),
        Some("OUTCOME_APPLIED")
    );
    let child_of = |parent: &Span, name: &'static str| {
        let (trace, id) = (parent.trace_id.clone(), parent.span_id.clone());
        move |s: &Span| s.name == name && s.trace_id == trace && s.parent_span_id == id
    };
    let grpc = receiver.wait_for("grpc", child_of(&webhook, "grpc")).await;
    assert_eq!(
        attribute(&grpc, "rpc.method").as_deref(),
        Some("/clerk.sync.v1.UserSyncService/ApplyUserCreated")
    );
    let apply = receiver
        .wait_for("apply_event", child_of(&grpc, "apply_event"))
        .await;
    assert_eq!(
        attribute(&apply, "event_id").as_deref(),
        Some("msg_trace_1")
    );
    assert_eq!(attribute(&apply, "user_id").as_deref(), Some(USER));
    receiver
        .wait_for("commit_batch", child_of(&apply, "commit_batch"))
        .await;

    // A directory caller's trace continues into the sync-service.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", stack.sync))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(GetUserRequest { id: USER.into() });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-{caller_span}-01")
            .parse()
            .unwrap(),
    );
    UserDirectoryServiceClient::new(channel)
        .get_user(request)
        .await
        .unwrap();
    let query = receiver
        .wait_for("grpc GetUser", |s| {
            s.name == "grpc"
                && hex(&s.trace_id) == caller_trace
                && hex(&s.parent_span_id) == caller_span
        })
        .await;
    assert_eq!(
        attribute(&query, "rpc.method").as_deref(),
        Some("/clerk.sync.v1.UserDirectoryService/GetUser")
    );

    // Ids only: none of the user's personal data is in any span.
    let body = String::from_utf8(created).unwrap();
    let personal = ["example@example.org", "Example"];
    assert!(personal.iter().all(|value| body.contains(value)));
    for span in receiver.spans.lock().unwrap().iter() {
        for attribute in &span.attributes {
            let text = format!("{:?}", attribute.value);
            for value in personal {
                assert!(
                    !text.contains(value),
                    "{} carries {value}: {text}",
                    span.name
                );
            }
        }
    }
    stack.stop();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
