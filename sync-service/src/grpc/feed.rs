//! The change feed RPCs of `UserDirectoryService`: `WatchUsers` (a stream
//! that catches up from the log, then follows each commit) and `ListChanges`
//! (the same log, a page at a time). They parse, delegate to the store's
//! change log ([`Store::changes_after`]) and translate; waking on commits is
//! the store's signal.

use std::pin::Pin;

use clerk_sync_api::v1::{
    self, CaughtUp, ListChangesRequest, ListChangesResponse, UserChange, UserDeletion,
    WatchUsersRequest, WatchUsersResponse, watch_users_request::Start,
    watch_users_response::Event as WatchEvent,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::Status;

use crate::{
    domain::timestamp_from_millis,
    error::Error,
    store::{FeedChange, FeedEntry, Position, Store},
};

/// Entries one ListChanges call returns when it asks for 0.
pub(crate) const DEFAULT_CHANGES_PAGE: u32 = 100;
/// Most entries one ListChanges call may ask for.
pub(crate) const MAX_CHANGES_PAGE: u32 = 1000;
/// Entries a watcher reads from the log at a time.
const WATCH_PAGE: u32 = 500;
/// Messages buffered per watcher: a slow client paces its own reads.
const WATCH_BUFFER: usize = 256;

/// The stream `WatchUsers` answers with.
pub(crate) type WatchStream =
    Pin<Box<dyn Stream<Item = Result<WatchUsersResponse, Status>> + Send + 'static>>;

/// Where a watcher starts, parsed from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StartAt {
    After(Position),
    Now,
    Snapshot,
}

fn parse_start(request: WatchUsersRequest) -> Result<StartAt, Error> {
    match request.start {
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

/// Starts a `WatchUsers` stream. The request is checked (and the starting
/// position found) before answering, so a bad one fails the call itself.
/// `private`: whether the caller may see private metadata.
pub(crate) async fn watch_users(
    store: &Store,
    stopping: &watch::Receiver<bool>,
    request: WatchUsersRequest,
    private: bool,
) -> Result<WatchStream, Error> {
    let start = parse_start(request)?;
    // Subscribed before the first read: a commit after it rings this.
    let wake = store.subscribe_changes();
    let (after, hide_deletions_through) = match start {
        StartAt::After(position) => {
            // Fails now (FAILED_PRECONDITION) rather than as a stream error.
            store.changes_after(position, 0, 0).await?;
            (position, 0)
        }
        StartAt::Now => (store.feed_head().await?, 0),
        StartAt::Snapshot => (0, store.feed_head().await?),
    };
    let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
    let watcher = Watcher {
        store: store.clone(),
        sender,
        wake,
        stopping: stopping.clone(),
        after,
        hide_deletions_through,
        private,
    };
    tokio::spawn(watcher.run());
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

/// One `WatchUsers` stream's reading loop.
struct Watcher {
    store: Store,
    sender: mpsc::Sender<Result<WatchUsersResponse, Status>>,
    /// Rings when the log may have grown.
    wake: watch::Receiver<u64>,
    /// Turns true when the server shuts down.
    stopping: watch::Receiver<bool>,
    /// The last position sent (or the start).
    after: Position,
    /// Deletions at or below this are not sent (a snapshot's start).
    hide_deletions_through: Position,
    /// Whether the caller may see private metadata.
    private: bool,
}

impl Watcher {
    async fn run(mut self) {
        if let Err(status) = self.follow().await {
            // The client may be gone already; nothing else to tell.
            let _ = self.sender.send(Err(status)).await;
        }
    }

    /// Sends what the log holds after `after`, then `caught_up`, then each
    /// change as it commits. Returns Ok when the client goes away, the status
    /// to end the stream with otherwise.
    async fn follow(&mut self) -> Result<(), Status> {
        let mut caught_up = false;
        loop {
            // Marked seen before reading: a commit during the read rings again.
            self.wake.borrow_and_update();
            let page = self
                .store
                .changes_after(self.after, WATCH_PAGE, self.hide_deletions_through)
                .await?;
            for entry in page.entries {
                if !self.send(watch_message(entry, self.private)).await {
                    return Ok(());
                }
            }
            self.after = page.next_after;
            if page.has_more {
                continue;
            }
            if !caught_up {
                caught_up = true;
                let marker = WatchUsersResponse {
                    position: self.after,
                    event: Some(WatchEvent::CaughtUp(CaughtUp {})),
                };
                if !self.send(marker).await {
                    return Ok(());
                }
            }
            tokio::select! {
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("sync-service is shutting down; resume elsewhere"));
                    }
                }
                () = self.sender.closed() => return Ok(()),
                _ = self.stopping.wait_for(|stop| *stop) => {
                    return Err(Status::unavailable("sync-service is shutting down; resume elsewhere"));
                }
            }
        }
    }

    /// Sends one message; false once the client has gone.
    async fn send(&self, message: WatchUsersResponse) -> bool {
        tokio::select! {
            sent = self.sender.send(Ok(message)) => sent.is_ok(),
            // A stalled client must not hold the server's shutdown.
            _ = wait_stopping(self.stopping.clone()) => false,
        }
    }
}

async fn wait_stopping(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

fn deletion(id: crate::domain::UserId, deleted_at: crate::domain::Millis) -> UserDeletion {
    UserDeletion {
        id: id.as_str().to_owned(),
        deleted_at: Some(timestamp_from_millis(deleted_at)),
    }
}

fn watch_message(entry: FeedEntry, private: bool) -> WatchUsersResponse {
    WatchUsersResponse {
        position: entry.position,
        event: Some(match entry.change {
            FeedChange::Upsert(profile) => WatchEvent::User(profile.into_proto(private)),
            FeedChange::Deleted { id, deleted_at } => WatchEvent::Deleted(deletion(id, deleted_at)),
        }),
    }
}

/// Answers `ListChanges`; `private` as for [`watch_users`].
pub(crate) async fn list_changes(
    store: &Store,
    request: ListChangesRequest,
    private: bool,
) -> Result<ListChangesResponse, Error> {
    let page_size = match request.page_size {
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
    if request.after_position < 0 {
        return Err(Error::invalid("after_position", "must not be negative"));
    }
    let page = store
        .changes_after(request.after_position, page_size, 0)
        .await?;
    Ok(ListChangesResponse {
        changes: page
            .entries
            .into_iter()
            .map(|entry| UserChange {
                position: entry.position,
                change: Some(match entry.change {
                    FeedChange::Upsert(profile) => {
                        v1::user_change::Change::User(profile.into_proto(private))
                    }
                    FeedChange::Deleted { id, deleted_at } => {
                        v1::user_change::Change::Deleted(deletion(id, deleted_at))
                    }
                }),
            })
            .collect(),
        next_after_position: page.next_after,
        has_more: page.has_more,
    })
}
