//! Connection hygiene on the gRPC port: what keeps the sync-service up when
//! a client on the internal network is slow, broken or hostile. Nothing here
//! needs a token to be reached, so every limit holds before authentication.
//!
//! - **Connections**: at most `max_connections` open at once; one more is
//!   closed as soon as it is accepted (clients see `UNAVAILABLE` and retry).
//! - **First call**: from accept, a connection must start its first call
//!   (TLS handshake, HTTP/2 preface and request headers) within
//!   `handshake_timeout`, or it is closed.
//! - **Idle**: a connection with no call in flight for `idle_timeout` is
//!   closed (a change-feed stream is a call in flight: it is never idle).
//! - **HTTP/2**: keep-alive pings, a cap on concurrent streams per
//!   connection, and a deadline on every call's answer (`request_timeout`;
//!   a streaming call's answer is its first message, not the whole stream).
//! - **Messages**: each service decodes at most what its largest request
//!   can be (see `server.rs`), so what a client declares is refused by its
//!   length prefix rather than buffered.
//! - **Watchers**: the change feed's settings (watchers per server and per
//!   token, each one's buffer and stall timeout) live here too; the feed
//!   (`grpc/feed.rs`) enforces them.
//!
//! The first two are enforced by the socket itself ([`Guarded`]): its reads
//! fail once its [`Activity`] says the connection is past its deadline, and
//! the [`CallTrackingLayer`] tells the activity when calls start and end.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use clerk_sync_common::settings::{parse_count, parse_positive_secs};
use futures::Stream;
use http_body::{Body, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// Connection limits of the gRPC port (flags and environment variables; see
/// the README's settings table).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// Most open gRPC connections; more are closed as soon as accepted.
    #[arg(
        long = "max-connections", value_name = "N",
        env = "SYNC_SERVICE_MAX_CONNECTIONS",
        default_value_t = 1024,
        value_parser = parse_count,
        global = true
    )]
    pub max_connections: usize,

    /// Seconds from accepting a connection to its first call (TLS handshake,
    /// HTTP/2 preface and request headers included).
    #[arg(
        long = "handshake-timeout-secs", value_name = "SECS",
        env = "SYNC_SERVICE_HANDSHAKE_TIMEOUT_SECS",
        default_value = "10",
        value_parser = parse_positive_secs,
        global = true
    )]
    pub handshake_timeout: Duration,

    /// Seconds a connection with no call in flight stays open.
    #[arg(
        long = "idle-timeout-secs", value_name = "SECS",
        env = "SYNC_SERVICE_IDLE_TIMEOUT_SECS",
        default_value = "300",
        value_parser = parse_positive_secs,
        global = true
    )]
    pub idle_timeout: Duration,

    /// Seconds between HTTP/2 keep-alive pings.
    #[arg(
        long = "http2-keepalive-interval-secs", value_name = "SECS",
        env = "SYNC_SERVICE_HTTP2_KEEPALIVE_INTERVAL_SECS",
        default_value = "30",
        value_parser = parse_positive_secs,
        global = true
    )]
    pub http2_keepalive_interval: Duration,

    /// Seconds a keep-alive ping may go unanswered before the connection is
    /// closed.
    #[arg(
        long = "http2-keepalive-timeout-secs", value_name = "SECS",
        env = "SYNC_SERVICE_HTTP2_KEEPALIVE_TIMEOUT_SECS",
        default_value = "10",
        value_parser = parse_positive_secs,
        global = true
    )]
    pub http2_keepalive_timeout: Duration,

    /// Most concurrent calls (HTTP/2 streams) on one connection.
    #[arg(
        long = "http2-max-streams", value_name = "N",
        env = "SYNC_SERVICE_HTTP2_MAX_STREAMS",
        default_value_t = 128,
        value_parser = clap::value_parser!(u32).range(1..=10_000),
        global = true
    )]
    pub http2_max_streams: u32,

    /// Seconds a call may take to be answered (past it: CANCELLED); a
    /// streaming call's answer is its first message.
    #[arg(
        long = "request-timeout-secs", value_name = "SECS",
        env = "SYNC_SERVICE_REQUEST_TIMEOUT_SECS",
        default_value = "30",
        value_parser = parse_positive_secs,
        global = true
    )]
    pub request_timeout: Duration,

    /// Most change-feed watchers (WatchUsers and WatchOrganizations streams)
    /// on this server.
    #[arg(
        long = "max-watchers", value_name = "N",
        env = "SYNC_SERVICE_MAX_WATCHERS",
        default_value_t = 256,
        value_parser = parse_count,
        global = true
    )]
    pub max_watchers: usize,

    /// Most change-feed watchers one token may hold.
    #[arg(
        long = "max-watchers-per-token", value_name = "N",
        env = "SYNC_SERVICE_MAX_WATCHERS_PER_TOKEN",
        default_value_t = 64,
        value_parser = parse_count,
        global = true
    )]
    pub max_watchers_per_token: usize,

    /// Bytes of messages a watcher may have waiting for its client.
    #[arg(
        long = "watch-buffer-bytes", value_name = "BYTES",
        env = "SYNC_SERVICE_WATCH_BUFFER_BYTES",
        default_value_t = 64 * 1024,
        value_parser = clap::value_parser!(u32).range(4096..=1_073_741_824),
        global = true
    )]
    pub watch_buffer_bytes: u32,

    /// Seconds a watcher's client may leave its buffer full before the
    /// stream is ended (RESOURCE_EXHAUSTED, naming where to resume).
    #[arg(
        long = "watch-stall-timeout-secs", value_name = "SECS",
        env = "SYNC_SERVICE_WATCH_STALL_TIMEOUT_SECS",
        default_value = "30",
        value_parser = parse_positive_secs,
        global = true
    )]
    pub watch_stall_timeout: Duration,
}

