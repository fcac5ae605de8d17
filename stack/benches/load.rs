//! Load benchmark of the whole clerk-sync stack: prints figures, asserts nothing
//! but that every request succeeded.
//!
//! For each backend (SQLite in a temporary directory, PostgreSQL in a fresh
//! database on `TEST_DATABASE_URL`), it starts the real sync-service and the
//! real gateway in-process on 127.0.0.1:0, then:
//!
//! 1. ingest: 32 keep-alive HTTP/1.1 connections post Svix-signed
//!    `user.created` / `user.updated` webhooks (signed before the timed phase)
//!    and record each request's latency; every answer must be 200;
//! 2. GetUser: 32 concurrent tonic clients over one channel call
//!    `UserDirectoryService/GetUser` on random existing ids; for reference, the
//!    same load on `grpc.health.v1.Health/Check` (close to a no-op tonic call)
//!    against the same server.
//!
//! ```sh
//! cargo bench -p clerk-sync-stack --bench load
//! ```
//!
//! Environment: `BENCH_BACKENDS` (`sqlite,postgres`), `BENCH_EVENTS` (20000),
//! `BENCH_USERS` (5000), `BENCH_QUERIES` (50000), `BENCH_CONNECTIONS` (32),
//! `TEST_DATABASE_URL` (`postgres://postgres@127.0.0.1:5432/postgres`),
//! `RUST_LOG` (`warn`; logs of the services, to stderr).
//! Exits non-zero when any webhook is not answered 200 or any call fails.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use clerk_sync_api::v1::{self, user_directory_service_client::UserDirectoryServiceClient};
use hmac::{Hmac, Mac as _};
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tracing_subscriber::{EnvFilter, Layer as _, layer::SubscriberExt as _};

/// The signing secret the gateway is configured with (a published Svix test secret).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// PostgreSQL server used when `TEST_DATABASE_URL` is not set.
const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Webhooks sent before the timed ingest phase (on users of their own).
const WARMUP_EVENTS: usize = 2_000;
/// Calls made before each timed gRPC phase.
const WARMUP_QUERIES: usize = 5_000;

// Figures quoted in /work/shared/design/architecture.md ("Performance the
// design must allow"), same 2-core machine, 32 keep-alive connections.
const SEED_SQLITE_PER_SEC: f64 = 6_400.0;
const SEED_POSTGRES_PER_SEC: f64 = 4_600.0;
const NOOP_TONIC_PER_SEC: f64 = 64_000.0;
const P99_TARGET_MS: f64 = 20.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// Seed stack's figure and the factor clerk-sync must reach over it.
    fn target(self) -> (f64, f64) {
        match self {
            Self::Sqlite => (SEED_SQLITE_PER_SEC, 2.0),
            Self::Postgres => (SEED_POSTGRES_PER_SEC, 3.0),
        }
    }
}

struct Settings {
    backends: Vec<Backend>,
    events: usize,
    users: usize,
    queries: usize,
    connections: usize,
}

impl Settings {
    fn from_env() -> Self {
        let number = |name: &str, default: usize| -> usize {
            match std::env::var(name) {
                Ok(value) => match value.trim().parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => panic!("{name}={value}: expected a positive integer"),
                },
                Err(_) => default,
            }
        };
        let backends = std::env::var("BENCH_BACKENDS")
            .unwrap_or_else(|_| "sqlite,postgres".into())
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s {
                "sqlite" => Backend::Sqlite,
                "postgres" | "postgresql" => Backend::Postgres,
                other => panic!("BENCH_BACKENDS: unknown backend {other:?}"),
            })
            .collect();
        Self {
            backends,
            events: number("BENCH_EVENTS", 20_000),
            users: number("BENCH_USERS", 5_000),
            queries: number("BENCH_QUERIES", 50_000),
            connections: number("BENCH_CONNECTIONS", 32),
        }
    }
}

