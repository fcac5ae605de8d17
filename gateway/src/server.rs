//! The HTTP side: hyper 1.x connections, routing, the webhook handler, and
//! graceful shutdown.
//!
//! [`run`] takes an already bound listener and a shutdown future from its
//! caller, so the binary passes the signal handler and tests pass a channel.
//! The webhook handler is the pipeline: the connection's body cap → size and
//! time limit → content type → in-flight cap → signature → parse → forward
//! ([`pipeline`]); a verified
//! delivery no retry can fix is quarantined and acknowledged, and every other
//! failure leaves through [`Error::into_response`]. Connections are watched
//! for idle and stalled clients ([`limits`]).
//!
//! [`pipeline`]: crate::pipeline
//! [`limits`]: crate::limits

use std::{
    convert::Infallible,
    pin::pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::{
    body::{Body, Incoming},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::net::TcpListener;
use tracing::{Instrument, Span, field};

use crate::{
    Config, Error,
    limits::{Activity, Caps, Limits, Watchdog, Watched, shed},
    metrics,
    pipeline::{self, Carriage},
    quarantine::Quarantine,
    sync_service::SyncService,
    upstream::Upstream,
    verify::{Delivery, Verifier},
};

/// The path Clerk's webhook endpoint is configured with.
pub const WEBHOOK_PATH: &str = "/clerk";

/// Everything a request needs, built once from the [`Config`] and shared by all
/// connections.
#[derive(Debug)]
pub struct App {
    /// Checks signatures and timestamps.
    verifier: Verifier,
    /// Forwards events and checks readiness.
    upstream: Upstream,
    /// Largest accepted body, in bytes.
    body_limit: usize,
    /// Where verified deliveries that cannot be applied are kept.
    quarantine: Quarantine,
    /// Connection and load limits.
    limits: Arc<Limits>,
    /// What the sync-service takes.
    carriage: Carriage,
    /// Open connections and webhooks in flight.
    caps: Caps,
}

impl App {
    /// Builds the verifier and the (lazily connecting) sync-service channel.
    /// Must be called inside a Tokio runtime.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let secrets = config.webhook_secrets.clone().ok_or(Error::Config {
            setting: "CLERK_WEBHOOK_SECRET",
            reason: "required to serve webhooks (expected whsec_<base64>)".to_owned(),
        })?;
        config.limits.check(config.body_limit)?;
        let sync_service = SyncService::new(&config.sync_service)?;
        Ok(Self {
            verifier: Verifier::new(secrets, config.timestamp_tolerance),
            upstream: Upstream::new(&sync_service),
            body_limit: config.body_limit,
            quarantine: Quarantine::new(&sync_service, config.limits.max_message_bytes),
            limits: Arc::new(config.limits.clone()),
            carriage: Carriage {
                max_message_bytes: config.limits.max_message_bytes,
                private_metadata: config.sync_service.private_metadata,
            },
            caps: Caps::new(&config.limits),
        })
    }

    /// Answers one HTTP request. Never fails: errors become their response.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let _in_flight = metrics::InFlight::start();
        let method = request.method();
        let result = match request.uri().path() {
            WEBHOOK_PATH if method == Method::POST => return self.webhook(request).await,
            WEBHOOK_PATH => Err(Error::MethodNotAllowed { allow: "POST" }),
            "/healthz" if is_get(method) => Ok(empty_json()),
            "/readyz" if is_get(method) => self.upstream.check_ready().await.map(|()| empty_json()),
            "/healthz" | "/readyz" => Err(Error::MethodNotAllowed { allow: "GET, HEAD" }),
            _ => Err(Error::NotFound),
        };
        result.unwrap_or_else(Error::into_response)
    }

    /// `POST /clerk`: verifies, maps and forwards one webhook delivery.
    #[tracing::instrument(
        name = "webhook",
        skip_all,
        fields(
            event_id = field::Empty,
            event_type = field::Empty,
            user_id = field::Empty,
            status = field::Empty,
            outcome = field::Empty,
        )
    )]
    async fn webhook<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Set once the event is verified and parsed: until then its type is
        // not trusted (the metrics label it `unknown`).
        let mut event_type = None;
        // Built inside the span, so rejections are logged with the event id.
        let response = self
            .process_webhook(request, &mut event_type)
            .await
            .unwrap_or_else(Error::into_response);
        metrics::record_webhook(event_type, response.status());
        Span::current().record("status", response.status().as_u16());
        response
    }

    async fn process_webhook<B>(
        &self,
        request: Request<B>,
        event_type: &mut Option<&'static str>,
    ) -> Result<Response<Full<Bytes>>, Error>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // One client cannot hold more than a few bodies in the air at once.
        let receiving = match request.extensions().get::<Arc<Activity>>() {
            Some(connection) => Some(
                connection
                    .body_started(self.limits.max_bodies_per_connection)
                    .ok_or_else(|| {
                        metrics::record_shed();
                        Error::Overloaded
                    })?,
            ),
            None => None,
        };
        let (parts, body) = request.into_parts();
        // The body is bounded in size and time before anything else looks at
        // the request.
        let body = tokio::time::timeout(
            self.limits.body_timeout,
            read_limited(&parts.headers, body, self.body_limit),
        )
        .await
        .map_err(|_| Error::BodyTimeout)??;
        drop(receiving);
        check_content_type(&parts.headers)?;
        // A place among the webhooks being processed is taken only now that
        // the body is here: a client that never finishes its body holds none.
        // Past the cap, a 503 now beats a queue that grows.
        let Some(_permit) = self.caps.webhook() else {
            metrics::record_shed();
            return Err(Error::Overloaded);
        };

        let span = Span::current();
        // Logged even when verification fails: it is what Svix's dashboard
        // shows. Unverified, so it is cut to a length no real id exceeds.
        if let Some(id) = ["svix-id", "webhook-id"]
            .iter()
            .find_map(|name| parts.headers.get(*name)?.to_str().ok())
        {
            span.record("event_id", truncate(id, MAX_LOGGED_ID_LEN));
        }

        let delivery = self
            .verifier
            .verify(&parts.headers, &body, SystemTime::now())
            .inspect_err(metrics::record_verification_failure)?;
        match pipeline::forward(&self.upstream, self.carriage, &body, &delivery, event_type).await {
            Ok(None) => {
                span.record("outcome", "not_synced");
                tracing::info!("event type not synced; acknowledged");
            }
            Ok(Some(outcome)) => {
                span.record("outcome", outcome.as_str_name());
                tracing::info!(outcome = outcome.as_str_name(), "event forwarded");
            }
            Err(error) if error.is_poison() => {
                span.record("outcome", "quarantined");
                self.quarantine(&delivery, &body, error).await?;
            }
            Err(error) => return Err(error),
        }
        Ok(empty_json())
    }

    /// Keeps a verified delivery that no retry can fix; once the
    /// sync-service has stored it, the delivery is acknowledged.
    async fn quarantine(
        &self,
        delivery: &Delivery<'_>,
        body: &[u8],
        error: Error,
    ) -> Result<(), Error> {
        let reason = error.reason();
        let stored = self
            .quarantine
            .store(delivery, body, pipeline::event_type_of(body), reason)
            .await?;
        metrics::record_quarantined();
        tracing::warn!(
            reason = %stored.reason,
            seen_count = stored.seen_count,
            "event quarantined; acknowledged"
        );
        Ok(())
    }
}

