//! When a listing of Clerk's users can be trusted: the checks every page and
//! the end of the listing must pass, as pure code over pages already read.
//!
//! Reconcile tombstones what a listing lacks, so a listing that is short of
//! users (an empty or truncated page answered 200) must never pass for a
//! complete one, and a listing that does not move on (an API that ignores
//! the cursor) or overflows (pages larger than asked for) must stop instead
//! of looping. A [`Listing`] therefore:
//! - parses a page with a bound: at most `limit` users ([`parse_page`]);
//! - requires every page to bring at least one user not listed before, in
//!   `created_at` order;
//! - stops a listing that runs far past Clerk's count taken before it;
//! - at the end, requires the number of distinct users listed to agree with
//!   Clerk's count taken before and after the listing, and the two counts
//!   with each other, within [`slack`].

use std::{collections::HashSet, fmt};

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A listing that cannot be trusted, and why.
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    /// The body is not a JSON array of at most `limit` users.
    #[error("Clerk's page of users is unusable: {0}")]
    BadPage(String),
    /// A page brought no user not listed before: the cursor is not honoured.
    #[error(
        "Clerk answered a page of {page} users (after {after}) without a single new one \
         (all listed before, or without an id): the API does not move on with \
         starting_after; stopped instead of looping"
    )]
    NoNewUser {
        /// Users on the page.
        page: usize,
        /// The cursor the page was asked after.
        after: String,
    },
    /// A user older than one listed before it: the order is not `created_at`.
    #[error(
        "Clerk listed {user_id:?} (created_at {created_at}) after a user created at {previous}: \
         the listing is not in created_at order"
    )]
    OutOfOrder {
        /// The user out of place.
        user_id: String,
        /// Its creation time (Unix ms).
        created_at: i64,
        /// The latest creation time listed before it.
        previous: i64,
    },
    /// Far more users listed than Clerk counted.
    #[error(
        "Clerk has listed {listed} distinct users but counted {count} before the listing: \
         stopped instead of listing on"
    )]
    PastCount {
        /// Distinct users listed so far.
        listed: u64,
        /// Clerk's count before the listing.
        count: u64,
    },
    /// The listing ended with fewer users than Clerk counts.
    #[error(
        "the listing ended after {listed} distinct users, but Clerk counts {before} before and \
         {after} after it (an empty or truncated page?): the listing is incomplete"
    )]
    ShortOfCount {
        /// Distinct users listed.
        listed: u64,
        /// Clerk's count before the listing.
        before: u64,
        /// Clerk's count after the listing.
        after: u64,
    },
    /// Clerk's count moved too much during the listing to judge it.
    #[error(
        "Clerk counted {before} users before the listing and {after} after it: too large a \
         change to tell a complete listing"
    )]
    CountMoved {
        /// Clerk's count before the listing.
        before: u64,
        /// Clerk's count after the listing.
        after: u64,
    },
}

/// How far a listing may stray from Clerk's count: sign-ups and deletions
/// during the listing, at least 10 users or 1 % of `count`.
pub fn slack(count: u64) -> u64 {
    (count / 100).max(10)
}

/// Parses a page: a JSON array of at most `limit` users, each kept raw.
/// Stops reading at the first user past `limit`.
pub fn parse_page(body: &[u8], limit: u32) -> Result<Vec<&RawValue>, ListingError> {
    struct Page(u32);
    impl<'de> Visitor<'de> for Page {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a JSON array of at most {} users", self.0)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut users = Vec::new();
            while let Some(user) = seq.next_element::<&RawValue>()? {
                if users.len() == self.0 as usize {
                    return Err(de::Error::custom(format!(
                        "more users than the {} asked for",
                        self.0
                    )));
                }
                users.push(user);
            }
            Ok(users)
        }
    }
    impl<'de> DeserializeSeed<'de> for Page {
        type Value = Vec<&'de RawValue>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let page = Page(limit)
        .deserialize(&mut deserializer)
        .and_then(|page| deserializer.end().map(|()| page))
        .map_err(|e| ListingError::BadPage(e.to_string()))?;
    Ok(page)
}

/// The `id` and `created_at` of a listed user, as far as it has them.
#[derive(serde::Deserialize)]
struct Key {
    id: Option<String>,
    created_at: Option<i64>,
}

/// A listed user's `id`, if it has a usable one.
pub fn user_id(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<Key>(raw.get())
        .ok()?
        .id
        .filter(|id| !id.trim().is_empty())
}

/// What one page brought.
#[derive(Debug, Default)]
pub struct PageUsers<'a> {
    /// Users not listed before, in page order.
    pub fresh: Vec<&'a RawValue>,
    /// Items without a usable id (counted, never applied).
    pub without_id: u64,
}

/// The state of one listing.
#[derive(Debug)]
pub struct Listing {
    /// Users asked for per page.
    limit: u32,
    /// Clerk's count before the listing, when Clerk answered it.
    count_before: Option<u64>,
    /// Ids listed so far, in listing order (cursors to step back to).
    order: Vec<String>,
    /// The same ids, for lookups.
    seen: HashSet<String>,
    /// The latest `created_at` listed.
    latest_created: i64,
}

impl Listing {
    /// A listing of pages of `limit` users, judged against `count_before`.
    pub fn new(limit: u32, count_before: Option<u64>) -> Self {
        Self {
            limit,
            count_before,
            order: Vec::new(),
            seen: HashSet::new(),
            latest_created: i64::MIN,
        }
    }

    /// Whether `user_id` was listed.
    pub fn contains(&self, user_id: &str) -> bool {
        self.seen.contains(user_id)
    }

    /// Distinct users listed.
    pub fn listed(&self) -> u64 {
        self.order.len() as u64
    }

