//! The change feed read once per server and fanned out to its watchers.
//!
//! Without it every watcher read the log after every wake-up (a local commit,
//! or the poller seeing another replica's), so one commit cost one identical
//! read per watcher. Here one task per log (users', organizations') reads
//! each new stretch of the log once and broadcasts it as a [`Slice`]: the
//! store's entries (not messages: what a caller may see is decided per
//! watcher) and the range they cover, `(after, next_after]`. Slices follow
//! each other without holes, except after a failed shared read: the reader
//! then starts again from the head with an empty slice there, and a watcher
//! behind it finds the hole by the range and reads it itself.
//!
//! With nobody subscribed the reader reads nothing: a commit costs it a
//! wake-up. Watchers that have caught up and wait for slices leave where
//! they stand ([`Shared::joined`]); the first wake-up with subscribers starts
//! reading from the lowest of those places, so nobody finds a hole before its
//! first slice (failing that, at the head, after an empty slice there that
//! tells a watcher behind it to read the stretch up to it itself).
//!
//! Watchers still read by themselves, through the same share of the pool
//! (the store's read semaphore): to catch up from where they start, to fill
//! a hole before the first slice they get, and after falling behind the
//! shared slices (see `feed`).
//!
//! Memory is bounded: the broadcast keeps at most [`SLICES`] slices of at
//! most [`PAGE`] entries, whoever has not taken them; a watcher that falls
//! further behind loses the oldest and learns it (`Lagged`), and reads the
//! log itself from its own position instead.

use std::sync::{Arc, Mutex};

use tokio::{
    sync::{broadcast, watch},
    task::JoinHandle,
};

use crate::{
    error::Error,
    metrics,
    store::{ChangePage, FeedChange, FeedEntry, OrganizationFeedChange, Position, Store},
};

/// Entries one read of the log takes at most: the shared reader's slices
/// and each watcher's own reads alike.
pub(crate) const PAGE: u32 = 500;

/// Slices the broadcast keeps for watchers that have not taken them yet; a
/// watcher further behind reads the log itself.
pub(crate) const SLICES: usize = 32;

/// Which table of the change log a feed follows, and how it is read.
pub(crate) trait Log: Send + Sync + 'static {
    /// What an entry says about its object, as the store reads it.
    type Change: Clone + Send + Sync + 'static;
    /// The log's name in metrics: `users` or `organizations`.
    const NAME: &'static str;

    /// Up to `limit` entries after `after`, deletions at or below
    /// `hide_deletions_through` left out (as [`Store::changes_after`]).
    fn read_page(
        store: &Store,
        after: Position,
        limit: u32,
        hide_deletions_through: Position,
    ) -> impl Future<Output = Result<ChangePage<Self::Change>, Error>> + Send;

    /// This log's shared reader among a server's.
    fn shared(fan_out: &FanOut) -> &Shared<Self>
    where
        Self: Sized;
}

/// The users' log (`user_changes`).
#[derive(Debug)]
pub(crate) struct UserLog;

impl Log for UserLog {
    type Change = FeedChange;
    const NAME: &'static str = "users";

    async fn read_page(
        store: &Store,
        after: Position,
        limit: u32,
        hide_deletions_through: Position,
    ) -> Result<ChangePage<FeedChange>, Error> {
        store
            .changes_after(after, limit, hide_deletions_through)
            .await
    }

    fn shared(fan_out: &FanOut) -> &Shared<Self> {
        &fan_out.users
    }
}

/// The organizations' log (`organization_changes`: organizations and
/// memberships).
#[derive(Debug)]
pub(crate) struct OrganizationLog;

impl Log for OrganizationLog {
    type Change = OrganizationFeedChange;
    const NAME: &'static str = "organizations";

    async fn read_page(
        store: &Store,
        after: Position,
        limit: u32,
        hide_deletions_through: Position,
    ) -> Result<ChangePage<OrganizationFeedChange>, Error> {
        store
            .organization_changes_after(after, limit, hide_deletions_through)
            .await
    }

    fn shared(fan_out: &FanOut) -> &Shared<Self> {
        &fan_out.organizations
    }
}

/// Who reads the log, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reader {
    /// The one shared reader of the server.
    Shared,
    /// A watcher, on its own (catching up, filling a hole, or behind).
    Watcher,
}

/// Reads a page of `L`, counted in the metrics as `reader`'s.
pub(crate) async fn read<L: Log>(
    store: &Store,
    after: Position,
    limit: u32,
    hide_deletions_through: Position,
    reader: Reader,
) -> Result<ChangePage<L::Change>, Error> {
    metrics::count_feed_read(
        L::NAME,
        match reader {
            Reader::Shared => "shared",
            Reader::Watcher => "watcher",
        },
    );
    L::read_page(store, after, limit, hide_deletions_through).await
}

/// One stretch of the log as the shared reader read it: every entry with a
/// position in `(after, next_after]`, in order, each in its state at the
/// read.
#[derive(Debug)]
pub(crate) struct Slice<C> {
    /// The position the stretch starts after.
    pub(crate) after: Position,
    /// The last position it covers.
    pub(crate) next_after: Position,
    /// Its entries, deletions included.
    pub(crate) entries: Vec<FeedEntry<C>>,
}

