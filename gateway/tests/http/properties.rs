//! Properties of the pure parts: the verifier and the Clerk mapping never
//! panic, whatever the bytes, headers and JSON; what they accept is either
//! forwarded or quarantined (poison), never anything else.

use std::time::{Duration, SystemTime};

use clerk_sync_gateway::{
    Verifier,
    clerk::{ClerkEvent, UserEvent},
    pipeline,
    verify::Delivery,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::helpers::{SECRET, signed_headers};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, nested a few levels, with odd strings (NUL, surrogates'
/// neighbours, long runs) and extreme numbers.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
        Just(Value::String("\u{0}".into())),
        Just(Value::String("\u{feff}\u{202e}\u{fffd}".into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A user-shaped object whose fields hold any JSON at all.
fn user_like() -> impl Strategy<Value = Value> {
    let field = prop_oneof![json_value(), any::<String>().prop_map(Value::String)];
    (
        prop::collection::vec(field, 14),
        any::<bool>(),
        json_value(),
    )
        .prop_map(|(values, with_id, metadata)| {
            let names = [
                "email_addresses",
                "primary_email_address_id",
                "phone_numbers",
                "primary_phone_number_id",
                "first_name",
                "last_name",
                "username",
                "image_url",
                "external_id",
                "created_at",
                "updated_at",
                "last_sign_in_at",
                "object",
                "deleted",
            ];
            let mut object: serde_json::Map<String, Value> =
                names.iter().map(|n| (*n).to_owned()).zip(values).collect();
            if with_id {
                object.insert("id".into(), json!("user_prop"));
            }
            object.insert("public_metadata".into(), metadata);
            Value::Object(object)
        })
}

fn envelope() -> impl Strategy<Value = Value> {
    let event_type = prop_oneof![
        Just(json!("user.created")),
        Just(json!("user.updated")),
        Just(json!("user.deleted")),
        Just(json!("session.created")),
        json_value(),
    ];
    let data = prop_oneof![user_like(), json_value()];
    (event_type, data, json_value()).prop_map(|(event_type, data, timestamp)| {
        json!({"type": event_type, "data": data, "timestamp": timestamp})
    })
}

/// Maps `body` as the pipeline does; checks the result is one of the
/// outcomes the handler knows what to do with.
fn map_without_panic(body: &[u8]) {
    let delivery = Delivery {
        id: "msg_prop",
        timestamp: 1_700_000_000,
    };
    let result = ClerkEvent::parse(body).and_then(|event| UserEvent::from_clerk(event, &delivery));
    match result {
        Ok(Some(event)) => {
            if let Err(error) = pipeline::check_carriable(&event, 16 * 1024 * 1024) {
                assert!(error.is_poison(), "{error:?}");
            }
        }
        Ok(None) => {}
        Err(error) => assert!(error.is_poison(), "{error:?}"),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_mapping_never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        map_without_panic(&body);
    }

    #[test]
    fn the_mapping_never_panics_on_arbitrary_json(event in envelope()) {
        map_without_panic(event.to_string().as_bytes());
    }

    #[test]
    fn the_verifier_never_panics_on_arbitrary_headers(
        headers in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "svix-id", "svix-timestamp", "svix-signature",
                    "webhook-id", "webhook-timestamp", "webhook-signature",
                ]),
                prop::collection::vec(any::<u8>(), 0..80),
            ),
            0..6,
        ),
        signature_like in "(v1,[A-Za-z0-9+/=]{0,60} ?){0,4}",
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let verifier = Verifier::new(SECRET.parse().unwrap(), Duration::from_secs(300));
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                map.append(HeaderName::from_static(name), value);
            }
        }
        let _ = verifier.verify(&map, &body, SystemTime::now());
        if let Ok(value) = HeaderValue::from_str(&signature_like) {
            map.insert("svix-signature", value);
            let _ = verifier.verify(&map, &body, SystemTime::now());
        }
    }

    #[test]
    fn a_signed_body_verifies_and_a_changed_one_does_not(
        // The svix crate signs text only.
        text in any::<String>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let body = text.into_bytes();
        let verifier = Verifier::new(SECRET.parse().unwrap(), Duration::from_secs(300));
        let now = SystemTime::now();
        let timestamp = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        let mut map = HeaderMap::new();
        for (name, value) in signed_headers(SECRET, "msg_prop", timestamp, &body) {
            map.insert(name, HeaderValue::from_str(&value).unwrap());
        }
        prop_assert!(verifier.verify(&map, &body, now).is_ok());
        if !body.is_empty() {
            let mut changed = body.clone();
            let i = flip.index(changed.len());
            changed[i] ^= 0x01;
            prop_assert!(verifier.verify(&map, &changed, now).is_err());
        }
    }
}
