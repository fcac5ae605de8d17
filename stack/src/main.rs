//! `clerk-sync`: the whole stack in one process. Parses configuration and
//! calls [`clerk_sync_stack::run`].

use std::process::ExitCode;

use clap::Parser;
use clerk_sync_common::runtime::{init_tracing, shutdown_signal};
use clerk_sync_stack::StackConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let config = StackConfig::parse();
    let _traces = init_tracing(config.log_format, "clerk-sync");
    match clerk_sync_stack::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
