//! `clerk-sync-service`: parses configuration and runs the server (or only the
//! migrations). Everything else is library code.

use std::process::ExitCode;

use clap::Parser;
use clerk_sync_common::runtime::{
    bind, bind_optional, init_tracing, run_with_metrics, shutdown_signal,
};
use clerk_sync_service::{Config, config::Command, metrics};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let _traces = init_tracing(config.log_format, "clerk-sync-service");
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    match config.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            clerk_sync_service::server::open_store(&config).await?;
            tracing::info!("database migrated");
            Ok(())
        }
        Command::Serve => {
            let listener = bind(config.listen, "SYNC_SERVICE_LISTEN_ADDR").await?;
            let metrics_listener =
                bind_optional(config.metrics_listen, "SYNC_SERVICE_METRICS_LISTEN_ADDR").await?;
            let server = clerk_sync_service::run(listener, &config, shutdown_signal());
            run_with_metrics(metrics_listener, metrics::render, server).await
        }
    }
}
