//! Group commit. Events from concurrent requests are queued to writer tasks;
//! each writer takes whatever has queued up (up to `max_batch`) and applies it
//! in one transaction, then answers every request with its own outcome. Under
//! load this turns N commits (N fsyncs, N turns of SQLite's single writer lock)
//! into one, without giving up per-event outcomes or atomic deduplication.

use std::{sync::Arc, time::Instant};

use clerk_sync_common::telemetry;
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};
use tracing::Instrument as _;

use crate::{
    domain::{Event, Outcome},
    error::Error,
    metrics,
    store::Store,
};

/// An event waiting to be applied, and where its outcome goes.
struct Job {
    event: Event,
    reply: oneshot::Sender<Result<Outcome, Error>>,
    /// The request's span, when traced: its batch's commit is recorded under
    /// the first one and linked from the others.
    span: Option<tracing::Span>,
}

/// Sizing of the write path.
#[derive(Clone, Copy, Debug)]
pub struct IngestOptions {
    /// Writer tasks. One makes the biggest batches (SQLite has one writer
    /// anyway, and a PostgreSQL batch is one round trip); more overlap one
    /// batch's commit with the next one's work, which pays only when the
    /// database is far away.
    pub writers: usize,
    /// Most events committed in one transaction.
    pub max_batch: usize,
    /// Most events waiting for their outcome at once; more are shed.
    pub max_pending: usize,
}

/// Hands events to the writer tasks. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Ingestor {
    queue: mpsc::Sender<Job>,
    /// One permit per event waiting for its outcome: bounds the memory and
    /// the wait of a burst, and sheds past it instead of queueing for ever.
    pending: Arc<Semaphore>,
}

impl Ingestor {
    /// Starts the writer tasks. They stop once every `Ingestor` clone is
    /// dropped and the queue is drained, so no accepted event is abandoned.
    pub fn start(store: Store, options: IngestOptions) -> Self {
        let (queue, receiver) = mpsc::channel(options.max_batch * options.writers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..options.writers.max(1) {
            tokio::spawn(write_loop(
                store.clone(),
                receiver.clone(),
                options.max_batch,
            ));
        }
        Self {
            queue,
            pending: Arc::new(Semaphore::new(options.max_pending.max(1))),
        }
    }

    /// Applies one event and waits until its outcome is committed; refuses
    /// at once with [`Error::Overloaded`] when `max_pending` events already
    /// wait.
    pub async fn apply(&self, event: Event) -> Result<Outcome, Error> {
        let _permit = self.pending.try_acquire().map_err(|_| Error::Overloaded)?;
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Job {
                event,
                reply,
                span: telemetry::enabled().then(tracing::Span::current),
            })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        outcome.await.map_err(|_| Error::ShuttingDown)?
    }
}

async fn write_loop(store: Store, receiver: Arc<Mutex<mpsc::Receiver<Job>>>, max_batch: usize) {
    let mut jobs = Vec::with_capacity(max_batch);
    loop {
        {
            // One writer at a time collects a batch; the others wait here
            // while it commits, then collect the next one.
            let mut receiver = receiver.lock().await;
            if receiver.recv_many(&mut jobs, max_batch).await == 0 {
                return;
            }
        }
        let commit = commit_span(&jobs);
        let (events, replies): (Vec<Event>, Vec<_>) =
            jobs.drain(..).map(|job| (job.event, job.reply)).unzip();
        let events: Arc<[Event]> = events.into();
        let started = Instant::now();
        let outcomes = store
            .apply_batch(Arc::clone(&events))
            .instrument(commit)
            .await;
        metrics::record_batch(&events, &outcomes, started.elapsed());
        tracing::debug!(events = events.len(), "batch committed");
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // The caller may have given up (deadline); the outcome stands.
            let _ = reply.send(outcome);
        }
    }
}

/// The span of one batch's commit, when traced: a child of its first
/// event's request, following from the others' (one trace per delivery,
/// each linked to the commit it shared).
fn commit_span(jobs: &[Job]) -> tracing::Span {
    let mut spans = jobs.iter().filter_map(|job| job.span.as_ref());
    let Some(first) = spans.next() else {
        return tracing::Span::none();
    };
    let commit = tracing::info_span!(parent: first, "commit_batch", events = jobs.len());
    for other in spans {
        commit.follows_from(other);
    }
    commit
}
