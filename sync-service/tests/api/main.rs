//! Integration tests of the sync-service: the real server on 127.0.0.1:0 over
//! a fresh SQLite file or PostgreSQL database, driven by the generated clients
//! (and, in `grpcurl`, by the real grpcurl binary through reflection), with
//! its metrics endpoint scraped in `metrics`. `upgrade` starts it on databases
//! left by every earlier release.
//!
//! PostgreSQL tests use `TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and create a database per test.

mod account_state;
mod bad_input;
mod batches;
mod binary;
mod concurrency;
mod connections;
mod feed;
mod feed_fanout;
mod feed_grpcurl;
mod feed_limits;
mod feed_replicas;
mod grpcurl;
mod helpers;
mod hostile;
mod metrics;
mod organization_feed;
mod organizations;
mod outage;
mod permission_cache;
mod pools;
mod properties;
mod quarantine;
mod queries;
mod read_cache;
mod reconcile;
mod security;
mod semantics;
mod upgrade;
