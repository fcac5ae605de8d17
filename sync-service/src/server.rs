//! The gRPC server: both clerk-sync services, `grpc.health.v1` backed by a
//! periodic database check, and server reflection (v1 and v1alpha), behind
//! the authentication layer and, when configured, TLS.

use std::{future::Future, time::Duration};

use clerk_sync_api::{
    encoded::user_directory_service_server::UserDirectoryServiceServer,
    v1::{
        organization_directory_service_server::OrganizationDirectoryServiceServer,
        organization_sync_service_server::OrganizationSyncServiceServer,
        quarantine_service_server::QuarantineServiceServer,
        reconcile_service_server::ReconcileServiceServer,
        user_sync_service_server::UserSyncServiceServer,
    },
};
use clerk_sync_common::telemetry::GrpcSpanLayer;
use tokio::net::TcpListener;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    auth::AuthLayer,
    config::Config,
    grpc::{
        directory::DirectoryService,
        fanout::FanOut,
        feed::Watchers,
        organizations::{OrganizationDirectoryService, OrganizationSyncService},
        quarantine::QuarantineService,
        reconcile::ReconcileService,
        sync::SyncService,
    },
    ingest::Ingestor,
    limits::{self, CallTrackingLayer},
    memory::Trim,
    metrics,
    store::Store,
};

/// Connects to the database, migrates it, and serves gRPC on `listener`
/// until `shutdown` completes; in-flight requests then get
/// `config.shutdown_timeout_secs` to finish.
pub async fn run(
    listener: TcpListener,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    // Settings first: a bad one stops start-up before the database is touched.
    config.tokens()?;
    config.tls()?;
    let store = open_store(config).await?;
    serve(listener, store, config, shutdown).await
}

/// Connects to `DATABASE_URL` and brings its schema up to date.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    use anyhow::Context as _;
    let store = Store::connect(&config.store_options())
        .await
        .context("cannot connect to DATABASE_URL")?;
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    if !config.store_private_metadata {
        let erased = store
            .erase_private_metadata()
            .await
            .context("cannot erase stored private_metadata")?;
        if erased > 0 {
            tracing::info!(
                users = erased,
                "private_metadata erased: SYNC_STORE_PRIVATE_METADATA is off"
            );
        }
    }
    Ok(store)
}

