//! `clerk.sync.v1.UserSyncService`: applies events through the group-commit
//! [`Ingestor`].
//!
//! Each call runs in an `apply_event` span carrying the delivery's
//! `event_id` (from the gateway's `x-event-id` metadata as soon as the call
//! arrives, so even a rejected event is logged with it), `event_type` and
//! `user_id`: the same fields as the gateway's `webhook` span, so one delivery
//! can be followed from the HTTP request to its commit.

use clerk_sync_api::{
    EVENT_ID_METADATA,
    v1::{
        self, ApplyUserCreatedRequest, ApplyUserCreatedResponse, ApplyUserDeletedRequest,
        ApplyUserDeletedResponse, ApplyUserUpdatedRequest, ApplyUserUpdatedResponse,
    },
};
use tonic::{Request, Response, Status};
use tracing::{Instrument, field};

use crate::{domain::Event, error::Error, ingest::Ingestor};

/// Serves `UserSyncService`.
#[derive(Clone, Debug)]
pub(crate) struct SyncService {
    pub(crate) ingestor: Ingestor,
    /// The operator opted in to keeping Clerk's private_metadata; otherwise
    /// it is dropped here, before it can reach the database or a log.
    pub(crate) store_private_metadata: bool,
}

impl SyncService {
    fn parse<T>(&self, request: Request<T>) -> Result<Event, Error>
    where
        Event: TryFrom<T, Error = Error>,
    {
        let mut event = Event::try_from(request.into_inner())?;
        if !self.store_private_metadata {
            event.forget_private_metadata();
        }
        Ok(event)
    }

    /// Parses and applies one event inside its `apply_event` span, and
    /// returns its outcome once committed.
    async fn apply<T>(&self, request: Request<T>) -> Result<v1::Outcome, Status>
    where
        Event: TryFrom<T, Error = Error>,
    {
        let span = tracing::info_span!(
            "apply_event",
            event_id = field::Empty,
            event_type = field::Empty,
            user_id = field::Empty,
            outcome = field::Empty,
        );
        if let Some(event_id) = request
            .metadata()
            .get(EVENT_ID_METADATA)
            .and_then(|value| value.to_str().ok())
        {
            span.record("event_id", event_id);
        }
        async {
            let event = self.parse(request)?;
            let span = tracing::Span::current();
            // The event's own id is the deduplication key: it wins over the
            // metadata (they are the same when the gateway sent it).
            span.record("event_id", event.id.as_str());
            span.record("event_type", event.kind.as_str());
            span.record("user_id", event.user_id().as_str());
            let outcome = self.ingestor.apply(event).await?;
            span.record("outcome", field::debug(outcome));
            tracing::info!("event applied");
            Ok(outcome.into())
        }
        .instrument(span)
        .await
    }
}

#[tonic::async_trait]
impl v1::user_sync_service_server::UserSyncService for SyncService {
    async fn apply_user_created(
        &self,
        request: Request<ApplyUserCreatedRequest>,
    ) -> Result<Response<ApplyUserCreatedResponse>, Status> {
        let outcome = self.apply(request).await?;
        Ok(Response::new(ApplyUserCreatedResponse {
            outcome: outcome.into(),
        }))
    }

    async fn apply_user_updated(
        &self,
        request: Request<ApplyUserUpdatedRequest>,
    ) -> Result<Response<ApplyUserUpdatedResponse>, Status> {
        let outcome = self.apply(request).await?;
        Ok(Response::new(ApplyUserUpdatedResponse {
            outcome: outcome.into(),
        }))
    }

    async fn apply_user_deleted(
        &self,
        request: Request<ApplyUserDeletedRequest>,
    ) -> Result<Response<ApplyUserDeletedResponse>, Status> {
        let outcome = self.apply(request).await?;
        Ok(Response::new(ApplyUserDeletedResponse {
            outcome: outcome.into(),
        }))
    }
}
