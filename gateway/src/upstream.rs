//! The gRPC client side: one long-lived channel to the sync-service (balanced
//! over several addresses when given), used by every request.
//!
//! HTTP/2 multiplexes all in-flight events over that channel; nothing connects
//! per request. `https://` addresses speak TLS (a private CA and a client
//! certificate when configured), and every call carries the bearer token. The channel connects lazily, so the gateway starts (and answers
//! `/healthz`) while the sync-service is still down; requests made meanwhile get
//! `UNAVAILABLE`, which the gateway answers with 503 so that Svix retries.

use std::time::Duration;

use clerk_sync_api::v1::{
    ApplyUserCreatedRequest, ApplyUserDeletedRequest, ApplyUserUpdatedRequest, Outcome,
    user_sync_service_client::UserSyncServiceClient,
};

use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{Error, clerk::UserEvent, config::SyncServiceSettings};

/// Request metadata key carrying the event id (the svix-id) to the sync-service,
/// so its logs correlate with the gateway's.
pub use clerk_sync_api::EVENT_ID_METADATA;

/// Clients of the sync-service sharing one channel.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Applies events.
    sync: UserSyncServiceClient<Channel>,
    /// Answers `/readyz`.
    health: HealthClient<Channel>,
    /// Deadline of each call, from the moment it is made (waiting for a
    /// connection included).
    timeout: Duration,
    /// `Bearer <token>`, marked sensitive so that it is never logged.
    authorization: Option<MetadataValue<Ascii>>,
    /// The channel itself, for the other clients of the sync-service (the
    /// quarantine) to share.
    channel: Channel,
}

impl Upstream {
    /// Builds the channel to the sync-service (several addresses are
    /// load-balanced) without connecting yet, reading any TLS files now so
    /// that a bad one stops start-up. Must be called inside a Tokio runtime:
    /// the channel's worker task is spawned here.
    pub fn new(settings: &SyncServiceSettings) -> Result<Self, Error> {
        let tls = client_tls(settings)?;
        let endpoints = settings
            .urls
            .iter()
            .map(|url| {
                let endpoint = Endpoint::from(url.clone())
                    .connect_timeout(settings.connect_timeout)
                    .timeout(settings.timeout)
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
            sync: UserSyncServiceClient::new(channel.clone()),
            health: HealthClient::new(channel.clone()),
            timeout: settings.timeout,
            authorization,
            channel,
        })
    }

    /// Sends one event to the sync-service and returns what applying it did.
    /// Any gRPC error status is [`Error::Upstream`]; no answer within the
    /// deadline is [`Error::UpstreamTimeout`]; an unknown outcome is
    /// [`Error::UnexpectedOutcome`].
    pub async fn forward(&self, event: UserEvent, event_id: &str) -> Result<Outcome, Error> {
        let mut client = self.sync.clone();
        let outcome = match event {
            UserEvent::Created(event) => {
                let request =
                    self.request(ApplyUserCreatedRequest { event: Some(event) }, event_id);
                self.deadline(client.apply_user_created(request))
                    .await?
                    .outcome
            }
            UserEvent::Updated(event) => {
                let request =
                    self.request(ApplyUserUpdatedRequest { event: Some(event) }, event_id);
                self.deadline(client.apply_user_updated(request))
                    .await?
                    .outcome
            }
            UserEvent::Deleted(event) => {
                let request =
                    self.request(ApplyUserDeletedRequest { event: Some(event) }, event_id);
                self.deadline(client.apply_user_deleted(request))
                    .await?
                    .outcome
            }
        };
        match Outcome::try_from(outcome) {
            Ok(Outcome::Unspecified) | Err(_) => Err(Error::UnexpectedOutcome(outcome)),
            Ok(known) => Ok(known),
        }
    }

    /// Ok when the sync-service's gRPC health service reports the server (service
    /// `""`) as SERVING; [`Error::NotReady`] otherwise, including when it cannot
    /// be reached.
    pub async fn check_ready(&self) -> Result<(), Error> {
        let mut health = self.health.clone();
        let request = Request::new(HealthCheckRequest {
            service: String::new(),
        });
        match self.deadline(health.check(request)).await {
            Ok(response) if response.status == ServingStatus::Serving as i32 => Ok(()),
            Ok(_) => Err(Error::NotReady(None)),
            Err(Error::Upstream(status)) => Err(Error::NotReady(Some(status))),
            Err(_) => Err(Error::NotReady(None)),
        }
    }

    /// The shared channel (TLS included), for another service's client.
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The deadline of each call.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A request carrying the deadline and the bearer token.
    pub(crate) fn authorized<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        // Tells the server the deadline (grpc-timeout) so it can give up too.
        request.set_timeout(self.timeout);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    fn request<T>(&self, message: T, event_id: &str) -> Request<T> {
        let mut request = self.authorized(message);
        match MetadataValue::try_from(event_id) {
            Ok(value) => {
                request.metadata_mut().insert(EVENT_ID_METADATA, value);
            }
            // The id passed the header checks, so this does not happen; the event
            // itself still carries the id.
            Err(_) => tracing::warn!("event id is not valid gRPC metadata"),
        }
        request
    }

    /// Bounds a call by the deadline, including time spent waiting for a
    /// connection, and unwraps the response message.
    async fn deadline<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Error::Upstream(status)),
            Err(_elapsed) => Err(Error::UpstreamTimeout),
        }
    }
}

/// The TLS settings for `https://` addresses: the private CA if one is
/// configured (the system's roots otherwise) and the client certificate for
/// mutual TLS. `None` when no address is `https://`; TLS files given for
/// plain-text addresses are a configuration error rather than ignored.
pub(crate) fn client_tls(settings: &SyncServiceSettings) -> Result<Option<ClientTlsConfig>, Error> {
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn settings(url: &str) -> SyncServiceSettings {
        SyncServiceSettings::new(vec![url.parse().unwrap()])
    }

    fn setting_named(result: Result<Upstream, Error>) -> &'static str {
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
        assert_eq!(setting_named(Upstream::new(&tls)), "SYNC_SERVICE_CA");
        tls.ca = Some(not_pem.clone());
        assert_eq!(setting_named(Upstream::new(&tls)), "SYNC_SERVICE_CA");

        let mut half = settings("https://sync.internal:50051");
        half.client_cert = Some(PathBuf::from("client.pem"));
        assert_eq!(
            setting_named(Upstream::new(&half)),
            "SYNC_SERVICE_CLIENT_KEY"
        );
        half.client_cert = None;
        half.client_key = Some(not_pem);
        assert_eq!(
            setting_named(Upstream::new(&half)),
            "SYNC_SERVICE_CLIENT_CERT"
        );

        // TLS files for a plain-text address would be silently unused.
        let mut plain = settings("http://sync.internal:50051");
        plain.ca = Some(missing);
        assert_eq!(setting_named(Upstream::new(&plain)), "SYNC_SERVICE_CA");

        // https with the system's roots needs no file at all.
        assert!(Upstream::new(&settings("https://sync.internal:50051")).is_ok());
    }
}