fn main() {
    let batches = BatchStats::install();
    let settings = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let failures = runtime.block_on(async {
        println!(
            "clerk-sync load: {} events over {} users, {} GetUser calls, {} connections, {} cores",
            settings.events,
            settings.users,
            settings.queries,
            settings.connections,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        let mut failures = 0;
        for &backend in &settings.backends {
            failures += bench_backend(backend, &settings, &batches).await;
        }
        failures
    });
    if failures > 0 {
        eprintln!("FAILED: {failures} requests or calls did not succeed");
        std::process::exit(1);
    }
}

async fn bench_backend(backend: Backend, settings: &Settings, batches: &BatchStats) -> u64 {
    println!();
    println!("== {} ==", backend.name());
    let db = BenchDb::new(backend).await;
    let stack = Stack::start(&db.url).await;
    let mut failures = 0;

    // Ingest: warm up on users of their own, then the timed run.
    let warmup = signed_events("warm", WARMUP_EVENTS, WARMUP_EVENTS / 4, stack.gateway);
    let report = post_all(stack.gateway, warmup, settings.connections).await;
    failures += report.report_failures("warm-up webhooks");
    let requests = signed_events("user", settings.events, settings.users, stack.gateway);
    batches.reset();
    let cpu = CpuSample::now();
    let report = post_all(stack.gateway, requests, settings.connections).await;
    let cpu = cpu.elapsed();
    let (batch_count, batch_events, batch_max) = batches.get();
    failures += report.report_failures("webhooks");
    let rate = report.latencies.len() as f64 / report.elapsed.as_secs_f64();
    let (seed, factor) = backend.target();
    println!(
        "ingest   {:>9.0} events/s  ({} in {:.2} s)   target >= {:.0}/s ({factor}x the seed's {seed:.0}/s): {:.2}x seed",
        rate,
        report.latencies.len(),
        report.elapsed.as_secs_f64(),
        seed * factor,
        rate / seed,
    );
    println!(
        "         latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}   target p99 < {P99_TARGET_MS:.0} ms",
        report.percentile(50.0),
        report.percentile(90.0),
        report.percentile(99.0),
        report.percentile(100.0),
    );
    println!(
        "         group commit: {batch_count} batches, {:.1} events/batch on average, largest {batch_max}; {cpu}",
        if batch_count == 0 {
            0.0
        } else {
            batch_events as f64 / batch_count as f64
        },
    );

    // GetUser on random existing ids, and a near no-op call for reference.
    let channel = Channel::from_shared(format!("http://{}", stack.sync))
        .unwrap()
        .connect()
        .await
        .expect("connect to the sync-service");
    let users = settings.users.min(settings.events);
    let directory = UserDirectoryServiceClient::new(channel.clone());
    let get_user = move |seed: u64| {
        let mut client = directory.clone();
        let id = user_id("user", (seed % users as u64) as usize);
        async move {
            client
                .get_user(v1::GetUserRequest { id })
                .await
                .map(|answer| answer.into_inner().user.is_some())
                .unwrap_or(false)
        }
    };
    call_all(get_user.clone(), WARMUP_QUERIES, settings.connections).await;
    let cpu = CpuSample::now();
    let report = call_all(get_user, settings.queries, settings.connections).await;
    let cpu = cpu.elapsed();
    failures += report.report_failures("GetUser calls");
    let get_user_rate = report.latencies.len() as f64 / report.elapsed.as_secs_f64();
    println!(
        "GetUser  {:>9.0} calls/s   ({} in {:.2} s)   target >= {:.0}/s (70% of a no-op tonic call, quoted {NOOP_TONIC_PER_SEC:.0}/s)",
        get_user_rate,
        report.latencies.len(),
        report.elapsed.as_secs_f64(),
        0.7 * NOOP_TONIC_PER_SEC,
    );
    println!(
        "         latency ms  p50 {:.2}  p99 {:.2}  max {:.2}; {cpu}",
        report.percentile(50.0),
        report.percentile(99.0),
        report.percentile(100.0),
    );

    let health = HealthClient::new(channel.clone());
    let check = move |_seed: u64| {
        let mut client = health.clone();
        async move {
            client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok()
        }
    };
    call_all(check.clone(), WARMUP_QUERIES, settings.connections).await;
    let report = call_all(check, settings.queries, settings.connections).await;
    failures += report.report_failures("health checks");
    let check_rate = report.latencies.len() as f64 / report.elapsed.as_secs_f64();
    println!(
        "Health   {:>9.0} calls/s   (grpc.health.v1 Check on the same server, same load: measured no-op reference; p99 {:.2} ms) -> GetUser at {:.0}% of it",
        check_rate,
        report.percentile(99.0),
        100.0 * get_user_rate / check_rate,
    );

    drop(channel);
    stack.stop().await;
    db.drop_database().await;
    failures
}

// --- the stack -------------------------------------------------------------

struct Running<T> {
    stop: oneshot::Sender<()>,
    task: JoinHandle<T>,
}

impl<T> Running<T> {
    async fn stop(self) -> T {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// The real sync-service and gateway, in this process, on 127.0.0.1:0.
struct Stack {
    sync: SocketAddr,
    sync_task: Running<anyhow::Result<()>>,
    gateway: SocketAddr,
    gateway_task: Running<Result<(), clerk_sync_gateway::Error>>,
}

impl Stack {
    async fn start(database_url: &str) -> Self {
        let sync_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sync = sync_listener.local_addr().unwrap();
        let config = clerk_sync_service::Config::with_database(database_url);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            clerk_sync_service::run(sync_listener, &config, async {
                let _ = stopped.await;
            })
            .await
        });
        let sync_task = Running { stop, task };

        let gateway_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = gateway_listener.local_addr().unwrap();
        let config = clerk_sync_gateway::Config::new(
            SECRET.parse().unwrap(),
            vec![format!("http://{sync}").parse().unwrap()],
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(clerk_sync_gateway::run(gateway_listener, config, async {
            let _ = stopped.await;
        }));
        let stack = Self {
            sync,
            sync_task,
            gateway,
            gateway_task: Running { stop, task },
        };
        stack.wait_until_ready().await;
        stack
    }

    /// Waits until the gateway's /readyz says the sync-service is SERVING.
    async fn wait_until_ready(&self) {
        for _ in 0..400 {
            if let Ok(mut sender) = connect(self.gateway).await {
                let request = Request::get("/readyz")
                    .header(http::header::HOST, self.gateway.to_string())
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                if let Ok(response) = sender.send_request(request).await
                    && response.status() == StatusCode::OK
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the stack never became ready");
    }

    async fn stop(self) {
        self.gateway_task
            .stop()
            .await
            .expect("gateway ended with an error");
        self.sync_task
            .stop()
            .await
            .expect("sync-service ended with an error");
    }
}

async fn connect<B>(
    address: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<B>, Box<dyn std::error::Error + Send + Sync>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

// --- the database ----------------------------------------------------------

/// A SQLite file in a temporary directory, or a fresh PostgreSQL database.
struct BenchDb {
    url: String,
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl BenchDb {
    async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("clerk-sync.db").display()
                );
                Self {
                    url,
                    postgres: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                use sea_orm::{ConnectionTrait as _, Database};
                let admin_url = std::env::var("TEST_DATABASE_URL")
                    .unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.into());
                let name = format!(
                    "clerk_sync_bench_{}_{}",
                    std::process::id(),
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap()
                        .subsec_nanos()
                );
                let admin = Database::connect(&admin_url).await.unwrap_or_else(|e| {
                    panic!(
                        "the PostgreSQL bench needs a server at TEST_DATABASE_URL={admin_url}: {e}"
                    )
                });
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create the bench database");
                admin.close().await.ok();
                let (base, _) = admin_url.rsplit_once('/').expect("database URL has a path");
                Self {
                    url: format!("{base}/{name}"),
                    postgres: Some((admin_url, name)),
                    _dir: None,
                }
            }
        }
    }

    async fn drop_database(self) {
        use sea_orm::{ConnectionTrait as _, Database};
        if let Some((admin_url, name)) = &self.postgres {
            let admin = Database::connect(admin_url).await.expect("reconnect");
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .expect("drop the bench database");
            admin.close().await.ok();
        }
    }
}

// --- webhooks --------------------------------------------------------------

fn user_id(prefix: &str, n: usize) -> String {
    format!("{prefix}_bench{n:08}")
}

/// `count` webhooks over `users` users, signed now: the first event of each
/// user is `user.created`, later ones `user.updated` with a later `updated_at`.
fn signed_events(
    prefix: &str,
    count: usize,
    users: usize,
    gateway: SocketAddr,
) -> Vec<Request<Full<Bytes>>> {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/fixtures/clerk/user.created.json"))
            .expect("fixture is JSON");
    let key = BASE64
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let host = gateway.to_string();
    let run = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let base_ms: i64 = 1_654_012_591_835;
    let users = users.max(1);
    (0..count)
        .map(|i| {
            let n = i % users;
            let id = user_id(prefix, n);
            let updated_at = base_ms + i as i64;
            let mut event = fixture.clone();
            event["type"] = if i < users {
                "user.created"
            } else {
                "user.updated"
            }
            .into();
            event["timestamp"] = updated_at.into();
            let data = &mut event["data"];
            data["id"] = id.clone().into();
            data["updated_at"] = updated_at.into();
            data["first_name"] = format!("First{i}").into();
            let email_id = format!("idn_{prefix}{n:08}");
            data["primary_email_address_id"] = email_id.clone().into();
            data["email_addresses"][0]["id"] = email_id.into();
            data["email_addresses"][0]["email_address"] =
                format!("{prefix}.{n}@example.org").into();
            let body = serde_json::to_vec(&event).unwrap();

            let msg_id = format!("msg_bench_{run}_{prefix}_{i}");
            let mut mac = mac.clone();
            mac.update(msg_id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(&body);
            let signature = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
            Request::post("/clerk")
                .header(http::header::HOST, &host)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header("svix-id", msg_id)
                .header("svix-timestamp", &timestamp)
                .header("svix-signature", signature)
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        })
        .collect()
}

/// What a load phase measured.
struct Report {
    elapsed: Duration,
    /// Per request, microseconds, sorted.
    latencies: Vec<u64>,
    failures: u64,
    first_failure: Option<String>,
}

impl Report {
    fn merge(elapsed: Duration, parts: Vec<Part>) -> Self {
        let mut report = Self {
            elapsed,
            latencies: Vec::new(),
            failures: 0,
            first_failure: None,
        };
        for (latencies, failures, first) in parts {
            report.latencies.extend(latencies);
            report.failures += failures;
            if report.first_failure.is_none() {
                report.first_failure = first;
            }
        }
        report.latencies.sort_unstable();
        report
    }

    /// Latency at percentile `p` (0–100), in milliseconds.
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies.len()) - 1;
        self.latencies[index] as f64 / 1000.0
    }

    fn report_failures(&self, what: &str) -> u64 {
        if self.failures > 0 {
            println!(
                "!! {} of {} {what} failed; first: {}",
                self.failures,
                self.failures as usize + self.latencies.len(),
                self.first_failure.as_deref().unwrap_or("?"),
            );
        }
        self.failures
    }
}

/// Posts `requests` over `connections` keep-alive HTTP/1.1 connections
/// (request i on connection i % connections), one request in flight each.
async fn post_all(
    gateway: SocketAddr,
    requests: Vec<Request<Full<Bytes>>>,
    connections: usize,
) -> Report {
    let mut lanes: Vec<Vec<_>> = (0..connections).map(|_| Vec::new()).collect();
    for (i, request) in requests.into_iter().enumerate() {
        lanes[i % connections].push(request);
    }
    // Connect everything first: the timed part is requests only.
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(
            connect::<Full<Bytes>>(gateway)
                .await
                .expect("connect to the gateway"),
        );
    }
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .zip(lanes)
        .map(|(mut sender, lane)| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(lane.len());
                let mut failures = 0;
                let mut first = None;
                for request in lane {
                    let sent = Instant::now();
                    let outcome = async {
                        sender.ready().await?;
                        let response = sender.send_request(request).await?;
                        let status = response.status();
                        let body = response.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>((status, body))
                    }
                    .await;
                    match outcome {
                        Ok((StatusCode::OK, _)) => {
                            latencies.push(sent.elapsed().as_micros() as u64);
                        }
                        Ok((status, body)) => {
                            failures += 1;
                            first.get_or_insert_with(|| {
                                format!("{status} {}", String::from_utf8_lossy(&body))
                            });
                        }
                        Err(error) => {
                            failures += 1;
                            first.get_or_insert_with(|| format!("connection error: {error}"));
                        }
                    }
                }
                (latencies, failures, first)
            })
        })
        .collect();
    gather(start, tasks).await
}

