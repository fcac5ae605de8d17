//! `clerk.sync.v1.UserDirectoryService`: read-only queries over the [`Store`].
//! Private metadata (when stored at all) goes only to callers that presented
//! a token. The change feed RPCs are in [`super::feed`].
//!
//! Users go out as the store's memoised encodings ([`StoredUser::encoded`]),
//! through the server of [`clerk_sync_api::encoded`]: a user read from the
//! cache is copied into the reply as bytes, with no message built.

use std::collections::HashSet;

use clerk_sync_api::{
    encoded::{BatchGetUsersResponse, FindUserByEmailResponse, GetUserResponse, ListUsersResponse},
    v1::{
        self, BatchGetUsersRequest, FindUserByEmailRequest, GetUserRequest, ListChangesRequest,
        ListChangesResponse, ListUsersRequest, WatchUsersRequest,
    },
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::feed;
use crate::{
    auth::Caller,
    domain::{UserId, millis_from_timestamp, page_size},
    error::Error,
    store::{ListQuery, Store},
};

/// Most ids one BatchGetUsers call may ask for.
pub(crate) const MAX_BATCH_IDS: usize = 100;

/// Serves `UserDirectoryService`.
#[derive(Clone, Debug)]
pub(crate) struct DirectoryService {
    pub(crate) store: Store,
    /// Turns true when the server shuts down: ends WatchUsers streams.
    pub(crate) stopping: watch::Receiver<bool>,
    /// The open WatchUsers streams, against their limits.
    pub(crate) watchers: std::sync::Arc<feed::Watchers>,
}

#[tonic::async_trait]
impl clerk_sync_api::encoded::user_directory_service_server::UserDirectoryService
    for DirectoryService
{
    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let private = Caller::of(&request).is_authenticated();
        let id = UserId::parse(request.into_inner().id, "id")?;
        let user = self.store.get_user(&id).await?;
        Ok(Response::new(GetUserResponse {
            user: Some(user.encoded(private)),
        }))
    }

    async fn batch_get_users(
        &self,
        request: Request<BatchGetUsersRequest>,
    ) -> Result<Response<BatchGetUsersResponse>, Status> {
        let private = Caller::of(&request).is_authenticated();
        let ids = parse_batch(request.into_inner().ids)?;
        let found = self.store.get_users(&ids).await?;
        let mut response = BatchGetUsersResponse {
            users: Vec::with_capacity(found.len()),
            missing_ids: Vec::new(),
        };
        for (id, user) in ids.into_iter().zip(found) {
            match user {
                Some(user) => response.users.push(user.encoded(private)),
                None => response.missing_ids.push(id.into_string()),
            }
        }
        Ok(Response::new(response))
    }

    async fn find_user_by_email(
        &self,
        request: Request<FindUserByEmailRequest>,
    ) -> Result<Response<FindUserByEmailResponse>, Status> {
        let private = Caller::of(&request).is_authenticated();
        let email = request.into_inner().email_address;
        if email.trim().is_empty() {
            return Err(Error::invalid("email_address", "must not be empty").into());
        }
        let user = self.store.find_by_email(email.trim()).await?;
        Ok(Response::new(FindUserByEmailResponse {
            user: Some(user.encoded(private)),
        }))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let private = Caller::of(&request).is_authenticated();
        let query = parse_list_query(request.into_inner())?;
        let page = self.store.list_users(&query).await?;
        Ok(Response::new(ListUsersResponse {
            users: page
                .users
                .iter()
                .map(|user| user.encoded(private))
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    type WatchUsersStream = feed::WatchStream;

    async fn watch_users(
        &self,
        request: Request<WatchUsersRequest>,
    ) -> Result<Response<Self::WatchUsersStream>, Status> {
        let private = Caller::of(&request).is_authenticated();
        // Counted per token only once the token is known to be valid.
        let token = private
            .then(|| crate::auth::token_key(request.metadata()))
            .flatten();
        let stream = feed::watch_users(
            &self.store,
            &self.stopping,
            &self.watchers,
            token,
            request.into_inner(),
            private,
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn list_changes(
        &self,
        request: Request<ListChangesRequest>,
    ) -> Result<Response<ListChangesResponse>, Status> {
        let private = Caller::of(&request).is_authenticated();
        let response = feed::list_changes(&self.store, request.into_inner(), private).await?;
        Ok(Response::new(response))
    }
}

/// Parses a ListUsers request into the store's query; errors name the
/// offending field.
fn parse_list_query(request: ListUsersRequest) -> Result<ListQuery, Error> {
    let page_size = page_size(request.page_size)?;
    let changed_since = request
        .changed_since
        .as_ref()
        .map(|ts| millis_from_timestamp(ts, "changed_since"))
        .transpose()?;
    let banned = match v1::BannedFilter::try_from(request.banned) {
        Ok(v1::BannedFilter::Unspecified) => None,
        Ok(v1::BannedFilter::Exclude) => Some(false),
        Ok(v1::BannedFilter::Only) => Some(true),
        Err(_) => {
            return Err(Error::invalid(
                "banned",
                format!("{} is not a BannedFilter value", request.banned),
            ));
        }
    };
    let query = ListQuery {
        page_size,
        changed_since,
        banned,
        after: None,
    };
    query.continue_after(&request.page_token)
}

/// Validates the ids of a batch and drops repeats, keeping request order.
fn parse_batch(ids: Vec<String>) -> Result<Vec<UserId>, Error> {
    if ids.is_empty() {
        return Err(Error::invalid("ids", "must not be empty"));
    }
    if ids.len() > MAX_BATCH_IDS {
        return Err(Error::invalid(
            "ids",
            format!("must hold at most {MAX_BATCH_IDS} ids, got {}", ids.len()),
        ));
    }
    let mut parsed = Vec::with_capacity(ids.len());
    for (i, id) in ids.into_iter().enumerate() {
        // The field's name is made only for an error: a hundred ids a call.
        let id = UserId::parse(id, "ids").map_err(|error| match error {
            Error::InvalidArgument { reason, .. } => Error::invalid(format!("ids[{i}]"), reason),
            other => other,
        })?;
        parsed.push(id);
    }
    let mut seen = HashSet::with_capacity(parsed.len());
    let first: Vec<bool> = parsed.iter().map(|id| seen.insert(id.as_str())).collect();
    let mut first = first.into_iter();
    parsed.retain(|_| first.next().unwrap_or(false));
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(page_size: i32) -> ListUsersRequest {
        ListUsersRequest {
            page_size,
            page_token: String::new(),
            changed_since: None,
            banned: 0,
        }
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(
            parse_list_query(request(0)).unwrap().page_size,
            crate::domain::DEFAULT_PAGE_SIZE
        );
        assert_eq!(parse_list_query(request(1000)).unwrap().page_size, 1000);
        for bad in [-1, 1001] {
            let err = parse_list_query(request(bad)).unwrap_err();
            assert!(err.to_string().starts_with("page_size"), "{err}");
        }
    }

    #[test]
    fn unknown_banned_filters_are_rejected() {
        let mut bad = request(10);
        bad.banned = 7;
        let err = parse_list_query(bad).unwrap_err();
        assert_eq!(err.to_string(), "banned 7 is not a BannedFilter value");
    }
}
