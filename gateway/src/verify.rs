//! Svix / Standard Webhooks v1 signature verification.
//!
//! A pure function of the request headers, the raw body bytes and the current
//! time: no I/O, no clock of its own, so every rule is unit-tested with the
//! shared vectors. The signed content is `{id}.{timestamp}.{raw body}` exactly
//! as received; the body is never re-serialised.

use std::{fmt, str::FromStr, time::Duration, time::SystemTime};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

use crate::Error;

type HmacSha256 = Hmac<Sha256>;

/// Header names, Svix-branded first; the `webhook-*` twins mean the same thing.
const ID: (&str, &str) = ("svix-id", "webhook-id");
const TIMESTAMP: (&str, &str) = ("svix-timestamp", "webhook-timestamp");
const SIGNATURE: (&str, &str) = ("svix-signature", "webhook-signature");

/// Longest accepted message id (`svix-id`), in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Prefix Svix puts in front of the base64 key; optional.
const SECRET_PREFIX: &str = "whsec_";

/// One or more webhook signing keys. Several are accepted at once so a secret
/// can be rotated without rejecting deliveries signed with the old one.
#[derive(Clone)]
pub struct WebhookSecrets {
    /// Decoded HMAC keys, never empty; each key is itself non-empty.
    keys: Vec<Vec<u8>>,
}

impl WebhookSecrets {
    /// Parses secrets separated by spaces or commas, each `whsec_<base64>` or
    /// bare base64. An empty list, an empty key or undecodable base64 is an
    /// error (a gateway that accepts nothing, or anything, is misconfigured).
    pub fn parse(secrets: &str) -> Result<Self, Error> {
        let config_error = |reason: &str| Error::Config {
            setting: "CLERK_WEBHOOK_SECRET",
            reason: reason.to_owned(),
        };
        let keys = secrets
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|secret| !secret.is_empty())
            .enumerate()
            .map(|(index, secret)| {
                let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
                if encoded.is_empty() {
                    return Err(config_error(&format!("secret #{} is empty", index + 1)));
                }
                match BASE64.decode(encoded) {
                    Ok(key) if !key.is_empty() => Ok(key),
                    _ => Err(config_error(&format!(
                        "secret #{} is not valid base64 (expected whsec_<base64>)",
                        index + 1
                    ))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(config_error("no secret given (expected whsec_<base64>)"));
        }
        Ok(Self { keys })
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: construction rejects an empty list. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl FromStr for WebhookSecrets {
    type Err = Error;

    fn from_str(secrets: &str) -> Result<Self, Error> {
        Self::parse(secrets)
    }
}

impl fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookSecrets([redacted; {}])", self.keys.len())
    }
}

/// What a verified delivery says about itself, borrowed from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'h> {
    /// The message id (`svix-id`): the event id used for deduplication and logs.
    pub id: &'h str,
    /// The signed `svix-timestamp`, in Unix seconds.
    pub timestamp: i64,
}

/// Checks webhook signatures against the configured secrets.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// The keys any one of which may have signed a delivery.
    secrets: WebhookSecrets,
    /// How far the signed timestamp may be from now (inclusive); `None` turns the
    /// check off, which only replaying recorded vectors should need.
    tolerance: Option<Duration>,
}

impl Verifier {
    /// The default timestamp tolerance: 5 minutes either way, as Svix uses.
    pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

    /// A verifier accepting timestamps within `tolerance` of now, inclusive.
    pub fn new(secrets: WebhookSecrets, tolerance: Duration) -> Self {
        Self {
            secrets,
            tolerance: Some(tolerance),
        }
    }

    /// A verifier that checks signatures only, whatever the timestamp's age.
    /// Meant for replaying recorded deliveries, never for serving.
    pub fn ignoring_timestamp(secrets: WebhookSecrets) -> Self {
        Self {
            secrets,
            tolerance: None,
        }
    }

