//! The clerk-sync sync-service: applies Clerk user events to the directory
//! database, idempotently and in the right order, and serves the directory over
//! gRPC.
//!
//! - [`config`]: flags and environment variables.
//! - [`auth`]: bearer tokens and roles, one layer in front of every service.
//! - [`tls`]: the gRPC port's certificate and optional client CA.
//! - [`limits`]: connection hygiene on the gRPC port (connection cap,
//!   handshake and idle deadlines, HTTP/2 limits).
//! - [`server`]: the tonic server (both services, health, reflection);
//!   [`run`] takes its listener and shutdown from the caller.
//! - [`domain`]: typed values requests are parsed into at the edge.
//! - [`ingest`]: group commit of concurrent events.
//! - [`store`]: the database, its queries and mutations (sea-orm).
//! - [`error`]: the one error type and its mapping to gRPC status codes.
//! - [`metrics`]: the Prometheus registry, the functions that record, and the
//!   tower layer that counts and times every gRPC call.
//! - `memory`: gives freed memory back to the operating system after
//!   change-feed watchers leave.
//! - `grpc`: the service handlers, which translate and delegate.

pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
mod grpc;
pub mod ingest;
pub mod limits;
mod memory;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;

pub use config::Config;
pub use error::Error;
pub use server::{run, serve};
pub use store::Store;
