//! The clerk-sync gateway: the only internet-facing part of clerk-sync. It
//! receives Clerk's webhooks (delivered by Svix), verifies their signatures,
//! maps the Clerk JSON to typed `clerk.sync.v1` messages and forwards them to
//! the sync-service over gRPC, answering with the HTTP status that makes Svix
//! retry exactly when it should.
//!
//! Module map, in the order a request meets them:
//! - [`server`]: hyper server, routes (`POST /clerk`, `/healthz`, `/readyz`),
//!   the webhook pipeline and graceful shutdown; [`run`] is the entry point.
//! - [`limits`]: connection hygiene (head, body and idle deadlines, HTTP/2
//!   limits, connection and in-flight caps with 503 shedding).
//! - [`verify`]: Svix / Standard Webhooks v1 signature verification (pure).
//! - [`pipeline`]: after verification: parse, map, check, forward.
//! - [`clerk`]: Clerk event JSON → typed values → sync messages.
//! - [`upstream`]: forwarding events to the sync-service, and readiness.
//! - [`quarantine`]: verified deliveries no retry can fix, kept by the
//!   sync-service; and the operator's `quarantine` command.
//! - [`sync_service`]: the one channel to the sync-service (addresses, TLS,
//!   token, deadline) and its settings; every command's clients come from it.
//! - [`error`]: the one error type and its one mapping to HTTP responses.
//! - [`metrics`]: the Prometheus registry and the functions that record.
//! - [`config`]: the command line, assembled from each module's settings.
//!
//! And the `backfill` command, which fills the directory from Clerk itself:
//! - [`backfill`]: list Clerk's users, then its organizations, memberships,
//!   invitations and roles, apply them like webhooks, reconcile;
//!   its [`backfill::clerk_api`] is the Backend API client (paging,
//!   throttling, retries).

pub mod backfill;
pub mod clerk;
pub mod config;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod organizations;
pub mod pipeline;
pub mod quarantine;
pub mod server;
pub mod sync_service;
pub mod upstream;
pub mod verify;

pub use config::Config;
pub use error::Error;
pub use server::{App, run};
pub use verify::{Verifier, WebhookSecrets};
