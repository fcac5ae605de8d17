//! The one channel to the sync-service, and the settings it is built from.
//!
//! Every command of the gateway talks to the sync-service through a
//! [`SyncService`]: `serve` forwards events, checks readiness and quarantines
//! deliveries; `backfill` applies users and reads the directory; `quarantine`
//! lists, retries and drops records. So the addresses, TLS, the bearer token
//! and the deadline are handled here once:
//!
//! - one lazily connecting tonic channel, balanced over several addresses,
//!   HTTP/2-multiplexing every call (nothing connects per request); the
//!   gateway starts (and answers `/healthz`) while the sync-service is down;
//! - `https://` addresses speak TLS (a private CA, a client certificate),
//!   with the files read at start-up so a bad one stops it naming its setting;
//! - every request is made by [`SyncService::request`]: the bearer token
//!   (marked sensitive, never logged) and `grpc-timeout`;
//! - every call is bounded by [`SyncService::deadline`], waiting for a
//!   connection included.

use std::{path::PathBuf, time::Duration};

use clerk_sync_api::v1::{
    quarantine_service_client::QuarantineServiceClient,
    user_directory_service_client::UserDirectoryServiceClient,
    user_sync_service_client::UserSyncServiceClient,
};
use clerk_sync_common::settings::{BearerToken, SecretParser, parse_positive_millis};
use http::Uri;
use tonic::{
    Request, Response, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::health_client::HealthClient;

use crate::Error;

/// How to reach the sync-service: the addresses, the token, TLS and the
/// deadlines. Global flags: every command that talks to the sync-service
/// takes them.
#[derive(Debug, Clone, clap::Args)]
pub struct SyncServiceSettings {
    /// Address(es) of the sync-service gRPC server, comma-separated; several are
    /// load-balanced. `https://` speaks TLS (see --sync-service-ca).
    #[arg(
        long = "sync-service-url", value_name = "URL",
        env = "SYNC_SERVICE_URL",
        default_value = "http://127.0.0.1:50051",
        value_delimiter = ',',
        value_parser = parse_sync_service_url,
        global = true
    )]
    pub urls: Vec<Uri>,

    /// Bearer token sent on every call: one of the sync-service's write
    /// tokens. Prefer the environment variable.
    #[arg(
        long = "sync-service-token", value_name = "TOKEN",
        env = "SYNC_SERVICE_TOKEN",
        hide_env_values = true,
        value_parser = SecretParser::new("--sync-service-token (SYNC_SERVICE_TOKEN)", BearerToken::parse),
        global = true
    )]
    pub token: Option<BearerToken>,

    /// Forward Clerk's private_metadata: set it where the sync-service
    /// stores it (the sync-service's own variable). Off, it is dropped here,
    /// so what the sync-service would not keep never travels and can never
    /// block an event.
    #[arg(
        long = "forward-private-metadata", value_name = "BOOL",
        env = "SYNC_STORE_PRIVATE_METADATA",
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true
    )]
    pub private_metadata: bool,

    /// CA certificate(s) (PEM) to trust for `https://` sync-service URLs,
    /// for a private CA; the system's roots are trusted otherwise.
    #[arg(
        long = "sync-service-ca",
        value_name = "PEM",
        env = "SYNC_SERVICE_CA",
        global = true
    )]
    pub ca: Option<PathBuf>,

    /// Client certificate (PEM) to present to the sync-service (mutual TLS).
    #[arg(
        long = "sync-service-client-cert",
        value_name = "PEM",
        env = "SYNC_SERVICE_CLIENT_CERT",
        global = true
    )]
    pub client_cert: Option<PathBuf>,

    /// Private key (PEM) of --sync-service-client-cert.
    #[arg(
        long = "sync-service-client-key",
        value_name = "PEM",
        env = "SYNC_SERVICE_CLIENT_KEY",
        global = true
    )]
    pub client_key: Option<PathBuf>,

    /// Deadline of each call to the sync-service, in milliseconds; past it the
    /// webhook is answered 503 and Svix retries.
    #[arg(
        long = "upstream-timeout-ms", value_name = "MS",
        env = "SYNC_SERVICE_TIMEOUT_MS",
        default_value = "5000",
        value_parser = parse_positive_millis,
        global = true
    )]
    pub timeout: Duration,

    /// Time allowed to open a connection to the sync-service, in milliseconds.
    #[arg(
        long = "connect-timeout-ms", value_name = "MS",
        env = "SYNC_SERVICE_CONNECT_TIMEOUT_MS",
        default_value = "1000",
        value_parser = parse_positive_millis,
        global = true
    )]
    pub connect_timeout: Duration,
}

impl SyncServiceSettings {
    /// Plain-text addresses and every other default, for tests and
    /// in-process launchers.
    pub fn new(urls: Vec<Uri>) -> Self {
        Self {
            urls,
            token: None,
            private_metadata: false,
            ca: None,
            client_cert: None,
            client_key: None,
            timeout: Duration::from_millis(5000),
            connect_timeout: Duration::from_millis(1000),
        }
    }
}

