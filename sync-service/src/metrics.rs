//! The sync-service's Prometheus metrics: one process-wide registry, the few
//! functions that record into it, and [`GrpcMetricsLayer`], the tower layer
//! wired once in `server.rs` that counts and times every gRPC call. Only
//! [`render`] formats exposition, for `GET /metrics` on the separate metrics
//! listener (`--metrics-listen`, served by
//! [`clerk_sync_common::runtime::serve_metrics`]).
//!
//! Every name starts with `clerk_sync_service_`. Label values come from small
//! fixed sets (event types, outcomes, the methods this server implements, gRPC
//! code names): never an event id, user id or a path a client made up.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use clerk_sync_common::runtime::grpc_code_name;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder, prometheus_text},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Registry,
};
use prost::Message as _;
use tonic::Code;

use crate::{
    domain::{Event, Outcome},
    error::Error,
    store::{ReconcileHealth, Repairs},
};

/// Events by type and what applying them did.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    /// `user.created`, `user.updated` or `user.deleted`.
    event_type: &'static str,
    /// `applied`, `duplicate`, `stale`, `user_deleted`, or `error` (not
    /// committed; the caller got an error status and Svix retries).
    outcome: &'static str,
}

/// A gRPC method this server implements (or `unknown`/`unknown`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    /// Fully qualified service, e.g. `clerk.sync.v1.UserDirectoryService`.
    service: &'static str,
    /// Method name, e.g. `GetUser`.
    method: &'static str,
}

/// A finished gRPC call: its method and status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: &'static str,
    method: &'static str,
    /// Canonical code name, e.g. `NOT_FOUND`.
    code: &'static str,
}

/// Database pool connections by pool and state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    /// `write` or `read`.
    pool: &'static str,
    /// `in_use` or `idle`.
    state: &'static str,
}

/// A read cache lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    /// What was looked up: `id` (GetUser, BatchGetUsers) or `email`
    /// (FindUserByEmail).
    key: &'static str,
    /// `hit` or `miss`.
    result: &'static str,
}

/// A read of the change log by a feed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedReadLabels {
    /// Which log: `users` or `organizations`.
    feed: &'static str,
    /// `shared` (the one reader per server whose pages every caught-up
    /// watcher takes) or `watcher` (a watcher reading by itself: catching
    /// up, filling a hole, or fallen behind the shared pages).
    reader: &'static str,
}

/// What a backfill pass repaired.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepairLabels {
    /// `missed` (a user the directory lacked), `stale` (a user it held an
    /// older copy of) or `tombstoned` (a user Clerk no longer has).
    kind: &'static str,
}

/// The build, as an info metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The label set of a gauge with no labels that is absent from the exposition
/// until first set: a value nobody has measured yet is not reported as 0.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Unlabelled;

