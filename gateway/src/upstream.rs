//! Forwarding events to the sync-service and asking whether it is ready:
//! the `UserSyncService` and health clients on the [`SyncService`] channel.
//!
//! The channel connects lazily, so requests made while the sync-service is
//! still down get `UNAVAILABLE`, which the gateway answers with 503 so that
//! Svix retries.

use clerk_sync_api::v1::{
    ApplyOrganizationEventRequest, ApplyUserCreatedRequest, ApplyUserDeletedRequest,
    ApplyUserUpdatedRequest, Outcome, apply_organization_event_request,
    organization_sync_service_client::OrganizationSyncServiceClient,
    user_sync_service_client::UserSyncServiceClient,
};
use tonic::{Request, metadata::MetadataValue, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{Error, clerk::UserEvent, sync_service::SyncService};

/// Request metadata key carrying the event id (the svix-id) to the sync-service,
/// so its logs correlate with the gateway's.
pub use clerk_sync_api::EVENT_ID_METADATA;

/// The clients that serve webhooks, sharing one [`SyncService`] channel.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Applies user events.
    sync: UserSyncServiceClient<Channel>,
    /// Applies organization and membership events.
    organizations: OrganizationSyncServiceClient<Channel>,
    /// Answers `/readyz`.
    health: HealthClient<Channel>,
    /// The channel, its token and its deadline.
    service: SyncService,
}

impl Upstream {
    /// The event and health clients on `service`'s channel.
    pub fn new(service: &SyncService) -> Self {
        Self {
            sync: service.sync_client(),
            organizations: OrganizationSyncServiceClient::new(service.channel()),
            health: service.health_client(),
            service: service.clone(),
        }
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
        known_outcome(outcome)
    }

    /// Sends one organization or membership event, with [`Self::forward`]'s
    /// errors.
    pub async fn forward_organization(
        &self,
        event: apply_organization_event_request::Event,
        event_id: &str,
    ) -> Result<Outcome, Error> {
        let mut client = self.organizations.clone();
        let request = self.request(
            ApplyOrganizationEventRequest { event: Some(event) },
            event_id,
        );
        let outcome = self
            .deadline(client.apply_organization_event(request))
            .await?
            .outcome;
        known_outcome(outcome)
    }

    /// Ok when the sync-service's gRPC health service reports the server (service
    /// `""`) as SERVING; [`Error::NotReady`] otherwise, including when it cannot
    /// be reached.
    pub async fn check_ready(&self) -> Result<(), Error> {
        let mut health = self.health.clone();
        let request = self.service.request(HealthCheckRequest {
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
        let mut request = self.service.request(message);
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

    async fn deadline<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Error> {
        self.service.deadline(call, Error::Upstream).await
    }
}

fn known_outcome(outcome: i32) -> Result<Outcome, Error> {
    match Outcome::try_from(outcome) {
        Ok(Outcome::Unspecified) | Err(_) => Err(Error::UnexpectedOutcome(outcome)),
        Ok(known) => Ok(known),
    }
}
