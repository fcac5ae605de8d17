//! `clerk-sync-gateway`: parses settings, sets up logs, then either binds the
//! listener and hands everything to [`clerk_sync_gateway::run`], or runs an
//! operator's `quarantine` command.

use std::process::ExitCode;

use clap::Parser;
use clerk_sync_api::runtime::{init_tracing, shutdown_signal};
use clerk_sync_gateway::{Config, config::Command, quarantine, run};

#[tokio::main]
async fn main() -> ExitCode {
    // Bad settings stop here, with clap's one-line message naming the setting.
    let mut config = Config::parse();
    init_tracing();

    if let Some(Command::Quarantine { action }) = config.command.take() {
        return match quarantine::cli::run(&config, action, &mut std::io::stdout()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {}", clerk_sync_gateway::error::chain(&error));
                ExitCode::FAILURE
            }
        };
    }

    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, address = %config.listen, "cannot listen (GATEWAY_LISTEN_ADDR)");
            return ExitCode::FAILURE;
        }
    };
    match run(listener, config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "gateway stopped");
            ExitCode::FAILURE
        }
    }
}
