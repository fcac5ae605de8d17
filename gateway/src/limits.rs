//! Connection hygiene: what keeps a public endpoint up under slow or hostile
//! clients. Each limit is a setting ([`Limits`]) with a default that closes an
//! idle or stalled connection within 30 seconds.
//!
//! - **Request head**: from accept (protocol detection included) or from the
//!   first byte after the previous response, a complete request head must
//!   arrive within `header_timeout`.
//! - **Body**: a request body must arrive in full within `body_timeout`
//!   (enforced where the body is read: `408`).
//! - **Idle keep-alive**: a connection with nothing in flight and nothing
//!   arriving is closed after `idle_timeout`.
//! - **HTTP/2**: keep-alive pings and a cap on concurrent streams.
//! - **Caps**: at most `max_connections` open connections (more are answered
//!   `503` and closed), `max_bodies_per_connection` request bodies arriving
//!   on one connection, and `max_in_flight` webhooks being processed (more
//!   are answered `503` at once; Svix retries). A webhook takes its place
//!   among those processed only once its body has arrived, so bodies that
//!   never finish cannot hold the places real deliveries need.
//!
//! The first three are enforced by a watchdog per connection ([`Watchdog`])
//! fed by the socket wrapper [`Watched`] (bytes arriving) and the
//! [`RequestGuard`] each request holds (requests in flight).

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use clerk_sync_common::settings::{parse_count, parse_positive_secs};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

/// Connection and load limits of the gateway (flags and environment
/// variables; see the README's settings table).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// Seconds a client has to send a complete request head (protocol
    /// detection included), from connecting or from its first byte after the
    /// previous response.
    #[arg(
        long = "header-timeout-secs", value_name = "SECS",
        env = "GATEWAY_HEADER_TIMEOUT_SECS",
        default_value = "10",
        value_parser = parse_positive_secs
    )]
    pub header_timeout: Duration,

    /// Seconds a client has to send a whole request body; past it: 408.
    #[arg(
        long = "body-timeout-secs", value_name = "SECS",
        env = "GATEWAY_BODY_TIMEOUT_SECS",
        default_value = "20",
        value_parser = parse_positive_secs
    )]
    pub body_timeout: Duration,

    /// Seconds an idle keep-alive connection (nothing in flight, nothing
    /// arriving) stays open.
    #[arg(
        long = "idle-timeout-secs", value_name = "SECS",
        env = "GATEWAY_IDLE_TIMEOUT_SECS",
        default_value = "20",
        value_parser = parse_positive_secs
    )]
    pub idle_timeout: Duration,

    /// Seconds between HTTP/2 keep-alive pings.
    #[arg(
        long = "http2-keepalive-interval-secs", value_name = "SECS",
        env = "GATEWAY_HTTP2_KEEPALIVE_INTERVAL_SECS",
        default_value = "20",
        value_parser = parse_positive_secs
    )]
    pub http2_keepalive_interval: Duration,

    /// Seconds an HTTP/2 keep-alive ping may go unanswered before the
    /// connection is closed.
    #[arg(
        long = "http2-keepalive-timeout-secs", value_name = "SECS",
        env = "GATEWAY_HTTP2_KEEPALIVE_TIMEOUT_SECS",
        default_value = "10",
        value_parser = parse_positive_secs
    )]
    pub http2_keepalive_timeout: Duration,

    /// Most concurrent streams on one HTTP/2 connection.
    #[arg(
        long = "http2-max-streams", value_name = "N",
        env = "GATEWAY_HTTP2_MAX_STREAMS",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub http2_max_streams: u32,

    /// Most open connections; more are answered 503 and closed.
    #[arg(
        long = "max-connections", value_name = "N",
        env = "GATEWAY_MAX_CONNECTIONS",
        default_value_t = 2048,
        value_parser = parse_count
    )]
    pub max_connections: usize,

    /// Most webhooks processed at once; more are answered 503 at once.
    #[arg(
        long = "max-in-flight", value_name = "N",
        env = "GATEWAY_MAX_IN_FLIGHT",
        default_value_t = 512,
        value_parser = parse_count
    )]
    pub max_in_flight: usize,

    /// Most request bodies being received at once on one connection (HTTP/2
    /// streams); more are answered 503 at once.
    #[arg(
        long = "max-bodies-per-connection", value_name = "N",
        env = "GATEWAY_MAX_BODIES_PER_CONNECTION",
        default_value_t = 8,
        value_parser = parse_count
    )]
    pub max_bodies_per_connection: usize,

    /// Largest gRPC message sent to or received from the sync-service, in
    /// bytes; must exceed the body limit by 64 KiB (a quarantined body travels
    /// in one message). Keep it at or below the sync-service's
    /// GRPC_MAX_MESSAGE_BYTES.
    #[arg(
        long = "max-message-bytes", value_name = "BYTES",
        env = "SYNC_SERVICE_MAX_MESSAGE_BYTES",
        default_value_t = Limits::DEFAULT_MAX_MESSAGE_BYTES,
        value_parser = parse_count
    )]
    pub max_message_bytes: usize,
}

