//! The machine's ceiling, measured with the same load code: a bare hyper
//! server answering `200 {}` and a tonic server with only grpc.health.v1.
//! Each runs as a child process of the bench (hidden subcommands
//! `serve-hyper-baseline` / `serve-tonic-baseline`, which print their
//! address on stdout), so it never shares a runtime with the load.

use std::{
    convert::Infallible,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Serves `200 {}` (after reading the body, as the gateway does) forever.
pub async fn serve_hyper(listener: TcpListener) -> anyhow::Result<()> {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
            let _ = request.into_body().collect().await;
            Ok::<_, Infallible>(
                Response::builder()
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .expect("a valid response"),
            )
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

/// Serves grpc.health.v1 (SERVING) forever.
pub async fn serve_tonic(listener: TcpListener) -> anyhow::Result<()> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// A baseline server running as a child process; killed when dropped.
#[derive(Debug)]
pub struct BaselineServer {
    child: Child,
    /// Where it listens.
    pub address: SocketAddr,
}

impl BaselineServer {
    /// Starts this executable with `subcommand` and reads the address it prints.
    pub fn start(subcommand: &str) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg(subcommand)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {subcommand}: {e}"))?;
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        BufReader::new(stdout).read_line(&mut line)?;
        match line.trim().parse() {
            Ok(address) => Ok(Self { child, address }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("{subcommand} did not print its address (got {line:?})")
            }
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BaselineServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Binds 127.0.0.1:0, prints the address on stdout, and serves with `serve`.
pub async fn serve_on_loopback<F, Fut>(serve: F) -> anyhow::Result<()>
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    use std::io::Write as _;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", listener.local_addr()?)?;
    stdout.flush()?;
    serve(listener).await
}