/// Serves gRPC on `listener` over an already migrated `store`.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let tokens = config.tokens()?;
    let tls = config.tls()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(watch_database(
        store.clone(),
        health,
        Duration::from_millis(config.health_check_interval_ms),
    ));

    // grpcurl 1.8 asks for v1alpha, newer clients for v1: serve both.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(clerk_sync_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()?
        .max_decoding_message_size(SMALL_REQUEST_BYTES);
    let reflection_v1alpha = reflection()
        .build_v1alpha()?
        .max_decoding_message_size(SMALL_REQUEST_BYTES);
    // Health is answered without a token: it takes a service name, nothing
    // more, so nothing bigger is buffered for anyone.
    let health_service = health_service.max_decoding_message_size(HEALTH_REQUEST_BYTES);

    let sync = SyncService {
        ingestor: Ingestor::start(store.clone(), config.ingest_options()),
        store_private_metadata: config.store_private_metadata,
    };
    let feed_poll = tokio::spawn({
        let store = store.clone();
        let interval = Duration::from_millis(config.feed_poll_interval_ms);
        async move { store.follow_other_writers(interval).await }
    });
    // The read cache learns other replicas' commits from the same log, from
    // its head before the first request is served.
    let feed_start = store.feed_head().await?;
    let cache_follower = tokio::spawn({
        let store = store.clone();
        let interval = Duration::from_millis(config.feed_poll_interval_ms);
        async move { store.follow_changes_into_cache(feed_start, interval).await }
    });
    let feed_prune_task = config
        .feed_deletion_retention()
        .map(|retention| tokio::spawn(prune_deletions(store.clone(), retention)));
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let quarantine = QuarantineService {
        store: store.clone(),
        store_private_metadata: config.store_private_metadata,
        max_bytes: config.quarantine_max_bytes,
    };
    metrics::set_quarantine_max_bytes(config.quarantine_max_bytes);
    let prune_task = tokio::spawn(prune(
        store.clone(),
        config.ledger_retention(),
        config.quarantine_retention(),
    ));
    let reconcile = ReconcileService {
        store: store.clone(),
    };
    let organization_sync = OrganizationSyncService {
        store: store.clone(),
        store_private_metadata: config.store_private_metadata,
    };
    let limits = std::sync::Arc::new(config.limits.clone());
    let trim = Trim::default();
    let trim_task = tokio::spawn(trim.clone().run());
    // One reader per log for every watcher of this server; they stop with
    // the watchers, when `stopping` turns true.
    let (fan_out, fan_out_tasks) = FanOut::start(&store, &stopping);
    let watchers = Watchers::new(std::sync::Arc::clone(&limits), fan_out, trim);
    let organization_directory = OrganizationDirectoryService {
        store: store.clone(),
        stopping: stopping.clone(),
        watchers: std::sync::Arc::clone(&watchers),
    };
    let directory = DirectoryService {
        store,
        stopping,
        watchers,
    };
    // Explicit message limits on every service. The write services take
    // whole profiles and quarantined bodies (up to the gateway's body limit);
    // every other request is a few ids or a name. Answers may be large.
    let max_message = config.max_message_bytes();

    tracing::info!(
        address = %listener.local_addr()?,
        authenticated = tokens.is_some(),
        tls = tls.is_some(),
        "sync-service listening"
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        // Change feed streams never end on their own: end them, so the
        // server drains instead of waiting out the timeout.
        let _ = stopping_tx.send(true);
        let _ = stop_tx.send(());
    };
    let incoming = limits::incoming(listener, std::sync::Arc::clone(&limits));
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .max_concurrent_streams(limits.http2_max_streams)
        .timeout(limits.request_timeout);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.timeout(limits.handshake_timeout))?;
    }
    // Call tracking first: a connection with any call in flight is not idle.
    // The call's span next (when traced), so everything below runs in it.
    // Metrics next: calls the authentication layer refuses are counted too
    // (UNAUTHENTICATED, PERMISSION_DENIED).
    let server = builder
        .layer(CallTrackingLayer)
        .layer(GrpcSpanLayer)
        .layer(metrics::GrpcMetricsLayer)
        .layer(AuthLayer::new(tokens))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            UserSyncServiceServer::new(sync)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            UserDirectoryServiceServer::new(directory)
                .max_decoding_message_size(SMALL_REQUEST_BYTES)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            QuarantineServiceServer::new(quarantine)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            OrganizationSyncServiceServer::new(organization_sync)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            OrganizationDirectoryServiceServer::new(organization_directory)
                .max_decoding_message_size(SMALL_REQUEST_BYTES)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            ReconcileServiceServer::new(reconcile)
                .max_decoding_message_size(SMALL_REQUEST_BYTES)
                .max_encoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(incoming, signal);

    let drain = Duration::from_secs(config.shutdown_timeout_secs);
    let result = tokio::select! {
        result = server => result.map_err(anyhow::Error::from),
        () = async { if stop_rx.await.is_ok() { tokio::time::sleep(drain).await } else { std::future::pending().await } } => {
            tracing::warn!(?drain, "in-flight requests did not finish in time; stopping anyway");
            Ok(())
        }
    };
    health_task.abort();
    prune_task.abort();
    feed_poll.abort();
    cache_follower.abort();
    trim_task.abort();
    for task in fan_out_tasks {
        task.abort();
    }
    if let Some(task) = feed_prune_task {
        task.abort();
    }
    tracing::info!("sync-service stopped");
    result
}

/// Largest request the directory and reflection services decode: 100 ids of
/// at most 256 bytes fit with room to spare.
const SMALL_REQUEST_BYTES: usize = 64 * 1024;
/// Largest health check request decoded (a service name).
const HEALTH_REQUEST_BYTES: usize = 4 * 1024;

/// Drops change-feed deletion entries older than `retention`, checking every
/// `retention / 4` (at most hourly, at least every 100 ms).
async fn prune_deletions(store: Store, retention: Duration) {
    let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(3600));
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        let before = clerk_sync_common::time::now_millis() - retention.as_millis() as i64;
        match store.prune_deletions(before).await {
            Ok(0) => {}
            Ok(dropped) => tracing::info!(dropped, "change feed: old deletion entries pruned"),
            Err(error) => tracing::warn!(%error, "change feed pruning failed"),
        }
    }
}