impl Limits {
    /// Default of `--max-message-bytes`: 16 MiB, the sync-service's default.
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
    /// Room a quarantine message needs beside the body it carries.
    pub const MESSAGE_OVERHEAD: usize = 64 * 1024;

    /// Checks the settings against each other and the body limit.
    pub fn check(&self, body_limit: usize) -> Result<(), crate::Error> {
        if self.max_message_bytes < body_limit.saturating_add(Self::MESSAGE_OVERHEAD) {
            return Err(crate::Error::Config {
                setting: "SYNC_SERVICE_MAX_MESSAGE_BYTES",
                reason: format!(
                    "must be at least GATEWAY_BODY_LIMIT + {} bytes ({})",
                    Self::MESSAGE_OVERHEAD,
                    body_limit.saturating_add(Self::MESSAGE_OVERHEAD)
                ),
            });
        }
        Ok(())
    }

    /// How often a watchdog looks at its connection: often enough that a
    /// deadline is never overshot by more than half the shortest timeout.
    fn check_interval(&self) -> Duration {
        (self.header_timeout.min(self.idle_timeout) / 2).max(Duration::from_millis(5))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(20),
            http2_keepalive_interval: Duration::from_secs(20),
            http2_keepalive_timeout: Duration::from_secs(10),
            http2_max_streams: 64,
            max_connections: 2048,
            max_in_flight: 512,
            max_bodies_per_connection: 8,
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// The gateway-wide caps: open connections and webhooks in flight.
#[derive(Debug)]
pub(crate) struct Caps {
    connections: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
}

impl Caps {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
        }
    }

    /// A place for one more connection, if there is one.
    pub(crate) fn connection(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.connections).try_acquire_owned().ok()
    }

    /// A place for one more webhook in flight, if there is one.
    pub(crate) fn webhook(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.in_flight).try_acquire_owned().ok()
    }
}

