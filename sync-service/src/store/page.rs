//! Cursor pagination for ListUsers. The page token is opaque to clients: it
//! encodes the (updated_at, id) of the last user served and the filters it was
//! served under, so a page boundary never skips or repeats a user.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::{
    domain::{Millis, StoredUser, UserId},
    error::Error,
};

/// Version tag of the token layout, so old tokens fail loudly if it changes.
const TOKEN_VERSION: &str = "v2";

/// A ListUsers query, as the gRPC edge parsed it from the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuery {
    /// Users per page, 1..=[`MAX_PAGE_SIZE`](crate::domain::MAX_PAGE_SIZE).
    pub page_size: u32,
    /// Only users with updated_at at or after this.
    pub changed_since: Option<Millis>,
    /// Only banned users (`Some(true)`), only the others (`Some(false)`), or all.
    pub banned: Option<bool>,
    /// Continue after this (updated_at, id).
    pub after: Option<(Millis, UserId)>,
}

/// One page of users and the token for the next.
#[derive(Clone, Debug)]
pub struct Page {
    /// The users, in (updated_at, id) order.
    pub users: Vec<Arc<StoredUser>>,
    /// Empty on the last page.
    pub next_page_token: String,
}

impl ListQuery {
    /// This query, continued after the page that `token` ended (an empty
    /// token: from the first page). Errors name `page_token`: a token this
    /// server did not issue, or issued under other filters.
    pub fn continue_after(mut self, token: &str) -> Result<Self, Error> {
        if !token.is_empty() {
            self.after = Some(self.decode_token(token)?);
        }
        Ok(self)
    }

    /// Builds the page, with a token to continue after `next` (the last
    /// key the page was read up to) when more users follow.
    pub(crate) fn page(&self, users: Vec<Arc<StoredUser>>, next: Option<(Millis, UserId)>) -> Page {
        let next_page_token = match next {
            Some((updated_at, id)) => self.encode_token(updated_at, &id),
            None => String::new(),
        };
        Page {
            users,
            next_page_token,
        }
    }

    /// The filters a token is issued under, as text.
    fn filters(&self) -> String {
        let since = self
            .changed_since
            .map(|ms| ms.to_string())
            .unwrap_or_default();
        let banned = self
            .banned
            .map_or("", |b| if b { "only" } else { "exclude" });
        format!("{since}|{banned}")
    }

    fn encode_token(&self, updated_at: Millis, id: &UserId) -> String {
        let raw = format!(
            "{TOKEN_VERSION}|{}|{updated_at}|{}",
            self.filters(),
            id.as_str()
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn decode_token(&self, token: &str) -> Result<(Millis, UserId), Error> {
        let invalid = || Error::invalid("page_token", "is not a token this server issued");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let raw = String::from_utf8(raw).map_err(|_| invalid())?;
        let mut parts = raw.splitn(5, '|');
        let (Some(TOKEN_VERSION), Some(since), Some(banned), Some(updated_at), Some(id)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(invalid());
        };
        if format!("{since}|{banned}") != self.filters() {
            return Err(Error::invalid(
                "page_token",
                "was issued for different changed_since or banned filters",
            ));
        }
        let updated_at = updated_at.parse::<Millis>().map_err(|_| invalid())?;
        let id = UserId::parse(id.to_owned(), "page_token").map_err(|_| invalid())?;
        Ok((updated_at, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(changed_since: Option<Millis>, banned: Option<bool>) -> ListQuery {
        ListQuery {
            page_size: 10,
            changed_since,
            banned,
            after: None,
        }
    }

    #[test]
    fn tokens_round_trip_ids_with_separators() {
        let id = UserId::parse("user_a|b".into(), "id").unwrap();
        let token = query(None, None).encode_token(42, &id);
        let continued = query(None, None).continue_after(&token).unwrap();
        assert_eq!(continued.after, Some((42, id)));
        assert_eq!(query(None, None).continue_after("").unwrap().after, None);
    }

    #[test]
    fn foreign_and_mismatched_tokens_are_rejected() {
        for bad in ["garbage!", "dGVzdA"] {
            let err = query(None, None).continue_after(bad).unwrap_err();
            assert!(err.to_string().starts_with("page_token"), "{err}");
        }
        let id = UserId::parse("user_1".into(), "id").unwrap();
        for issued in [query(Some(5), None), query(None, Some(true))] {
            let token = issued.encode_token(42, &id);
            let err = query(None, None).continue_after(&token).unwrap_err();
            assert_eq!(
                err.to_string(),
                "page_token was issued for different changed_since or banned filters"
            );
        }
    }
}