/// Keeps the health status in step with the database: SERVING only while it
/// answers. The empty service name stands for the whole server. Samples the
/// pool's connections, the quarantine's size and the change feed's head for
/// the metrics on the same tick (every replica reads the shared tables, so
/// all report one number).
async fn watch_database(store: Store, health: HealthReporter, interval: Duration) {
    const SERVICES: [&str; 7] = [
        "",
        "clerk.sync.v1.UserSyncService",
        "clerk.sync.v1.UserDirectoryService",
        "clerk.sync.v1.OrganizationSyncService",
        "clerk.sync.v1.OrganizationDirectoryService",
        "clerk.sync.v1.QuarantineService",
        "clerk.sync.v1.ReconcileService",
    ];
    let mut last = None;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        for (pool, in_use, idle) in store.pool_connections() {
            metrics::set_db_pool(pool, in_use, idle);
        }
        let status =
            match tokio::time::timeout(interval.max(Duration::from_secs(1)), store.ping()).await {
                Ok(Ok(())) => ServingStatus::Serving,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "database check failed");
                    ServingStatus::NotServing
                }
                Err(_) => {
                    tracing::warn!("database check timed out");
                    ServingStatus::NotServing
                }
            };
        if status == ServingStatus::Serving {
            sample_shared_state(&store, interval.max(Duration::from_secs(1))).await;
        }
        if last != Some(status) {
            tracing::info!(?status, "health status");
            for service in SERVICES {
                health.set_service_status(service, status).await;
            }
            last = Some(status);
        }
    }
}

/// Samples what every replica reads alike from the shared database, for the
/// metrics: the quarantine's size, the change feed's head and the backfill
/// passes' health.
async fn sample_shared_state(store: &Store, limit: Duration) {
    match tokio::time::timeout(limit, store.quarantine_size()).await {
        Ok(Ok((count, bytes))) => metrics::set_quarantined(count, bytes),
        Ok(Err(error)) => tracing::warn!(%error, "cannot count quarantined events"),
        Err(_) => tracing::warn!("counting quarantined events timed out"),
    }
    match tokio::time::timeout(limit, store.feed_head()).await {
        Ok(Ok(position)) => metrics::set_change_feed_head(position),
        Ok(Err(error)) => tracing::warn!(%error, "cannot read the change feed's head"),
        Err(_) => tracing::warn!("reading the change feed's head timed out"),
    }
    match tokio::time::timeout(limit, store.reconcile_health()).await {
        Ok(Ok(health)) => metrics::set_reconcile_health(health),
        Ok(Err(error)) => tracing::warn!(%error, "cannot read the backfill passes"),
        Err(_) => tracing::warn!("reading the backfill passes timed out"),
    }
}

/// How often the ledger and the quarantine are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Ledger rows deleted per statement.
const PRUNE_BATCH: u64 = 1000;

/// Deletes ledger rows older than `ledger_retention`, and quarantine records
/// last seen before `quarantine_retention` or about a deleted user, at start
/// and then hourly. Failures are logged and retried at the next tick:
/// pruning is housekeeping.
async fn prune(store: Store, ledger_retention: Duration, quarantine_retention: Duration) {
    let mut ticker = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        ticker.tick().await;
        match store
            .prune_ledger_older_than(ledger_retention, PRUNE_BATCH)
            .await
        {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "ledger pruned"),
            Err(error) => tracing::warn!(%error, "ledger pruning failed"),
        }
        let before = clerk_sync_common::time::now_millis()
            - i64::try_from(quarantine_retention.as_millis()).unwrap_or(i64::MAX);
        match store.prune_quarantine(before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "quarantine pruned"),
            Err(error) => tracing::warn!(%error, "quarantine pruning failed"),
        }
        match store.end_memberships_of_deleted_users().await {
            Ok(0) => {}
            Ok(ended) => tracing::info!(ended, "memberships of deleted users ended"),
            Err(error) => tracing::warn!(%error, "ending memberships of deleted users failed"),
        }
    }
}
