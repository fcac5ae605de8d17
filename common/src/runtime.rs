//! Process plumbing shared by every clerk-sync binary: one shutdown signal,
//! one way to set up logs (text or JSON, [`LogFormat`]), one way to bind a
//! listener ([`bind`], whose error names the setting) and one way to serve
//! Prometheus metrics on their own listener ([`serve_metrics`]), so every
//! service stops, logs, starts and exposes metrics alike.

use std::{convert::Infallible, fmt, net::SocketAddr, str::FromStr, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

use crate::telemetry::{self, Traces};

/// Completes on the first Ctrl-C (SIGINT) or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is
/// first polled, so a signal that arrives while the server is still starting
/// is not lost (nor does it kill the process). Call it inside the runtime.
/// Servers take a shutdown future from their caller; binaries pass this one,
/// tests pass their own.
#[cfg(unix)]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
                _ = interrupt.recv() => tracing::info!("Ctrl-C received, shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
            },
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(%error, "cannot listen for shutdown signals");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Completes on the first Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received, shutting down");
        } else {
            std::future::pending::<()>().await;
        }
    }
}

/// A listen address that could not be bound; the message names the setting
/// that gave it, so a port already in use is one line an operator can act on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} ({setting}): {source}")]
pub struct BindError {
    /// The address asked for.
    pub address: SocketAddr,
    /// The setting (environment variable) that gave it.
    pub setting: &'static str,
    /// Why the operating system refused.
    pub source: std::io::Error,
}

/// Binds `address`, given by the setting `setting`.
pub async fn bind(address: SocketAddr, setting: &'static str) -> Result<TcpListener, BindError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| BindError {
            address,
            setting,
            source,
        })
}

/// Binds `address` when a setting gives one (a metrics endpoint that may be
/// turned off).
pub async fn bind_optional(
    address: Option<SocketAddr>,
    setting: &'static str,
) -> Result<Option<TcpListener>, BindError> {
    match address {
        None => Ok(None),
        Some(address) => bind(address, setting).await.map(Some),
    }
}

/// How log lines are written: `--log-format` / `LOG_FORMAT` on every binary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event, with the fields of its spans
    /// (`webhook{event_id=… event_type=… user_id=…}: event forwarded`).
    #[default]
    Text,
    /// One JSON object per line (`tracing-subscriber`'s own formatter): the
    /// event's fields under `fields`, its spans' fields under `span` and
    /// `spans`, for log pipelines that index fields.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("LOG_FORMAT must be text or json".to_owned()),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Sends structured logs to stderr in `format`, filtered by `RUST_LOG`
/// (default `info`), and the same spans as traces when the environment asks
/// for them ([`crate::telemetry`], under `service_name`). Keep the returned
/// handle until exit: dropping it flushes the traces. Must run inside a
/// Tokio runtime, at start-up: a trace setting that cannot be used stops the
/// process with one line naming it.
pub fn init_tracing(format: LogFormat, service_name: &'static str) -> Option<Traces> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    if !telemetry::configured() {
        registry.init();
        return None;
    }
    match Traces::start(service_name) {
        Ok((traces, layer)) => {
            registry.with(layer).init();
            Some(traces)
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    }
}

/// A metrics listen address setting: `None` serves no metrics. It is
/// `Option<SocketAddr>` under a name of its own, so that clap hands the empty
/// value to [`parse_metrics_listen`] instead of treating the flag as optional.
pub type MetricsListen = Option<SocketAddr>;

/// Parses a metrics listen address setting: `host:port`, or the empty string
/// for "no metrics endpoint". `setting` names the environment variable in the
/// error.
pub fn parse_metrics_listen(text: &str, setting: &str) -> Result<MetricsListen, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        format!("{setting} must be host:port (like 127.0.0.1:9464), or empty to serve no metrics")
    })
}

/// The path metrics are served on.
pub const METRICS_PATH: &str = "/metrics";