/// Serves HTTP on `listener` until `shutdown` completes, then stops accepting,
/// lets in-flight requests finish (for at most `config.shutdown_timeout`) and
/// returns. Never binds and never listens for signals itself.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let app = Arc::new(App::new(&config)?);
    let limits = Arc::clone(&app.limits);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Head, idle and protocol-detection deadlines are the watchdog's (hyper's
    // own header timer would also cut idle keep-alive at the head deadline).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.http2_keepalive_interval))
        .keep_alive_timeout(limits.http2_keepalive_timeout)
        .max_concurrent_streams(limits.http2_max_streams);
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);

    if let Ok(address) = listener.local_addr() {
        let upstream: Vec<String> = config
            .sync_service
            .urls
            .iter()
            .map(|url| clerk_sync_common::redact::url(&url.to_string()).into_owned())
            .collect();
        tracing::info!(%address, ?upstream, "gateway listening");
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(error) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(permit) = app.caps.connection() else {
                    // debug, not warn: a flood must not become a log flood.
                    tracing::debug!(max = limits.max_connections, "too many connections; answering 503");
                    metrics::record_shed();
                    tokio::spawn(shed(stream));
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let activity = Activity::new();
                let app = Arc::clone(&app);
                let requests = Arc::clone(&activity);
                let service = service_fn(move |mut request: Request<Incoming>| {
                    let app = Arc::clone(&app);
                    // The handler counts this connection's bodies in flight.
                    request.extensions_mut().insert(Arc::clone(&requests));
                    let guard = requests.request_started();
                    async move {
                        let response = app.handle(request).await;
                        drop(guard);
                        Ok::<_, Infallible>(response)
                    }
                });
                let io = TokioIo::new(Watched::new(stream, Arc::clone(&activity)));
                let connection = builder.serve_connection(io, service);
                let connection = graceful.watch(connection.into_owned());
                let watchdog = Watchdog::new(activity, Arc::clone(&limits));
                tokio::spawn(
                    async move {
                        tokio::select! {
                            result = connection => if let Err(error) = result {
                                tracing::debug!(%error, "connection ended with an error");
                            },
                            () = watchdog.expired() => {
                                tracing::debug!("idle or stalled connection closed");
                            }
                        }
                        drop(permit);
                    }
                    .in_current_span(),
                );
            }
            () = &mut shutdown => break,
        }
    }

    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(config.shutdown_timeout) => {
            tracing::warn!(timeout = ?config.shutdown_timeout, "in-flight requests cut off at shutdown");
        }
    }
    Ok(())
}

