//! `clerk.sync.v1.UserSyncService`: applies events through the group-commit
//! [`Ingestor`].

use clerk_sync_api::v1::{
    self, ApplyUserCreatedRequest, ApplyUserCreatedResponse, ApplyUserDeletedRequest,
    ApplyUserDeletedResponse, ApplyUserUpdatedRequest, ApplyUserUpdatedResponse,
};
use tonic::{Request, Response, Status};

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

    #[tracing::instrument(
        name = "apply_event",
        skip_all,
        fields(event_id = %event.id.as_str(), user_id = %event.user_id().as_str(), kind = event.kind.as_str(), outcome)
    )]
    async fn apply(&self, event: Event) -> Result<v1::Outcome, Status> {
        let outcome = self.ingestor.apply(event).await?;
        tracing::Span::current().record("outcome", tracing::field::debug(outcome));
        tracing::info!("event applied");
        Ok(outcome.into())
    }
}

#[tonic::async_trait]
impl v1::user_sync_service_server::UserSyncService for SyncService {
    async fn apply_user_created(
        &self,
        request: Request<ApplyUserCreatedRequest>,
    ) -> Result<Response<ApplyUserCreatedResponse>, Status> {
        let outcome = self.apply(self.parse(request)?).await?;
        Ok(Response::new(ApplyUserCreatedResponse {
            outcome: outcome.into(),
        }))
    }

    async fn apply_user_updated(
        &self,
        request: Request<ApplyUserUpdatedRequest>,
    ) -> Result<Response<ApplyUserUpdatedResponse>, Status> {
        let outcome = self.apply(self.parse(request)?).await?;
        Ok(Response::new(ApplyUserUpdatedResponse {
            outcome: outcome.into(),
        }))
    }

    async fn apply_user_deleted(
        &self,
        request: Request<ApplyUserDeletedRequest>,
    ) -> Result<Response<ApplyUserDeletedResponse>, Status> {
        let outcome = self.apply(self.parse(request)?).await?;
        Ok(Response::new(ApplyUserDeletedResponse {
            outcome: outcome.into(),
        }))
    }
}
