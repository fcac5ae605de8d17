//! Cursor pagination for ListUsers. The page token is opaque to clients: it
//! encodes the (updated_at, id) of the last user served and the filters it was
//! served under, so a page boundary never skips or repeats a user.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clerk_sync_api::v1;

use crate::{
    domain::{Millis, Profile, UserId, millis_from_timestamp},
    error::Error,
};

/// Page size when the request asks for 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page size a request may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Version tag of the token layout, so old tokens fail loudly if it changes.
const TOKEN_VERSION: &str = "v2";

/// A validated ListUsers request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuery {
    /// Users per page, 1..=MAX_PAGE_SIZE.
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
    pub users: Vec<Profile>,
    /// Empty on the last page.
    pub next_page_token: String,
}

impl ListQuery {
    /// Parses a request; errors name the offending field.
    pub fn parse(request: v1::ListUsersRequest) -> Result<Self, Error> {
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => return Err(Error::invalid("page_size", "must not be negative")),
            n if n as u32 > MAX_PAGE_SIZE => {
                return Err(Error::invalid(
                    "page_size",
                    format!("must be at most {MAX_PAGE_SIZE}"),
                ));
            }
            n => n as u32,
        };
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
        let mut query = Self {
            page_size,
            changed_since,
            banned,
            after: None,
        };
        if !request.page_token.is_empty() {
            query.after = Some(query.decode_token(&request.page_token)?);
        }
        Ok(query)
    }

    /// Builds the page, with a next-page token when more users follow.
    pub(crate) fn page(&self, users: Vec<Profile>, has_more: bool) -> Page {
        let next_page_token = match users.last() {
            Some(last) if has_more => self.encode_token(last.updated_at, &last.id),
            _ => String::new(),
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

    fn request(page_size: i32, page_token: &str) -> v1::ListUsersRequest {
        v1::ListUsersRequest {
            page_size,
            page_token: page_token.into(),
            changed_since: None,
            banned: 0,
        }
    }

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
        let query = ListQuery::parse(request(10, &token)).unwrap();
        assert_eq!(query.after, Some((42, id)));
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(
            ListQuery::parse(request(0, "")).unwrap().page_size,
            DEFAULT_PAGE_SIZE
        );
        assert_eq!(ListQuery::parse(request(1000, "")).unwrap().page_size, 1000);
        for bad in [-1, 1001] {
            let err = ListQuery::parse(request(bad, "")).unwrap_err();
            assert!(err.to_string().starts_with("page_size"), "{err}");
        }
    }

    #[test]
    fn foreign_and_mismatched_tokens_are_rejected() {
        for bad in ["garbage!", "dGVzdA"] {
            let err = ListQuery::parse(request(10, bad)).unwrap_err();
            assert!(err.to_string().starts_with("page_token"), "{err}");
        }
        let id = UserId::parse("user_1".into(), "id").unwrap();
        for issued in [query(Some(5), None), query(None, Some(true))] {
            let token = issued.encode_token(42, &id);
            let err = ListQuery::parse(request(10, &token)).unwrap_err();
            assert_eq!(
                err.to_string(),
                "page_token was issued for different changed_since or banned filters"
            );
        }
    }

    #[test]
    fn unknown_banned_filters_are_rejected() {
        let mut bad = request(10, "");
        bad.banned = 7;
        let err = ListQuery::parse(bad).unwrap_err();
        assert_eq!(err.to_string(), "banned 7 is not a BannedFilter value");
    }
}
