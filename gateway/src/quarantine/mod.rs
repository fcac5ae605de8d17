//! Quarantine instead of endless retries. Svix retries every non-2xx for
//! about 28 hours and then drops the message, so a verified delivery that no
//! retry can fix (see [`Error::is_poison`]) is stored in the sync-service's
//! quarantine, with its raw body and the reason, and answered `200`. Nothing
//! authentic is dropped; an operator redrives it with `quarantine retry` once
//! a release can take it ([`cli`]).

pub mod cli;

use clerk_sync_api::v1::{
    DropQuarantinedRequest, GetQuarantinedRequest, ListQuarantinedRequest, ListQuarantinedResponse,
    QuarantineRequest, QuarantinedEvent, quarantine_service_client::QuarantineServiceClient,
};
use prost_types::Timestamp;
use tonic::transport::Channel;

use crate::{Error, sync_service::SyncService, verify::Delivery};

/// Client of the sync-service's `QuarantineService`, on the [`SyncService`]
/// channel and with its token.
#[derive(Debug, Clone)]
pub struct Quarantine {
    client: QuarantineServiceClient<Channel>,
    /// The channel, its token and its deadline.
    service: SyncService,
}

impl Quarantine {
    /// A client on `service`'s channel, with explicit message limits: a
    /// quarantined body up to the gateway's body limit must fit.
    pub fn new(service: &SyncService, max_message_bytes: usize) -> Self {
        Self {
            client: service.quarantine_client(max_message_bytes),
            service: service.clone(),
        }
    }

    /// Stores `body` (or bumps the record its event id already has) and
    /// returns once the sync-service has committed it.
    pub async fn store(
        &self,
        delivery: &Delivery<'_>,
        body: &[u8],
        event_type: Option<String>,
        reason: String,
    ) -> Result<QuarantinedEvent, Error> {
        let request = QuarantineRequest {
            event_id: delivery.id.to_owned(),
            event_type: event_type.unwrap_or_default(),
            reason,
            body: body.to_vec(),
            delivered_at: Some(Timestamp {
                seconds: delivery.timestamp,
                nanos: 0,
            }),
        };
        let response = self
            .deadline(
                self.client
                    .clone()
                    .quarantine(self.service.request(request)),
            )
            .await?;
        response
            .event
            .ok_or_else(|| Error::Quarantine(tonic::Status::internal("no record returned")))
    }

    /// One page of records, without bodies.
    pub async fn list(
        &self,
        page_size: i32,
        page_token: String,
    ) -> Result<ListQuarantinedResponse, Error> {
        let request = ListQuarantinedRequest {
            page_size,
            page_token,
        };
        self.deadline(
            self.client
                .clone()
                .list_quarantined(self.service.request(request)),
        )
        .await
    }

    /// One record with its body.
    pub async fn get(&self, event_id: &str) -> Result<QuarantinedEvent, Error> {
        let request = GetQuarantinedRequest {
            event_id: event_id.to_owned(),
        };
        self.deadline(
            self.client
                .clone()
                .get_quarantined(self.service.request(request)),
        )
        .await?
        .event
        .ok_or_else(|| Error::Quarantine(tonic::Status::internal("no record returned")))
    }

    /// Deletes one record.
    pub async fn drop(&self, event_id: &str) -> Result<(), Error> {
        let request = DropQuarantinedRequest {
            event_id: event_id.to_owned(),
        };
        self.deadline(
            self.client
                .clone()
                .drop_quarantined(self.service.request(request)),
        )
        .await
        .map(drop)
    }

    async fn deadline<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Error> {
        self.service.deadline(call, Error::Quarantine).await
    }
}
