//! `clerk-sync-gateway`: parses settings, sets up logs, then either binds the
//! listeners and hands everything to [`clerk_sync_gateway::run`] (with the
//! metrics endpoint alongside), runs an operator's `quarantine` command, or
//! runs a `backfill` ([`clerk_sync_gateway::backfill::run`]).

use std::process::ExitCode;

use clap::Parser;
use clerk_sync_common::runtime::{
    bind, bind_optional, init_tracing, run_with_metrics, shutdown_signal,
};
use clerk_sync_gateway::{Config, backfill, config::Command, metrics, quarantine, run};

#[tokio::main]
async fn main() -> ExitCode {
    // Bad settings stop here, with clap's one-line message naming the setting.
    let mut config = Config::parse();
    let _traces = init_tracing(config.log_format, "clerk-sync-gateway");

    if let Some(Command::Backfill(command)) = &config.command {
        let out = &mut std::io::stdout();
        return match backfill::command(&config.sync_service, command, shutdown_signal(), out).await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Quarantine { action }) = config.command.take() {
        return match quarantine::cli::run(
            &config.sync_service,
            config.limits.max_message_bytes,
            action,
            &mut std::io::stdout(),
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {}", clerk_sync_gateway::error::chain(&error));
                ExitCode::FAILURE
            }
        };
    }

    let listeners = (
        bind(config.listen, "GATEWAY_LISTEN_ADDR").await,
        bind_optional(config.metrics_listen, "GATEWAY_METRICS_LISTEN_ADDR").await,
    );
    let (listener, metrics_listener) = match listeners {
        (Ok(listener), Ok(metrics_listener)) => (listener, metrics_listener),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let server = run(listener, config, shutdown_signal());
    match run_with_metrics(metrics_listener, metrics::render, server).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, as for every other start-up failure.
            eprintln!("error: {}", clerk_sync_gateway::error::chain(&error));
            ExitCode::FAILURE
        }
    }
}
