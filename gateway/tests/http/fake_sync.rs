//! An in-test `UserSyncService`, `QuarantineService` and `ReconcileService`
//! (which grants every backfill pass its lease) on port 0 that record what
//! the gateway sends and can be told to fail, to stall, or to stop and come
//! back on the same port.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use clerk_sync_api::v1::{
    ApplyUserCreatedRequest, ApplyUserCreatedResponse, ApplyUserDeletedRequest,
    ApplyUserDeletedResponse, ApplyUserUpdatedRequest, ApplyUserUpdatedResponse, BeginPassRequest,
    BeginPassResponse, DropQuarantinedRequest, DropQuarantinedResponse, EndPassRequest,
    EndPassResponse, GetQuarantinedRequest, GetQuarantinedResponse, ListPassesRequest,
    ListPassesResponse, ListQuarantinedRequest, ListQuarantinedResponse, Outcome, PassStatus,
    QuarantineRequest, QuarantineResponse, QuarantinedEvent, ReconcilePass, RenewPassRequest,
    RenewPassResponse,
    quarantine_service_server::{QuarantineService, QuarantineServiceServer},
    reconcile_service_server::{ReconcileService, ReconcileServiceServer},
    user_sync_service_server::{UserSyncService, UserSyncServiceServer},
};
use clerk_sync_gateway::{clerk::UserEvent, upstream::EVENT_ID_METADATA};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tonic_health::{ServingStatus, server::HealthReporter};

/// One call the fake received.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Received {
    /// The `x-event-id` request metadata, if sent.
    pub(crate) event_id: Option<String>,
    /// The event, whichever RPC carried it.
    pub(crate) event: UserEvent,
}

/// Makes calls wait until released, telling the test when one has arrived.
#[derive(Clone)]
struct Hold {
    entered: mpsc::UnboundedSender<()>,
    release: watch::Receiver<bool>,
}

#[derive(Default)]
struct Shared {
    received: Vec<Received>,
    quarantined: Vec<QuarantineRequest>,
    ended_passes: Vec<EndPassRequest>,
    quarantine_fails_with: Option<Code>,
    fail_with: Option<(Code, String)>,
    outcome: Option<Outcome>,
    hold: Option<Hold>,
}

#[derive(Clone)]
struct FakeService {
    shared: Arc<Mutex<Shared>>,
}

impl FakeService {
    async fn apply(&self, metadata: &MetadataMap, event: UserEvent) -> Result<i32, Status> {
        let event_id = metadata
            .get(EVENT_ID_METADATA)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let hold = lock(&self.shared).hold.clone();
        if let Some(mut hold) = hold {
            let _ = hold.entered.send(());
            let _ = hold.release.wait_for(|released| *released).await;
        }
        let mut shared = lock(&self.shared);
        if let Some((code, message)) = shared.fail_with.clone() {
            return Err(Status::new(code, message));
        }
        shared.received.push(Received { event_id, event });
        Ok(shared.outcome.unwrap_or(Outcome::Applied) as i32)
    }
}

#[tonic::async_trait]
impl UserSyncService for FakeService {
    async fn apply_user_created(
        &self,
        request: Request<ApplyUserCreatedRequest>,
    ) -> Result<Response<ApplyUserCreatedResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let event = UserEvent::Created(message.event.expect("event is set"));
        let outcome = self.apply(&metadata, event).await?;
        Ok(Response::new(ApplyUserCreatedResponse { outcome }))
    }

    async fn apply_user_updated(
        &self,
        request: Request<ApplyUserUpdatedRequest>,
    ) -> Result<Response<ApplyUserUpdatedResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let event = UserEvent::Updated(message.event.expect("event is set"));
        let outcome = self.apply(&metadata, event).await?;
        Ok(Response::new(ApplyUserUpdatedResponse { outcome }))
    }

    async fn apply_user_deleted(
        &self,
        request: Request<ApplyUserDeletedRequest>,
    ) -> Result<Response<ApplyUserDeletedResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let event = UserEvent::Deleted(message.event.expect("event is set"));
        let outcome = self.apply(&metadata, event).await?;
        Ok(Response::new(ApplyUserDeletedResponse { outcome }))
    }
}

#[tonic::async_trait]
impl QuarantineService for FakeService {
    async fn quarantine(
        &self,
        request: Request<QuarantineRequest>,
    ) -> Result<Response<QuarantineResponse>, Status> {
        let request = request.into_inner();
        let mut shared = lock(&self.shared);
        if let Some(code) = shared.quarantine_fails_with {
            return Err(Status::new(code, "quarantine refused"));
        }
        shared.quarantined.push(request.clone());
        let seen_count = shared
            .quarantined
            .iter()
            .filter(|stored| stored.event_id == request.event_id)
            .count() as u64;
        Ok(Response::new(QuarantineResponse {
            event: Some(QuarantinedEvent {
                event_id: request.event_id,
                event_type: request.event_type,
                reason: request.reason,
                body: Vec::new(),
                body_size: request.body.len() as u64,
                delivered_at: request.delivered_at,
                first_seen_at: None,
                last_seen_at: None,
                seen_count,
            }),
        }))
    }

