//! A hostile corpus, end to end: authentic (svix-signed) deliveries of odd and
//! broken payloads through the real gateway and sync-service, on SQLite and
//! PostgreSQL. Each case has its expected status, directory state and
//! quarantine record; then the operator's commands redrive and drop records.

use http::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

use clerk_sync_gateway::quarantine::cli::{self, QuarantineCommand};

use crate::helpers::{Answer, Backend, SECRET, Stack, now};

/// Delivers `body` signed as Svix signs (HMAC-SHA256 over
/// `{id}.{timestamp}.{body}`), for bodies the svix crate refuses to sign
/// because they are not UTF-8.
async fn deliver_bytes(stack: &Stack, msg_id: &str, body: &[u8]) -> Answer {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use hmac::{Hmac, Mac};
    let timestamp = now();
    let key = STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body);
    let signature = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let headers = [
        ("content-type", "application/json".to_owned()),
        ("svix-id", msg_id.to_owned()),
        ("svix-timestamp", timestamp.to_string()),
        ("svix-signature", signature),
    ];
    stack
        .request(
            http::Method::POST,
            "/clerk",
            &headers,
            bytes::Bytes::copy_from_slice(body),
        )
        .await
}

crate::on_both_backends!(
    the_hostile_corpus_is_applied_or_quarantined_never_refused,
    quarantined_events_are_listed_retried_and_dropped,
);

