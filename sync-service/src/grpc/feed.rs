//! The change feed RPCs: `WatchUsers` (a stream that catches up from the
//! log, then follows each commit) and `ListChanges` (the same log, a page at
//! a time) of `UserDirectoryService`, and the machinery
//! `OrganizationDirectoryService`'s `WatchOrganizations` shares ([`watch`],
//! over any [`Feed`]). They parse, delegate to the store's change log
//! ([`Store::changes_after`]) and translate.
//!
//! Each watcher first reads the log itself, from where it starts up to the
//! head (a snapshot, or its `after_position`), and sends `caught_up`. From
//! then on it takes the pages the server's one shared reader (`fanout`)
//! reads after each commit, so a commit costs one read however many watch;
//! it converts each entry itself (what its caller may see), but a user is
//! encoded once per audience for all of them (`StoredUser`). It reads by
//! itself again only to fill a hole before a page (it joined between two,
//! or the shared reader skipped a stretch) or once it has fallen more than
//! `fanout::SLICES` pages behind: a slow client costs reads, not memory.
//!
//! A watcher costs the server memory for as long as its client lets it, so
//! watchers are bounded ([`Watchers`], settings in `limits.rs`): so many per
//! server and per token; each holds at most `watch_buffer_bytes` of
//! messages its client has not taken (counted in encoded bytes, not in
//! messages: one snapshot page can be megabytes); and a client that leaves
//! that buffer full for `watch_stall_timeout` has its stream ended with
//! `RESOURCE_EXHAUSTED` naming the position to resume after. Besides its
//! buffer a watcher holds at most the one page it is sending (a shared page
//! is held by the shared reader's bounded broadcast anyway), so a client
//! that never reads costs the server a bounded amount until it is ended. A
//! watcher that leaves asks for the memory it held to be given back
//! (`memory.rs`).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
};

use clerk_sync_api::{
    encoded::{WatchUsersResponse, watch_users_response::Event as WatchEvent},
    v1::{
        self, CaughtUp, ListChangesRequest, ListChangesResponse, UserChange, UserDeletion,
        WatchUsersRequest, watch_users_request::Start,
    },
};
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, watch};
use tokio_stream::{Stream, StreamExt as _, wrappers::UnboundedReceiverStream};
use tonic::Status;

use super::fanout::{self, FanOut, Log, Reader, Slices, UserLog};
use crate::{
    domain::timestamp_from_millis,
    error::Error,
    limits::Limits,
    memory::Trim,
    store::{FeedChange, FeedEntry, Position, Store},
};

/// Entries one ListChanges call returns when it asks for 0.
pub(crate) const DEFAULT_CHANGES_PAGE: u32 = 100;
/// Most entries one ListChanges call may ask for.
pub(crate) const MAX_CHANGES_PAGE: u32 = 1000;

/// The stream a watch RPC answers with: `WatchUsers`' by default.
pub(crate) type WatchStream<M = WatchUsersResponse> =
    Pin<Box<dyn Stream<Item = Result<M, Status>> + Send + 'static>>;

/// A log a watcher follows, and how its entries become stream messages.
pub(crate) trait Feed: Send + Sync + 'static {
    /// One message of the stream.
    type Message: prost::Message + Send + 'static;
    /// The log.
    type Log: Log;

    /// `entry` as this watcher's caller may see it.
    fn message(
        &self,
        entry: &FeedEntry<<Self::Log as Log>::Change>,
    ) -> Result<Self::Message, Error>;

    /// The `caught_up` marker at `position`.
    fn caught_up(position: Position) -> Self::Message;
}

/// The users' log, as `WatchUsers` sends it.
struct Users {
    /// Whether the caller may see private metadata.
    private: bool,
}

impl Feed for Users {
    type Message = WatchUsersResponse;
    type Log = UserLog;

    fn message(&self, entry: &FeedEntry) -> Result<WatchUsersResponse, Error> {
        Ok(watch_message(entry, self.private))
    }

    fn caught_up(position: Position) -> WatchUsersResponse {
        WatchUsersResponse {
            position,
            event: Some(WatchEvent::CaughtUp(CaughtUp {})),
        }
    }
}

/// Where a watcher starts, parsed from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartAt {
    After(Position),
    Now,
    Snapshot,
}

