//! The read cache in front of `GetUser`, `BatchGetUsers`, `FindUserByEmail`,
//! `GetMembership` and `CheckPermission`: live users by id, the owner of
//! each verified address (lowercased) by address, and each user's live
//! memberships (all of them, so "no membership" is answered from memory
//! too). A hot read then costs no database round trip. Absence of a user or
//! an address is never cached: a miss always asks the database.
//!
//! # Coherence with this process's writes
//!
//! A read never returns a state older than one whose apply had returned on
//! this replica before the read started. The hazard is a *stale fill*: a
//! reader reads the old row, a writer commits and invalidates, and then the
//! reader inserts the old row it read, where it would stay. Fills are guarded
//! by striped counters (a key's stripe by its hash; ids and addresses share
//! the array), each `{ generation, writing }` under a mutex:
//!
//! - a writer, before it begins its transaction, raises `writing` and bumps
//!   `generation` on the stripes of every key its batch may touch; after the
//!   commit (or the failure: [`WriteGuard`] does it on drop) it invalidates
//!   those keys, then bumps `generation` and lowers `writing` again;
//! - a reader that misses notes its stripe's `generation` (and whether a
//!   writer is in), reads the database, and inserts only if, under the
//!   stripe's lock, no writer is in and `generation` has not moved.
//!
//! Why no stale fill survives: take a reader and a writer on the same key.
//! If the reader's insert (under the lock) came before the writer raised
//! `writing`, the writer's invalidation comes after it and removes it. If it
//! came later, the reader noted its generation either before the writer
//! raised `writing` (the generation has moved since: refused), while the
//! writer was in (refused), or after the writer left, and then the writer had
//! committed and invalidated before the reader even read the database: what
//! it read and inserts is current. A hit needs no check: it was current when
//! inserted, and every later local commit removed it before returning.
//!
//! Invalidation happens before [`Store::apply_batch`] returns (so before the
//! caller learns the outcome) and before the change feed's watchers are rung:
//! once a deletion's apply returned, no read on this replica returns the
//! user. (An apply whose future is dropped while its COMMIT is in flight
//! releases its stripes without knowing whether it committed; the change feed
//! below then bounds how long a fill that raced it can last.)
//!
//! A user's memberships share the user's stripe. What can change them: a
//! membership event (marks its user), a user's deletion (the batch marks the
//! user; the memberships it ends afterwards mark the users again), and an
//! organization's deletion, whose members are known only inside its
//! transaction: it marks every stripe ([`ReadCache::begin_every_member_write`];
//! organizations are deleted rarely). An organization's creation or change
//! changes no membership's liveness.
//!
//! An address's owner can change without the cached owner being written: a
//! newer user verifies it (that user's write invalidates the address: every
//! verified address of an upserted profile is a key of the batch), or the
//! owner drops it or is deleted (the owner's id is invalidated, not the
//! address). So a cached owner is served only if that user, read through the
//! user cache, is live and still has the address verified; otherwise the
//! database answers, and that answer is filled under the same protocol.
//!
//! # Other replicas
//!
//! Commits made through other processes sharing a PostgreSQL database are
//! learnt from the change feed: [`Store::follow_changes_into_cache`] reads
//! the log past the last position it processed on every poll tick and
//! invalidates each changed user (and the verified addresses of its current
//! profile, as the email index holds them) under the same protocol; the
//! organizations' side of the log is followed alike, invalidating the
//! memberships of each changed membership's user, and every user's
//! memberships when an organization changed. A
//! replica therefore serves another's commit at most one poll interval plus
//! one log read late. It reads back its own commits too (their positions are
//! known only inside the write path, and telling them apart by the head
//! before and after a commit is unsafe with other writers), but only their
//! keys: user ids from the log and addresses from the index, no profile. The
//! time-to-live is a backstop, not the mechanism.

