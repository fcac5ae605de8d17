//! Svix (Standard Webhooks v1) signatures, as Clerk's sender makes them: an
//! HMAC-SHA256 over `{id}.{timestamp}.{body}` keyed by the base64-decoded
//! secret (after an optional `whsec_` prefix), sent as `v1,<base64>`.

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// A webhook signing secret, decoded once.
#[derive(Clone)]
pub struct SigningSecret {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

impl std::str::FromStr for SigningSecret {
    type Err = String;

    /// Parses `whsec_<base64>` (or bare base64). The error never echoes the secret.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let encoded = text.trim();
        let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
        if encoded.is_empty() {
            return Err("empty; expected whsec_<base64> as shown by Clerk".into());
        }
        let key = BASE64
            .decode(encoded)
            .map_err(|_| "not base64 after the whsec_ prefix".to_owned())?;
        let mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| "unusable key".to_owned())?;
        Ok(Self { mac })
    }
}

impl SigningSecret {
    /// The `svix-signature` header value for one delivery.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every valid vector of the shared file whose header is a single signature.
    #[test]
    fn matches_the_shared_vectors() {
        let text = include_str!("../../tests/fixtures/svix-vectors.json");
        let vectors: serde_json::Value = serde_json::from_str(text).unwrap();
        let mut checked = 0;
        for vector in vectors["valid"].as_array().unwrap() {
            let header = vector["signature"].as_str().unwrap();
            let secret: SigningSecret = vector["secret"].as_str().unwrap().parse().unwrap();
            let ours = secret.sign(
                vector["id"].as_str().unwrap(),
                vector["timestamp"].as_i64().unwrap(),
                vector["payload"].as_str().unwrap().as_bytes(),
            );
            assert!(
                header.split(' ').any(|entry| entry == ours),
                "{}: {ours} not in {header}",
                vector["name"]
            );
            checked += 1;
        }
        assert!(checked >= 3, "only {checked} vectors checked");
    }

    #[test]
    fn a_changed_body_changes_the_signature() {
        let secret: SigningSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        assert_ne!(secret.sign("m", 1, b"a"), secret.sign("m", 1, b"b"));
    }

    #[test]
    fn bad_secrets_are_refused_without_echo() {
        let error = "whsec_***".parse::<SigningSecret>().unwrap_err();
        assert!(!error.contains("***"), "{error}");
        assert!("".parse::<SigningSecret>().is_err());
    }
}