/// Parses where a watch starts (`WatchOrganizations` converts its own oneof
/// into `WatchUsers`').
pub(crate) fn parse_start(start: Option<Start>) -> Result<StartAt, Error> {
    match start {
        Some(Start::AfterPosition(p)) if p < 0 => {
            Err(Error::invalid("after_position", "must not be negative"))
        }
        Some(Start::AfterPosition(p)) => Ok(StartAt::After(p)),
        Some(Start::Now(())) => Ok(StartAt::Now),
        Some(Start::Snapshot(())) => Ok(StartAt::Snapshot),
        None => Err(Error::invalid(
            "start",
            "is required: after_position, now or snapshot",
        )),
    }
}

/// The watchers of one server, counted against its limits, and the shared
/// readers they follow once caught up.
#[derive(Debug)]
pub(crate) struct Watchers {
    limits: Arc<Limits>,
    /// One reader per log for all of this server's watchers.
    fan_out: Arc<FanOut>,
    held: Mutex<Held>,
    /// Asked to give memory back each time a watcher leaves: what it held
    /// is freed, but the allocator keeps the pages unless asked.
    trim: Trim,
}

/// Watchers open now, in all and by token (the digest of each token).
#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_token: HashMap<[u8; 32], usize>,
}

impl Watchers {
    pub(crate) fn new(limits: Arc<Limits>, fan_out: Arc<FanOut>, trim: Trim) -> Arc<Self> {
        Arc::new(Self {
            limits,
            fan_out,
            held: Mutex::new(Held::default()),
            trim,
        })
    }

    /// A place for one more watcher of `token`'s (`None`: a server without
    /// tokens, counted in the total only), or why there is none.
    fn admit(self: &Arc<Self>, token: Option<[u8; 32]>) -> Result<WatcherSlot, Error> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.total >= self.limits.max_watchers {
            return Err(Error::Exhausted(format!(
                "this server has its most change-feed watchers ({}, SYNC_SERVICE_MAX_WATCHERS); \
                 retry later or on another replica",
                self.limits.max_watchers
            )));
        }
        if let Some(token) = token {
            let mine = held.by_token.entry(token).or_default();
            if *mine >= self.limits.max_watchers_per_token {
                return Err(Error::Exhausted(format!(
                    "this token has its most change-feed watchers ({}, \
                     SYNC_SERVICE_MAX_WATCHERS_PER_TOKEN); end one first",
                    self.limits.max_watchers_per_token
                )));
            }
            *mine += 1;
        }
        held.total += 1;
        crate::metrics::set_watchers(held.total);
        Ok(WatcherSlot {
            watchers: Arc::clone(self),
            token,
        })
    }
}

/// One admitted watcher; gives its place back when dropped (with its stream).
#[derive(Debug)]
struct WatcherSlot {
    watchers: Arc<Watchers>,
    token: Option<[u8; 32]>,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut held = self.watchers.held.lock().unwrap_or_else(|e| e.into_inner());
        held.total -= 1;
        if let Some(token) = &self.token
            && let Some(mine) = held.by_token.get_mut(token)
        {
            *mine -= 1;
            if *mine == 0 {
                held.by_token.remove(token);
            }
        }
        crate::metrics::set_watchers(held.total);
        self.watchers.trim.request();
    }
}

