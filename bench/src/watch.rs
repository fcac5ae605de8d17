//! `watch`: change-feed watchers held open against a sync-service while
//! another process (`ingest --stamp-send-time`) loads it, in a process of
//! their own so the load generator's figures are not theirs.
//!
//! `--count` `WatchUsers` streams start from now, 50 to a connection; the
//! first `--idle` of them are on connections with the smallest HTTP/2
//! windows and are never read (the server must bound what they cost it).
//! Every other stream reads everything; for each user message carrying
//! `public_metadata.bench_sent_us` (the load generator's wall-clock time,
//! in µs, just before it sent the webhook) it records the time from that
//! send to this process's receipt of the message: the webhook's way through
//! the gateway, the commit, the fan-out and the stream, on one machine's
//! clock. The log is compacted, so a user changed again before a watcher
//! read it arrives once, at its latest version: the figures are over the
//! messages received.
//!
//! It prints `RESULT watch-ready` once every stream is open, then waits for
//! the first message, and ends `--quiet` seconds after the last one (or
//! after `--hold` seconds), sampling the servers' memory every second.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clerk_sync_api::v1::{
    WatchUsersRequest, user_directory_service_client::UserDirectoryServiceClient,
    watch_users_request::Start, watch_users_response::Event,
};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::{
    cli::WatchArgs,
    plan::SENT_US_KEY,
    procstat::{ProcSample, Watch},
    target::GrpcTarget,
};

/// Streams per connection.
const STREAMS_PER_CONNECTION: usize = 50;

/// Delivery latencies in buckets: 10 µs wide below 10 ms, 1 ms wide below
/// 1 s, 100 ms wide up to 100 s (beyond: the last bucket).
#[derive(Debug)]
pub struct Latencies {
    buckets: Vec<AtomicU64>,
}

const FINE: u64 = 1_000;
const MEDIUM: u64 = 990;
const COARSE: u64 = 991;