use std::{
    hash::{BuildHasher, Hash, RandomState},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use quick_cache::Equivalent;

use super::{Position, Store, entity::organization_memberships, rows::email_key};
use crate::{
    domain::{Change, Event, Profile, StoredUser, UserId},
    error::Error,
};

/// A user's live memberships, as cached.
pub(super) type Memberships = Arc<[organization_memberships::Model]>;

/// Most memberships one user's cache entry holds; a user in more
/// organizations is read from the database each time.
pub(super) const MAX_CACHED_MEMBERSHIPS: usize = 1000;

/// Fill-guard stripes: enough that unrelated keys rarely share one, few
/// enough that a batch of writes marks them in microseconds.
const STRIPES: usize = 1024;

/// Entries older than this are dropped even if no change was seen.
const TIME_TO_LIVE: Duration = Duration::from_secs(300);

/// Change log entries read per page while following the feed.
const FEED_PAGE: u32 = 1000;

/// Whether `user` has `key` (an [`email_key`]) among its verified addresses.
pub(super) fn has_verified(user: &Profile, key: &str) -> bool {
    user.email_addresses
        .iter()
        .any(|email| email.verified && email_key(&email.address) == key)
}

/// A key of any map, for picking its stripe. A user's memberships share
/// the user's stripe, so a user's write covers both.
#[derive(Clone, Copy, Debug)]
enum Key<'a> {
    User(&'a UserId),
    Email(&'a str),
    /// The memberships of the user with this id.
    Member(&'a str),
}

/// One fill guard; see the module documentation.
#[derive(Debug, Default)]
struct Stripe {
    /// Bumped whenever a writer enters or leaves, or the feed invalidates.
    generation: u64,
    /// Writers between their first statement and their invalidation.
    writing: u32,
}

/// One of the cache's maps: at most `capacity` entries, evicted by
/// quick_cache's S3-FIFO (an entry read once, as by a scan of the directory,
/// leaves before those read again), each served for at most
/// [`TIME_TO_LIVE`]. A read costs a shard's read lock and a hash lookup, no
/// bookkeeping of its own: `BatchGetUsers` makes a hundred of them.
struct Map<K, V> {
    entries: quick_cache::sync::Cache<K, (V, Instant)>,
}

impl<K: Eq + Hash, V: Clone> Map<K, V> {
    fn new(capacity: u64) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(capacity.try_into().unwrap_or(usize::MAX)),
        }
    }

    fn get<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q) -> Option<V> {
        self.get_at(key, Instant::now())
    }

    /// The entry for `key` if it is still served at `now`.
    fn get_at<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q, now: Instant) -> Option<V> {
        let (value, expires) = self.entries.get(key)?;
        (now < expires).then_some(value)
    }

    fn insert(&self, key: K, value: V) {
        self.entries
            .insert(key, (value, Instant::now() + TIME_TO_LIVE));
    }

    fn invalidate<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q) {
        self.entries.remove(key);
    }

    fn invalidate_all(&self) {
        self.entries.clear();
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The maps and their fill guards.
pub(super) struct ReadCache {
    /// Live users by id.
    users: Map<UserId, Arc<StoredUser>>,
    /// The owner of each verified address, by [`email_key`].
    emails: Map<String, UserId>,
    /// Each user's live memberships, by user id.
    memberships: Map<String, Memberships>,
    /// The fill guards, [`STRIPES`] of them.
    stripes: Box<[Mutex<Stripe>]>,
    /// Picks a key's stripe.
    hasher: RandomState,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("users", &self.users.len())
            .field("emails", &self.emails.len())
            .field("memberships", &self.memberships.len())
            .finish_non_exhaustive()
    }
}

/// What a reader noted before reading the database: whether its fill may be
/// inserted afterwards.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ticket {
    stripe: usize,
    /// `None` when a writer was in: the fill is dropped.
    generation: Option<u64>,
}

