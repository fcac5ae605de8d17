//! Compiles `proto/` with protox (pure Rust: no system `protoc` needed) into
//! prost messages and tonic clients/servers, and keeps the encoded descriptor
//! set for gRPC server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/clerk/sync/v1/user.proto",
    "proto/clerk/sync/v1/sync.proto",
    "proto/clerk/sync/v1/directory.proto",
    "proto/clerk/sync/v1/quarantine.proto",
    "proto/clerk/sync/v1/reconcile.proto",
    "proto/clerk/sync/v1/organization.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");

    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    fs::write(
        out_dir.join("clerk_sync_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