impl Default for Latencies {
    fn default() -> Self {
        Self {
            buckets: (0..FINE + MEDIUM + COARSE)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl Latencies {
    /// Counts one latency.
    pub fn record(&self, micros: u64) {
        let index = if micros < 10_000 {
            micros / 10
        } else if micros < 1_000_000 {
            FINE + (micros - 10_000) / 1_000
        } else {
            FINE + MEDIUM + ((micros - 1_000_000) / 100_000).min(COARSE - 1)
        };
        self.buckets[index as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Latencies counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The `p`th percentile in ms (the upper edge of its bucket); 0 when
    /// nothing was counted.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        let count = self.count();
        if count == 0 {
            return 0.0;
        }
        let rank = ((p / 100.0) * count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                let index = index as u64;
                let upper_us = if index < FINE {
                    (index + 1) * 10
                } else if index < FINE + MEDIUM {
                    10_000 + (index - FINE + 1) * 1_000
                } else {
                    1_000_000 + (index - FINE - MEDIUM + 1) * 100_000
                };
                return upper_us as f64 / 1000.0;
            }
        }
        unreachable!("the rank is at most the count")
    }
}

/// What the streams saw, shared by their tasks.
#[derive(Debug, Default)]
struct Seen {
    latencies: Latencies,
    /// Messages received, stamped or not (caught_up markers excluded).
    messages: AtomicU64,
    /// When the last message arrived, µs since the start.
    last_us: AtomicU64,
    /// Streams the server ended, by status code.
    ended: Mutex<std::collections::BTreeMap<String, u64>>,
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Runs `watch`; always true once the streams are open (the figures are the
/// result).
pub async fn watch(args: &WatchArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.idle <= args.count,
        "--idle ({}) must be at most --count ({}): the streams that never read are among them",
        args.idle,
        args.count
    );
    let target = GrpcTarget::new(args.sync_service_url.clone(), args.token.as_deref())
        .map_err(anyhow::Error::msg)?;
    let procs = Watch::new(args.server_pids.clone())?;
    let start = Instant::now();
    let seen = Arc::new(Seen::default());
    let count = args.count as usize;
    let idle = args.idle as usize;
    let mut tasks = JoinSet::new();
    let mut held = Vec::new();
    let mut refused = 0;
    for first in (0..count).step_by(STREAMS_PER_CONNECTION) {
        let last = count.min(first + STREAMS_PER_CONNECTION);
        let idle_here = idle.saturating_sub(first).min(last - first);
        // Idle streams get their own connections with the smallest windows.
        if idle_here > 0 {
            let channel = connect(&target, true).await?;
            let mut client = UserDirectoryServiceClient::new(channel);
            for _ in 0..idle_here {
                match client
                    .watch_users(target.request(WatchUsersRequest {
                        start: Some(Start::Now(())),
                    }))
                    .await
                {
                    Ok(stream) => held.push(stream.into_inner()),
                    Err(_) => refused += 1,
                }
            }
        }
        if last - first > idle_here {
            let channel = connect(&target, false).await?;
            let mut client =
                UserDirectoryServiceClient::new(channel).max_decoding_message_size(64 << 20);
            for _ in first + idle_here..last {
                let mut stream = match client
                    .watch_users(target.request(WatchUsersRequest {
                        start: Some(Start::Now(())),
                    }))
                    .await
                {
                    Ok(stream) => stream.into_inner(),
                    Err(_) => {
                        refused += 1;
                        continue;
                    }
                };
                let seen = Arc::clone(&seen);
                tasks.spawn(async move {
                    loop {
                        match stream.message().await {
                            Ok(Some(message)) => {
                                let Some(Event::User(user)) = message.event else {
                                    continue;
                                };
                                let now = unix_micros();
                                seen.messages.fetch_add(1, Ordering::Relaxed);
                                seen.last_us.fetch_max(
                                    start.elapsed().as_micros() as u64,
                                    Ordering::Relaxed,
                                );
                                if let Some(sent) = sent_us(&user) {
                                    seen.latencies.record(now.saturating_sub(sent));
                                }
                            }
                            Ok(None) => return,
                            Err(status) => {
                                let code = format!("{:?}", status.code());
                                *seen
                                    .ended
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .entry(code)
                                    .or_default() += 1;
                                return;
                            }
                        }
                    }
                });
            }
        }
    }
    let reading = tasks.len();
    let open = reading + held.len();
    println!(
        "watch: {open} streams open from now ({} never read), {refused} refused",
        held.len()
    );
    println!(
        "RESULT watch-ready streams={open} idle={} refused={refused}",
        held.len()
    );
    let first = procs.sample();
    procs.print_memory("open", &first);
    let mut peak_rss: Vec<u64> = first.iter().map(|s| s.rss_kib).collect();

    let hold = Duration::from_secs(args.hold);
    let quiet = Duration::from_secs(args.quiet);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (peak, sample) in peak_rss.iter_mut().zip(procs.sample()) {
            *peak = (*peak).max(sample.rss_kib);
        }
        let last = seen.last_us.load(Ordering::Relaxed);
        let since_last = start.elapsed().saturating_sub(Duration::from_micros(last));
        if start.elapsed() >= hold || (last > 0 && since_last >= quiet) {
            break;
        }
    }
    let end = procs.sample();
    procs.print_memory("end", &end);
    tasks.shutdown().await;
    drop(held);

    let latencies = &seen.latencies;
    let ended = seen
        .ended
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(code, n)| format!("{code}:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "watch: {} messages to {} reading streams, {} stamped: send to receipt p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; ended by the server: {}",
        seen.messages.load(Ordering::Relaxed),
        reading,
        latencies.count(),
        latencies.percentile_ms(50.0),
        latencies.percentile_ms(99.0),
        latencies.percentile_ms(100.0),
        if ended.is_empty() { "none" } else { &ended },
    );
    println!(
        "RESULT watch streams={open} messages={} stamped={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} ended={}",
        seen.messages.load(Ordering::Relaxed),
        latencies.count(),
        latencies.percentile_ms(50.0),
        latencies.percentile_ms(99.0),
        latencies.percentile_ms(100.0),
        if ended.is_empty() { "none" } else { &ended },
    );
    for (sample, peak) in end.iter().zip(&peak_rss) {
        if sample.pid != std::process::id() {
            print_rss(sample, *peak);
        }
    }
    Ok(true)
}

fn print_rss(sample: &ProcSample, max_rss_kib: u64) {
    println!(
        "RESULT watch-rss pid={} max_rss_kib={max_rss_kib} peak_kib={} end_rss_kib={}",
        sample.pid, sample.peak_rss_kib, sample.rss_kib
    );
}

async fn connect(target: &GrpcTarget, small_windows: bool) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from(target.url.clone()).tcp_nodelay(true);
    if small_windows {
        endpoint = endpoint
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535);
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", target.url))
}

/// The send time a stamped user carries, Unix µs.
fn sent_us(user: &clerk_sync_api::v1::User) -> Option<u64> {
    use prost_types::value::Kind;
    match &user.public_metadata.as_ref()?.fields.get(SENT_US_KEY)?.kind {
        Some(Kind::StringValue(text)) => text.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_buckets() {
        let latencies = Latencies::default();
        assert_eq!(latencies.percentile_ms(50.0), 0.0);
        for micros in [5, 15, 25, 9_999, 10_000, 2_500_000, 500_000_000] {
            latencies.record(micros);
        }
        assert_eq!(latencies.count(), 7);
        assert_eq!(latencies.percentile_ms(1.0), 0.01);
        assert_eq!(latencies.percentile_ms(50.0), 10.0);
        assert_eq!(latencies.percentile_ms(70.0), 11.0);
        assert_eq!(latencies.percentile_ms(85.0), 2_600.0);
        assert_eq!(latencies.percentile_ms(100.0), 100_100.0);
    }

    #[tokio::test]
    async fn more_idle_streams_than_streams_is_refused_before_connecting() {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from([
            "clerk-sync-bench",
            "watch",
            "--sync-service-url",
            "http://127.0.0.1:1",
            "--count",
            "10",
            "--idle",
            "11",
        ])
        .unwrap();
        let crate::cli::Command::Watch(args) = cli.command else {
            panic!("not watch: {:?}", cli.command);
        };
        let error = watch(&args).await.unwrap_err().to_string();
        assert!(
            error.contains("--idle (11) must be at most --count (10)"),
            "{error}"
        );
    }
}