impl ReadCache {
    /// A cache of up to `capacity` users (and as many addresses).
    pub(super) fn new(capacity: u64) -> Self {
        Self {
            users: Map::new(capacity),
            emails: Map::new(capacity),
            memberships: Map::new(capacity),
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    pub(super) fn user(&self, id: &UserId) -> Option<Arc<StoredUser>> {
        self.users.get(id)
    }

    /// [`ReadCache::user`] of each of `ids`, in their order.
    pub(super) fn users(&self, ids: &[UserId]) -> Vec<Option<Arc<StoredUser>>> {
        let now = Instant::now();
        ids.iter().map(|id| self.users.get_at(id, now)).collect()
    }

    pub(super) fn email_owner(&self, key: &str) -> Option<UserId> {
        self.emails.get(key)
    }

    pub(super) fn memberships_of(&self, user_id: &str) -> Option<Memberships> {
        self.memberships.get(user_id)
    }

    /// Notes the state of `user_id`'s memberships' stripe before a database
    /// read.
    pub(super) fn member_ticket(&self, user_id: &str) -> Ticket {
        self.ticket(Key::Member(user_id))
    }

    /// Inserts the live memberships of `user_id`, read after `ticket`, under
    /// the condition of [`ReadCache::fill_user`].
    pub(super) fn fill_memberships(&self, ticket: Ticket, user_id: &str, memberships: Memberships) {
        self.fill(ticket, || {
            self.memberships.insert(user_id.to_owned(), memberships);
        });
    }

    /// Drops the cached owner of the address `key`: it no longer owns it.
    pub(super) fn forget_email(&self, key: &str) {
        self.emails.invalidate(key);
    }

    /// Notes the state of `id`'s stripe before a database read.
    pub(super) fn user_ticket(&self, id: &UserId) -> Ticket {
        self.ticket(Key::User(id))
    }

    /// Notes the state of the address `key`'s stripe before a database read.
    pub(super) fn email_ticket(&self, key: &str) -> Ticket {
        self.ticket(Key::Email(key))
    }

    /// Inserts `user`, read from the database after `ticket` was taken,
    /// unless a write or an invalidation touched its stripe since.
    pub(super) fn fill_user(&self, ticket: Ticket, user: &Arc<StoredUser>) {
        self.fill(ticket, || {
            self.users.insert(user.id.clone(), Arc::clone(user));
        });
    }

    /// Inserts `owner` as the owner of the address `key`, under the same
    /// condition as [`ReadCache::fill_user`].
    pub(super) fn fill_email(&self, ticket: Ticket, key: String, owner: UserId) {
        self.fill(ticket, || self.emails.insert(key, owner));
    }

    /// Marks every key `events` may write: call before the transaction
    /// begins; the guard invalidates them when dropped.
    pub(super) fn begin_write(&self, events: &[Event]) -> WriteGuard<'_> {
        let users: Vec<UserId> = events.iter().map(|e| e.user_id().clone()).collect();
        let emails: Vec<String> = events
            .iter()
            .filter_map(|event| match &event.change {
                Change::Upsert(profile) => Some(&profile.email_addresses),
                Change::Delete { .. } => None,
            })
            .flatten()
            .filter(|email| email.verified)
            .map(|email| email_key(&email.address))
            .collect();
        // A deleted user's memberships stop being live (their user's stripe
        // is marked with the user's).
        let members = events
            .iter()
            .filter(|event| matches!(event.change, Change::Delete { .. }))
            .map(|event| event.user_id().as_str().to_owned())
            .collect();
        let keys = (users.iter().map(Key::User)).chain(emails.iter().map(|key| Key::Email(key)));
        let stripes = keys.map(|key| self.stripe_of(key)).collect();
        self.mark(WriteGuard {
            cache: self,
            users,
            emails,
            members,
            every_member: false,
            stripes,
        })
    }

    /// Marks the memberships of `members` (user ids), which a write is about
    /// to change, as [`ReadCache::begin_write`] does.
    pub(super) fn begin_member_write(&self, members: Vec<String>) -> WriteGuard<'_> {
        let stripes = members
            .iter()
            .map(|user_id| self.stripe_of(Key::Member(user_id)))
            .collect();
        self.mark(WriteGuard {
            cache: self,
            users: Vec::new(),
            emails: Vec::new(),
            members,
            every_member: false,
            stripes,
        })
    }

