//! gRPC handlers: each parses its request into domain values, delegates to the
//! ingestor or the store, and translates the answer. Nothing more.

pub(crate) mod directory;
pub(crate) mod fanout;
pub(crate) mod feed;
pub(crate) mod organizations;
pub(crate) mod quarantine;
pub(crate) mod reconcile;
pub(crate) mod sync;
