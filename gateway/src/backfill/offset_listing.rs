//! When an offset-paged listing of Clerk's organizations, memberships,
//! invitations or roles can be trusted: pure code over pages already read.
//!
//! Clerk pages these lists by `offset` only. Asked oldest first
//! (`order_by=+created_at`), an object created during the listing joins its
//! end, but an object deleted during it moves every later one a place
//! forward: the next page, asked at the old offset, would start past an
//! object never listed. So, the rule ([`OffsetListing`]):
//! - pages overlap: the next page is asked [`overlap`] objects before the
//!   end of the last one, and objects are deduplicated by id;
//! - every page after the first must start with an object already listed
//!   (its anchor). A page is a contiguous run of the current order, so an
//!   anchored page holds every object between its anchor and its end:
//!   nothing that existed when the listing started was skipped. A page
//!   that is not anchored (more deletions than the overlap, or an empty
//!   page where the list shrank below the offset) is asked again half a
//!   page earlier, up to [`MAX_STEP_BACKS`] times in a listing;
//! - a full page that brings no new object, unless the listing is
//!   stepping back, means the API ignores the offset: stop instead of
//!   looping; so does a listing far past Clerk's count or with far more
//!   pages than the count needs;
//! - a page shorter than the limit ends the listing, which is complete only
//!   if the number of distinct objects listed agrees with the `total_count`
//!   of the first and of the last page, and the two with each other, within
//!   [`slack`] (the users' rule).
//!
//! Objects Clerk creates within the same millisecond have no documented
//! order among themselves; a page boundary between two of them could swap
//! them. The count check and reconcile's confirmation by id are the net
//! under that: an object the listing missed is asked for by id before
//! anything is tombstoned.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{clerk_api::OrgKind, listing::slack};

/// Step-backs one listing may take before it stops as unstable.
pub const MAX_STEP_BACKS: u32 = 20;

/// Objects two consecutive pages of `limit` share: a tenth of the page,
/// 1 to 50 (a page of `limit` moves on by `limit - overlap`).
pub fn overlap(limit: u32) -> u32 {
    (limit / 10).clamp(1, 50)
}

/// A listing that cannot be trusted, and why.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// The body is not `{data: [...], total_count}` with at most `limit` items.
    #[error("Clerk's page of {kind} is unusable: {reason}")]
    BadPage {
        /// What was listed.
        kind: OrgKind,
        /// What is wrong.
        reason: String,
    },
    /// A full page without one new object, not stepping back.
    #[error(
        "Clerk answered a full page of {kind} at offset {offset} without a single new one: the \
         API does not move on with offset; stopped instead of looping"
    )]
    NoNewObject {
        /// What was listed.
        kind: OrgKind,
        /// The page's offset.
        offset: u64,
    },
    /// Pages kept starting past the objects listed.
    #[error(
        "Clerk's {kind} kept shifting during the listing: {MAX_STEP_BACKS} pages did not start \
         with an object listed before (the last at offset {offset})"
    )]
    Unstable {
        /// What was listed.
        kind: OrgKind,
        /// The last offset asked.
        offset: u64,
    },
    /// Far more objects or pages than Clerk counted.
    #[error(
        "Clerk has listed {listed} distinct {kind} in {pages} pages but counted {count} at the \
         start: stopped instead of listing on"
    )]
    PastCount {
        /// What was listed.
        kind: OrgKind,
        /// Distinct objects listed so far.
        listed: u64,
        /// Pages read so far.
        pages: u64,
        /// Clerk's count on the first page.
        count: u64,
    },
    /// The listing ended with fewer objects than Clerk counts.
    #[error(
        "the listing of {kind} ended after {listed} distinct ones, but Clerk counts {before} at \
         its start and {after} at its end: the listing is incomplete"
    )]
    ShortOfCount {
        /// What was listed.
        kind: OrgKind,
        /// Distinct objects listed.
        listed: u64,
        /// Clerk's count on the first page.
        before: u64,
        /// Clerk's count on the last page.
        after: u64,
    },
    /// Clerk's count moved too much during the listing to judge it.
    #[error(
        "Clerk counted {before} {kind} at the start of the listing and {after} at its end: too \
         large a change to tell a complete listing"
    )]
    CountMoved {
        /// What was listed.
        kind: OrgKind,
        /// Clerk's count on the first page.
        before: u64,
        /// Clerk's count on the last page.
        after: u64,
    },
}