/// The channel to the sync-service, with the token and the deadline every
/// call carries. Cheap to clone: clones share the channel.
#[derive(Debug, Clone)]
pub struct SyncService {
    /// HTTP/2 connections to every address, made on first use.
    channel: Channel,
    /// `Bearer <token>`, marked sensitive so that it is never logged.
    authorization: Option<MetadataValue<Ascii>>,
    /// Deadline of each call, from the moment it is made (waiting for a
    /// connection included).
    timeout: Duration,
}

impl SyncService {
    /// Builds the channel (several addresses are load-balanced) without
    /// connecting yet, reading any TLS files now so that a bad one stops
    /// start-up. Must be called inside a Tokio runtime: the channel's worker
    /// task is spawned here.
    pub fn new(settings: &SyncServiceSettings) -> Result<Self, Error> {
        let tls = client_tls(settings)?;
        // No endpoint-wide timeout: each request carries its own deadline
        // (`grpc-timeout`), which tonic enforces on the client side too, so
        // one channel serves calls with different deadlines.
        let endpoints = settings
            .urls
            .iter()
            .map(|url| {
                let endpoint = Endpoint::from(url.clone())
                    .connect_timeout(settings.connect_timeout)
                    .tcp_nodelay(true);
                match (&tls, url.scheme_str()) {
                    (Some(tls), Some("https")) => endpoint.tls_config(tls.clone()),
                    _ => Ok(endpoint),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| {
                // The files parsed, so what fails here is the pair of them:
                // a client key that does not fit its certificate.
                let cause = std::error::Error::source(&error)
                    .map_or_else(|| error.to_string(), ToString::to_string);
                Error::Config {
                    setting: if settings.client_cert.is_some() {
                        "SYNC_SERVICE_CLIENT_KEY"
                    } else {
                        "SYNC_SERVICE_CA"
                    },
                    reason: format!("unusable for TLS: {cause}"),
                }
            })?;
        let channel = match endpoints.as_slice() {
            [] => {
                return Err(Error::Config {
                    setting: "SYNC_SERVICE_URL",
                    reason: "no address given".to_owned(),
                });
            }
            [endpoint] => endpoint.connect_lazy(),
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        let authorization = settings
            .token
            .as_ref()
            .map(|token| {
                let mut value = MetadataValue::try_from(format!("Bearer {}", token.expose()))
                    .map_err(|_| Error::Config {
                        setting: "SYNC_SERVICE_TOKEN",
                        reason: "cannot travel in a header".to_owned(),
                    })?;
                value.set_sensitive(true);
                Ok::<_, Error>(value)
            })
            .transpose()?;
        Ok(Self {
            channel,
            authorization,
            timeout: settings.timeout,
        })
    }

    /// The same channel and token with another deadline, for calls that
    /// take longer than one event (pages of the directory).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            timeout,
            ..self.clone()
        }
    }

    /// The deadline of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The channel itself, for clients of the other services.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Applies events.
    pub fn sync_client(&self) -> UserSyncServiceClient<Channel> {
        UserSyncServiceClient::new(self.channel.clone())
    }

    /// Reports whether the sync-service is serving.
    pub fn health_client(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// Keeps deliveries no retry can fix; messages up to `max_message_bytes`
    /// each way, so that a quarantined body up to the body limit fits.
    pub fn quarantine_client(&self, max_message_bytes: usize) -> QuarantineServiceClient<Channel> {
        QuarantineServiceClient::new(self.channel.clone())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    /// Reads the directory.
    pub fn directory_client(&self) -> UserDirectoryServiceClient<Channel> {
        UserDirectoryServiceClient::new(self.channel.clone())
    }

    /// A request carrying the deadline and the bearer token.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        // Tells the server the deadline (grpc-timeout) so it can give up too.
        request.set_timeout(self.timeout);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        // The caller's span continues in the sync-service (when traced).
        clerk_sync_common::telemetry::inject(request.metadata_mut());
        request
    }

    /// Bounds `call` by the deadline, including time spent waiting for a
    /// connection, and unwraps the response message. An error status becomes
    /// `failed(status)` ([`Error::Upstream`] for most calls); no answer in
    /// time is [`Error::UpstreamTimeout`].
    pub async fn deadline<T>(
        &self,
        call: impl Future<Output = Result<Response<T>, Status>>,
        failed: fn(Status) -> Error,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(failed(status)),
            Err(_elapsed) => Err(Error::UpstreamTimeout),
        }
    }
}

/// The TLS settings for `https://` addresses: the private CA if one is
/// configured (the system's roots otherwise) and the client certificate for
/// mutual TLS. `None` when no address is `https://`; TLS files given for
/// plain-text addresses are a configuration error rather than ignored.
fn client_tls(settings: &SyncServiceSettings) -> Result<Option<ClientTlsConfig>, Error> {
    use clerk_sync_common::tls::{install_crypto_provider, read_certificates, read_private_key};
    let config_error =
        |setting: &'static str| move |reason: String| Error::Config { setting, reason };
    let https = settings
        .urls
        .iter()
        .any(|url| url.scheme_str() == Some("https"));
    if !https {
        let tls_setting = [
            (&settings.ca, "SYNC_SERVICE_CA"),
            (&settings.client_cert, "SYNC_SERVICE_CLIENT_CERT"),
            (&settings.client_key, "SYNC_SERVICE_CLIENT_KEY"),
        ]
        .into_iter()
        .find_map(|(value, setting)| value.is_some().then_some(setting));
        return match tls_setting {
            Some(setting) => Err(Error::Config {
                setting,
                reason: "is set but no SYNC_SERVICE_URL is https://".to_owned(),
            }),
            None => Ok(None),
        };
    }
    install_crypto_provider();
    let mut tls = ClientTlsConfig::new();
    tls = match &settings.ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(
            read_certificates(ca, "SYNC_SERVICE_CA").map_err(config_error("SYNC_SERVICE_CA"))?,
        )),
        None => tls.with_native_roots(),
    };
    match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => {
            let cert = read_certificates(cert, "SYNC_SERVICE_CLIENT_CERT")
                .map_err(config_error("SYNC_SERVICE_CLIENT_CERT"))?;
            let key = read_private_key(key, "SYNC_SERVICE_CLIENT_KEY")
                .map_err(config_error("SYNC_SERVICE_CLIENT_KEY"))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(Error::Config {
                setting: "SYNC_SERVICE_CLIENT_KEY",
                reason: "is required with SYNC_SERVICE_CLIENT_CERT".to_owned(),
            });
        }
        (None, Some(_)) => {
            return Err(Error::Config {
                setting: "SYNC_SERVICE_CLIENT_CERT",
                reason: "is required with SYNC_SERVICE_CLIENT_KEY".to_owned(),
            });
        }
    }
    Ok(Some(tls))
}