impl EncodeLabelSet for Unlabelled {
    fn encode(&self, _encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}

struct Metrics {
    registry: Registry,
    events: Family<EventLabels, Counter>,
    batch_events: Histogram,
    commit_duration: Histogram,
    grpc_calls: Family<CallLabels, Counter>,
    grpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    db_pool: Family<PoolLabels, Gauge>,
    quarantined: Family<Unlabelled, Gauge>,
    quarantined_bytes: Family<Unlabelled, Gauge>,
    quarantine_max_bytes: Gauge,
    change_feed_head: Family<Unlabelled, Gauge>,
    user_cache: Family<CacheLabels, Counter>,
    grpc_connections: Gauge,
    grpc_connections_refused: Counter,
    watchers: Gauge,
    feed_reads: Family<FeedReadLabels, Counter>,
    reconcile_last_success: Family<Unlabelled, Gauge>,
    reconcile_interval: Family<Unlabelled, Gauge>,
    reconcile_repaired: Family<RepairLabels, Counter>,
}

/// Latency buckets, 0.25 ms to ~8 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("clerk_sync_service");
    let events = Family::default();
    registry.register(
        "events",
        "Events handed to the store, by event type and outcome (error: not committed)",
        events.clone(),
    );
    // 1 to 1024: SYNC_MAX_BATCH defaults to 256.
    let batch_events = Histogram::new(exponential_buckets(1.0, 2.0, 11));
    registry.register(
        "commit_batch_events",
        "Events committed together in one group-commit transaction",
        batch_events.clone(),
    );
    let commit_duration = latency_histogram();
    registry.register(
        "commit_duration_seconds",
        "Time to apply and commit one batch of events",
        commit_duration.clone(),
    );
    let grpc_calls = Family::default();
    registry.register(
        "grpc_requests",
        "gRPC calls finished, by service, method and status code",
        grpc_calls.clone(),
    );
    let grpc_duration = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
        latency_histogram,
    );
    registry.register(
        "grpc_request_duration_seconds",
        "Time from a gRPC call's arrival to its last byte (its status), by service and method",
        grpc_duration.clone(),
    );
    let db_pool = Family::default();
    registry.register(
        "db_pool_connections",
        "Database pool connections, by pool (write, read) and state (in_use, idle), sampled every health-check interval",
        db_pool.clone(),
    );
    let quarantined = Family::default();
    registry.register(
        "quarantined_events",
        "Verified events held in quarantine, sampled every health-check interval",
        quarantined.clone(),
    );
    let quarantined_bytes = Family::default();
    registry.register(
        "quarantined_bytes",
        "Bytes of the bodies held in quarantine, sampled every health-check interval",
        quarantined_bytes.clone(),
    );
    let quarantine_max_bytes = Gauge::default();
    registry.register(
        "quarantine_max_bytes",
        "The quarantine's size cap (SYNC_QUARANTINE_MAX_BYTES): past it, new deliveries are refused",
        quarantine_max_bytes.clone(),
    );
    let change_feed_head = Family::default();
    registry.register(
        "change_feed_head",
        "Position of the newest committed change in the change feed, sampled every health-check interval",
        change_feed_head.clone(),
    );
    let user_cache = Family::default();
    registry.register(
        "user_cache_requests",
        "Read cache lookups, by key (id, email) and result (hit, miss)",
        user_cache.clone(),
    );
    let grpc_connections = Gauge::default();
    registry.register(
        "grpc_connections",
        "Open connections on the gRPC port",
        grpc_connections.clone(),
    );
    let grpc_connections_refused = Counter::default();
    registry.register(
        "grpc_connections_refused",
        "Connections closed as soon as accepted: SYNC_SERVICE_MAX_CONNECTIONS were open",
        grpc_connections_refused.clone(),
    );
    let watchers = Gauge::default();
    registry.register(
        "change_feed_watchers",
        "Open change-feed streams (WatchUsers and WatchOrganizations) on this server",
        watchers.clone(),
    );
    let feed_reads = Family::<FeedReadLabels, Counter>::default();
    // Exposed at 0 from the start: "no reads" is a figure too.
    for feed in ["users", "organizations"] {
        for reader in ["shared", "watcher"] {
            let _ = feed_reads.get_or_create(&FeedReadLabels { feed, reader });
        }
    }
    registry.register(
        "feed_reads",
        "Pages read from the change log for WatchUsers and WatchOrganizations, by feed (users, organizations) and reader (shared: once per server for every caught-up watcher; watcher: one watcher on its own)",
        feed_reads.clone(),
    );
    let reconcile_last_success = Family::default();
    registry.register(
        "reconcile_last_success_timestamp_seconds",
        "When the last complete backfill pass from the first user ended (before the first, when the first scheduled pass started), sampled every health-check interval",
        reconcile_last_success.clone(),
    );
    let reconcile_interval = Family::default();
    registry.register(
        "reconcile_interval_seconds",
        "The newest scheduled backfill pass's interval (--every), sampled every health-check interval",
        reconcile_interval.clone(),
    );
    let reconcile_repaired = Family::default();
    registry.register(
        "reconcile_repaired",
        "Users backfill passes repaired, by kind: missed (the directory lacked them), stale (it held an older copy), tombstoned (Clerk no longer has them): webhook deliveries that were lost",
        reconcile_repaired.clone(),
    );
    registry.register(
        "build",
        "The running sync-service's version",
        Info::new(BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
        }),
    );
    Metrics {
        registry,
        events,
        batch_events,
        commit_duration,
        grpc_calls,
        grpc_duration,
        db_pool,
        quarantined,
        quarantined_bytes,
        quarantine_max_bytes,
        change_feed_head,
        user_cache,
        grpc_connections,
        grpc_connections_refused,
        watchers,
        feed_reads,
        reconcile_last_success,
        reconcile_interval,
        reconcile_repaired,
    }
});

/// The registry in the Prometheus text format (0.0.4), for `GET /metrics`.
pub fn render() -> String {
    let mut text = String::new();
    prometheus_text::encode(&mut text, &METRICS.registry)
        .expect("encoding into a String cannot fail");
    text
}