/// One page as Clerk sends it, each object kept raw.
#[derive(Debug)]
pub struct OffsetPage<'a> {
    /// The objects, in the listing's order.
    pub items: Vec<&'a RawValue>,
    /// Clerk's count of all objects of the kind when it answered.
    pub total_count: u64,
}

/// Parses `{data: [...], total_count}` with at most `limit` objects.
pub fn parse_page(body: &[u8], kind: OrgKind, limit: u32) -> Result<OffsetPage<'_>, PagingError> {
    #[derive(Deserialize)]
    struct Page<'a> {
        #[serde(borrow)]
        data: Vec<&'a RawValue>,
        total_count: u64,
    }
    let bad = |reason: String| PagingError::BadPage { kind, reason };
    let page: Page<'_> = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if page.data.len() > limit as usize {
        return Err(bad(format!(
            "{} objects, more than the {limit} asked for",
            page.data.len()
        )));
    }
    Ok(OffsetPage {
        items: page.data,
        total_count: page.total_count,
    })
}

/// A listed object's `id`, if it has a usable one.
pub fn object_id(raw: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        id: Option<String>,
    }
    serde_json::from_str::<Id>(raw.get())
        .ok()?
        .id
        .filter(|id| !id.trim().is_empty())
}

/// What one page brought.
#[derive(Debug, Default)]
pub struct Fresh<'a> {
    /// Objects not listed before, in page order.
    pub fresh: Vec<&'a RawValue>,
    /// Items without a usable id (counted, never applied).
    pub without_id: u64,
}

/// The state of one offset-paged listing.
#[derive(Debug)]
pub struct OffsetListing {
    kind: OrgKind,
    /// Objects asked for per page.
    limit: u32,
    /// Where the next page is asked.
    offset: u64,
    /// Whether the last page ended the listing.
    done: bool,
    /// Whether the listing is re-reading after a page that was not anchored.
    stepping_back: bool,
    step_backs: u32,
    pages: u64,
    /// Clerk's count on the first and on the latest page.
    count_before: Option<u64>,
    count_after: u64,
    /// Ids listed so far.
    seen: HashSet<String>,
}

impl OffsetListing {
    /// A listing of `kind` in pages of `limit` (at least 2: pages overlap).
    pub fn new(kind: OrgKind, limit: u32) -> Self {
        Self {
            kind,
            limit: limit.max(2),
            offset: 0,
            done: false,
            stepping_back: false,
            step_backs: 0,
            pages: 0,
            count_before: None,
            count_after: 0,
            seen: HashSet::new(),
        }
    }

