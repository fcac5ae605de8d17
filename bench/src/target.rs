//! Where the load goes: parsed URLs of the gateway and the sync-service.
//! Only plain `http://` is supported; `https://` is refused by name (put the
//! bench next to the TLS terminator, or on the loopback of the service).

use std::net::SocketAddr;

use http::Uri;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

/// Parses an `http://host:port[/path]` URL for the flag `flag`.
pub fn parse_http_url(flag: &str, text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .trim()
        .parse()
        .map_err(|e| format!("{flag}: {text:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{flag}: https:// is not supported by clerk-sync-bench (plain HTTP only); \
                 run it where the service listens in plain http, e.g. on its loopback port"
            ));
        }
        _ => return Err(format!("{flag}: {text:?} must start with http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{flag}: {text:?} has no host"));
    }
    Ok(uri)
}

/// The gateway's webhook endpoint.
#[derive(Clone, Debug)]
pub struct WebhookTarget {
    /// Resolved address to connect to.
    pub address: SocketAddr,
    /// `host:port` for the Host header.
    pub authority: String,
    /// Request path: the URL's, or `/clerk` when it has none.
    pub path: String,
}

impl WebhookTarget {
    /// Resolves `url` (http only; the path defaults to `/clerk`).
    pub async fn resolve(url: &Uri) -> anyhow::Result<Self> {
        let authority = url
            .authority()
            .ok_or_else(|| anyhow::anyhow!("{url}: no host"))?
            .to_string();
        let host = url.host().unwrap_or_default().trim_matches(['[', ']']);
        let port = url.port_u16().unwrap_or(80);
        let address = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot resolve {authority}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{authority} resolves to no address"))?;
        let path = match url.path() {
            "" | "/" => "/clerk".to_owned(),
            path => path.to_owned(),
        };
        Ok(Self {
            address,
            authority,
            path,
        })
    }
}

/// A gRPC endpoint and the bearer token to call it with.
#[derive(Clone, Debug)]
pub struct GrpcTarget {
    /// `http://host:port`.
    pub url: Uri,
    /// `Bearer <token>`, when a token is set.
    pub authorization: Option<MetadataValue<Ascii>>,
}

impl GrpcTarget {
    /// A target; the token must be printable ASCII.
    pub fn new(url: Uri, token: Option<&str>) -> Result<Self, String> {
        let authorization = token
            .map(|token| {
                format!("Bearer {}", token.trim())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| "--token (SYNC_SERVICE_TOKEN): not printable ASCII".to_owned())
            })
            .transpose()?;
        Ok(Self { url, authorization })
    }

    /// One HTTP/2 connection to the target.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        Endpoint::from(self.url.clone())
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", self.url))
    }

    /// `message` as a request carrying the token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_by_flag() {
        assert!(parse_http_url("--x", "http://127.0.0.1:8080").is_ok());
        let https = parse_http_url("--gateway-url", "https://example.org").unwrap_err();
        assert!(
            https.starts_with("--gateway-url: https:// is not supported"),
            "{https}"
        );
        let other = parse_http_url("--sync-service-url", "ftp://h").unwrap_err();
        assert!(other.starts_with("--sync-service-url:"), "{other}");
        assert!(parse_http_url("--x", "not a url").is_err());
        assert!(parse_http_url("--x", "127.0.0.1:80").is_err());
    }

    #[tokio::test]
    async fn webhook_path_defaults_to_clerk() {
        let url = parse_http_url("--x", "http://127.0.0.1:9").unwrap();
        let target = WebhookTarget::resolve(&url).await.unwrap();
        assert_eq!(target.path, "/clerk");
        assert_eq!(target.authority, "127.0.0.1:9");
        let url = parse_http_url("--x", "http://127.0.0.1:9/hooks/clerk").unwrap();
        assert_eq!(
            WebhookTarget::resolve(&url).await.unwrap().path,
            "/hooks/clerk"
        );
    }
}
