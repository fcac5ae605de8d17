//! `clerk-sync-gateway`: parses settings, sets up logs, then either serves
//! webhooks ([`clerk_sync_gateway::run`]) or runs a backfill
//! ([`clerk_sync_gateway::backfill::run`]).

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser};
use clerk_sync_api::runtime::{init_tracing, shutdown_signal};
use clerk_sync_gateway::{
    Config, backfill,
    config::{BackfillArgs, Command},
    run,
};

#[tokio::main]
async fn main() -> ExitCode {
    // Bad settings stop here, with clap's one-line message naming the setting.
    let config = Config::parse();
    init_tracing();
    match config.command.clone() {
        None | Some(Command::Serve) => serve(config).await,
        Some(Command::Backfill(args)) => backfill(config, args).await,
    }
}

async fn serve(config: Config) -> ExitCode {
    if config.webhook_secrets.is_none() {
        Config::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--webhook-secret (CLERK_WEBHOOK_SECRET) is required to serve webhooks",
            )
            .exit();
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

async fn backfill(config: Config, args: BackfillArgs) -> ExitCode {
    match backfill::run(&config, &args, shutdown_signal()).await {
        Ok(summary) => {
            println!("backfill done: {summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