fn parse_sync_service_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .trim()
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected http://host:port"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err("expected http://host:port or https://host:port".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn settings(url: &str) -> SyncServiceSettings {
        SyncServiceSettings::new(vec![url.parse().unwrap()])
    }

    fn setting_named(result: Result<SyncService, Error>) -> &'static str {
        match result {
            Err(Error::Config { setting, .. }) => setting,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn tls_files_are_checked_at_start_up_and_named() {
        let dir = std::env::temp_dir().join(format!("clerk-sync-upstream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();

        let mut tls = settings("https://sync.internal:50051");
        tls.ca = Some(missing.clone());
        assert_eq!(setting_named(SyncService::new(&tls)), "SYNC_SERVICE_CA");
        tls.ca = Some(not_pem.clone());
        assert_eq!(setting_named(SyncService::new(&tls)), "SYNC_SERVICE_CA");

        let mut half = settings("https://sync.internal:50051");
        half.client_cert = Some(PathBuf::from("client.pem"));
        assert_eq!(
            setting_named(SyncService::new(&half)),
            "SYNC_SERVICE_CLIENT_KEY"
        );
        half.client_cert = None;
        half.client_key = Some(not_pem);
        assert_eq!(
            setting_named(SyncService::new(&half)),
            "SYNC_SERVICE_CLIENT_CERT"
        );

        // TLS files for a plain-text address would be silently unused.
        let mut plain = settings("http://sync.internal:50051");
        plain.ca = Some(missing);
        assert_eq!(setting_named(SyncService::new(&plain)), "SYNC_SERVICE_CA");

        // https with the system's roots needs no file at all.
        assert!(SyncService::new(&settings("https://sync.internal:50051")).is_ok());
    }

    #[tokio::test]
    async fn every_request_carries_the_deadline_and_the_token_unlogged() {
        let mut with_token = settings("http://sync.internal:50051");
        with_token.token = Some(BearerToken::parse("tok_MfKQ9r8G").unwrap());
        with_token.timeout = Duration::from_millis(1500);
        let service = SyncService::new(&with_token).unwrap();

        let request = service.with_timeout(Duration::from_secs(30)).request(());
        let metadata = request.metadata().clone().into_headers();
        assert_eq!(metadata["grpc-timeout"], "30000000u");
        assert_eq!(metadata["authorization"], "Bearer tok_MfKQ9r8G");
        assert!(metadata["authorization"].is_sensitive());
        let request = service.request(());
        assert_eq!(
            request.metadata().clone().into_headers()["grpc-timeout"],
            "1500000u"
        );

        let anonymous = SyncService::new(&settings("http://sync.internal:50051")).unwrap();
        assert!(
            anonymous
                .request(())
                .metadata()
                .get("authorization")
                .is_none()
        );
    }
}
