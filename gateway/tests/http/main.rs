//! The gateway over real HTTP: every row of the status table, each fixture
//! forwarded with its typed fields, upstream failures and recovery, graceful
//! shutdown, and (in `metrics`) the metrics endpoint and log settings. One
//! test binary; each test starts its own gateway and fake sync-service on
//! port 0.
//!
//! - [`forwarded`]: events forwarded with their typed fields (200).
//! - [`verification`]: signatures, timestamps and payloads (400, 401, and
//!   the quarantine).
//! - [`routing`]: paths, methods, content types and body sizes (404, 405,
//!   413, 415).
//! - [`sync_service_failures`]: what the sync-service's failures answer (5xx).
//! - [`readiness_and_shutdown`]: `/healthz`, `/readyz` and graceful shutdown.
//! - [`slow_clients`], [`metrics`], [`logs`], [`properties`],
//!   [`backfill_cli`]: connection hygiene, operability, properties and the
//!   binary's command line.

mod backfill_cli;
mod fake_sync;
mod forwarded;
mod helpers;
mod logs;
mod metrics;
mod properties;
mod readiness_and_shutdown;
mod routing;
mod slow_clients;
mod sync_service_failures;
mod verification;