    /// Verifies one delivery: the three headers are present and well formed, the
    /// timestamp is within the window around `now`, and at least one `v1`
    /// signature matches one secret over `{id}.{timestamp}.{body}`.
    ///
    /// Missing or malformed headers are [`Error::MissingHeader`] /
    /// [`Error::MalformedHeader`] (HTTP 400); a bad signature or timestamp is
    /// [`Error::SignatureMismatch`] / [`Error::TimestampOutsideWindow`] (401).
    pub fn verify<'h>(
        &self,
        headers: &'h HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Delivery<'h>, Error> {
        let id = header(headers, ID)?;
        if id.len() > MAX_ID_LEN {
            // Svix ids are ~30 bytes; the directory keys its ledger and its
            // quarantine by them, up to this length.
            return Err(Error::MalformedHeader {
                header: ID.0,
                reason: "longer than 256 bytes",
            });
        }
        let timestamp_text = header(headers, TIMESTAMP)?;
        let signatures = header(headers, SIGNATURE)?;
        let timestamp = parse_timestamp(timestamp_text)?;

        if let Some(tolerance) = self.tolerance {
            let now = unix_seconds(now);
            if now.abs_diff(timestamp) > tolerance.as_secs() {
                return Err(Error::TimestampOutsideWindow);
            }
        }

        // Only `v1,<base64>` entries count; other versions and garbage are skipped.
        let candidates: Vec<Vec<u8>> = signatures
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|encoded| BASE64.decode(encoded).ok())
            .collect();
        if candidates.is_empty() {
            return Err(Error::SignatureMismatch);
        }

        for key in &self.secrets.keys {
            let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
            mac.update(id.as_bytes());
            mac.update(b".");
            // The header text itself, not a re-formatted number: it is what was signed.
            mac.update(timestamp_text.as_bytes());
            mac.update(b".");
            mac.update(body);
            // `verify_slice` checks the length first and compares in constant time.
            if candidates
                .iter()
                .any(|candidate| mac.clone().verify_slice(candidate).is_ok())
            {
                return Ok(Delivery { id, timestamp });
            }
        }
        Err(Error::SignatureMismatch)
    }
}

/// Reads a header by its Svix name or its Standard Webhooks twin.
fn header<'h>(
    headers: &'h HeaderMap,
    (svix, webhook): (&'static str, &str),
) -> Result<&'h str, Error> {
    let value = headers
        .get(svix)
        .or_else(|| headers.get(webhook))
        .ok_or(Error::MissingHeader(svix))?;
    let text = value.to_str().map_err(|_| Error::MalformedHeader {
        header: svix,
        reason: "not visible ASCII",
    })?;
    if text.trim().is_empty() {
        return Err(Error::MalformedHeader {
            header: svix,
            reason: "empty",
        });
    }
    Ok(text)
}

/// Accepts only plain decimal digits: no sign, no spaces, no fraction.
fn parse_timestamp(text: &str) -> Result<i64, Error> {
    let malformed = Error::MalformedHeader {
        header: TIMESTAMP.0,
        reason: "not a non-negative integer of Unix seconds",
    };
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed);
    }
    text.parse().map_err(|_| malformed)
}

fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde::Deserialize;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"type":"user.created","data":{"id":"user_1"}}"#;

    #[derive(Deserialize)]
    struct Vectors {
        valid: Vec<Vector>,
        invalid: Vec<Vector>,
    }

    #[derive(Deserialize)]
    struct Vector {
        name: String,
        secret: String,
        id: String,
        timestamp: i64,
        payload: String,
        signature: String,
    }

    fn vectors() -> Vectors {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/svix-vectors.json"
        );
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    fn at(secs: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.try_into().unwrap())
    }

    fn headers(id: &str, timestamp: &str, signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("svix-id", HeaderValue::from_str(id).unwrap());
        headers.insert("svix-timestamp", HeaderValue::from_str(timestamp).unwrap());
        headers.insert("svix-signature", HeaderValue::from_str(signature).unwrap());
        headers
    }

    /// Signs with Svix's own library, so the verifier is checked against an
    /// independent implementation rather than against itself.
    fn svix_sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
        svix::webhooks::Webhook::new(secret)
            .unwrap()
            .sign(id, timestamp, body)
            .unwrap()
    }

    fn signed(timestamp: i64) -> HeaderMap {
        headers(
            "msg_1",
            &timestamp.to_string(),
            &svix_sign(SECRET, "msg_1", timestamp, BODY),
        )
    }

    fn verifier() -> Verifier {
        Verifier::new(SECRET.parse().unwrap(), Verifier::DEFAULT_TOLERANCE)
    }

    #[test]
    fn every_valid_vector_passes() {
        for v in vectors().valid {
            let verifier = Verifier::ignoring_timestamp(v.secret.parse().unwrap());
            let headers = headers(&v.id, &v.timestamp.to_string(), &v.signature);
            let delivery = verifier
                .verify(&headers, v.payload.as_bytes(), at(NOW))
                .unwrap_or_else(|e| panic!("{}: {e}", v.name));
            assert_eq!(delivery.id, v.id, "{}", v.name);
            assert_eq!(delivery.timestamp, v.timestamp, "{}", v.name);
        }
    }

    #[test]
    fn every_invalid_vector_fails_as_a_signature_mismatch() {
        let vectors = vectors();
        assert!(!vectors.invalid.is_empty());
        for v in vectors.invalid {
            let verifier = Verifier::ignoring_timestamp(v.secret.parse().unwrap());
            let headers = headers(&v.id, &v.timestamp.to_string(), &v.signature);
            let result = verifier.verify(&headers, v.payload.as_bytes(), at(NOW));
            assert!(
                matches!(result, Err(Error::SignatureMismatch)),
                "{}: {result:?}",
                v.name
            );
        }
    }

    #[test]
    fn window_is_inclusive_at_exactly_the_tolerance() {
        let verifier = verifier();
        assert!(verifier.verify(&signed(NOW - 300), BODY, at(NOW)).is_ok());
        assert!(verifier.verify(&signed(NOW + 300), BODY, at(NOW)).is_ok());
        assert!(verifier.verify(&signed(NOW), BODY, at(NOW)).is_ok());
    }

    #[test]
    fn one_second_past_the_window_fails() {
        let verifier = verifier();
        for timestamp in [NOW - 301, NOW + 301, 0] {
            let headers = signed(timestamp);
            let result = verifier.verify(&headers, BODY, at(NOW));
            assert!(
                matches!(result, Err(Error::TimestampOutsideWindow)),
                "{timestamp}: {result:?}"
            );
        }
    }

    #[test]
    fn tolerance_is_configurable() {
        let verifier = Verifier::new(SECRET.parse().unwrap(), Duration::from_secs(10));
        assert!(verifier.verify(&signed(NOW - 10), BODY, at(NOW)).is_ok());
        assert!(matches!(
            verifier.verify(&signed(NOW - 11), BODY, at(NOW)),
            Err(Error::TimestampOutsideWindow)
        ));
    }

    #[test]
    fn each_missing_header_is_named() {
        for name in ["svix-id", "svix-timestamp", "svix-signature"] {
            let mut headers = signed(NOW);
            headers.remove(name);
            match verifier().verify(&headers, BODY, at(NOW)) {
                Err(Error::MissingHeader(missing)) => assert_eq!(missing, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn empty_headers_are_malformed() {
        for name in ["svix-id", "svix-timestamp", "svix-signature"] {
            let mut headers = signed(NOW);
            headers.insert(name, HeaderValue::from_static(""));
            match verifier().verify(&headers, BODY, at(NOW)) {
                Err(Error::MalformedHeader { header, .. }) => assert_eq!(header, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn non_numeric_and_negative_timestamps_are_malformed() {
        for timestamp in [
            "abc",
            "-5",
            "+1700000000",
            "1700000000.5",
            " 1700000000",
            "1e9",
        ] {
            let mut headers = signed(NOW);
            headers.insert("svix-timestamp", HeaderValue::from_str(timestamp).unwrap());
            let result = verifier().verify(&headers, BODY, at(NOW));
            assert!(
                matches!(
                    result,
                    Err(Error::MalformedHeader {
                        header: "svix-timestamp",
                        ..
                    })
                ),
                "{timestamp:?}: {result:?}"
            );
        }
    }

    #[test]
    fn signature_covers_id_timestamp_and_body() {
        let verifier = verifier();
        let mut other_id = signed(NOW);
        other_id.insert("svix-id", HeaderValue::from_static("msg_2"));
        let tampered = br#"{"type":"user.created","data":{"id":"user_2"}}"#;
        for (headers, body) in [(other_id, BODY), (signed(NOW), &tampered[..])] {
            assert!(matches!(
                verifier.verify(&headers, body, at(NOW)),
                Err(Error::SignatureMismatch)
            ));
        }
        // A different (still in-window) timestamp breaks the signature too.
        let mut moved = signed(NOW);
        moved.insert("svix-timestamp", HeaderValue::from(NOW + 1));
        assert!(matches!(
            verifier.verify(&moved, BODY, at(NOW)),
            Err(Error::SignatureMismatch)
        ));
    }

    #[test]
    fn webhook_headers_are_accepted_as_svix_headers() {
        let signature = svix_sign(SECRET, "msg_1", NOW, BODY);
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
        headers.insert("webhook-timestamp", HeaderValue::from(NOW));
        headers.insert(
            "webhook-signature",
            HeaderValue::from_str(&signature).unwrap(),
        );
        let delivery = verifier().verify(&headers, BODY, at(NOW)).unwrap();
        assert_eq!(
            delivery,
            Delivery {
                id: "msg_1",
                timestamp: NOW
            }
        );
    }

    #[test]
    fn any_of_several_secrets_verifies() {
        let both: WebhookSecrets = format!("{OTHER_SECRET}, {SECRET}").parse().unwrap();
        assert_eq!(both.len(), 2);
        let verifier = Verifier::new(both, Verifier::DEFAULT_TOLERANCE);
        for secret in [SECRET, OTHER_SECRET] {
            let signature = svix_sign(secret, "msg_1", NOW, BODY);
            let headers = headers("msg_1", &NOW.to_string(), &signature);
            assert!(verifier.verify(&headers, BODY, at(NOW)).is_ok(), "{secret}");
        }
        let stranger = svix_sign("whsec_dGhpcyBpcyBub3QgaXQ=", "msg_1", NOW, BODY);
        let headers = headers("msg_1", &NOW.to_string(), &stranger);
        assert!(matches!(
            verifier.verify(&headers, BODY, at(NOW)),
            Err(Error::SignatureMismatch)
        ));
    }

    #[test]
    fn secrets_are_separated_by_spaces_or_commas() {
        let secrets: WebhookSecrets =
            format!(" {SECRET} {OTHER_SECRET},MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw ")
                .parse()
                .unwrap();
        assert_eq!(secrets.len(), 3);
    }

    #[test]
    fn unusable_secrets_are_configuration_errors() {
        for bad in [
            "",
            "   ",
            "whsec_",
            "whsec_not*base64",
            "not base64!",
            "whsec_ok==,whsec_",
        ] {
            let result = WebhookSecrets::parse(bad);
            assert!(
                matches!(
                    result,
                    Err(Error::Config {
                        setting: "CLERK_WEBHOOK_SECRET",
                        ..
                    })
                ),
                "{bad:?}: {result:?}"
            );
        }
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let secrets: WebhookSecrets = SECRET.parse().unwrap();
        let shown = format!("{:?}", verifier());
        assert!(!shown.contains("MfKQ9r8G"), "{shown}");
        assert_eq!(format!("{secrets:?}"), "WebhookSecrets([redacted; 1])");
    }
}
