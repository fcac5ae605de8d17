//! The whole clerk-sync stack in one process: the sync-service on the
//! embedded SQLite default (or any `DATABASE_URL`) and a gateway forwarding to
//! it over loopback gRPC. For trying clerk-sync on a laptop; production runs
//! the two binaries separately (several gateways, sync-service on PostgreSQL).

use std::{future::Future, net::SocketAddr};

use anyhow::Context as _;
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use clap::Parser;
use clerk_sync_common::{
    runtime::{
        LogFormat, MetricsListen, bind, bind_optional, parse_metrics_listen, run_with_metrics,
    },
    settings::{BearerToken, SecretParser},
};
use clerk_sync_gateway::WebhookSecrets;
use clerk_sync_service::auth::TokenList;
use tokio::sync::watch;

/// Runs the gateway and the sync-service together.
#[derive(Clone, Debug, Parser)]
#[command(name = "clerk-sync", version)]
pub struct StackConfig {
    /// Address the gateway listens on for webhooks (`POST /clerk`).
    #[arg(long, env = "GATEWAY_LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub gateway_listen: SocketAddr,

    /// Address the sync-service listens on for gRPC.
    #[arg(
        long,
        env = "SYNC_SERVICE_LISTEN_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub sync_service_listen: SocketAddr,

    /// Database URL (default: a SQLite file under ./data, created on first start).
    // Its value may hold a password: `--help` names the variable only.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = clerk_sync_service::config::DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Svix signing secret(s) (`whsec_…`). When unset, a fresh secret is
    /// generated and printed, for local experiments.
    #[arg(long, env = "CLERK_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Address serving the gateway's Prometheus metrics (`GET /metrics`);
    /// empty serves none.
    #[arg(
        long,
        value_name = "ADDR",
        env = "GATEWAY_METRICS_LISTEN_ADDR",
        default_value = "127.0.0.1:9464",
        value_parser = |text: &str| parse_metrics_listen(text, "GATEWAY_METRICS_LISTEN_ADDR")
    )]
    pub gateway_metrics_listen: MetricsListen,

    /// Address serving the sync-service's Prometheus metrics (`GET /metrics`);
    /// empty serves none.
    #[arg(
        long,
        value_name = "ADDR",
        env = "SYNC_SERVICE_METRICS_LISTEN_ADDR",
        default_value = "127.0.0.1:9465",
        value_parser = |text: &str| parse_metrics_listen(text, "SYNC_SERVICE_METRICS_LISTEN_ADDR")
    )]
    pub sync_service_metrics_listen: MetricsListen,

    /// Log line format: `text` or `json` (one JSON object per line).
    #[arg(
        long,
        value_name = "FORMAT",
        env = "LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Bearer tokens other services query the directory with. When set (or
    /// --write-tokens is), every call needs a token, and the gateway half
    /// gets a token of its own generated for this run.
    #[arg(long, env = "SYNC_SERVICE_READ_TOKENS", hide_env_values = true, value_name = "TOKENS", default_value = "", hide_default_value = true, value_parser = SecretParser::new("--read-tokens (SYNC_SERVICE_READ_TOKENS)", TokenList::parse))]
    pub read_tokens: TokenList,

    /// Bearer tokens that may apply events besides the gateway half (a
    /// backfill's).
    #[arg(long, env = "SYNC_SERVICE_WRITE_TOKENS", hide_env_values = true, value_name = "TOKENS", default_value = "", hide_default_value = true, value_parser = SecretParser::new("--write-tokens (SYNC_SERVICE_WRITE_TOKENS)", TokenList::parse))]
    pub write_tokens: TokenList,

    /// Store Clerk's private_metadata (see the sync-service's setting).
    #[arg(long, env = "SYNC_STORE_PRIVATE_METADATA", value_name = "BOOL", num_args = 0..=1, default_value = "false", default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub store_private_metadata: bool,
}