    /// Marks everyone's memberships: for a write whose members are known only
    /// inside its transaction (an organization's deletion).
    pub(super) fn begin_every_member_write(&self) -> WriteGuard<'_> {
        self.mark(WriteGuard {
            cache: self,
            users: Vec::new(),
            emails: Vec::new(),
            members: Vec::new(),
            every_member: true,
            stripes: (0..STRIPES).collect(),
        })
    }

    /// Raises `writing` and bumps the generation of `guard`'s stripes (made
    /// distinct here).
    fn mark<'a>(&self, mut guard: WriteGuard<'a>) -> WriteGuard<'a> {
        guard.stripes.sort_unstable();
        guard.stripes.dedup();
        for &stripe in &guard.stripes {
            let mut stripe = self.lock(stripe);
            stripe.writing += 1;
            stripe.generation += 1;
        }
        guard
    }

    /// Invalidates the memberships of `members` (user ids) changed elsewhere.
    fn invalidate_members(&self, members: &[String]) {
        for user_id in members {
            self.invalidate(Key::Member(user_id));
        }
    }

    /// Drops everyone's memberships and refuses every fill that began before.
    fn invalidate_every_member(&self) {
        for stripe in 0..STRIPES {
            self.lock(stripe).generation += 1;
        }
        self.memberships.invalidate_all();
    }

    /// Invalidates what changes made elsewhere may have made stale: the
    /// users, and the addresses their current profiles have verified.
    fn invalidate_changed(&self, users: &[UserId], emails: &[String]) {
        for id in users {
            self.invalidate(Key::User(id));
        }
        for key in emails {
            self.invalidate(Key::Email(key));
        }
    }

    /// Drops `key` and refuses fills of its stripe that began before.
    fn invalidate(&self, key: Key<'_>) {
        let mut stripe = self.lock(self.stripe_of(key));
        match key {
            Key::User(id) => self.users.invalidate(id),
            Key::Email(key) => self.emails.invalidate(key),
            Key::Member(user_id) => self.memberships.invalidate(user_id),
        }
        stripe.generation += 1;
    }

    /// Drops everything and refuses every fill that began before.
    fn invalidate_all(&self) {
        // Generations first: a fill inserted after its stripe's bump began
        // its read after it, so after every change this call covers.
        for stripe in 0..STRIPES {
            self.lock(stripe).generation += 1;
        }
        self.users.invalidate_all();
        self.emails.invalidate_all();
        self.memberships.invalidate_all();
    }

    fn ticket(&self, key: Key<'_>) -> Ticket {
        let stripe = self.stripe_of(key);
        let state = self.lock(stripe);
        Ticket {
            stripe,
            generation: (state.writing == 0).then_some(state.generation),
        }
    }

    fn fill(&self, ticket: Ticket, insert: impl FnOnce()) {
        let Some(generation) = ticket.generation else {
            return;
        };
        let stripe = self.lock(ticket.stripe);
        if stripe.writing == 0 && stripe.generation == generation {
            insert();
        }
    }

    fn stripe_of(&self, key: Key<'_>) -> usize {
        let hash = match key {
            Key::User(id) => self.hasher.hash_one(id.as_str()),
            Key::Member(user_id) => self.hasher.hash_one(user_id),
            Key::Email(address) => self.hasher.hash_one(("email", address)),
        };
        (hash % STRIPES as u64) as usize
    }

    /// A stripe's lock. A panic while holding it leaves consistent counters
    /// (each update is one statement), so poisoning is ignored.
    fn lock(&self, stripe: usize) -> MutexGuard<'_, Stripe> {
        self.stripes[stripe]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The keys one write transaction may change, marked on their stripes until
/// dropped: then they are invalidated and the stripes released, whether the
/// transaction committed, failed or panicked.
pub(super) struct WriteGuard<'a> {
    cache: &'a ReadCache,
    users: Vec<UserId>,
    emails: Vec<String>,
    /// The users whose memberships it may change.
    members: Vec<String>,
    /// Whether it may change anyone's memberships.
    every_member: bool,
    /// The distinct stripes of all of the above.
    stripes: Vec<usize>,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        for id in &self.users {
            self.cache.users.invalidate(id);
        }
        for key in &self.emails {
            self.cache.emails.invalidate(key);
        }
        for user_id in &self.members {
            self.cache.memberships.invalidate(user_id);
        }
        if self.every_member {
            self.cache.memberships.invalidate_all();
        }
        for &stripe in &self.stripes {
            let mut stripe = self.cache.lock(stripe);
            stripe.generation += 1;
            stripe.writing -= 1;
        }
    }
}

