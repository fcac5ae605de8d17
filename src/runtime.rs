//! Process plumbing shared by every clerk-sync binary: one shutdown signal and
//! one way to set up logs, so both services stop and log alike.

use tracing_subscriber::EnvFilter;

/// Completes on the first Ctrl-C (SIGINT) or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is
/// first polled, so a signal that arrives while the server is still starting
/// is not lost (nor does it kill the process). Call it inside the runtime.
/// Servers take a shutdown future from their caller; binaries pass this one,
/// tests pass their own.
#[cfg(unix)]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
                _ = interrupt.recv() => tracing::info!("Ctrl-C received, shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
            },
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(%error, "cannot listen for shutdown signals");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Completes on the first Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received, shutting down");
        } else {
            std::future::pending::<()>().await;
        }
    }
}

/// Sends structured logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