    /// Objects asked for per page.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Where to ask the next page.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the listing reached its end.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Whether `id` was listed.
    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains(id)
    }

    /// The ids listed, in no order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.seen.iter().map(String::as_str)
    }

    /// Distinct objects listed.
    pub fn listed(&self) -> u64 {
        self.seen.len() as u64
    }

    /// Takes the page asked at [`Self::offset`]: the objects it brings, or
    /// why the listing cannot go on. A page that is not anchored brings
    /// nothing and moves the offset back.
    pub fn accept<'a>(&mut self, page: &OffsetPage<'a>) -> Result<Fresh<'a>, PagingError> {
        let offset = self.offset;
        self.pages += 1;
        let before = *self.count_before.get_or_insert(page.total_count);
        self.count_after = page.total_count;
        let expected_pages = (before + slack(before)) / u64::from(self.limit - overlap(self.limit));
        if self.pages > 2 * expected_pages + 2 * u64::from(MAX_STEP_BACKS) + 2 {
            return Err(self.past_count());
        }
        let anchored = offset == 0
            || page
                .items
                .first()
                .and_then(|raw| object_id(raw))
                .is_some_and(|id| self.seen.contains(&id));
        if !anchored {
            if self.step_backs == MAX_STEP_BACKS {
                return Err(PagingError::Unstable {
                    kind: self.kind,
                    offset,
                });
            }
            self.step_backs += 1;
            self.stepping_back = true;
            self.offset = offset.saturating_sub(u64::from(self.limit / 2));
            return Ok(Fresh::default());
        }
        let mut fresh = Fresh::default();
        for &raw in &page.items {
            match object_id(raw) {
                None => fresh.without_id += 1,
                Some(id) => {
                    if self.seen.insert(id) {
                        fresh.fresh.push(raw);
                    }
                }
            }
        }
        let full = page.items.len() == self.limit as usize;
        if full && fresh.fresh.is_empty() && !self.stepping_back {
            return Err(PagingError::NoNewObject {
                kind: self.kind,
                offset,
            });
        }
        if !fresh.fresh.is_empty() {
            self.stepping_back = false;
        }
        if self.listed() > before + slack(before) + u64::from(self.limit) {
            return Err(self.past_count());
        }
        if full {
            self.offset = offset + u64::from(self.limit - overlap(self.limit));
        } else {
            self.done = true;
        }
        Ok(fresh)
    }

    fn past_count(&self) -> PagingError {
        PagingError::PastCount {
            kind: self.kind,
            listed: self.listed(),
            pages: self.pages,
            count: self.count_before.unwrap_or(0),
        }
    }

    /// Judges the ended listing against Clerk's counts on its first and
    /// last pages.
    pub fn check_complete(&self) -> Result<(), PagingError> {
        let (kind, listed, after) = (self.kind, self.listed(), self.count_after);
        let Some(before) = self.count_before.filter(|_| self.done) else {
            return Err(PagingError::ShortOfCount {
                kind,
                listed,
                before: 0,
                after,
            });
        };
        let slack = slack(before.max(after));
        if before.abs_diff(after) > slack {
            return Err(PagingError::CountMoved {
                kind,
                before,
                after,
            });
        }
        if listed + slack < before.min(after) {
            return Err(PagingError::ShortOfCount {
                kind,
                listed,
                before,
                after,
            });
        }
        if listed > before.max(after) + slack {
            return Err(self.past_count());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: OrgKind = OrgKind::Organizations;

    /// Pages `list` (ids) as Clerk would at `offset`, with `total_count`.
    fn page_of(list: &[String], offset: u64, limit: u32) -> String {
        let items: Vec<String> = list
            .iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(|id| format!(r#"{{"id":"{id}"}}"#))
            .collect();
        format!(
            r#"{{"data":[{}],"total_count":{}}}"#,
            items.join(","),
            list.len()
        )
    }

    fn ids(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("org_{i:03}")).collect()
    }

    /// Lists `list` to its end, running `change` on it before each page
    /// (numbered from 1); every id the listing brought.
    fn list_all(
        mut list: Vec<String>,
        limit: u32,
        mut change: impl FnMut(u32, &mut Vec<String>),
    ) -> (OffsetListing, Result<Vec<String>, PagingError>) {
        let mut listing = OffsetListing::new(KIND, limit);
        let mut brought = Vec::new();
        let mut request = 0;
        while !listing.done() {
            request += 1;
            change(request, &mut list);
            let body = page_of(&list, listing.offset(), listing.limit());
            let page = parse_page(body.as_bytes(), KIND, limit).unwrap();
            match listing.accept(&page) {
                Ok(fresh) => brought.extend(fresh.fresh.iter().filter_map(|raw| object_id(raw))),
                Err(error) => return (listing, Err(error)),
            }
        }
        (listing, Ok(brought))
    }

    #[test]
    fn pages_overlap_and_a_quiet_listing_is_complete() {
        let (listing, brought) = list_all(ids(0..25), 10, |_, _| {});
        assert_eq!(brought.unwrap(), ids(0..25));
        listing.check_complete().unwrap();
        assert_eq!(overlap(10), 1);
        assert_eq!(overlap(500), 50);
        assert_eq!(overlap(2), 1);
    }

    #[test]
    fn deletions_behind_the_offset_never_make_it_skip_an_object() {
        // Page 1 lists 0..5; before page 2, three of them go: the objects
        // after them move forward past the next offset (5 - 1 = 4).
        let (listing, brought) = list_all(ids(0..20), 5, |request, list| {
            if request == 2 {
                list.retain(|id| !["org_000", "org_001", "org_002"].contains(&id.as_str()));
            }
        });
        let brought = brought.unwrap();
        for id in ids(5..20) {
            assert!(brought.contains(&id), "{id} skipped");
        }
        assert!(listing.step_backs > 0, "the shift was noticed");
        listing.check_complete().unwrap();
    }

    #[test]
    fn an_api_that_ignores_the_offset_or_keeps_shifting_stops() {
        let mut listing = OffsetListing::new(KIND, 3);
        let first = page_of(&ids(0..9), 0, 3);
        let page = parse_page(first.as_bytes(), KIND, 3).unwrap();
        listing.accept(&page).unwrap();
        let error = listing.accept(&page).unwrap_err();
        assert!(
            matches!(error, PagingError::NoNewObject { offset: 2, .. }),
            "{error}"
        );

        // Every page after the first starts with objects never seen.
        let mut listing = OffsetListing::new(KIND, 3);
        let counted = page_of(&ids(0..1000), 0, 3);
        listing
            .accept(&parse_page(counted.as_bytes(), KIND, 3).unwrap())
            .unwrap();
        let mut start = 1000;
        let error = loop {
            let body = page_of(&ids(start..start + 3), 0, 3);
            start += 3;
            let stranger = parse_page(body.as_bytes(), KIND, 3).unwrap();
            if let Err(error) = listing.accept(&stranger) {
                break error;
            }
        };
        assert!(matches!(error, PagingError::Unstable { .. }), "{error}");
    }

    #[test]
    fn the_end_must_agree_with_the_counts() {
        // A truncated (short) page answered 200 ends the listing early.
        let mut listing = OffsetListing::new(KIND, 50);
        let body = page_of(&ids(0..100), 0, 20);
        let page = parse_page(body.as_bytes(), KIND, 50).unwrap();
        listing.accept(&page).unwrap();
        let error = listing.check_complete().unwrap_err();
        assert!(
            matches!(
                error,
                PagingError::ShortOfCount {
                    listed: 20,
                    before: 100,
                    ..
                }
            ),
            "{error}"
        );
        let unfinished = OffsetListing::new(KIND, 50);
        assert!(unfinished.check_complete().is_err());

        let error = parse_page(page_of(&ids(0..9), 0, 9).as_bytes(), KIND, 3).unwrap_err();
        assert!(error.to_string().contains("more than the 3"), "{error}");
        assert!(parse_page(b"[]", KIND, 3).is_err(), "the users' shape");
    }

    #[test]
    fn a_listing_far_past_the_count_stops() {
        // Every page counts 3 objects; the list goes on and on.
        let mut listing = OffsetListing::new(KIND, 10);
        let all = ids(0..200);
        let error = loop {
            let mut body: serde_json::Value =
                serde_json::from_str(&page_of(&all, listing.offset(), 10)).unwrap();
            body["total_count"] = 3.into();
            let body = body.to_string();
            let page = parse_page(body.as_bytes(), KIND, 10).unwrap();
            if let Err(error) = listing.accept(&page) {
                break error;
            }
        };
        assert!(
            matches!(error, PagingError::PastCount { count: 3, .. }),
            "{error}"
        );
    }
}
