//! The part of Clerk's Backend API that backfill needs: listing users, a
//! page at a time, with the secret key as a bearer token, and counting them.
//!
//! HTTP client: hyper-util's pooled client over hyper-rustls (rustls with
//! ring, as tonic uses, and the system's trust store), the hyper stack the gateway already runs on, rather
//! than a second HTTP stack such as reqwest. Throttling and faults are
//! handled here, once: 429 waits what `Retry-After` says; 5xx answers,
//! timeouts and network errors are retried a bounded number of times with
//! doubling waits; 401/403 stop at once (a bad key does not get better).

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// A Clerk secret key (`sk_live_…`, `sk_test_…`). Never shown: `Debug`
/// prints it redacted, and errors about it never echo it.
#[derive(Clone)]
pub struct SecretKey(String);

impl SecretKey {
    /// Checks the key's shape; the reason names what is wrong without
    /// repeating the value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let key = text.trim();
        if key.is_empty() {
            return Err("is empty".to_owned());
        }
        if !key.starts_with("sk_") {
            return Err(
                "must start with sk_ (the instance's secret key, not its publishable pk_ key)"
                    .to_owned(),
            );
        }
        if key.len() <= 3 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be sk_ followed by printable characters, without spaces".to_owned());
        }
        Ok(Self(key.to_owned()))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// What can go wrong talking to Clerk.
#[derive(Debug, thiserror::Error)]
pub enum ClerkApiError {
    /// 401/403: the key is wrong, revoked, or for another instance.
    #[error("Clerk refused the secret key ({0}): check CLERK_SECRET_KEY (the instance's sk_… key)")]
    Unauthorized(StatusCode),
    /// An answer that retrying cannot fix, or a 5xx that outlasted the retries.
    #[error("Clerk answered {status} to {path}{detail}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The request path (no query).
        path: &'static str,
        /// Clerk's own error message, when it sent one.
        detail: String,
    },
    /// Still throttled (429) after many waits.
    #[error("Clerk kept answering 429 Too Many Requests to {0}")]
    Throttled(&'static str),
    /// No answer (connection refused or reset, timeout) after the retries.
    #[error("cannot reach Clerk at {url}: {reason}")]
    Unreachable {
        /// The base URL.
        url: String,
        /// The last failure.
        reason: String,
    },
    /// The answer is not the JSON the endpoint documents.
    #[error("Clerk's answer to {path} is not what the API documents: {reason}")]
    InvalidAnswer {
        /// The request path.
        path: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Most consecutive 429s one request sits out.
const MAX_THROTTLED: u32 = 30;
/// Longest `Retry-After` honoured as given; longer values are cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// Wait before the first retry of a failure; doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Largest answer read (a page of 500 users is a few MB).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Deadline of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Client of Clerk's Backend API.
#[derive(Clone)]
pub struct ClerkApi {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Base URL without a trailing slash, e.g. `https://api.clerk.com`.
    base: String,
    /// `Bearer sk_…`, marked sensitive.
    authorization: HeaderValue,
    /// Retries of a 5xx or network failure.
    max_retries: u32,
}

impl fmt::Debug for ClerkApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClerkApi")
            .field("base", &self.base)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl ClerkApi {
    /// A client of the API at `base` (`https://api.clerk.com`; `http://` is
    /// accepted for local fakes).
    pub fn new(base: &Uri, key: &SecretKey, max_retries: u32) -> Result<Self, ClerkApiError> {
        // The provider is named: several are linked in (tonic's, test
        // clients'), and rustls will not guess.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| ClerkApiError::Unreachable {
                url: base.to_string(),
                reason: format!("no TLS trust roots on this machine: {e}"),
            })?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", key.0))
            .expect("a checked key is a valid header value");
        authorization.set_sensitive(true);
        Ok(Self {
            client,
            base: base.to_string().trim_end_matches('/').to_owned(),
            authorization,
            max_retries,
        })
    }

    /// One page of users in creation order: the raw JSON array Clerk sent
    /// (`GET /v1/users?limit=…&offset=…&order_by=+created_at`).
    pub async fn list_users(&self, offset: u64, limit: u32) -> Result<Bytes, ClerkApiError> {
        self.get(
            "/v1/users",
            &format!("limit={limit}&offset={offset}&order_by=%2Bcreated_at"),
        )
        .await
    }

    /// How many users the instance has (`GET /v1/users/count`), for progress.
    pub async fn count_users(&self) -> Result<u64, ClerkApiError> {
        #[derive(serde::Deserialize)]
        struct Count {
            total_count: u64,
        }
        const PATH: &str = "/v1/users/count";
        let body = self.get(PATH, "").await?;
        serde_json::from_slice::<Count>(&body)
            .map(|count| count.total_count)
            .map_err(|e| ClerkApiError::InvalidAnswer {
                path: PATH,
                reason: e.to_string(),
            })
    }

    /// GETs `path?query`, retrying as the module documentation says.
    async fn get(&self, path: &'static str, query: &str) -> Result<Bytes, ClerkApiError> {
        let url = if query.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{query}", self.base)
        };
        let (mut failures, mut throttled) = (0u32, 0u32);
        loop {
            let request = Request::get(&url)
                .header(header::AUTHORIZATION, self.authorization.clone())
                .header(header::ACCEPT, "application/json")
                .header(header::USER_AGENT, "clerk-sync-backfill")
                .body(Empty::new())
                .map_err(|e| ClerkApiError::Unreachable {
                    url: self.base.clone(),
                    reason: e.to_string(),
                })?;
            let failure = match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(request)).await
            {
                Ok(Ok((status, headers, body))) => match status {
                    status if status.is_success() => return Ok(body),
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        return Err(ClerkApiError::Unauthorized(status));
                    }
                    StatusCode::TOO_MANY_REQUESTS => {
                        throttled += 1;
                        if throttled > MAX_THROTTLED {
                            return Err(ClerkApiError::Throttled(path));
                        }
                        let wait = retry_after(&headers).unwrap_or(backoff(throttled));
                        tracing::info!(?wait, path, "Clerk is throttling (429): waiting");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    status if status.is_server_error() => ClerkApiError::Status {
                        status,
                        path,
                        detail: clerk_message(&body),
                    },
                    status => {
                        return Err(ClerkApiError::Status {
                            status,
                            path,
                            detail: clerk_message(&body),
                        });
                    }
                },
                Ok(Err(reason)) => ClerkApiError::Unreachable {
                    url: self.base.clone(),
                    reason,
                },
                Err(_) => ClerkApiError::Unreachable {
                    url: self.base.clone(),
                    reason: format!("no answer within {REQUEST_TIMEOUT:?}"),
                },
            };
            failures += 1;
            if failures > self.max_retries {
                return Err(failure);
            }
            let wait = backoff(failures);
            tracing::warn!(error = %failure, ?wait, attempt = failures, "Clerk request failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends a request and reads the whole answer.
    async fn exchange(
        &self,
        request: Request<Empty<Bytes>>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| error_chain(&e))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    }
}

