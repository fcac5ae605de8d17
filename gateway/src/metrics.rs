//! The gateway's Prometheus metrics: one process-wide registry and the few
//! functions the request path calls to record into it. Handlers call these
//! functions; only [`render`] formats exposition, for `GET /metrics` on the
//! separate metrics listener (`--metrics-listen`, served by
//! [`clerk_sync_common::runtime::serve_metrics`]).
//!
//! Every name starts with `clerk_sync_gateway_`. Label values come from small
//! fixed sets (the three synced event types, HTTP statuses, gRPC code names,
//! verification failure reasons): never an event id, user id or header value,
//! so a hostile sender cannot grow the registry.

use std::{sync::LazyLock, time::Duration};

use clerk_sync_common::runtime::grpc_code_name;
use http::StatusCode;
use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Registry,
};
use tonic::Code;

use crate::Error;

/// Webhook deliveries answered, by what they were and how they were answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    /// `user.created`, `user.updated`, `user.deleted`, `other` (a verified
    /// event of a type that is not synced) or `unknown` (not verified or not
    /// parsed, so its type is not trusted).
    event_type: &'static str,
    /// The HTTP status answered.
    status: u16,
}

/// Why a delivery failed signature verification.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// A gRPC status code, by its canonical name (`UNAVAILABLE`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

/// The build, as an info metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

struct Metrics {
    registry: Registry,
    webhooks: Family<WebhookLabels, Counter>,
    verification_failures: Family<ReasonLabels, Counter>,
    forward_duration: Histogram,
    upstream_errors: Family<CodeLabels, Counter>,
    in_flight: Gauge,
    shed: Counter,
    quarantined: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("clerk_sync_gateway");
    let webhooks = Family::default();
    registry.register(
        "webhooks",
        "Webhook deliveries answered, by event type and HTTP status",
        webhooks.clone(),
    );
    let verification_failures = Family::default();
    registry.register(
        "verification_failures",
        "Deliveries refused by signature verification, by reason",
        verification_failures.clone(),
    );
    // 0.5 ms to ~8 s: a loopback apply takes about a millisecond, the
    // default deadline is 5 s.
    let forward_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
    registry.register(
        "forward_duration_seconds",
        "Time to forward one event to the sync-service and get its outcome, failures included",
        forward_duration.clone(),
    );
    let upstream_errors = Family::default();
    registry.register(
        "upstream_errors",
        "Forwarded events the sync-service answered with an error, by gRPC code (DEADLINE_EXCEEDED includes the gateway's own deadline)",
        upstream_errors.clone(),
    );
    let in_flight = Gauge::default();
    registry.register(
        "in_flight_requests",
        "HTTP requests being handled right now",
        in_flight.clone(),
    );
    let shed = Counter::default();
    registry.register(
        "shed_requests",
        "Connections and webhooks refused with 503 before any work, because too many were in flight",
        shed.clone(),
    );
    let quarantined = Counter::default();
    registry.register(
        "quarantined",
        "Verified deliveries no retry can fix, stored in the sync-service's quarantine and acknowledged",
        quarantined.clone(),
    );
    registry.register(
        "build",
        "The running gateway's version",
        Info::new(BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
        }),
    );
    Metrics {
        registry,
        webhooks,
        verification_failures,
        forward_duration,
        upstream_errors,
        in_flight,
        shed,
        quarantined,
    }
});

/// The registry in the Prometheus text format (0.0.4), for `GET /metrics`.
pub fn render() -> String {
    let mut text = String::new();
    prometheus_text::encode(&mut text, &METRICS.registry)
        .expect("encoding into a String cannot fail");
    text
}

/// The `event_type` label for a verified Clerk event type: the synced types
/// by name, anything else as `other`, so label values stay a fixed set.
pub fn event_type_label(event_type: &str) -> &'static str {
    match event_type {
        "user.created" => "user.created",
        "user.updated" => "user.updated",
        "user.deleted" => "user.deleted",
        other => crate::organizations::EVENT_TYPES
            .into_iter()
            .find(|known| *known == other)
            .unwrap_or("other"),
    }
}