/// Longest unverified event id written to the logs (Svix ids are ~30 bytes).
const MAX_LOGGED_ID_LEN: usize = 64;

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn is_get(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// After a body is refused as too large, up to this much of the rest is read
/// and discarded (for at most [`DRAIN_TIME`]), so that a client still sending
/// it reads the 413 instead of a broken pipe.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;
/// Longest time spent discarding a refused body.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads the whole body if it fits in `limit` bytes. Nothing of a larger body
/// is kept, and a declared `Content-Length` over the limit is refused up front.
async fn read_limited<B>(headers: &HeaderMap, body: B, limit: usize) -> Result<Bytes, Error>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    let mut body = pin!(body);
    if declared.is_none_or(|length| length <= limit as u64) {
        // Grown as bytes arrive: a declared length reserves nothing.
        let mut collected = BytesMut::new();
        loop {
            let Some(frame) = body.frame().await else {
                return Ok(collected.freeze());
            };
            let frame = frame.map_err(|error| Error::BodyRead(error.into()))?;
            if let Ok(data) = frame.into_data() {
                if collected.len() + data.len() > limit {
                    break;
                }
                collected.extend_from_slice(&data);
            }
        }
    }
    let drain = async {
        let mut drained = 0;
        while drained <= DRAIN_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => drained += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    Err(Error::BodyTooLarge { limit })
}

/// Accepts `application/json`, with any parameters except a charset other than UTF-8.
fn check_content_type(headers: &HeaderMap) -> Result<(), Error> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .ok_or(Error::UnsupportedMediaType)?;
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(Error::UnsupportedMediaType);
    }
    for parameter in parts {
        if let Some((name, charset)) = parameter.split_once('=')
            && name.trim().eq_ignore_ascii_case("charset")
            && !charset
                .trim()
                .trim_matches('"')
                .eq_ignore_ascii_case("utf-8")
        {
            return Err(Error::UnsupportedMediaType);
        }
    }
    Ok(())
}

/// `200 {}`: the body Svix expects and ignores.
fn empty_json() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_content_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn json_content_types_are_accepted() {
        for value in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=\"UTF-8\"",
        ] {
            assert!(
                check_content_type(&with_content_type(value)).is_ok(),
                "{value}"
            );
        }
    }

    #[test]
    fn other_content_types_are_refused() {
        for value in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonp",
            "application/json; charset=latin1",
            "",
        ] {
            assert!(
                matches!(
                    check_content_type(&with_content_type(value)),
                    Err(Error::UnsupportedMediaType)
                ),
                "{value}"
            );
        }
        assert!(check_content_type(&HeaderMap::new()).is_err());
    }
}