impl Limits {
    /// How often a quiet connection looks at its deadline: often enough that
    /// a deadline is never overshot by more than half the shortest timeout.
    fn check_interval(&self) -> Duration {
        (self.handshake_timeout.min(self.idle_timeout) / 2).max(Duration::from_millis(5))
    }
}

/// Accepts connections from `listener` for the gRPC server: at most
/// `limits.max_connections` at once (one more is closed at once), each with
/// `TCP_NODELAY` (Nagle would hold small answers back for a delayed ACK)
/// and guarded by its deadlines. Accept errors (out of file descriptors)
/// are logged and retried after a pause, never handed to the server.
pub(crate) fn incoming(
    listener: TcpListener,
    limits: Arc<Limits>,
) -> impl Stream<Item = io::Result<Guarded<TcpStream>>> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    futures::stream::unfold(
        (listener, limits, slots),
        |(listener, limits, slots)| async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::debug!(%peer, "connection refused: SYNC_SERVICE_MAX_CONNECTIONS reached");
                    crate::metrics::connection_refused();
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let guarded = Guarded::new(stream, permit, Arc::clone(&limits));
                return Some((Ok(guarded), (listener, limits, slots)));
            }
        },
    )
}

/// What a connection's deadline depends on. Times are milliseconds since the
/// connection was accepted.
#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    /// Calls started and not yet answered in full.
    calls: AtomicUsize,
    /// When the last call ended; [`NEVER`] before the first call started.
    last_call_ended: AtomicU64,
}

const NEVER: u64 = u64::MAX;

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            accepted: Instant::now(),
            calls: AtomicUsize::new(0),
            last_call_ended: AtomicU64::new(NEVER),
        })
    }

    fn elapsed_millis(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Marks a call as started; the guard marks its end.
    fn call_started(self: &Arc<Self>) -> CallGuard {
        self.calls.fetch_add(1, Ordering::AcqRel);
        // A connection that has started a call is past its handshake.
        let _ = self.last_call_ended.compare_exchange(
            NEVER,
            self.elapsed_millis(),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        CallGuard {
            activity: Arc::clone(self),
        }
    }

    /// When the connection must close if nothing changes; `None` while a
    /// call is in flight (the call's own deadline bounds it).
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.calls.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(match self.last_call_ended.load(Ordering::Acquire) {
            NEVER => self.accepted + limits.handshake_timeout,
            ended => self.accepted + Duration::from_millis(ended) + limits.idle_timeout,
        })
    }
}

/// Held while a call is in flight, up to the end of its response body.
#[derive(Debug)]
struct CallGuard {
    activity: Arc<Activity>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let now = self.activity.elapsed_millis();
        self.activity.last_call_ended.store(now, Ordering::Release);
        self.activity.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted socket that closes itself (its reads fail with `TimedOut`)
/// once its connection is past its deadline, and holds one of the
/// `max_connections` slots until it is dropped.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    activity: Arc<Activity>,
    limits: Arc<Limits>,
    /// Wakes the connection to look at its deadline again.
    timer: Pin<Box<Sleep>>,
    expired: bool,
    _slot: OwnedSemaphorePermit,
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        crate::metrics::connection_opened(false);
    }
}

impl<S> Guarded<S> {
    fn new(inner: S, slot: OwnedSemaphorePermit, limits: Arc<Limits>) -> Self {
        let activity = Activity::new();
        let first = activity.deadline(&limits).unwrap_or_else(Instant::now);
        crate::metrics::connection_opened(true);
        Self {
            inner,
            activity,
            limits,
            timer: Box::pin(tokio::time::sleep_until(first)),
            expired: false,
            _slot: slot,
        }
    }