/// A message on its way to the client, holding its share of the watcher's
/// buffer until the stream hands it to the connection.
struct Queued<M> {
    message: Result<M, Status>,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// Starts a `WatchUsers` stream for the caller holding `token`; `private`:
/// whether the caller may see private metadata.
pub(crate) async fn watch_users(
    store: &Store,
    stopping: &watch::Receiver<bool>,
    watchers: &Arc<Watchers>,
    token: Option<[u8; 32]>,
    request: WatchUsersRequest,
    private: bool,
) -> Result<WatchStream, Error> {
    let start = parse_start(request.start)?;
    watch(store, stopping, watchers, token, start, Users { private }).await
}

/// Starts a stream of `feed` from `start` for the caller holding `token`.
/// The start is checked (and the starting position found) before answering,
/// so a bad one fails the call itself.
pub(crate) async fn watch<F: Feed>(
    store: &Store,
    stopping: &watch::Receiver<bool>,
    watchers: &Arc<Watchers>,
    token: Option<[u8; 32]>,
    start: StartAt,
    feed: F,
) -> Result<WatchStream<F::Message>, Error> {
    let slot = watchers.admit(token)?;
    // Subscribed before the first read: a slice read after it reaches this.
    let slices = F::Log::shared(&watchers.fan_out).subscribe();
    let (after, hide_deletions_through) = match start {
        StartAt::After(position) => {
            // Fails now (FAILED_PRECONDITION) rather than as a stream error.
            fanout::read::<F::Log>(store, position, 0, 0, Reader::Watcher).await?;
            (position, 0)
        }
        StartAt::Now => (store.feed_head().await?, 0),
        StartAt::Snapshot => (0, store.feed_head().await?),
    };
    let (sender, receiver) = mpsc::unbounded_channel();
    let limits = &watchers.limits;
    let watcher = Watcher {
        store: store.clone(),
        sender,
        buffer: Arc::new(Semaphore::new(limits.watch_buffer_bytes as usize)),
        buffer_bytes: limits.watch_buffer_bytes,
        stall_timeout: limits.watch_stall_timeout,
        slices,
        fan_out: Arc::clone(&watchers.fan_out),
        stopping: stopping.clone(),
        after,
        hide_deletions_through,
        feed,
    };
    tokio::spawn(watcher.run());
    // The slot lives as long as the stream: what the stream still holds
    // counts against the limits until the client (or the server) ends it.
    let stream = UnboundedReceiverStream::new(receiver).map(move |queued: Queued<F::Message>| {
        let _slot = &slot;
        queued.message
    });
    Ok(Box::pin(stream))
}

/// One watch stream's loop.
struct Watcher<F: Feed> {
    store: Store,
    sender: mpsc::UnboundedSender<Queued<F::Message>>,
    /// The watcher's buffer, in bytes of encoded messages not yet taken by
    /// the client's stream.
    buffer: Arc<Semaphore>,
    /// Its size.
    buffer_bytes: u32,
    /// How long a full buffer may wait for the client.
    stall_timeout: std::time::Duration,
    /// The shared reader's slices of the log.
    slices: Slices<<F::Log as Log>::Change>,
    /// The shared readers, told where this watcher waits for slices.
    fan_out: Arc<FanOut>,
    /// Turns true when the server shuts down.
    stopping: watch::Receiver<bool>,
    /// The last position sent (or the start).
    after: Position,
    /// Deletions at or below this are not sent (a snapshot's start).
    hide_deletions_through: Position,
    /// The log it follows.
    feed: F,
}

/// Why a watcher stops taking the shared slices.
enum Left {
    /// It must read the log itself from where it is: a hole before the
    /// next slice, or slices it fell too far behind to get.
    ToRead,
    /// The client went away.
    Gone,
}

impl<F: Feed> Watcher<F> {
    async fn run(mut self) {
        if let Err(status) = self.follow().await {
            // The client may be gone already; nothing else to tell. The last
            // word needs no room in the buffer.
            let _ = self.sender.send(Queued {
                message: Err(status),
                _bytes: None,
            });
        }
    }

    /// Sends what the log holds after `after`, then `caught_up`, then each
    /// change as it commits. Returns Ok when the client goes away, the status
    /// to end the stream with otherwise.
    async fn follow(&mut self) -> Result<(), Status> {
        let mut caught_up = false;
        loop {
            if !self.read_to_head().await? {
                return Ok(());
            }
            if !caught_up {
                caught_up = true;
                if !self.send(F::caught_up(self.after)).await? {
                    return Ok(());
                }
            }
            F::Log::shared(&self.fan_out).joined(self.after);
            match self.take_slices().await? {
                Left::ToRead => {}
                Left::Gone => return Ok(()),
            }
        }
    }

    /// Reads the log itself from `after` up to its head, sending each entry;
    /// false once the client has gone.
    async fn read_to_head(&mut self) -> Result<bool, Status> {
        loop {
            let page = fanout::read::<F::Log>(
                &self.store,
                self.after,
                fanout::PAGE,
                self.hide_deletions_through,
                Reader::Watcher,
            )
            .await?;
            for entry in page.entries {
                let position = entry.position;
                if !self.send(self.feed.message(&entry)?).await? {
                    return Ok(false);
                }
                // Sent: a stream ended from here on resumes after it.
                self.after = position;
            }
            self.after = page.next_after;
            if !page.has_more {
                return Ok(true);
            }
        }
    }