impl Store {
    /// Keeps the read cache coherent with commits made through other
    /// replicas: every `interval`, if the change log's head moved, reads the
    /// log past the last position processed and invalidates each changed
    /// user. Runs until the task is aborted; returns at once without a cache.
    ///
    /// `from` is the log's head read before the first request was served, so
    /// nothing cached can be older than it.
    pub async fn follow_changes_into_cache(&self, from: Position, interval: Duration) {
        let Some(cache) = self.cache.as_deref() else {
            return;
        };
        // How far each side of the log was read.
        let mut last = (from, from);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let head = match self.feed_head().await {
                Ok(head) => head,
                Err(error) => {
                    tracing::debug!(%error, "read cache: change feed poll failed");
                    continue;
                }
            };
            if last.0 > head || last.1 > head {
                // A log behind what was seen (the database was replaced):
                // nothing cached can be trusted.
                cache.invalidate_all();
                last = (head, head);
                continue;
            }
            if last == (head, head) {
                continue;
            }
            let followed = async {
                let users = self.invalidate_changes_after(cache, last.0).await?;
                let members = self.invalidate_member_changes_after(cache, last.1).await?;
                Ok::<_, Error>((users, members))
            };
            last = match followed.await {
                Ok(read) => read,
                Err(error) => {
                    tracing::debug!(%error, "read cache: cannot follow the change feed; dropping it");
                    cache.invalidate_all();
                    (head, head)
                }
            };
        }
    }

    /// Invalidates every user change after `after`, page by page; returns
    /// the position read up to.
    async fn invalidate_changes_after(
        &self,
        cache: &ReadCache,
        mut after: Position,
    ) -> Result<Position, Error> {
        loop {
            let page = self.changed_keys_after(after, FEED_PAGE).await?;
            cache.invalidate_changed(&page.users, &page.emails);
            after = page.next_after;
            if !page.has_more {
                return Ok(after);
            }
        }
    }

    /// Invalidates the memberships every organization or membership change
    /// after `after` may have changed; returns the position read up to.
    async fn invalidate_member_changes_after(
        &self,
        cache: &ReadCache,
        mut after: Position,
    ) -> Result<Position, Error> {
        loop {
            let page = self.changed_members_after(after, FEED_PAGE).await?;
            if page.organizations_changed {
                cache.invalidate_every_member();
            } else {
                cache.invalidate_members(&page.members);
            }
            after = page.next_after;
            if !page.has_more {
                return Ok(after);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clerk_sync_api::v1;

    use super::*;

    /// An update of `user` carrying `emails` (address, verified).
    fn upsert(user: &str, emails: &[(&str, bool)]) -> Event {
        let user = v1::User {
            id: user.into(),
            email_addresses: emails
                .iter()
                .map(|&(address, verified)| v1::EmailAddress {
                    address: address.into(),
                    verified,
                    primary: false,
                })
                .collect(),
            updated_at: Some(prost_types::Timestamp::default()),
            ..Default::default()
        };
        Event::try_from(v1::ApplyUserUpdatedRequest {
            event: Some(v1::UserUpdated {
                meta: Some(v1::EventMeta {
                    event_id: "msg_1".into(),
                    occurred_at: None,
                }),
                user: Some(user),
            }),
        })
        .unwrap()
    }

    fn profile(user: &str, emails: &[(&str, bool)]) -> Profile {
        match upsert(user, emails).change {
            Change::Upsert(profile) => *profile,
            Change::Delete { .. } => unreachable!("an update"),
        }
    }

    #[test]
    fn a_scan_of_the_directory_does_not_push_out_the_users_read_often() {
        let cache = ReadCache::new(1000);
        let fill = |id: &str| {
            let user = profile(id, &[]);
            cache.fill_user(
                cache.user_ticket(&user.id),
                &Arc::new(StoredUser::new(user)),
            );
        };
        let hot: Vec<UserId> = (0..200)
            .map(|n| profile(&format!("user_hot_{n}"), &[]).id)
            .collect();
        for id in &hot {
            fill(id.as_str());
        }
        for _ in 0..3 {
            for id in &hot {
                assert!(cache.user(id).is_some());
            }
        }
        // A pass over a directory ten times the cache, each user read once.
        for n in 0..10_000 {
            fill(&format!("user_scanned_{n}"));
        }
        let kept = hot.iter().filter(|id| cache.user(id).is_some()).count();
        assert!(
            kept >= 190,
            "only {kept} of 200 hot users survived the scan"
        );
    }

    #[test]
    fn an_entry_is_served_for_its_time_to_live_only() {
        let map = Map::new(10);
        map.entries
            .insert("old", ("stale", Instant::now() - Duration::from_millis(1)));
        map.insert("new", "fresh");
        assert_eq!(map.get("old"), None);
        assert_eq!(map.get("new"), Some("fresh"));
    }

    #[test]
    fn a_fill_without_a_write_in_between_is_kept() {
        let cache = ReadCache::new(100);
        let user = profile("user_1", &[]);
        let ticket = cache.user_ticket(&user.id);
        cache.fill_user(ticket, &Arc::new(StoredUser::new(user.clone())));
        assert_eq!(
            cache.user(&user.id).as_deref().map(|stored| &**stored),
            Some(&user)
        );
    }

    #[test]
    fn a_fill_that_began_before_a_write_is_refused_even_after_it() {
        let cache = ReadCache::new(100);
        let old = profile("user_1", &[("a@example.com", true)]);
        let user_ticket = cache.user_ticket(&old.id);
        let email_ticket = cache.email_ticket("a@example.com");
        drop(cache.begin_write(&[upsert("user_1", &[("a@example.com", true)])]));
        cache.fill_user(user_ticket, &Arc::new(StoredUser::new(old.clone())));
        cache.fill_email(email_ticket, "a@example.com".into(), old.id.clone());
        assert!(cache.user(&old.id).is_none());
        assert!(cache.email_owner("a@example.com").is_none());
    }

    #[test]
    fn no_fill_lands_while_a_write_is_in() {
        let cache = ReadCache::new(100);
        let user = profile("user_1", &[]);
        let writing = cache.begin_write(&[upsert("user_1", &[])]);
        let ticket = cache.user_ticket(&user.id);
        cache.fill_user(ticket, &Arc::new(StoredUser::new(user.clone())));
        assert!(cache.user(&user.id).is_none());
        drop(writing);
        // After the writer left, a read that begins now fills.
        let ticket = cache.user_ticket(&user.id);
        cache.fill_user(ticket, &Arc::new(StoredUser::new(user.clone())));
        assert!(cache.user(&user.id).is_some());
    }

    #[test]
    fn a_write_invalidates_the_user_and_every_verified_address_it_carries() {
        let cache = ReadCache::new(100);
        let owner = profile("user_a", &[("Shared@Example.com", true)]);
        let fill_ticket = cache.email_ticket("shared@example.com");
        cache.fill_email(fill_ticket, "shared@example.com".into(), owner.id.clone());
        cache.fill_user(
            cache.user_ticket(&owner.id),
            &Arc::new(StoredUser::new(owner.clone())),
        );

        let newer = upsert("user_b", &[("SHARED@example.com", true), ("x@y.z", false)]);
        drop(cache.begin_write(&[newer]));
        assert!(cache.email_owner("shared@example.com").is_none());
        // Another user's entry is untouched.
        assert!(cache.user(&owner.id).is_some());
    }

    #[test]
    fn writes_on_one_stripe_nest() {
        let cache = ReadCache::new(100);
        let user = profile("user_1", &[]);
        let first = cache.begin_write(&[upsert("user_1", &[])]);
        let second = cache.begin_write(&[upsert("user_1", &[]), upsert("user_1", &[])]);
        drop(first);
        let ticket = cache.user_ticket(&user.id);
        assert!(ticket.generation.is_none(), "the second writer is still in");
        drop(second);
        let ticket = cache.user_ticket(&user.id);
        cache.fill_user(ticket, &Arc::new(StoredUser::new(user.clone())));
        assert!(cache.user(&user.id).is_some());
    }

    #[test]
    fn a_feed_invalidation_refuses_fills_that_began_before_it() {
        let cache = ReadCache::new(100);
        let user = profile("user_1", &[("a@example.com", true)]);
        let user_ticket = cache.user_ticket(&user.id);
        let email_ticket = cache.email_ticket("a@example.com");
        cache.invalidate_changed(std::slice::from_ref(&user.id), &["a@example.com".into()]);
        cache.fill_user(user_ticket, &Arc::new(StoredUser::new(user.clone())));
        cache.fill_email(email_ticket, "a@example.com".into(), user.id.clone());
        assert!(cache.user(&user.id).is_none());
        assert!(cache.email_owner("a@example.com").is_none());

        cache.fill_user(
            cache.user_ticket(&user.id),
            &Arc::new(StoredUser::new(user.clone())),
        );
        let ticket = cache.user_ticket(&user.id);
        cache.invalidate_all();
        cache.fill_user(ticket, &Arc::new(StoredUser::new(user.clone())));
        assert!(cache.user(&user.id).is_none());
    }

    #[test]
    fn only_verified_addresses_count_and_keys_match_the_index() {
        let user = profile("user_1", &[("A\0b@Example.com", true), ("c@d.e", false)]);
        assert!(has_verified(&user, &email_key("ab@EXAMPLE.com")));
        assert!(!has_verified(&user, "c@d.e"));
    }
}
