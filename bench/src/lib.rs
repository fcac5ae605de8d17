//! `clerk-sync-bench`: a load generator for a running clerk-sync deployment,
//! in its own process so it never shares a runtime with what it measures.
//!
//! - [`phases::ingest`] signs unique Clerk events ([`plan`], [`signing`]),
//!   posts them over keep-alive connections ([`load`]) and checks the end
//!   state through the directory ([`verify`]);
//! - [`phases::query`] drives the directory's RPCs, the organizations'
//!   point reads over what [`organizations::seed`] put there;
//! - [`phases::scan`] times a full ListUsers pass and [`phases::ready`] a
//!   sync-service's start-up;
//! - [`phases::baselines`] measures a bare hyper server and a no-op tonic
//!   server ([`baselines`]), started as child processes, with the same load;
//! - [`attack`] holds what a hostile client can against the gRPC port;
//! - [`watch`] holds change-feed watchers while another process loads the
//!   deployment, and times delivery from each webhook's send;
//! - [`procstat`] reports peak RSS and CPU per request of server processes.

pub mod attack;
pub mod baselines;
pub mod cli;
pub mod load;
pub mod organizations;
pub mod phases;
pub mod plan;
pub mod procstat;
pub mod signing;
pub mod stats;
pub mod target;
pub mod verify;
pub mod watch;

use std::process::ExitCode;

use cli::{Cli, Command};

/// Runs one subcommand; the exit code says whether everything succeeded.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let passed = match cli.command {
        Command::Ingest(args) => {
            let outcome = phases::ingest(&args).await?;
            if outcome.report.failures > 0 {
                eprintln!(
                    "error: {} of {} webhooks were not answered 200",
                    outcome.report.failures,
                    outcome.report.count()
                );
            }
            if outcome.verdict.as_ref().is_some_and(|v| !v.passed()) {
                eprintln!("error: the end state does not match what was sent");
            }
            outcome.passed()
        }
        Command::Query(args) => {
            let report = phases::query(&args).await?;
            if report.failures > 0 {
                eprintln!(
                    "error: {} of {} calls failed",
                    report.failures,
                    report.count()
                );
            }
            report.failures == 0
        }
        Command::SeedOrganizations(args) => {
            organizations::seed(&args).await?;
            true
        }
        Command::Baselines(args) => {
            let (http, grpc) = phases::baselines(&args).await?;
            http.failures == 0 && grpc.failures == 0
        }
        Command::Scan(args) => {
            phases::scan(&args).await?;
            true
        }
        Command::Ready(args) => {
            phases::ready(&args).await?;
            true
        }
        Command::Attack(args) => {
            let held_off = attack::attack(&args).await?;
            if !held_off {
                eprintln!("error: the server did not end every attacking connection or stream");
            }
            held_off
        }
        Command::Watch(args) => watch::watch(&args).await?,
        Command::ServeHyperBaseline => {
            baselines::serve_on_loopback(baselines::serve_hyper).await?;
            true
        }
        Command::ServeTonicBaseline => {
            baselines::serve_on_loopback(baselines::serve_tonic).await?;
            true
        }
    };
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
