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
        .compile_fds(descriptors.clone())?;

    // The directory's server again, over the replies of `src/encoded.rs`
    // (users carried encoded) and the messages generated above.
    let encoded_dir = out_dir.join("encoded");
    fs::create_dir_all(&encoded_dir)?;
    let mut configure = tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(encoded_dir)
        .extern_path(".clerk.sync.v1", "crate::v1");
    for reply in ENCODED_REPLIES {
        configure = configure.extern_path(
            format!(".clerk.sync.v1.{reply}"),
            format!("crate::encoded::{reply}"),
        );
    }
    configure.compile_fds(directory_service_only(descriptors))?;
    Ok(())
}

/// The replies (and `WatchUsers`' messages) of `UserDirectoryService` that
/// `src/encoded.rs` declares with their users encoded.
const ENCODED_REPLIES: &[&str] = &[
    "GetUserResponse",
    "FindUserByEmailResponse",
    "BatchGetUsersResponse",
    "ListUsersResponse",
    "WatchUsersResponse",
];

/// `descriptors` with `clerk.sync.v1`'s files alone, and of their services
/// `UserDirectoryService` alone (every message is extern: none is generated).
fn directory_service_only(
    mut descriptors: prost_types::FileDescriptorSet,
) -> prost_types::FileDescriptorSet {
    descriptors
        .file
        .retain(|file| file.package() == "clerk.sync.v1");
    for file in &mut descriptors.file {
        file.service
            .retain(|service| service.name() == "UserDirectoryService");
    }
    descriptors
}
