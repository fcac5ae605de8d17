//! The gateway's one error type and its one mapping to an HTTP response.
//!
//! Every failure on the request path ends up here. The status decides what Svix
//! does next (4xx: give up on this delivery, 5xx: retry later), so the mapping
//! is kept in a single `match`. The response body only says what the client can
//! act on; the cause chain goes to the logs, never to the client.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use tonic::Code;

/// Everything that can go wrong in the gateway, from start-up configuration to
/// forwarding an event.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A webhook header is absent (`svix-id`, `svix-timestamp`, `svix-signature`
    /// or their `webhook-*` twins).
    #[error("missing header {0}")]
    MissingHeader(&'static str),

    /// A webhook header is present but unusable (not text, empty, a timestamp
    /// that is not a non-negative integer).
    #[error("malformed header {header}: {reason}")]
    MalformedHeader {
        /// The header's canonical (svix-*) name.
        header: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// No `v1` signature in the signature header matches any configured secret.
    #[error("invalid signature")]
    SignatureMismatch,

    /// The signed timestamp is further from now than the tolerance allows.
    #[error("timestamp outside the tolerance window")]
    TimestampOutsideWindow,

    /// The body is not the JSON the event type calls for.
    #[error("invalid JSON payload: {0}")]
    InvalidJson(#[source] serde_json::Error),

    /// A user event lacks a field the sync-service needs (named as a JSON path).
    #[error("{0} is missing")]
    MissingField(&'static str),

    /// A verified event that protobuf or gRPC cannot carry (metadata nested
    /// too deep, a message over the size limit); quarantined, never forwarded.
    #[error("event cannot be forwarded: {0}")]
    Unmappable(String),

    /// The client did not send the whole body within the body timeout.
    #[error("request body not received in time")]
    BodyTimeout,

    /// Too many webhooks are being processed: shed, Svix retries later.
    #[error("too many requests in flight")]
    Overloaded,

    /// Storing a delivery in (or reading it from) the sync-service's
    /// quarantine failed.
    #[error("quarantine call failed")]
    Quarantine(#[source] tonic::Status),

    /// `quarantine retry` left deliveries the current release still refuses.
    #[error("{0} deliveries are still refused and stay quarantined")]
    StillQuarantined(usize),

    /// The request body could not be read (client went away, broken framing).
    #[error("cannot read the request body")]
    BodyRead(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The body is larger than the configured limit.
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The configured limit, in bytes.
        limit: usize,
    },

    /// `Content-Type` is absent or not `application/json`.
    #[error("content type must be application/json")]
    UnsupportedMediaType,

    /// No route for this path.
    #[error("not found")]
    NotFound,

    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// Value of the `Allow` header to send back.
        allow: &'static str,
    },

    /// The sync-service answered the forwarded event with a gRPC error (transport
    /// and connection failures arrive as `UNAVAILABLE`/`CANCELLED` statuses too).
    #[error("sync-service call failed")]
    Upstream(#[source] tonic::Status),

    /// The sync-service answered OK with an outcome this gateway does not know
    /// (`OUTCOME_UNSPECIFIED` or newer): it is not the server this was built for,
    /// so the event is not acknowledged.
    #[error("sync-service answered with unknown outcome {0}")]
    UnexpectedOutcome(i32),

    /// The sync-service did not answer within the configured deadline.
    #[error("sync-service did not answer in time")]
    UpstreamTimeout,

    /// The sync-service's health check did not report SERVING (the status says
    /// why when the check itself failed).
    #[error("sync-service is not ready")]
    NotReady(#[source] Option<tonic::Status>),

    /// A setting is unusable; raised at start-up, never on the request path.
    #[error("{setting}: {reason}")]
    Config {
        /// The setting (environment variable or flag) at fault.
        setting: &'static str,
        /// What is wrong with its value.
        reason: String,
    },

    /// Accepting connections failed for good.
    #[error("server I/O error")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::MissingHeader(_)
            | Error::MalformedHeader { .. }
            | Error::InvalidJson(_)
            | Error::MissingField(_)
            | Error::Unmappable(_)
            | Error::BodyRead(_) => StatusCode::BAD_REQUEST,
            Error::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Error::Quarantine(status) => match status.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Cancelled
                | Code::Unknown => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Error::SignatureMismatch | Error::TimestampOutsideWindow => StatusCode::UNAUTHORIZED,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Upstream(status) => match status.code() {
                // Transient: Svix retries with back-off until the sync-service is
                // back. A sync-service dying mid-call (connection closed, stream
                // reset) surfaces as UNKNOWN or CANCELLED from the transport.
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Cancelled
                | Code::Unknown => StatusCode::SERVICE_UNAVAILABLE,
                // The event itself is unusable; retrying the same bytes cannot help.
                Code::InvalidArgument => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Error::UpstreamTimeout | Error::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::UnexpectedOutcome(_)
            | Error::Config { .. }
            | Error::Io(_)
            | Error::StillQuarantined(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether this is an error no retry of the same verified delivery can
    /// fix, so the delivery is quarantined and acknowledged rather than
    /// refused: a body that is not the JSON Clerk documents, a shape protobuf
    /// or gRPC cannot carry, or an event the sync-service rejects as invalid.
    pub fn is_poison(&self) -> bool {
        match self {
            Error::InvalidJson(_) | Error::MissingField(_) | Error::Unmappable(_) => true,
            // OUT_OF_RANGE: the sync-service could not take the message's size.
            Error::Upstream(status) => {
                matches!(status.code(), Code::InvalidArgument | Code::OutOfRange)
            }
            _ => false,
        }
    }

    /// Why a poisoned delivery was quarantined, for its record.
    pub fn reason(&self) -> String {
        match self {
            Error::Upstream(status) => format!("event rejected: {}", status.message()),
            other => other.to_string(),
        }
    }

    /// The message put in the response body: this error's own text for client
    /// errors, a fixed phrase for server errors so no internals leak.
    fn public_message(&self) -> String {
        match (self, self.status()) {
            // INVALID_ARGUMENT messages from the sync-service describe the event,
            // which the sender wrote; they carry no internals.
            (Error::Upstream(status), StatusCode::BAD_REQUEST) => {
                format!("event rejected: {}", status.message())
            }
            (Error::Overloaded, _) => "gateway busy, retry later".to_owned(),
            (_, StatusCode::SERVICE_UNAVAILABLE) => {
                "sync-service unavailable, retry later".to_owned()
            }
            (_, status) if status.is_server_error() => "internal error".to_owned(),
            (client_error, _) => client_error.to_string(),
        }
    }

    /// Logs the error with its cause chain and turns it into the response sent
    /// to the client: the status plus `{"error": "..."}`.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Expected while the sync-service restarts; Svix retries.
            tracing::warn!(error = %ErrorChain(&self), %status, "request failed");
        } else if status.is_server_error() {
            tracing::error!(error = %ErrorChain(&self), %status, "request failed");
        } else {
            tracing::info!(error = %ErrorChain(&self), %status, "request rejected");
        }
        let body = serde_json::json!({ "error": self.public_message() }).to_string();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: start afresh.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Error::MethodNotAllowed { allow } = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// `error` followed by each of its sources, `a: b: c`, for an operator's
/// terminal (server responses never carry it).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    ErrorChain(error).to_string()
}

/// Displays an error followed by each of its sources: `a: b: c`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(error: Error) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn grpc_codes_map_to_the_statuses_svix_needs() {
        let cases = [
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 503),
            (Code::ResourceExhausted, 503),
            (Code::Cancelled, 503),
            (Code::InvalidArgument, 400),
            (Code::Internal, 500),
            (Code::Unknown, 503),
            (Code::NotFound, 500),
            (Code::FailedPrecondition, 500),
        ];
        for (code, expected) in cases {
            let status = Error::Upstream(tonic::Status::new(code, "x")).status();
            assert_eq!(status.as_u16(), expected, "{code:?}");
        }
    }

    #[test]
    fn request_errors_map_to_the_status_table() {
        let cases = [
            (Error::MissingHeader("svix-id"), 400),
            (
                Error::MalformedHeader {
                    header: "svix-timestamp",
                    reason: "not a number",
                },
                400,
            ),
            (Error::MissingField("data.id"), 400),
            (Error::SignatureMismatch, 401),
            (Error::TimestampOutsideWindow, 401),
            (Error::NotFound, 404),
            (Error::MethodNotAllowed { allow: "POST" }, 405),
            (Error::BodyTooLarge { limit: 1 }, 413),
            (Error::UnsupportedMediaType, 415),
            (Error::UpstreamTimeout, 503),
            (Error::NotReady(None), 503),
            (Error::Io(std::io::Error::other("boom")), 500),
            (Error::UnexpectedOutcome(0), 500),
            (Error::BodyTimeout, 408),
            (Error::Overloaded, 503),
            (Error::Quarantine(tonic::Status::unavailable("down")), 503),
            (Error::Quarantine(tonic::Status::internal("bug")), 500),
        ];
        for (error, expected) in cases {
            let name = format!("{error:?}");
            assert_eq!(error.status().as_u16(), expected, "{name}");
        }
    }

    #[tokio::test]
    async fn server_errors_hide_their_cause() {
        let (status, body) = body_of(Error::Upstream(tonic::Status::internal(
            "SELECT * FROM users failed: password=hunter2",
        )))
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, serde_json::json!({"error": "internal error"}));

        let (status, body) = body_of(Error::Upstream(tonic::Status::unavailable(
            "db at 10.0.0.5 down",
        )))
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!body["error"].as_str().unwrap().contains("10.0.0.5"));
    }

    #[tokio::test]
    async fn client_errors_say_what_is_wrong() {
        let (status, body) = body_of(Error::MissingField("data.updated_at")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            serde_json::json!({"error": "data.updated_at is missing"})
        );
    }

    #[test]
    fn only_what_no_retry_can_fix_is_poison() {
        let json_error = serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err();
        for poison in [
            Error::InvalidJson(json_error),
            Error::MissingField("data.id"),
            Error::Unmappable("too deep".into()),
            Error::Upstream(tonic::Status::invalid_argument(
                "event.user.id must not be empty",
            )),
            Error::Upstream(tonic::Status::out_of_range("message too large")),
        ] {
            assert!(poison.is_poison(), "{poison:?}");
        }
        for retryable in [
            Error::Upstream(tonic::Status::unavailable("down")),
            Error::Upstream(tonic::Status::internal("bug")),
            Error::UpstreamTimeout,
            Error::SignatureMismatch,
            Error::Overloaded,
            Error::BodyTimeout,
        ] {
            assert!(!retryable.is_poison(), "{retryable:?}");
        }
        assert_eq!(
            Error::Upstream(tonic::Status::invalid_argument(
                "event.user.id must not be empty"
            ))
            .reason(),
            "event rejected: event.user.id must not be empty"
        );
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let response = Error::MethodNotAllowed { allow: "POST" }.into_response();
        assert_eq!(response.headers()[header::ALLOW], "POST");
    }
}