    /// Sends the entries of each shared slice past `after`, until a slice
    /// leaves a hole or the watcher has fallen behind.
    async fn take_slices(&mut self) -> Result<Left, Status> {
        loop {
            let received = tokio::select! {
                received = self.slices.recv() => received,
                () = self.sender.closed() => return Ok(Left::Gone),
                _ = self.stopping.wait_for(|stop| *stop) => return Err(shutting_down()),
            };
            let slice = match received {
                Ok(slice) => slice,
                Err(broadcast::error::RecvError::Lagged(_)) => return Ok(Left::ToRead),
                Err(broadcast::error::RecvError::Closed) => return Err(shutting_down()),
            };
            if slice.next_after <= self.after {
                // Read already (by itself, while catching up).
                continue;
            }
            if slice.after > self.after {
                // A hole: read it, and what follows, itself.
                return Ok(Left::ToRead);
            }
            let sent = self.after;
            for entry in slice.entries.iter().filter(|e| e.position > sent) {
                let position = entry.position;
                if !self.send(self.feed.message(entry)?).await? {
                    return Ok(Left::Gone);
                }
                self.after = position;
            }
            self.after = slice.next_after;
        }
    }

    /// Queues one message once the buffer has room for it; false once the
    /// client has gone, an error once it has left the buffer full too long.
    async fn send(&self, message: F::Message) -> Result<bool, Status> {
        // A message larger than the whole buffer waits for all of it.
        let bytes = u32::try_from(message.encoded_len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.buffer_bytes);
        let room = Arc::clone(&self.buffer).acquire_many_owned(bytes);
        let permit = tokio::select! {
            permit = tokio::time::timeout(self.stall_timeout, room) => match permit {
                Ok(Ok(permit)) => permit,
                Ok(Err(_closed)) => return Ok(false),
                Err(_stalled) => {
                    return Err(Status::resource_exhausted(format!(
                        "this watcher did not read for {} s with {} bytes waiting for it; \
                         resume with after_position {}",
                        self.stall_timeout.as_secs(),
                        self.buffer_bytes,
                        self.after
                    )));
                }
            },
            () = self.sender.closed() => return Ok(false),
            // A stalled client must not hold the server's shutdown.
            _ = wait_stopping(self.stopping.clone()) => return Ok(false),
        };
        let queued = Queued {
            message: Ok(message),
            _bytes: Some(permit),
        };
        Ok(self.sender.send(queued).is_ok())
    }
}

/// How a stream ends when the server shuts down.
fn shutting_down() -> Status {
    Status::unavailable("sync-service is shutting down; resume elsewhere")
}

async fn wait_stopping(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

fn deletion(id: &crate::domain::UserId, deleted_at: crate::domain::Millis) -> UserDeletion {
    UserDeletion {
        id: id.as_str().to_owned(),
        deleted_at: Some(timestamp_from_millis(deleted_at)),
    }
}

fn watch_message(entry: &FeedEntry, private: bool) -> WatchUsersResponse {
    WatchUsersResponse {
        position: entry.position,
        event: Some(match &entry.change {
            // Encoded by the first watcher to send it, shared by the others
            // (the shared reader's page holds one `StoredUser` per change).
            FeedChange::Upsert(user) => WatchEvent::User(user.encoded(private)),
            FeedChange::Deleted { id, deleted_at } => {
                WatchEvent::Deleted(deletion(id, *deleted_at))
            }
        }),
    }
}

/// Answers `ListChanges`; `private` as for [`watch_users`].
pub(crate) async fn list_changes(
    store: &Store,
    request: ListChangesRequest,
    private: bool,
) -> Result<ListChangesResponse, Error> {
    let (after, page_size) = parse_changes_page(request.after_position, request.page_size)?;
    let page = store.changes_after(after, page_size, 0).await?;
    Ok(ListChangesResponse {
        changes: page
            .entries
            .into_iter()
            .map(|entry| UserChange {
                position: entry.position,
                change: Some(match entry.change {
                    FeedChange::Upsert(profile) => {
                        v1::user_change::Change::User(profile.to_proto(private))
                    }
                    FeedChange::Deleted { id, deleted_at } => {
                        v1::user_change::Change::Deleted(deletion(&id, deleted_at))
                    }
                }),
            })
            .collect(),
        next_after_position: page.next_after,
        has_more: page.has_more,
    })
}

/// Parses a polling call's `after_position` and `page_size` (0: the
/// default).
pub(crate) fn parse_changes_page(
    after_position: i64,
    page_size: i32,
) -> Result<(Position, u32), Error> {
    let page_size = match page_size {
        0 => DEFAULT_CHANGES_PAGE,
        n if n < 0 => return Err(Error::invalid("page_size", "must not be negative")),
        n if n as u32 > MAX_CHANGES_PAGE => {
            return Err(Error::invalid(
                "page_size",
                format!("must be at most {MAX_CHANGES_PAGE}"),
            ));
        }
        n => n as u32,
    };
    if after_position < 0 {
        return Err(Error::invalid("after_position", "must not be negative"));
    }
    Ok((after_position, page_size))
}