/// The slices of one log, as a watcher receives them.
pub(crate) type Slices<C> = broadcast::Receiver<Arc<Slice<C>>>;

/// One log's shared reader: where watchers subscribe to its slices.
#[derive(Debug)]
pub(crate) struct Shared<L: Log> {
    slices: broadcast::Sender<Arc<Slice<L::Change>>>,
    /// The lowest position a watcher has caught up to since the reader's
    /// last wake-up: where it starts reading again if it has lost its place.
    joined: Mutex<Option<Position>>,
}

impl<L: Log> Shared<L> {
    fn new() -> Self {
        Self {
            slices: broadcast::Sender::new(SLICES),
            joined: Mutex::new(None),
        }
    }

    /// Notes that a subscribed watcher has caught up to `position` and now
    /// waits for slices.
    pub(crate) fn joined(&self, position: Position) {
        let mut joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
        *joined = Some(joined.map_or(position, |lowest| lowest.min(position)));
    }

    /// The lowest position a watcher joined at since the last call, if any
    /// did.
    fn rejoin(&self) -> Option<Position> {
        self.joined.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Every slice broadcast from now on. Subscribe before reading the log
    /// oneself, so no slice slips between that read and the first one
    /// received.
    pub(crate) fn subscribe(&self) -> Slices<L::Change> {
        self.slices.subscribe()
    }
}

/// A server's shared readers, one per log.
#[derive(Debug)]
pub(crate) struct FanOut {
    users: Shared<UserLog>,
    organizations: Shared<OrganizationLog>,
}

impl FanOut {
    /// Starts the readers of `store`'s logs; each stops when `stopping`
    /// turns true (or when its task is aborted).
    pub(crate) fn start(
        store: &Store,
        stopping: &watch::Receiver<bool>,
    ) -> (Arc<Self>, [JoinHandle<()>; 2]) {
        let fan_out = Arc::new(Self {
            users: Shared::new(),
            organizations: Shared::new(),
        });
        let tasks = [
            tokio::spawn(run::<OrganizationLog>(
                store.clone(),
                Arc::clone(&fan_out),
                stopping.clone(),
            )),
            tokio::spawn(run::<UserLog>(
                store.clone(),
                Arc::clone(&fan_out),
                stopping.clone(),
            )),
        ];
        (fan_out, tasks)
    }
}

/// The shared reader of `L`: after each wake-up, while anyone subscribes,
/// reads what the log gained and broadcasts it.
async fn run<L: Log>(store: Store, fan_out: Arc<FanOut>, mut stopping: watch::Receiver<bool>) {
    let shared = L::shared(&fan_out);
    let mut wake = store.subscribe_changes();
    // How far it has read; `None` when unknown (at start, or after a failed
    // read): then it starts again at the head.
    let mut cursor = None;
    loop {
        // Marked seen before reading: a commit during the read rings again.
        wake.borrow_and_update();
        match step::<L>(&store, shared, cursor).await {
            Ok(next) => cursor = next,
            Err(error) => {
                // Watchers go on waiting, as they would for the next commit;
                // the next wake-up starts again from the head.
                tracing::warn!(%error, feed = L::NAME, "change feed: shared read failed");
                cursor = None;
            }
        }
        tokio::select! {
            changed = wake.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

/// How far the shared reader has read.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    /// The end of the last slice broadcast: where the next one starts.
    published: Position,
    /// Where the next read starts: past `published` when the stretch in
    /// between was read empty. It stays empty (new entries only ever get
    /// positions past the head), so it joins the next slice rather than
    /// waking every watcher for nothing.
    read: Position,
}

/// One wake-up of the shared reader: with nobody subscribed, nothing (its
/// place is lost: `None`); otherwise reads from `cursor` (`None`: from where
/// watchers joined, or else the head) to the log's end and broadcasts what it
/// holds. Returns the new cursor.
async fn step<L: Log>(
    store: &Store,
    shared: &Shared<L>,
    cursor: Option<Cursor>,
) -> Result<Option<Cursor>, Error> {
    let slices = &shared.slices;
    // Taken at every wake-up, so that a place noted while the reader had one
    // is not used long after.
    let joined = shared.rejoin();
    if slices.receiver_count() == 0 {
        return Ok(None);
    }
    let mut cursor = match cursor {
        Some(cursor) => cursor,
        None => {
            let start = match joined {
                Some(joined) => joined,
                None => {
                    // Nobody waits for slices yet (every subscriber is still
                    // catching up, past the head read here); one behind it
                    // learns from this empty slice to read up to it itself.
                    metrics::count_feed_read(L::NAME, "shared");
                    let head = store.feed_head().await?;
                    let _ = slices.send(Arc::new(Slice {
                        after: head,
                        next_after: head,
                        entries: Vec::new(),
                    }));
                    head
                }
            };
            Cursor {
                published: start,
                read: start,
            }
        }
    };
    loop {
        let page = read::<L>(store, cursor.read, PAGE, 0, Reader::Shared).await?;
        cursor.read = page.next_after;
        if !page.entries.is_empty() {
            // No receiver left: nothing to keep.
            let _ = slices.send(Arc::new(Slice {
                after: cursor.published,
                next_after: page.next_after,
                entries: page.entries,
            }));
            cursor.published = page.next_after;
        }
        if !page.has_more {
            return Ok(Some(cursor));
        }
    }
}
