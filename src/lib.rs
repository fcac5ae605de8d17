//! The clerk-sync API: the `clerk.sync.v1` protobuf messages and the tonic
//! clients and servers generated from `proto/`, shared by the gateway, the
//! sync-service and any Rust service that queries the directory.
//!
//! A client depends on this crate alone: it carries the generated code and
//! what a client needs, no server runtime (the binaries' shared plumbing is
//! the internal `clerk-sync-common` crate). The `tls` feature adds TLS to
//! the generated clients' channels.
//!
//! - [`v1`]: generated code (`User`, `UserSyncService`, `UserDirectoryService`).
//! - [`encoded`]: `UserDirectoryService`'s server over replies that carry
//!   their users already encoded (the same bytes on the wire).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for server reflection.
//! - [`json`]: JSON ⇄ protobuf `Struct`, for Clerk metadata.
//! - [`EVENT_ID_METADATA`]: the gRPC metadata key carrying a delivery's event id.

pub mod encoded;
pub mod json;

/// gRPC request metadata key with which the gateway sends each event's id (the
/// svix-id) to the sync-service, so both services' logs name the delivery.
pub const EVENT_ID_METADATA: &str = "x-event-id";

/// Generated code for the `clerk.sync.v1` package.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    tonic::include_proto!("clerk.sync.v1");
}

/// Encoded `FileDescriptorSet` of every file in `proto/` (and the well-known
/// types it imports), for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/clerk_sync_descriptor.bin"));