/// What a case must leave behind.
enum Expect {
    /// Applied: the user exists and passes the check.
    Applied(&'static str, fn(&clerk_sync_api::v1::User)),
    /// Acknowledged and not stored (an event type the directory ignores).
    Ignored,
    /// Quarantined with a reason containing this text; the user is absent.
    Quarantined(&'static str),
}

fn user(id: &str, fields: Value) -> Value {
    let mut data = json!({
        "id": id,
        "object": "user",
        "updated_at": 1_700_000_000_000_i64,
        "created_at": 1_700_000_000_000_i64,
    });
    data.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    json!({"type": "user.created", "object": "event", "timestamp": 1_700_000_000_000_i64, "data": data})
}

fn deep(levels: usize) -> Value {
    let mut value = json!("bottom");
    for _ in 0..levels {
        value = json!({ "deeper": value });
    }
    value
}

async fn the_hostile_corpus_is_applied_or_quarantined_never_refused(backend: Backend) {
    let stack = Stack::start(backend).await;
    let nul = "\u{0}";
    let many_emails: Vec<Value> = (0..16_000)
        .map(|i| json!({"id": format!("idn_{i}"), "email_address": format!("a{i}@many.example")}))
        .collect();
    let wide_metadata: Vec<u8> = vec![0; 200_000];

    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "NUL in every string field",
            user(
                "user_nul",
                json!({
                    "first_name": format!("{nul}Ada{nul}"),
                    "last_name": nul,
                    "username": format!("ada{nul}"),
                    "image_url": format!("https://img.clerk.com/{nul}x"),
                    "external_id": format!("{nul}42"),
                    "primary_email_address_id": format!("idn_{nul}1"),
                    "email_addresses": [{"id": format!("idn_{nul}1"), "email_address": format!("ada{nul}@example.org")}],
                    "primary_phone_number_id": "idn_p",
                    "phone_numbers": [{"id": "idn_p", "phone_number": format!("+1555{nul}5550100")}],
                    "public_metadata": {format!("k{nul}"): format!("v{nul}")},
                }),
            )
            .to_string()
            .into_bytes(),
            Expect::Applied("user_nul", |user| {
                assert_eq!(user.first_name.as_deref(), Some("Ada"));
                assert_eq!(user.last_name, None);
                assert_eq!(user.display_name, "Ada");
                assert_eq!(user.username.as_deref(), Some("ada"));
                assert_eq!(user.image_url.as_deref(), Some("https://img.clerk.com/x"));
                assert_eq!(user.external_id.as_deref(), Some("42"));
                assert_eq!(user.primary_email_address.as_deref(), Some("ada@example.org"));
                let addresses: Vec<&str> =
                    user.email_addresses.iter().map(|e| e.address.as_str()).collect();
                assert_eq!(addresses, ["ada@example.org"]);
                assert_eq!(user.primary_phone_number.as_deref(), Some("+15555550100"));
                let metadata = clerk_sync_api::json::json_from_struct(
                    user.public_metadata.clone().unwrap(),
                );
                assert_eq!(metadata["k\u{0}"], "v\u{0}");
            }),
        ),
        (
            "NUL in the user id",
            user(&format!("user_{nul}evil"), json!({})).to_string().into_bytes(),
            Expect::Quarantined("event rejected: event.user.id must not contain control characters"),
        ),
        (
            "NUL in the type",
            json!({"type": format!("user.created{nul}"), "data": {"id": "user_t"}})
                .to_string()
                .into_bytes(),
            Expect::Ignored,
        ),
        (
            "metadata 40 levels deep",
            user("user_deep", json!({"public_metadata": deep(40)})).to_string().into_bytes(),
            Expect::Quarantined("public_metadata is nested 40 levels deep"),
        ),
        (
            "metadata 20 levels deep",
            user("user_deep_ok", json!({"public_metadata": deep(20)})).to_string().into_bytes(),
            Expect::Applied("user_deep_ok", |user| {
                assert!(user.public_metadata.is_some());
            }),
        ),
        (
            "JSON deeper than the parser allows",
            format!(
                r#"{{"type":"user.created","data":{{"id":"user_abyss","updated_at":1,"public_metadata":{{"a":{}1{}}}}}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            )
            .into_bytes(),
            Expect::Quarantined("invalid JSON payload"),
        ),
        (
            "16,000 email addresses",
            user(
                "user_many",
                json!({"email_addresses": many_emails, "primary_email_address_id": "idn_15999"}),
            )
            .to_string()
            .into_bytes(),
            Expect::Applied("user_many", |user| {
                assert_eq!(user.email_addresses.len(), 16_000);
                assert_eq!(user.primary_email_address.as_deref(), Some("a15999@many.example"));
            }),
        ),
        (
            "a 200,000-element metadata array",
            user("user_wide", json!({"public_metadata": {"zeros": wide_metadata}}))
                .to_string()
                .into_bytes(),
            Expect::Applied("user_wide", |user| {
                let metadata = clerk_sync_api::json::json_from_struct(
                    user.public_metadata.clone().unwrap(),
                );
                assert_eq!(metadata["zeros"].as_array().unwrap().len(), 200_000);
            }),
        ),
        (
            "truncated JSON",
            br#"{"type":"user.created","data":{"id":"user_cut""#.to_vec(),
            Expect::Quarantined("invalid JSON payload"),
        ),
        (
            "not UTF-8",
            b"{\"type\":\"user.created\",\"data\":{\"id\":\"user_\xff\"}}".to_vec(),
            Expect::Quarantined("invalid JSON payload"),
        ),
        (
            "a lone surrogate",
            br#"{"type":"user.created","data":{"id":"user_s","updated_at":5,"first_name":"\ud800"}}"#
                .to_vec(),
            Expect::Quarantined("invalid JSON payload"),
        ),
        (
            "no updated_at",
            json!({"type": "user.updated", "data": {"id": "user_noversion"}})
                .to_string()
                .into_bytes(),
            Expect::Quarantined("data.updated_at is missing"),
        ),
        (
            "updated_at not a number",
            user("user_when", json!({"updated_at": "yesterday"})).to_string().into_bytes(),
            Expect::Quarantined("invalid JSON payload"),
        ),
        (
            "delete without id",
            json!({"type": "user.deleted", "data": {"deleted": true}})
                .to_string()
                .into_bytes(),
            Expect::Quarantined("data.id is missing"),
        ),
        (
            "no type",
            json!({"data": {"id": "user_x"}}).to_string().into_bytes(),
            Expect::Quarantined("type is missing"),
        ),
        (
            "a type that is not a string",
            json!({"type": 5, "data": {}}).to_string().into_bytes(),
            Expect::Quarantined("invalid JSON payload"),
        ),
        (
            "an unknown type",
            json!({"type": "session.ended", "data": {"id": 5}})
                .to_string()
                .into_bytes(),
            Expect::Ignored,
        ),
        (
            "an organization whose id is a number",
            json!({"type": "organization.created", "data": {"id": 5}})
                .to_string()
                .into_bytes(),
            Expect::Quarantined("invalid JSON payload"),
        ),
        (
            "odd unicode",
            user(
                "user_unicode",
                json!({
                    "first_name": "\u{202e}Zoë\u{200d}\u{fe0f}",
                    "last_name": "A\u{0301}ngstro\u{308}m \u{1F600}\u{FFFF}",
                    "email_addresses": [{"id": "idn_u", "email_address": "ÅDA@ÉXAMPLE.ORG"}],
                    "primary_email_address_id": "idn_u",
                }),
            )
            .to_string()
            .into_bytes(),
            Expect::Applied("user_unicode", |user| {
                assert_eq!(user.first_name.as_deref(), Some("\u{202e}Zoë\u{200d}\u{fe0f}"));
                assert_eq!(
                    user.last_name.as_deref(),
                    Some("A\u{0301}ngstro\u{308}m \u{1F600}\u{FFFF}")
                );
            }),
        ),
        (
            "a 300-byte user id",
            user(&format!("user_{}", "x".repeat(295)), json!({})).to_string().into_bytes(),
            Expect::Quarantined("event rejected: event.user.id must be at most 256 bytes"),
        ),
        (
            "a 300-byte id to delete",
            json!({"type": "user.deleted", "timestamp": 1, "data": {"id": "y".repeat(300)}})
                .to_string()
                .into_bytes(),
            Expect::Quarantined("event rejected: event.user_id must be at most 256 bytes"),
        ),
        (
            "updated_at beyond 64 bits",
            br#"{"type":"user.updated","data":{"id":"user_huge","updated_at":1e30}}"#.to_vec(),
            Expect::Quarantined("invalid JSON payload"),
        ),
    ];

    let mut expected_quarantine: Vec<(String, &str, &str, Vec<u8>)> = Vec::new();
    for (index, (what, body, expect)) in cases.iter().enumerate() {
        let msg_id = format!("msg_hostile_{index:02}");
        let answer = match std::str::from_utf8(body) {
            Ok(_) => stack.deliver(&msg_id, body).await,
            Err(_) => deliver_bytes(&stack, &msg_id, body).await,
        };
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "{}"),
            "{what}"
        );
        match expect {
            Expect::Applied(id, check) => {
                let user = stack
                    .get_user(id)
                    .await
                    .unwrap_or_else(|status| panic!("{what}: {status:?}"));
                check(&user);
            }
            Expect::Ignored => {}
            Expect::Quarantined(reason) => {
                expected_quarantine.push((msg_id, what, reason, body.clone()));
            }
        }
    }

    let records = stack.quarantined().await;
    let mut ids: Vec<&str> = records.iter().map(|r| r.event_id.as_str()).collect();
    ids.sort_unstable();
    let expected_ids: Vec<&str> = expected_quarantine
        .iter()
        .map(|(id, ..)| id.as_str())
        .collect();
    assert_eq!(
        ids, expected_ids,
        "exactly the poisoned deliveries are quarantined"
    );
    for (msg_id, what, reason, body) in &expected_quarantine {
        let record = stack
            .quarantine
            .clone()
            .get_quarantined(clerk_sync_api::v1::GetQuarantinedRequest {
                event_id: msg_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .event
            .unwrap();
        assert!(record.reason.contains(reason), "{what}: {}", record.reason);
        assert_eq!(&record.body, body, "{what}: the raw body is kept");
        assert_eq!(record.seen_count, 1, "{what}");
    }
    // The directory holds exactly the applied users.
    let mut live: Vec<String> = stack.all_users().await.into_iter().map(|u| u.id).collect();
    live.sort_unstable();
    assert_eq!(
        live,
        [
            "user_deep_ok",
            "user_many",
            "user_nul",
            "user_unicode",
            "user_wide"
        ]
    );

    // A redelivery updates the record: no duplicate.
    let (msg_id, _, _, body) = &expected_quarantine[0];
    assert_eq!(stack.deliver(msg_id, body).await.status, StatusCode::OK);
    let records = stack.quarantined().await;
    assert_eq!(records.len(), expected_quarantine.len());
    let record = records.iter().find(|r| &r.event_id == msg_id).unwrap();
    assert_eq!(record.seen_count, 2);
    stack.stop().await;
}

async fn quarantined_events_are_listed_retried_and_dropped(backend: Backend) {
    let stack = Stack::start(backend).await;
    let config = stack.gateway_config();
    let run = |command: QuarantineCommand| {
        let config = config.clone();
        async move {
            let mut out = Vec::new();
            let result = cli::run(
                &config.sync_service,
                config.limits.max_message_bytes,
                command,
                &mut out,
            )
            .await;
            (result, String::from_utf8(out).unwrap())
        }
    };

    // An event an older release could not take, stored as it would have:
    // today's mapping applies it.
    let fixable = user("user_redriven", json!({"first_name": "Redriven"})).to_string();
    stack
        .quarantine
        .clone()
        .quarantine(clerk_sync_api::v1::QuarantineRequest {
            event_id: "msg_fixable".into(),
            event_type: "user.created".into(),
            reason: "an old release refused it".into(),
            body: fixable.into_bytes(),
            delivered_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        })
        .await
        .unwrap();
    // And one no release can take.
    let broken = br#"{"type":"user.created","data":{"id":"user_broken""#;
    assert_eq!(
        stack.deliver("msg_broken", broken).await.status,
        StatusCode::OK
    );

    let (listed, out) = run(QuarantineCommand::List { limit: 100 }).await;
    listed.unwrap();
    assert!(out.starts_with("2 quarantined"), "{out}");
    assert!(
        out.contains("msg_fixable") && out.contains("msg_broken"),
        "{out}"
    );

    let (shown, out) = run(QuarantineCommand::Show {
        event_id: "msg_broken".into(),
    })
    .await;
    shown.unwrap();
    assert!(out.contains("invalid JSON payload"), "{out}");
    assert!(
        out.contains(r#"{"type":"user.created","data":{"id":"user_broken""#),
        "{out}"
    );

    let (retried, out) = run(QuarantineCommand::Retry {
        event_id: None,
        all: true,
    })
    .await;
    assert!(retried.is_err(), "one delivery is still refused: {out}");
    assert!(
        out.contains("msg_fixable: OUTCOME_APPLIED; dropped"),
        "{out}"
    );
    assert!(
        out.contains("msg_broken: still refused: invalid JSON payload"),
        "{out}"
    );
    assert_eq!(
        stack
            .get_user("user_redriven")
            .await
            .unwrap()
            .first_name
            .as_deref(),
        Some("Redriven")
    );
    let records = stack.quarantined().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].event_id, "msg_broken");
    assert_eq!(records[0].seen_count, 2, "the failed retry is counted");

    let (dropped, out) = run(QuarantineCommand::Drop {
        event_id: "msg_broken".into(),
    })
    .await;
    dropped.unwrap();
    assert_eq!(out, "dropped msg_broken\n");
    assert!(stack.quarantined().await.is_empty());
    let (missing, _) = run(QuarantineCommand::Drop {
        event_id: "msg_broken".into(),
    })
    .await;
    match missing {
        Err(clerk_sync_gateway::Error::Quarantine(status)) => {
            assert_eq!(status.code(), Code::NotFound)
        }
        other => panic!("{other:?}"),
    }
    stack.stop().await;
}