/// The answer to a connection past `max_connections`, before closing it.
const SHED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
content-length: 46\r\n\
connection: close\r\n\
\r\n\
{\"error\": \"too many connections, retry later\"}";

/// Answers a connection past the cap with `503` and closes it, spending at
/// most a second on it. The request is not read (only discarded after the
/// answer, so the client reads the 503 rather than a reset).
pub(crate) async fn shed(mut stream: TcpStream) {
    let answer = async {
        stream.write_all(SHED_RESPONSE).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// What a connection's watchdog knows about it. Times are milliseconds since
/// the connection was accepted.
#[derive(Debug)]
pub(crate) struct Activity {
    accepted: Instant,
    /// Last time bytes arrived or a response was finished.
    last_active: AtomicU64,
    /// When the first byte of the request head being received arrived;
    /// [`NO_HEAD`] while none is being received. A new connection starts with
    /// a head "in progress" at 0, so protocol detection is timed too.
    head_started: AtomicU64,
    /// Requests between head complete and response sent.
    in_flight: AtomicUsize,
    /// Request bodies being received.
    bodies: AtomicUsize,
}

const NO_HEAD: u64 = u64::MAX;

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            accepted: Instant::now(),
            last_active: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            bodies: AtomicUsize::new(0),
        })
    }

    /// A place to receive one more request body on this connection, if it
    /// has fewer than `max` bodies arriving.
    pub(crate) fn body_started(self: &Arc<Self>, max: usize) -> Option<BodyGuard> {
        self.bodies
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bodies| {
                (bodies < max).then_some(bodies + 1)
            })
            .ok()?;
        Some(BodyGuard {
            activity: Arc::clone(self),
        })
    }

    fn now(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    fn bytes_arrived(&self) {
        let now = self.now();
        self.last_active.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            // The first byte after the previous response starts a head.
            let _ = self.head_started.compare_exchange(
                NO_HEAD,
                now,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// Marks a request head as complete; the guard marks its end.
    pub(crate) fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NO_HEAD, Ordering::Release);
        RequestGuard {
            activity: Arc::clone(self),
        }
    }

    /// When the connection must close if nothing changes, or `None` while a
    /// request is in flight (the request's own deadlines bound it).
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let millis = match self.head_started.load(Ordering::Acquire) {
            NO_HEAD => {
                self.last_active.load(Ordering::Relaxed) + limits.idle_timeout.as_millis() as u64
            }
            started => started + limits.header_timeout.as_millis() as u64,
        };
        Some(self.accepted + Duration::from_millis(millis))
    }
}

/// Held while a request is being answered.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    activity: Arc<Activity>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let now = self.activity.now();
        self.activity.last_active.store(now, Ordering::Relaxed);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Held while a request body is being received.
#[derive(Debug)]
pub(crate) struct BodyGuard {
    activity: Arc<Activity>,
}

impl Drop for BodyGuard {
    fn drop(&mut self) {
        self.activity.bodies.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Completes when the connection has been idle or stalled past its limits.
#[derive(Debug)]
pub(crate) struct Watchdog {
    activity: Arc<Activity>,
    limits: Arc<Limits>,
}

impl Watchdog {
    pub(crate) fn new(activity: Arc<Activity>, limits: Arc<Limits>) -> Self {
        Self { activity, limits }
    }

    /// Returns once the connection should be closed.
    pub(crate) async fn expired(&self) {
        let interval = self.limits.check_interval();
        loop {
            let now = Instant::now();
            match self.activity.deadline(&self.limits) {
                Some(deadline) if deadline <= now => return,
                Some(deadline) => tokio::time::sleep_until(deadline.min(now + interval)).await,
                None => tokio::time::sleep(interval).await,
            }
        }
    }
}

/// A socket that tells its connection's [`Activity`] when bytes arrive.
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        result
    }
}

clerk_sync_common::forward_async_write!(Watched, inner);

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        }
    }

    #[test]
    fn shed_response_declares_its_length() {
        let text = std::str::from_utf8(SHED_RESPONSE).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[tokio::test]
    async fn a_new_connection_must_send_a_head_in_time() {
        let activity = Activity::new();
        let deadline = activity.deadline(&limits()).unwrap();
        assert_eq!(deadline - activity.accepted, Duration::from_millis(100));
    }

    #[tokio::test]
    async fn requests_in_flight_have_no_connection_deadline_and_idle_follows() {
        let activity = Activity::new();
        let guard = activity.request_started();
        assert_eq!(activity.deadline(&limits()), None);
        drop(guard);
        // After the response: idle, measured from its end.
        let deadline = activity.deadline(&limits()).unwrap();
        assert!(deadline - activity.accepted >= Duration::from_millis(300));
        // A byte arriving starts the next head's (shorter) clock.
        activity.bytes_arrived();
        let head = activity.deadline(&limits()).unwrap();
        assert!(head < deadline);
    }

    #[test]
    fn the_message_limit_leaves_room_for_a_body() {
        let limits = Limits::default();
        assert!(limits.check(1024 * 1024).is_ok());
        let error = limits.check(16 * 1024 * 1024).unwrap_err().to_string();
        assert!(error.contains("SYNC_SERVICE_MAX_MESSAGE_BYTES"), "{error}");
    }
}