/// Makes `count` calls with `concurrency` tasks, each call made by `call`
/// from a pseudo-random seed; a call answers whether it succeeded.
async fn call_all<F, Fut>(call: F, count: usize, concurrency: usize) -> Report
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let call = call.clone();
            let share = count / concurrency + usize::from(task < count % concurrency);
            tokio::spawn(async move {
                let mut random = XorShift(0x9E37_79B9_7F4A_7C15 ^ (task as u64 + 1));
                let mut latencies = Vec::with_capacity(share);
                let mut failures = 0;
                for _ in 0..share {
                    let sent = Instant::now();
                    if call(random.next()).await {
                        latencies.push(sent.elapsed().as_micros() as u64);
                    } else {
                        failures += 1;
                    }
                }
                let first = (failures > 0).then(|| "call failed or user missing".to_owned());
                (latencies, failures, first)
            })
        })
        .collect();
    gather(start, tasks).await
}

/// What one load task measured: latencies (µs), failures, the first failure.
type Part = (Vec<u64>, u64, Option<String>);

/// Waits for every load task and merges what they measured since `start`.
async fn gather(start: Instant, tasks: Vec<JoinHandle<Part>>) -> Report {
    let mut parts = Vec::with_capacity(tasks.len());
    for task in tasks {
        parts.push(task.await.unwrap());
    }
    Report::merge(start.elapsed(), parts)
}