    async fn list_quarantined(
        &self,
        _: Request<ListQuarantinedRequest>,
    ) -> Result<Response<ListQuarantinedResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn get_quarantined(
        &self,
        _: Request<GetQuarantinedRequest>,
    ) -> Result<Response<GetQuarantinedResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn drop_quarantined(
        &self,
        _: Request<DropQuarantinedRequest>,
    ) -> Result<Response<DropQuarantinedResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }
}

#[tonic::async_trait]
impl ReconcileService for FakeService {
    async fn begin_pass(
        &self,
        request: Request<BeginPassRequest>,
    ) -> Result<Response<BeginPassResponse>, Status> {
        Ok(Response::new(BeginPassResponse {
            granted: true,
            pass: Some(ReconcilePass {
                id: 1,
                holder: request.into_inner().holder,
                status: PassStatus::Running.into(),
                ..ReconcilePass::default()
            }),
        }))
    }

    async fn renew_pass(
        &self,
        request: Request<RenewPassRequest>,
    ) -> Result<Response<RenewPassResponse>, Status> {
        Ok(Response::new(RenewPassResponse {
            pass: Some(ReconcilePass {
                id: request.into_inner().pass_id,
                ..ReconcilePass::default()
            }),
        }))
    }

    async fn end_pass(
        &self,
        request: Request<EndPassRequest>,
    ) -> Result<Response<EndPassResponse>, Status> {
        let request = request.into_inner();
        lock(&self.shared).ended_passes.push(request.clone());
        Ok(Response::new(EndPassResponse {
            pass: Some(ReconcilePass {
                id: request.pass_id,
                status: request.status,
                error: request.error,
                ..ReconcilePass::default()
            }),
        }))
    }

    async fn list_passes(
        &self,
        _: Request<ListPassesRequest>,
    ) -> Result<Response<ListPassesResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    health: HealthReporter,
}

/// The fake sync-service: a fixed address, state kept across restarts.
pub(crate) struct FakeSync {
    /// Where it listens (or will, once started).
    pub(crate) addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    running: Option<Running>,
}

impl FakeSync {
    /// Starts serving on a fresh port.
    pub(crate) async fn start() -> Self {
        let mut fake = Self::reserve().await;
        fake.resume().await;
        fake
    }

    /// Picks a free port but does not serve on it yet: calls there are refused.
    pub(crate) async fn reserve() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        Self {
            addr,
            shared: Arc::default(),
            running: None,
        }
    }

    /// The URL the gateway is configured with.
    pub(crate) fn url(&self) -> http::Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }

    /// Serves (again) on `addr`.
    pub(crate) async fn resume(&mut self) {
        assert!(self.running.is_none(), "already running");
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let (health, health_service) = tonic_health::server::health_reporter();
        let fake = FakeService {
            shared: Arc::clone(&self.shared),
        };
        let service = UserSyncServiceServer::new(fake.clone());
        let quarantine = QuarantineServiceServer::new(fake.clone());
        let reconcile = ReconcileServiceServer::new(fake);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(service)
                .add_service(quarantine)
                .add_service(reconcile)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        self.running = Some(Running { stop, task, health });
    }

    /// Stops serving; the port then refuses connections.
    pub(crate) async fn stop(&mut self) {
        let running = self.running.take().expect("running");
        let _ = running.stop.send(());
        running.task.await.unwrap();
    }

    /// Every EndPass call received, in arrival order.
    pub(crate) fn ended_passes(&self) -> Vec<EndPassRequest> {
        lock(&self.shared).ended_passes.clone()
    }

    /// Every Quarantine call received, in arrival order.
    pub(crate) fn quarantined(&self) -> Vec<QuarantineRequest> {
        lock(&self.shared).quarantined.clone()
    }

    /// Makes Quarantine calls fail with `code` (or succeed again with `None`).
    pub(crate) fn fail_quarantine_with(&self, code: Option<Code>) {
        lock(&self.shared).quarantine_fails_with = code;
    }

    /// What the fake has applied so far, in arrival order.
    pub(crate) fn received(&self) -> Vec<Received> {
        lock(&self.shared).received.clone()
    }

    /// Makes every call fail with `code` (or succeed again with `None`).
    pub(crate) fn fail_with(&self, code: Option<Code>, message: &str) {
        lock(&self.shared).fail_with = code.map(|code| (code, message.to_owned()));
    }

    /// The outcome successful calls report.
    pub(crate) fn answer_outcome(&self, outcome: Outcome) {
        lock(&self.shared).outcome = Some(outcome);
    }

    /// Makes calls wait until the returned sender sends `true`; the receiver
    /// gets one message per call that has arrived.
    pub(crate) fn hold_calls(&self) -> (mpsc::UnboundedReceiver<()>, watch::Sender<bool>) {
        let (entered, arrived) = mpsc::unbounded_channel();
        let (release, released) = watch::channel(false);
        lock(&self.shared).hold = Some(Hold {
            entered,
            release: released,
        });
        (arrived, release)
    }

    /// Sets what `grpc.health.v1.Health/Check` answers for the server ("").
    pub(crate) async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.running
            .as_ref()
            .expect("running")
            .health
            .set_service_status("", status)
            .await;
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