/// `Retry-After` as seconds or as an HTTP date, capped.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// 250 ms, 500 ms, 1 s, … for the n-th retry (n ≥ 1), at most a minute.
pub(crate) fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(8))
        .min(Duration::from_secs(60))
}

/// Clerk's error message from an error body (`{"errors":[{"message":…}]}`),
/// as `: message`, or nothing.
fn clerk_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        message: Option<String>,
        long_message: Option<String>,
    }
    serde_json::from_slice::<Errors>(body)
        .ok()
        .and_then(|errors| errors.errors.into_iter().next())
        .and_then(|entry| entry.long_message.or(entry.message))
        .map(|message| format!(": {message}"))
        .unwrap_or_default()
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_never_shown() {
        let key = SecretKey::parse(" sk_test_abc123 ").unwrap();
        assert_eq!(format!("{key:?}"), "SecretKey(<redacted>)");
        for bad in ["", " ", "pk_test_abc", "sk_", "sk_test abc", "whsec_abc"] {
            let reason = SecretKey::parse(bad).unwrap_err();
            assert!(!reason.contains("abc"), "{reason}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        let soon = std::time::SystemTime::now() + Duration::from_secs(30);
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(soon)).unwrap(),
        );
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(4), Duration::from_secs(2));
        assert_eq!(backoff(40), Duration::from_secs(60));
    }

    #[test]
    fn clerk_error_messages_are_quoted() {
        let body =
            br#"{"errors":[{"message":"bad","long_message":"offset is invalid","code":"x"}]}"#;
        assert_eq!(clerk_message(body), ": offset is invalid");
        assert_eq!(clerk_message(b"<html>"), "");
    }
}