/// Counts one answered delivery. `event_type` is [`event_type_label`] of a
/// verified event, or `None` when the request never got that far.
pub fn record_webhook(event_type: Option<&'static str>, status: StatusCode) {
    METRICS
        .webhooks
        .get_or_create(&WebhookLabels {
            event_type: event_type.unwrap_or("unknown"),
            status: status.as_u16(),
        })
        .inc();
}

/// Counts a delivery the verifier refused, by the reason in `error`.
pub fn record_verification_failure(error: &Error) {
    let reason = match error {
        Error::MissingHeader(_) => "missing_header",
        Error::MalformedHeader { .. } => "malformed_header",
        Error::SignatureMismatch => "signature_mismatch",
        Error::TimestampOutsideWindow => "timestamp_outside_window",
        _ => "other",
    };
    METRICS
        .verification_failures
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// Records one call to the sync-service: its duration, and its gRPC code when
/// it failed ([`Error::UpstreamTimeout`] counts as `DEADLINE_EXCEEDED`).
pub fn record_forward(elapsed: Duration, error: Option<&Error>) {
    METRICS.forward_duration.observe(elapsed.as_secs_f64());
    let code = match error {
        None => return,
        // tonic reports its own client-side deadline as CANCELLED.
        Some(Error::Upstream(status)) if is_client_deadline(status) => Code::DeadlineExceeded,
        Some(Error::Upstream(status)) => status.code(),
        Some(Error::UpstreamTimeout) => Code::DeadlineExceeded,
        // An OK answer with an outcome this build does not know.
        Some(_) => Code::Unknown,
    };
    METRICS
        .upstream_errors
        .get_or_create(&CodeLabels {
            code: grpc_code_name(code),
        })
        .inc();
}

/// Whether `status` is the channel's own deadline (`tonic::TimeoutExpired`
/// in its source chain) rather than an answer from the sync-service.
fn is_client_deadline(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Counts one delivery stored in the quarantine (redeliveries included).
pub fn record_quarantined() {
    METRICS.quarantined.inc();
}

/// Counts one request refused by load shedding (503 before any work).
pub fn record_shed() {
    METRICS.shed.inc();
}

/// Counts a request as in flight until dropped, however the request ends
/// (answered, or its connection closed mid-way).
#[derive(Debug)]
pub struct InFlight(());

impl InFlight {
    /// Starts counting one request.
    pub fn start() -> Self {
        METRICS.in_flight.inc();
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample named exactly `series` (name and labels).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn recorded_values_appear_in_the_exposition() {
        let shed = "clerk_sync_gateway_shed_requests_total";
        let before = sample(&render(), shed).unwrap();
        record_shed();
        record_shed();
        record_verification_failure(&Error::SignatureMismatch);
        record_forward(
            Duration::from_millis(3),
            Some(&Error::Upstream(tonic::Status::unavailable("down"))),
        );
        {
            let _request = InFlight::start();
            let text = render();
            assert_eq!(
                sample(&text, "clerk_sync_gateway_in_flight_requests"),
                Some(1.0)
            );
        }
        let text = render();
        assert_eq!(sample(&text, shed), Some(before + 2.0), "{text}");
        assert_eq!(
            sample(&text, "clerk_sync_gateway_in_flight_requests"),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"clerk_sync_gateway_verification_failures_total{reason="signature_mismatch"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"clerk_sync_gateway_upstream_errors_total{code="UNAVAILABLE"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "clerk_sync_gateway_forward_duration_seconds_count"),
            Some(1.0)
        );
        assert!(text.contains(r#"clerk_sync_gateway_build_info{version=""#));
    }

    #[test]
    fn the_channels_own_deadline_is_not_mistaken_for_a_cancel() {
        let deadline = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(deadline.code(), Code::Cancelled);
        assert!(is_client_deadline(&deadline));
        assert!(!is_client_deadline(&tonic::Status::cancelled(
            "client went away"
        )));
    }

    #[test]
    fn only_synced_event_types_are_labelled_by_name() {
        assert_eq!(event_type_label("user.deleted"), "user.deleted");
        assert_eq!(event_type_label("session.created"), "other");
        assert_eq!(event_type_label("user.created\"} 1e9"), "other");
    }
}
