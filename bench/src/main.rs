//! `clerk-sync-bench`: parses the command line and runs the subcommand.
//! Everything else is library code.

use std::process::ExitCode;

use clap::Parser as _;
use clerk_sync_bench::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match clerk_sync_bench::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
