//! Webhook deliveries as Svix makes them: headers signed by Svix's own Rust
//! library, and the Clerk fixtures. Included with `#[path]` by the test
//! binaries that post webhooks.

use std::time::SystemTime;

/// The current Unix time in seconds.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// `svix-*` headers and `Content-Type: application/json` for `body`, signed
/// with `secret` by the svix crate, exactly as Clerk's sender signs.
pub(crate) fn signed_headers(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let signature = svix::webhooks::Webhook::new(secret)
        .unwrap()
        .sign(msg_id, timestamp, body)
        .unwrap();
    vec![
        ("content-type", "application/json".to_owned()),
        ("svix-id", msg_id.to_owned()),
        ("svix-timestamp", timestamp.to_string()),
        ("svix-signature", signature),
    ]
}

/// A Clerk payload from `tests/fixtures/clerk/`, read at test time.
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../tests/fixtures/clerk/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
