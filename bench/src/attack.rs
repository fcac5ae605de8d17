//! `attack`: what a hostile client on the internal network can make a
//! sync-service hold, measured from outside. Each kind reproduces a probe of
//! the hardening issue and prints the servers' memory (`--server-pids`)
//! before, while held and after, with what the server did to the attack:
//!
//! - `idle`: connections that send the HTTP/2 preface and nothing more;
//! - `streams`: health-check streams (no token needed) each declaring a
//!   4 MB message and sending it;
//! - `watchers`: `WatchUsers` streams that start with a snapshot and never
//!   read, on connections with small HTTP/2 windows; memory is printed 3 s
//!   and `--settle` seconds after they are dropped, to see it given back.
//!
//! Loopback only, bounded in count and time, like every load here.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use clerk_sync_api::v1::{
    WatchUsersRequest, user_directory_service_client::UserDirectoryServiceClient,
    watch_users_request::Start,
};
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinSet,
};
use tonic::transport::Endpoint;

use crate::{
    cli::{AttackArgs, AttackKind},
    procstat::Watch,
    target::GrpcTarget,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// What each `streams` message declares: the old default message limit.
const DECLARED: usize = 4 * 1024 * 1024;
/// Streams per connection for `streams` and `watchers`.
const STREAMS_PER_CONNECTION: usize = 50;

/// Runs one attack; true when the server ended every attacking connection
/// or stream it should have within the hold (`idle`, `streams`), or always
/// for `watchers` (its figures are the result).
pub async fn attack(args: &AttackArgs) -> anyhow::Result<bool> {
    let watch = Watch::new(args.server_pids.clone())?;
    watch.print_memory("start", &watch.sample());
    let passed = match args.kind {
        AttackKind::Idle => idle(args, &watch).await?,
        AttackKind::Streams => streams(args, &watch).await?,
        AttackKind::Watchers => watchers(args, &watch).await?,
    };
    Ok(passed)
}

fn address(args: &AttackArgs) -> anyhow::Result<SocketAddr> {
    let authority = args
        .sync_service_url
        .authority()
        .context("--sync-service-url has no host:port")?;
    authority
        .as_str()
        .parse()
        .with_context(|| format!("--sync-service-url: {authority} is not an IP address and port"))
}

async fn idle(args: &AttackArgs, watch: &Watch) -> anyhow::Result<bool> {
    let address = address(args)?;
    let closed = Arc::new(AtomicUsize::new(0));
    let mut held = JoinSet::new();
    let mut opened = 0;
    for _ in 0..args.count {
        let Ok(mut stream) = TcpStream::connect(address).await else {
            break;
        };
        if stream.write_all(PREFACE).await.is_err() {
            continue;
        }
        opened += 1;
        let closed = Arc::clone(&closed);
        held.spawn(async move {
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            closed.fetch_add(1, Ordering::Relaxed);
        });
    }
    println!("idle: {opened} connections opened, each sent the HTTP/2 preface only");
    watch.print_memory("opened", &watch.sample());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(args.hold) {
        if closed.load(Ordering::Relaxed) == opened {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = closed.load(Ordering::Relaxed);
    println!(
        "idle: {closed} of {opened} closed by the server within {:.1} s",
        started.elapsed().as_secs_f64()
    );
    watch.print_memory("held", &watch.sample());
    held.shutdown().await;
    Ok(closed == opened)
}

async fn streams(args: &AttackArgs, watch: &Watch) -> anyhow::Result<bool> {
    let address = address(args)?;
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    let mut header = vec![0u8];
    header.extend_from_slice(&(DECLARED as u32).to_be_bytes());
    let header = Bytes::from(header);
    let mut calls = JoinSet::new();
    let mut connections = Vec::new();
    let count = args.count as usize;
    for first in (0..count).step_by(STREAMS_PER_CONNECTION) {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .context("HTTP/2 handshake")?;
        connections.push(tokio::spawn(connection));
        for _ in first..count.min(first + STREAMS_PER_CONNECTION) {
            let frames = std::iter::once(header.clone())
                .chain(std::iter::repeat_n(
                    chunk.clone(),
                    DECLARED / chunk.len() - 1,
                ))
                .map(|bytes| Ok::<_, std::convert::Infallible>(Frame::data(bytes)));
            let request =
                http::Request::post(format!("http://{address}/grpc.health.v1.Health/Check"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(StreamBody::new(futures::stream::iter(frames)))?;
            let mut sender = sender.clone();
            calls.spawn(async move {
                sender.ready().await.ok()?;
                let response = sender.send_request(request).await.ok()?;
                response
                    .headers()
                    .get("grpc-status")
                    .and_then(|status| status.to_str().ok().map(str::to_owned))
            });
        }
    }
    println!(
        "streams: {count} health streams on {} connections, each declaring {DECLARED} bytes",
        connections.len()
    );
    watch.print_memory("sent", &watch.sample());
    let mut refused = 0;
    let deadline = tokio::time::sleep(Duration::from_secs(args.hold));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            answer = calls.join_next() => match answer {
                // 11 is OUT_OF_RANGE: refused by its declared length.
                Some(Ok(Some(status))) if status == "11" => refused += 1,
                Some(_) => {}
                None => break,
            },
            () = &mut deadline => break,
        }
    }
    println!("streams: {refused} of {count} refused by their declared length (OUT_OF_RANGE)");
    watch.print_memory("held", &watch.sample());
    calls.shutdown().await;
    for connection in connections {
        connection.abort();
    }
    Ok(refused == count)
}

async fn watchers(args: &AttackArgs, watch: &Watch) -> anyhow::Result<bool> {
    let target = GrpcTarget::new(args.sync_service_url.clone(), args.token.as_deref())
        .map_err(anyhow::Error::msg)?;
    let count = args.count as usize;
    let mut streams = Vec::with_capacity(count);
    let mut refused = 0;
    for first in (0..count).step_by(STREAMS_PER_CONNECTION) {
        // Small windows, never read: the server's buffers are what fills.
        let channel = Endpoint::from(target.url.clone())
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", target.url))?;
        let mut client = UserDirectoryServiceClient::new(channel);
        for _ in first..count.min(first + STREAMS_PER_CONNECTION) {
            let request = target.request(WatchUsersRequest {
                start: Some(Start::Snapshot(())),
            });
            match client.watch_users(request).await {
                Ok(stream) => streams.push(stream.into_inner()),
                Err(_) => refused += 1,
            }
        }
    }
    println!(
        "watchers: {} snapshot streams open and never read, {refused} refused",
        streams.len()
    );
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(args.hold) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    watch.print_memory("held", &watch.sample());
    drop(streams);
    let dropped = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    watch.print_memory("after", &watch.sample());
    tokio::time::sleep(Duration::from_secs(args.settle).saturating_sub(dropped.elapsed())).await;
    watch.print_memory(&format!("after {} s", args.settle), &watch.sample());
    Ok(true)
}