/// xorshift64*: enough randomness to pick user ids.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

// --- counters --------------------------------------------------------------

/// Group-commit batch sizes, from the sync-service's `batch committed` debug
/// event; also prints the services' logs at `RUST_LOG` (default `warn`).
#[derive(Clone, Default)]
struct BatchStats(Arc<[AtomicU64; 3]>);

impl BatchStats {
    fn install() -> Self {
        let stats = Self::default();
        let counter = BatchCounter(stats.clone()).with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("clerk_sync_service::ingest", tracing::Level::DEBUG),
        );
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
            );
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(counter).with(logs),
        )
        .expect("one subscriber");
        stats
    }

    fn reset(&self) {
        for counter in self.0.iter() {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// (batches, events in them, largest batch)
    fn get(&self) -> (u64, u64, u64) {
        let [batches, events, largest] = &*self.0;
        (
            batches.load(Ordering::Relaxed),
            events.load(Ordering::Relaxed),
            largest.load(Ordering::Relaxed),
        )
    }
}

struct BatchCounter(BatchStats);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for BatchCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Events(Option<u64>);
        impl tracing::field::Visit for Events {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                if field.name() == "events" {
                    self.0 = Some(value);
                }
            }
            fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
                if field.name() == "events" {
                    self.0 = u64::try_from(value).ok();
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut events = Events(None);
        event.record(&mut events);
        if let Some(n) = events.0 {
            let [batches, total, largest] = &*(self.0).0;
            batches.fetch_add(1, Ordering::Relaxed);
            total.fetch_add(n, Ordering::Relaxed);
            largest.fetch_max(n, Ordering::Relaxed);
        }
    }
}