/// Binds both listeners, then serves until `shutdown` completes: the gateway
/// stops first (draining in-flight webhooks), then the sync-service.
pub async fn run(config: StackConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let secret = match config.webhook_secret {
        Some(secret) => secret,
        None => {
            let secret = generate_secret()?;
            println!("CLERK_WEBHOOK_SECRET was not set; generated one for this run:\n  {secret}");
            secret
        }
    };
    let secrets = WebhookSecrets::parse(&secret).context("CLERK_WEBHOOK_SECRET is not valid")?;

    let sync_listener = bind(config.sync_service_listen, "SYNC_SERVICE_LISTEN_ADDR").await?;
    let gateway_listener = bind(config.gateway_listen, "GATEWAY_LISTEN_ADDR").await?;
    let sync_metrics = bind_optional(
        config.sync_service_metrics_listen,
        "SYNC_SERVICE_METRICS_LISTEN_ADDR",
    )
    .await?;
    let gateway_metrics =
        bind_optional(config.gateway_metrics_listen, "GATEWAY_METRICS_LISTEN_ADDR").await?;
    let sync_address = sync_listener.local_addr()?;
    let gateway_address = gateway_listener.local_addr()?;
    let metrics_addresses = [&gateway_metrics, &sync_metrics]
        .iter()
        .filter_map(|listener| listener.as_ref()?.local_addr().ok())
        .map(|address| format!("http://{address}/metrics"))
        .collect::<Vec<_>>();

    let mut sync_config = clerk_sync_service::Config::with_database(&config.database_url);
    sync_config.listen = sync_address;
    sync_config.store_private_metadata = config.store_private_metadata;
    let upstream: http::Uri = format!("http://{sync_address}").parse()?;
    let mut gateway_config = clerk_sync_gateway::Config::new(secrets, vec![upstream]);
    gateway_config.listen = gateway_address;
    // Both halves agree on private metadata: what is not stored is not sent.
    gateway_config.sync_service.private_metadata = config.store_private_metadata;
    if !(config.read_tokens.is_empty() && config.write_tokens.is_empty()) {
        // Calls need tokens: the gateway half gets one of its own.
        let token = generate_token()?;
        sync_config.write_tokens = config.write_tokens.with(&token);
        sync_config.read_tokens = config.read_tokens;
        gateway_config.sync_service.token =
            Some(BearerToken::parse(&token).map_err(anyhow::Error::msg)?);
    }

    let (stop_sync, sync_stopped) = watch::channel(false);
    let sync = tokio::spawn(async move {
        let server = clerk_sync_service::run(sync_listener, &sync_config, wait_for(sync_stopped));
        run_with_metrics(sync_metrics, clerk_sync_service::metrics::render, server).await
    });

    println!(
        "clerk-sync is running on {database}\n  \
         webhooks: POST http://{gateway_address}/clerk\n  \
         queries:  grpcurl -plaintext {sync_address} list\n  \
         metrics:  {metrics}\n  \
         Ctrl-C stops both.",
        database = clerk_sync_common::redact::url(&config.database_url),
        metrics = if metrics_addresses.is_empty() {
            "off".to_owned()
        } else {
            metrics_addresses.join(" ")
        },
    );
    let gateway = clerk_sync_gateway::run(gateway_listener, gateway_config, async {
        tokio::select! {
            () = shutdown => {}
            // The sync-service failed on its own (bad database): stop too.
            () = sync_failed(&sync) => {}
        }
    });
    let gateway_result = run_with_metrics(
        gateway_metrics,
        clerk_sync_gateway::metrics::render,
        gateway,
    )
    .await
    .map_err(anyhow::Error::from);
    let _ = stop_sync.send(true);
    let sync_result = sync.await.context("sync-service task panicked")?;
    gateway_result.and(sync_result)
}

async fn wait_for(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

async fn sync_failed(task: &tokio::task::JoinHandle<anyhow::Result<()>>) {
    while !task.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A random 24-byte key in Svix's `whsec_` format.
fn generate_secret() -> anyhow::Result<String> {
    Ok(format!("whsec_{}", STANDARD.encode(random_bytes()?)))
}

/// A random bearer token for the gateway half, never shown.
fn generate_token() -> anyhow::Result<String> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes()?))
}

fn random_bytes() -> anyhow::Result<[u8; 24]> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(bytes)
}