    /// The cursor `back` users before the last one listed (0: the last).
    pub fn cursor(&self, back: usize) -> Option<&str> {
        self.order
            .len()
            .checked_sub(back + 1)
            .map(|i| self.order[i].as_str())
    }

    /// Takes a page asked for after `after`: the users it brings, or why
    /// the listing cannot go on.
    pub fn accept<'a>(
        &mut self,
        page: &[&'a RawValue],
        after: Option<&str>,
    ) -> Result<PageUsers<'a>, ListingError> {
        let mut users = PageUsers::default();
        for &raw in page {
            let Ok(Key { id, created_at }) = serde_json::from_str::<Key>(raw.get()) else {
                users.without_id += 1;
                continue;
            };
            let Some(id) = id.filter(|id| !id.trim().is_empty()) else {
                users.without_id += 1;
                continue;
            };
            if self.seen.contains(&id) {
                continue;
            }
            if let Some(created_at) = created_at {
                if created_at < self.latest_created {
                    return Err(ListingError::OutOfOrder {
                        user_id: id,
                        created_at,
                        previous: self.latest_created,
                    });
                }
                self.latest_created = created_at;
            }
            self.seen.insert(id.clone());
            self.order.push(id);
            users.fresh.push(raw);
        }
        if !page.is_empty() && users.fresh.is_empty() {
            return Err(ListingError::NoNewUser {
                page: page.len(),
                after: after.unwrap_or("the start").to_owned(),
            });
        }
        if let Some(count) = self.count_before
            && self.listed() > count + slack(count) + u64::from(self.limit)
        {
            return Err(ListingError::PastCount {
                listed: self.listed(),
                count,
            });
        }
        Ok(users)
    }

    /// Judges the ended listing against Clerk's count after it.
    pub fn check_complete(&self, count_after: u64) -> Result<(), ListingError> {
        let Some(before) = self.count_before else {
            return Err(ListingError::ShortOfCount {
                listed: self.listed(),
                before: 0,
                after: count_after,
            });
        };
        let after = count_after;
        let slack = slack(before.max(after));
        if before.abs_diff(after) > slack {
            return Err(ListingError::CountMoved { before, after });
        }
        let listed = self.listed();
        if listed + slack < before.min(after) {
            return Err(ListingError::ShortOfCount {
                listed,
                before,
                after,
            });
        }
        if listed > before.max(after) + slack {
            return Err(ListingError::PastCount {
                listed,
                count: before,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(range: std::ops::Range<i64>) -> String {
        let items: Vec<String> = range
            .map(|i| format!(r#"{{"id":"user_{i}","created_at":{i}}}"#))
            .collect();
        format!("[{}]", items.join(","))
    }

    #[test]
    fn pages_are_bounded_by_the_limit() {
        assert_eq!(parse_page(users(0..3).as_bytes(), 3).unwrap().len(), 3);
        let error = parse_page(users(0..4).as_bytes(), 3).unwrap_err();
        assert!(
            error.to_string().contains("more users than the 3"),
            "{error}"
        );
        let error = parse_page(b"{}", 3).unwrap_err();
        assert!(error.to_string().contains("array"), "{error}");
        assert!(parse_page(b"[] x", 3).is_err());
    }

    #[test]
    fn a_repeated_page_or_a_step_back_in_time_stops_the_listing() {
        let mut listing = Listing::new(3, Some(6));
        let first = users(0..3);
        let page = parse_page(first.as_bytes(), 3).unwrap();
        assert_eq!(listing.accept(&page, None).unwrap().fresh.len(), 3);
        assert_eq!(listing.cursor(0), Some("user_2"));
        assert_eq!(listing.cursor(2), Some("user_0"));
        assert_eq!(listing.cursor(3), None);
        let error = listing.accept(&page, Some("user_2")).unwrap_err();
        assert!(
            matches!(error, ListingError::NoNewUser { page: 3, .. }),
            "{error}"
        );
        let older = r#"[{"id":"user_x","created_at":1}]"#;
        let page = parse_page(older.as_bytes(), 3).unwrap();
        let error = listing.accept(&page, Some("user_2")).unwrap_err();
        assert!(matches!(error, ListingError::OutOfOrder { .. }), "{error}");
    }

    #[test]
    fn a_listing_far_past_the_count_stops() {
        let mut listing = Listing::new(10, Some(5));
        let mut start = 0;
        let error = loop {
            let body = users(start..start + 10);
            let page = parse_page(body.as_bytes(), 10).unwrap();
            match listing.accept(&page, None) {
                Ok(_) => start += 10,
                Err(error) => break error,
            }
        };
        // 5 counted + 10 slack + a page of 10.
        assert!(
            matches!(
                error,
                ListingError::PastCount {
                    listed: 30,
                    count: 5
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn the_end_must_agree_with_the_counts() {
        let mut listing = Listing::new(500, Some(1_200));
        let body = users(0..1_180);
        let page: Vec<&RawValue> = serde_json::from_str(&body).unwrap();
        listing.accept(&page, None).unwrap();
        // Within 1 % (12) of the counts.
        assert!(listing.check_complete(1_190).is_ok());
        assert!(matches!(
            listing.check_complete(1_200),
            Err(ListingError::ShortOfCount { listed: 1_180, .. })
        ));
        assert!(matches!(
            listing.check_complete(600),
            Err(ListingError::CountMoved { .. })
        ));
        let empty = Listing::new(500, Some(1_200));
        let error = empty.check_complete(1_200).unwrap_err();
        assert!(
            error.to_string().contains("after 0 distinct users"),
            "{error}"
        );
        let uncounted = Listing::new(500, None);
        assert!(uncounted.check_complete(0).is_err());
    }
}
