//! The gRPC client side: one long-lived channel to the sync-service (balanced
//! over several addresses when given), used by every request.
//!
//! HTTP/2 multiplexes all in-flight events over that channel; nothing connects
//! per request. The channel connects lazily, so the gateway starts (and answers
//! `/healthz`) while the sync-service is still down; requests made meanwhile get
//! `UNAVAILABLE`, which the gateway answers with 503 so that Svix retries.

use std::time::Duration;

use clerk_sync_api::v1::{
    ApplyUserCreatedRequest, ApplyUserDeletedRequest, ApplyUserUpdatedRequest, Outcome,
    user_sync_service_client::UserSyncServiceClient,
};
use http::Uri;
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{Error, clerk::UserEvent};

/// Request metadata key carrying the event id (the svix-id) to the sync-service,
/// so its logs correlate with the gateway's.
pub const EVENT_ID_METADATA: &str = "x-event-id";

/// Clients of the sync-service sharing one channel.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Applies events.
    sync: UserSyncServiceClient<Channel>,
    /// Answers `/readyz`.
    health: HealthClient<Channel>,
    /// Deadline of each call, from the moment it is made (waiting for a
    /// connection included).
    timeout: Duration,
}

impl Upstream {
    /// Builds the channel to `urls` (several are load-balanced) without
    /// connecting yet. Must be called inside a Tokio runtime: the channel's
    /// worker task is spawned here.
    pub fn new(urls: &[Uri], connect_timeout: Duration, timeout: Duration) -> Result<Self, Error> {
        let endpoints = urls.iter().map(|url| {
            Endpoint::from(url.clone())
                .connect_timeout(connect_timeout)
                .timeout(timeout)
                .tcp_nodelay(true)
        });
        let channel = match urls {
            [] => {
                return Err(Error::Config {
                    setting: "SYNC_SERVICE_URL",
                    reason: "no address given".to_owned(),
                });
            }
            [_] => endpoints
                .into_iter()
                .next()
                .expect("one endpoint")
                .connect_lazy(),
            _ => Channel::balance_list(endpoints),
        };
        Ok(Self {
            sync: UserSyncServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            timeout,
        })
    }

    /// Sends one event to the sync-service and returns what applying it did.
    /// Any gRPC error status is [`Error::Upstream`]; no answer within the
    /// deadline is [`Error::UpstreamTimeout`]; an unknown outcome is
    /// [`Error::UnexpectedOutcome`].
    pub async fn forward(&self, event: UserEvent, event_id: &str) -> Result<Outcome, Error> {
        let mut client = self.sync.clone();
        let outcome = match event {
            UserEvent::Created(event) => {
                let request =
                    self.request(ApplyUserCreatedRequest { event: Some(event) }, event_id);
                self.deadline(client.apply_user_created(request))
                    .await?
                    .outcome
            }
            UserEvent::Updated(event) => {
                let request =
                    self.request(ApplyUserUpdatedRequest { event: Some(event) }, event_id);
                self.deadline(client.apply_user_updated(request))
                    .await?
                    .outcome
            }
            UserEvent::Deleted(event) => {
                let request =
                    self.request(ApplyUserDeletedRequest { event: Some(event) }, event_id);
                self.deadline(client.apply_user_deleted(request))
                    .await?
                    .outcome
            }
        };
        match Outcome::try_from(outcome) {
            Ok(Outcome::Unspecified) | Err(_) => Err(Error::UnexpectedOutcome(outcome)),
            Ok(known) => Ok(known),
        }
    }

    /// Ok when the sync-service's gRPC health service reports the server (service
    /// `""`) as SERVING; [`Error::NotReady`] otherwise, including when it cannot
    /// be reached.
    pub async fn check_ready(&self) -> Result<(), Error> {
        let mut health = self.health.clone();
        let request = Request::new(HealthCheckRequest {
            service: String::new(),
        });
        match self.deadline(health.check(request)).await {
            Ok(response) if response.status == ServingStatus::Serving as i32 => Ok(()),
            Ok(_) => Err(Error::NotReady(None)),
            Err(Error::Upstream(status)) => Err(Error::NotReady(Some(status))),
            Err(_) => Err(Error::NotReady(None)),
        }
    }

    fn request<T>(&self, message: T, event_id: &str) -> Request<T> {
        let mut request = Request::new(message);
        // Tells the server the deadline (grpc-timeout) so it can give up too.
        request.set_timeout(self.timeout);
        match MetadataValue::try_from(event_id) {
            Ok(value) => {
                request.metadata_mut().insert(EVENT_ID_METADATA, value);
            }
            // The id passed the header checks, so this does not happen; the event
            // itself still carries the id.
            Err(_) => tracing::warn!("event id is not valid gRPC metadata"),
        }
        request
    }

    /// Bounds a call by the deadline, including time spent waiting for a
    /// connection, and unwraps the response message.
    async fn deadline<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Error::Upstream(status)),
            Err(_elapsed) => Err(Error::UpstreamTimeout),
        }
    }
}