/// CPU time of this process and of the whole machine, from /proc.
struct CpuSample {
    at: Instant,
    process_ticks: Option<u64>,
    machine: Option<(u64, u64)>,
}

impl CpuSample {
    fn now() -> Self {
        Self {
            at: Instant::now(),
            process_ticks: process_ticks(),
            machine: machine_ticks(),
        }
    }

    /// "CPU: this process X% of one core, machine Y% busy".
    fn elapsed(self) -> String {
        let seconds = self.at.elapsed().as_secs_f64();
        let mut parts = Vec::new();
        if let (Some(before), Some(after)) = (self.process_ticks, process_ticks()) {
            // Linux reports in USER_HZ, 100 per second everywhere that matters.
            let used = (after - before) as f64 / 100.0;
            parts.push(format!(
                "bench process {:.0}% of one core",
                100.0 * used / seconds
            ));
        }
        if let (Some((busy0, total0)), Some((busy1, total1))) = (self.machine, machine_ticks()) {
            let total = (total1 - total0).max(1) as f64;
            parts.push(format!(
                "machine {:.0}% busy",
                100.0 * (busy1 - busy0) as f64 / total
            ));
        }
        if parts.is_empty() {
            "CPU: n/a".into()
        } else {
            format!("CPU: {}", parts.join(", "))
        }
    }
}

fn process_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total) jiffies over every core.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}