/// Records one group-commit batch: its size, how long applying and
/// committing it took, and each event's outcome.
pub fn record_batch(events: &[Event], outcomes: &[Result<Outcome, Error>], elapsed: Duration) {
    METRICS.batch_events.observe(events.len() as f64);
    METRICS.commit_duration.observe(elapsed.as_secs_f64());
    for (event, outcome) in events.iter().zip(outcomes) {
        let outcome = match outcome {
            Ok(Outcome::Applied) => "applied",
            Ok(Outcome::Duplicate) => "duplicate",
            Ok(Outcome::Stale) => "stale",
            Ok(Outcome::UserDeleted) => "user_deleted",
            Ok(Outcome::Deleted) => "deleted",
            Err(_) => "error",
        };
        METRICS
            .events
            .get_or_create(&EventLabels {
                event_type: event.kind.as_str(),
                outcome,
            })
            .inc();
    }
}

/// Sets the gauges of one database pool, `write` or `read`.
pub fn set_db_pool(pool: &'static str, in_use: u32, idle: u32) {
    let set = |state, value: u32| {
        METRICS
            .db_pool
            .get_or_create(&PoolLabels { pool, state })
            .set(i64::from(value));
    };
    set("in_use", in_use);
    set("idle", idle);
}

/// Sets how many events sit in quarantine (the database watcher in
/// `server.rs` counts them every health-check interval).
pub fn set_quarantined(count: u64, bytes: u64) {
    METRICS
        .quarantined
        .get_or_create(&Unlabelled)
        .set(i64::try_from(count).unwrap_or(i64::MAX));
    METRICS
        .quarantined_bytes
        .get_or_create(&Unlabelled)
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
}

/// Sets the quarantine's size cap, once at start-up.
pub fn set_quarantine_max_bytes(bytes: u64) {
    METRICS
        .quarantine_max_bytes
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
}

/// Sets the change feed's head: the position of the newest committed change
/// (the database watcher in `server.rs` reads it every health-check interval).
pub fn set_change_feed_head(position: i64) {
    METRICS
        .change_feed_head
        .get_or_create(&Unlabelled)
        .set(position);
}

/// Counts a connection opened on the gRPC port (`true`) or closed.
pub fn connection_opened(opened: bool) {
    if opened {
        METRICS.grpc_connections.inc();
    } else {
        METRICS.grpc_connections.dec();
    }
}

/// Sets how many change-feed watchers are open on this server.
pub fn set_watchers(count: usize) {
    METRICS
        .watchers
        .set(i64::try_from(count).unwrap_or(i64::MAX));
}

/// Counts one page read from the change log `feed` (`users` or
/// `organizations`) by `reader` (`shared` or `watcher`).
pub(crate) fn count_feed_read(feed: &'static str, reader: &'static str) {
    METRICS
        .feed_reads
        .get_or_create(&FeedReadLabels { feed, reader })
        .inc();
}

/// Counts a connection refused because `max_connections` were open.
pub fn connection_refused() {
    METRICS.grpc_connections_refused.inc();
}

/// Counts one read cache lookup by `key` (`id` or `email`).
pub fn record_user_cache(key: &'static str, hit: bool) {
    METRICS
        .user_cache
        .get_or_create(&CacheLabels {
            key,
            result: if hit { "hit" } else { "miss" },
        })
        .inc();
}

/// Counts `hits` and `misses` of the read cache looked up by `key` at once
/// (a read of many users).
pub fn record_user_cache_counts(key: &'static str, hits: usize, misses: usize) {
    for (result, count) in [("hit", hits), ("miss", misses)] {
        if count > 0 {
            METRICS
                .user_cache
                .get_or_create(&CacheLabels { key, result })
                .inc_by(count as u64);
        }
    }
}

/// Every method this server can route to, by request path
/// (`/package.Service/Method`) → (service, method), read from the descriptor
/// sets it serves. Anything else a client sends is labelled `unknown`, so
/// made-up paths cannot add series.
static KNOWN_METHODS: LazyLock<HashMap<String, (String, String)>> = LazyLock::new(|| {
    let mut known = HashMap::new();
    for encoded in [
        clerk_sync_api::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        let set = prost_types::FileDescriptorSet::decode(encoded)
            .expect("descriptor sets compiled into the binary decode");
        for file in set.file {
            for service in &file.service {
                let service_name = match file.package() {
                    "" => service.name().to_owned(),
                    package => format!("{package}.{}", service.name()),
                };
                for method in &service.method {
                    known.insert(
                        format!("/{service_name}/{}", method.name()),
                        (service_name.clone(), method.name().to_owned()),
                    );
                }
            }
        }
    }
    known
});