    /// Ready once the connection is past its deadline; otherwise arms the
    /// timer so that the connection's task is woken to look again.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.expired {
            return Poll::Ready(());
        }
        loop {
            let now = Instant::now();
            let next = match self.activity.deadline(&self.limits) {
                Some(deadline) if deadline <= now => {
                    self.expired = true;
                    return Poll::Ready(());
                }
                Some(deadline) => deadline.min(now + self.limits.check_interval()),
                None => now + self.limits.check_interval(),
            };
            if self.timer.deadline() != next {
                self.timer.as_mut().reset(next);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.poll_expired(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection closed: no call within its handshake or idle timeout",
            )));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

clerk_sync_common::forward_async_write!(Guarded, inner);

/// What tonic puts in every request's extensions about its connection: the
/// addresses, as for a plain socket, and the connection's [`Activity`].
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Local and remote addresses.
    pub tcp: TcpConnectInfo,
    activity: Arc<Activity>,
}

impl ConnectionInfo {
    /// The client's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.tcp.remote_addr
    }
}

impl Connected for Guarded<TcpStream> {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            tcp: self.inner.connect_info(),
            activity: Arc::clone(&self.activity),
        }
    }
}

/// Marks every call as in flight on its connection, from its request
/// headers to the end of its response body, so that a connection is idle
/// only when it has no call at all. Wired once in `server.rs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallTrackingLayer;

impl<S> tower::Layer<S> for CallTrackingLayer {
    type Service = CallTracking<S>;

    fn layer(&self, inner: S) -> CallTracking<S> {
        CallTracking { inner }
    }
}

/// The service [`CallTrackingLayer`] wraps around the router.
#[derive(Clone, Debug)]
pub struct CallTracking<S> {
    inner: S,
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for CallTracking<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    ResponseBody: Body + Unpin,
{
    type Response = http::Response<TrackedBody<ResponseBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let extensions = request.extensions();
        let activity = extensions
            .get::<ConnectionInfo>()
            .or_else(|| {
                extensions
                    .get::<TlsConnectInfo<ConnectionInfo>>()
                    .map(TlsConnectInfo::get_ref)
            })
            .map(|info| Arc::clone(&info.activity));
        let guard = activity.map(|activity| activity.call_started());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| TrackedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its call in flight until it is dropped.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _guard: Option<CallGuard>,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 2,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            http2_max_streams: 128,
            request_timeout: Duration::from_secs(30),
            max_watchers: 256,
            max_watchers_per_token: 64,
            watch_buffer_bytes: 64 * 1024,
            watch_stall_timeout: Duration::from_secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_has_its_handshake_time_then_idles_only_without_calls() {
        let limits = limits();
        let activity = Activity::new();
        let accepted = activity.accepted;
        assert_eq!(
            activity.deadline(&limits),
            Some(accepted + limits.handshake_timeout)
        );

        tokio::time::advance(Duration::from_secs(3)).await;
        let call = activity.call_started();
        let second = activity.call_started();
        assert_eq!(activity.deadline(&limits), None, "calls in flight");
        tokio::time::advance(Duration::from_secs(1000)).await;
        drop(call);
        assert_eq!(activity.deadline(&limits), None, "one call still in flight");
        drop(second);
        let deadline = activity.deadline(&limits).unwrap();
        let expected = Instant::now() + limits.idle_timeout;
        assert!(
            deadline <= expected && expected - deadline < Duration::from_millis(2),
            "{deadline:?} vs {expected:?}"
        );
    }

    #[tokio::test]
    async fn a_quiet_socket_fails_its_reads_at_its_deadline() {
        use tokio::io::AsyncReadExt as _;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut short = limits();
        short.handshake_timeout = Duration::from_millis(200);
        let mut incoming = Box::pin(incoming(listener, Arc::new(short)));
        let _client = TcpStream::connect(address).await.unwrap();
        let mut guarded = futures::StreamExt::next(&mut incoming)
            .await
            .unwrap()
            .unwrap();
        let started = std::time::Instant::now();
        let error = guarded.read(&mut [0; 16]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_and_slots_come_back() {
        use futures::StreamExt as _;
        use tokio::io::AsyncReadExt as _;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut incoming = Box::pin(incoming(listener, Arc::new(limits())));
        let _a = TcpStream::connect(address).await.unwrap();
        let _b = TcpStream::connect(address).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let _second = incoming.next().await.unwrap().unwrap();

        // The third is accepted and closed: its client reads end-of-stream.
        let mut third = TcpStream::connect(address).await.unwrap();
        let read = async {
            let mut byte = [0; 1];
            tokio::time::timeout(Duration::from_secs(5), third.read(&mut byte)).await
        };
        tokio::select! {
            read = read => assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}"),
            _ = incoming.next() => panic!("a third connection was let in"),
        }

        // A slot given back lets the next one in.
        drop(first);
        let _c = TcpStream::connect(address).await.unwrap();
        let admitted = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(matches!(admitted, Ok(Some(Ok(_)))));
    }
}
