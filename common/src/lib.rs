//! What every clerk-sync binary shares and no API client needs: the
//! `clerk-sync-api` crate stays the generated code a client depends on, and
//! the process plumbing lives here.
//!
//! - [`runtime`]: the shutdown signal, the log format, binding a listener
//!   with its setting's name, and the Prometheus metrics endpoint.
//! - [`settings`]: parsing secret settings without echoing them.
//! - [`telemetry`]: OpenTelemetry traces, and their context across gRPC.
//! - [`tls`]: reading the PEM files TLS settings name.
//! - [`redact`]: URLs with their passwords masked, for logs and banners.
//! - [`time`]: Unix milliseconds ⇄ protobuf `Timestamp`.
//! - [`io`]: write forwarding for socket wrappers.

pub mod io;
pub mod redact;
pub mod runtime;
pub mod settings;
pub mod telemetry;
pub mod time;
pub mod tls;