/// The labels of the method at `path` (borrowed from [`KNOWN_METHODS`], so
/// recording a call allocates nothing).
fn method_labels(path: &str) -> MethodLabels {
    match KNOWN_METHODS.get(path) {
        Some((service, method)) => MethodLabels { service, method },
        None => UNKNOWN_METHOD,
    }
}

const UNKNOWN_METHOD: MethodLabels = MethodLabels {
    service: "unknown",
    method: "unknown",
};

/// Tower layer counting and timing every gRPC call by method and status code.
/// Wired once, around the whole router, in `server.rs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around the router.
#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    ResponseBody: Body + Unpin,
{
    type Response = http::Response<MeteredBody<ResponseBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let call = Call {
            method: method_labels(request.uri().path()),
            started: Instant::now(),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // An error status without a message body ("trailers-only") comes
            // in the headers: the call is over. Otherwise it comes in the
            // trailers, at the end of the body.
            let call = match code_in(response.headers()) {
                Some(code) => {
                    call.finish(code);
                    None
                }
                None => Some(call),
            };
            Ok(response.map(|inner| MeteredBody { inner, call }))
        })
    }
}

/// One gRPC call being timed.
#[derive(Debug)]
struct Call {
    method: MethodLabels,
    started: Instant,
}

impl Call {
    fn finish(self, code: Code) {
        METRICS
            .grpc_duration
            .get_or_create(&self.method)
            .observe(self.started.elapsed().as_secs_f64());
        METRICS
            .grpc_calls
            .get_or_create(&CallLabels {
                service: self.method.service,
                method: self.method.method,
                code: grpc_code_name(code),
            })
            .inc();
    }
}

/// The `grpc-status` in `headers` (or trailers), if any.
fn code_in(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(value.parse::<i32>().map_or(Code::Unknown, Code::from))
}

/// A response body that records its call when the status arrives in the
/// trailers, or as `CANCELLED` when the body is dropped before that (the
/// client went away).
#[derive(Debug)]
pub struct MeteredBody<B> {
    inner: B,
    /// The call, until recorded.
    call: Option<Call>,
}

impl<B: Body + Unpin> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|trailers| code_in(trailers).unwrap_or(Code::Unknown)),
            Poll::Ready(Some(Err(_))) => Some(Code::Internal),
            // A body that ends without trailers never said OK.
            Poll::Ready(None) => Some(Code::Unknown),
            Poll::Pending => None,
        };
        if let Some(code) = code
            && let Some(call) = this.call.take()
        {
            call.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.finish(Code::Cancelled);
        }
    }
}

/// Sets the reconcile gauges from the recorded passes (the database watcher
/// in `server.rs` reads them every health-check interval).
pub(crate) fn set_reconcile_health(health: ReconcileHealth) {
    let set = |family: &Family<Unlabelled, Gauge>, ms: Option<i64>| {
        if let Some(ms) = ms {
            family.get_or_create(&Unlabelled).set(ms.div_euclid(1000));
        }
    };
    set(&METRICS.reconcile_last_success, health.last_success_ms);
    set(&METRICS.reconcile_interval, health.every_ms);
}

/// Counts what a report of a backfill pass repaired.
pub(crate) fn record_repairs(repairs: Repairs) {
    for (kind, count) in [
        ("missed", repairs.missed),
        ("stale", repairs.stale),
        ("tombstoned", repairs.tombstoned),
    ] {
        METRICS
            .reconcile_repaired
            .get_or_create(&RepairLabels { kind })
            .inc_by(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_is_known_by_its_path() {
        let get_user = method_labels("/clerk.sync.v1.UserDirectoryService/GetUser");
        assert_eq!(get_user.service, "clerk.sync.v1.UserDirectoryService");
        assert_eq!(get_user.method, "GetUser");
        for path in [
            "/clerk.sync.v1.UserSyncService/ApplyUserCreated",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(KNOWN_METHODS.contains_key(path), "{path}");
        }
        assert_eq!(
            method_labels("/clerk.sync.v1.UserDirectoryService/Nope"),
            UNKNOWN_METHOD
        );
    }

    #[test]
    fn unset_gauges_are_absent_and_set_ones_appear() {
        let text = render();
        assert!(
            !text.contains("clerk_sync_service_change_feed_head "),
            "{text}"
        );
        set_change_feed_head(42);
        set_quarantined(3, 300);
        let text = render();
        assert!(
            text.contains("\nclerk_sync_service_change_feed_head 42\n"),
            "{text}"
        );
        assert!(
            text.contains("\nclerk_sync_service_quarantined_events 3\n"),
            "{text}"
        );
        assert!(
            text.contains("clerk_sync_service_build_info{version=\""),
            "{text}"
        );
    }
}