/// `Content-Type` of the Prometheus text exposition format 0.0.4, which every
/// Prometheus server (and `promtool check metrics`) reads.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Longest a scraper may take to send its request headers.
const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on `listener`, answering with `render()` (Prometheus
/// text format), until `shutdown` completes. This is an operator's port, kept
/// off the public listeners: HTTP/1.1 only, nothing else is routed.
///
/// Like the services, it takes a bound listener from its caller: binaries
/// bind `--metrics-listen`, tests bind port 0.
pub async fn serve_metrics(
    listener: TcpListener,
    render: fn() -> String,
    shutdown: impl Future<Output = ()>,
) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "metrics listening on http://{address}{METRICS_PATH}");
    }
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let service = service_fn(move |request| async move {
            Ok::<_, Infallible>(metrics_response(&request, render))
        });
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(METRICS_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

/// The canonical name of a gRPC status code (`OK`, `UNAVAILABLE`, …), as both
/// services label their metrics.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Runs `server` to completion while serving metrics on `metrics` (when
/// given), and stops the metrics endpoint once the server has returned, so a
/// draining server can still be watched.
pub async fn run_with_metrics<T>(
    metrics: Option<TcpListener>,
    render: fn() -> String,
    server: impl Future<Output = T>,
) -> T {
    let Some(listener) = metrics else {
        return server.await;
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = async move {
        let output = server.await;
        let _ = stop.send(());
        output
    };
    let endpoint = serve_metrics(listener, render, async {
        let _ = stopped.await;
    });
    tokio::join!(server, endpoint).0
}

fn metrics_response<B>(request: &Request<B>, render: fn() -> String) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.uri().path(), request.method()) {
        (METRICS_PATH, &Method::GET | &Method::HEAD) => (StatusCode::OK, PROMETHEUS_TEXT, render()),
        (METRICS_PATH, _) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD are allowed\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("not found; metrics are at {METRICS_PATH}\n"),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_formats_parse_and_bad_ones_name_log_format() {
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert_eq!(" JSON ".parse::<LogFormat>(), Ok(LogFormat::Json));
        for bad in ["", "xml", "jsonl"] {
            let error = bad.parse::<LogFormat>().unwrap_err();
            assert!(error.contains("LOG_FORMAT"), "{bad}: {error}");
        }
    }

    #[test]
    fn grpc_codes_have_their_canonical_names() {
        assert_eq!(grpc_code_name(tonic::Code::Ok), "OK");
        assert_eq!(grpc_code_name(tonic::Code::from(14)), "UNAVAILABLE");
        assert_eq!(grpc_code_name(tonic::Code::from(99)), "UNKNOWN");
    }

    #[tokio::test]
    async fn a_taken_address_is_refused_with_its_setting() {
        let taken = bind(SocketAddr::from(([127, 0, 0, 1], 0)), "X")
            .await
            .unwrap();
        let address = taken.local_addr().unwrap();
        let error = bind(address, "GATEWAY_LISTEN_ADDR").await.unwrap_err();
        let message = error.to_string();
        assert!(message.contains("GATEWAY_LISTEN_ADDR"), "{message}");
        assert!(message.contains(&address.to_string()), "{message}");
        assert!(bind_optional(None, "X").await.unwrap().is_none());
    }

    #[test]
    fn metrics_listen_is_an_address_or_empty() {
        assert_eq!(
            parse_metrics_listen("127.0.0.1:9464", "X"),
            Ok(Some(SocketAddr::from(([127, 0, 0, 1], 9464))))
        );
        assert_eq!(parse_metrics_listen("", "X"), Ok(None));
        assert_eq!(parse_metrics_listen("  ", "X"), Ok(None));
        let error = parse_metrics_listen("9464", "GATEWAY_METRICS_LISTEN_ADDR").unwrap_err();
        assert!(error.contains("GATEWAY_METRICS_LISTEN_ADDR"), "{error}");
    }
}
