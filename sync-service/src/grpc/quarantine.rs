//! `clerk.sync.v1.QuarantineService`: stores, lists, shows and drops
//! quarantined deliveries through the [`Store`].

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clerk_sync_api::v1::{
    self, DropQuarantinedRequest, DropQuarantinedResponse, GetQuarantinedRequest,
    GetQuarantinedResponse, ListQuarantinedRequest, ListQuarantinedResponse, QuarantineRequest,
    QuarantineResponse, QuarantinedEvent,
};
use prost_types::Timestamp;
use tonic::{Request, Response, Status};

use crate::{
    domain::{EventId, Millis, UserId, page_size, timestamp_from_millis},
    error::Error,
    store::{NewQuarantined, Quarantined, Store},
};

/// Longest event type kept; Clerk's are ~20 bytes.
const MAX_EVENT_TYPE_LEN: usize = 256;
/// Longest reason kept.
const MAX_REASON_LEN: usize = 4096;
/// Version tag of the list's page token.
const TOKEN_VERSION: &str = "q1";

/// Serves `QuarantineService`.
#[derive(Clone, Debug)]
pub(crate) struct QuarantineService {
    pub(crate) store: Store,
    /// Whether private metadata is kept: when not, it is not kept in a
    /// quarantined body either.
    pub(crate) store_private_metadata: bool,
    /// The most body bytes the quarantine holds (`SYNC_QUARANTINE_MAX_BYTES`).
    pub(crate) max_bytes: u64,
}

#[tonic::async_trait]
impl v1::quarantine_service_server::QuarantineService for QuarantineService {
    #[tracing::instrument(name = "quarantine", skip_all, fields(event_id = %request.get_ref().event_id.escape_debug()))]
    async fn quarantine(
        &self,
        request: Request<QuarantineRequest>,
    ) -> Result<Response<QuarantineResponse>, Status> {
        let delivery = parse_quarantine(request.into_inner(), self.store_private_metadata)?;
        let (_, held) = self.store.quarantine_size().await?;
        if held.saturating_add(delivery.body.len() as u64) > self.max_bytes {
            return Err(Error::Exhausted(format!(
                "the quarantine is full ({held} bytes of bodies, SYNC_QUARANTINE_MAX_BYTES {}): \
                 retry later; an operator must retry or drop quarantined events",
                self.max_bytes
            ))
            .into());
        }
        let stored = self.store.quarantine(delivery).await?;
        tracing::warn!(
            reason = %stored.reason,
            seen_count = stored.seen_count,
            "event quarantined"
        );
        Ok(Response::new(QuarantineResponse {
            event: Some(to_proto(stored)),
        }))
    }

    async fn list_quarantined(
        &self,
        request: Request<ListQuarantinedRequest>,
    ) -> Result<Response<ListQuarantinedResponse>, Status> {
        let request = request.into_inner();
        let page_size = page_size(request.page_size)?;
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(decode_token(token)?),
        };
        let mut events = self
            .store
            .list_quarantined(u64::from(page_size) + 1, after)
            .await?;
        let has_more = events.len() > page_size as usize;
        events.truncate(page_size as usize);
        let next_page_token = match events.last() {
            Some(last) if has_more => encode_token(last.first_seen_at, &last.event_id),
            _ => String::new(),
        };
        Ok(Response::new(ListQuarantinedResponse {
            events: events.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_quarantined(
        &self,
        request: Request<GetQuarantinedRequest>,
    ) -> Result<Response<GetQuarantinedResponse>, Status> {
        let id = EventId::parse(request.into_inner().event_id, "event_id")?;
        let stored = self.store.get_quarantined(&id).await?;
        Ok(Response::new(GetQuarantinedResponse {
            event: Some(to_proto(stored)),
        }))
    }

    async fn drop_quarantined(
        &self,
        request: Request<DropQuarantinedRequest>,
    ) -> Result<Response<DropQuarantinedResponse>, Status> {
        let id = EventId::parse(request.into_inner().event_id, "event_id")?;
        self.store.drop_quarantined(&id).await?;
        tracing::info!(event_id = %id.as_str(), "quarantined event dropped");
        Ok(Response::new(DropQuarantinedResponse {}))
    }
}

/// Parses a Quarantine request. The type and reason are free text from the
/// gateway: U+0000 and other control characters are removed (PostgreSQL
/// refuses U+0000) and they are cut to a bounded length. The body is kept as
/// [`kept_body`] says.
fn parse_quarantine(
    request: QuarantineRequest,
    store_private_metadata: bool,
) -> Result<NewQuarantined, Error> {
    let event_id = EventId::parse(request.event_id, "event_id")?;
    let reason = clean_text(&request.reason, MAX_REASON_LEN);
    if reason.trim().is_empty() {
        return Err(Error::invalid("reason", "must not be empty"));
    }
    let delivered_at = request
        .delivered_at
        .ok_or_else(|| Error::invalid("delivered_at", "is required"))?;
    let kept = kept_body(request.body, store_private_metadata);
    let reason = if kept.withheld {
        clean_text(
            &format!(
                "{reason} (body not kept: it could not be read to remove private_metadata, \
                 which SYNC_STORE_PRIVATE_METADATA does not keep)"
            ),
            MAX_REASON_LEN,
        )
    } else {
        reason
    };
    Ok(NewQuarantined {
        event_id,
        event_type: Some(clean_text(&request.event_type, MAX_EVENT_TYPE_LEN))
            .filter(|event_type| !event_type.is_empty()),
        reason,
        body: kept.body,
        svix_timestamp: delivered_at.seconds,
        user_id: kept.user_id,
    })
}

/// Whether `w` is a JSON `\u` escape of an ASCII letter, digit or `_`
/// (`\u005f`, `\u0070`, …): what could spell `private_metadata` unseen.
fn escapes_a_key_letter(w: &[u8]) -> bool {
    matches!(w, [b'\\', b'u', b'0', b'0', b'3'..=b'7', last] if last.is_ascii_hexdigit())
}

/// What the quarantine keeps of a body.
struct KeptBody {
    body: Vec<u8>,
    /// The user a `user.*` delivery is about (`data.id`).
    user_id: Option<UserId>,
    /// Whether the body was left out because it could not be read.
    withheld: bool,
}

/// The body as the quarantine keeps it: without `data.private_metadata`
/// unless private metadata is stored (it must never reach the database
/// otherwise, quarantine included), and with the user it is about read out,
/// so that deleting the user erases the record. A body that cannot be read
/// as JSON is kept as it came when private metadata is stored or when it
/// cannot hold any (no `private_metadata`, and no `\u` escape of a letter
/// that could spell it), and not at all otherwise. A body rewritten here is no longer
/// the signed bytes: `quarantine retry` trusts records as the write-token
/// holder that stored them.
fn kept_body(body: Vec<u8>, store_private_metadata: bool) -> KeptBody {
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        let may_hold_some = body.windows(16).any(|w| w == b"private_metadata")
            || body.windows(6).any(escapes_a_key_letter);
        let withheld = !store_private_metadata && may_hold_some;
        return KeptBody {
            body: if withheld { Vec::new() } else { body },
            user_id: None,
            withheld,
        };
    };
    let is_user_event = json
        .get("type")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|kind| kind.starts_with("user."));
    let data = json
        .get_mut("data")
        .and_then(serde_json::Value::as_object_mut);
    let user_id = data
        .as_ref()
        .filter(|_| is_user_event)
        .and_then(|data| data.get("id")?.as_str().map(str::to_owned))
        .and_then(|id| UserId::parse(id, "data.id").ok());
    let stripped = match data {
        Some(data) if !store_private_metadata => data.remove("private_metadata").is_some(),
        _ => false,
    };
    let body = if stripped {
        serde_json::to_vec(&json).unwrap_or_default()
    } else {
        body
    };
    KeptBody {
        body,
        user_id,
        withheld: false,
    }
}

/// `text` without control characters (newlines and tabs aside), cut to at
/// most `max` bytes on a character boundary.
pub(crate) fn clean_text(text: &str, max: usize) -> String {
    let mut cleaned = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            continue;
        }
        if cleaned.len() + c.len_utf8() > max {
            break;
        }
        cleaned.push(c);
    }
    cleaned
}

fn to_proto(stored: Quarantined) -> QuarantinedEvent {
    QuarantinedEvent {
        event_id: stored.event_id,
        event_type: stored.event_type.unwrap_or_default(),
        reason: stored.reason,
        body: stored.body.unwrap_or_default(),
        body_size: stored.body_size,
        delivered_at: Some(Timestamp {
            seconds: stored.svix_timestamp,
            nanos: 0,
        }),
        first_seen_at: Some(timestamp_from_millis(stored.first_seen_at)),
        last_seen_at: Some(timestamp_from_millis(stored.last_seen_at)),
        seen_count: stored.seen_count,
    }
}

fn encode_token(first_seen_at: Millis, event_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_VERSION}|{first_seen_at}|{event_id}"))
}

fn decode_token(token: &str) -> Result<(Millis, String), Error> {
    let invalid = || Error::invalid("page_token", "is not a token this server issued");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let mut parts = raw.splitn(3, '|');
    let (Some(TOKEN_VERSION), Some(first_seen_at), Some(event_id)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let first_seen_at = first_seen_at.parse().map_err(|_| invalid())?;
    Ok((first_seen_at, event_id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_loses_control_characters_and_is_bounded() {
        assert_eq!(clean_text("user.\0updated", 256), "user.updated");
        assert_eq!(clean_text("a\nb\tc\u{7}", 256), "a\nb\tc");
        assert_eq!(clean_text("ééé", 5), "éé");
    }

    #[test]
    fn tokens_round_trip() {
        let token = encode_token(42, "msg_a|b");
        assert_eq!(decode_token(&token).unwrap(), (42, "msg_a|b".into()));
        assert!(decode_token("garbage!").is_err());
    }

    #[test]
    fn a_delivery_needs_an_id_a_reason_and_a_time() {
        let request = QuarantineRequest {
            event_id: "msg_1".into(),
            event_type: "user.\0created".into(),
            reason: "invalid JSON payload".into(),
            body: b"{".to_vec(),
            delivered_at: Some(Timestamp {
                seconds: 5,
                nanos: 0,
            }),
        };
        let parsed = parse_quarantine(request.clone(), true).unwrap();
        assert_eq!(parsed.event_type.as_deref(), Some("user.created"));
        assert_eq!(parsed.svix_timestamp, 5);
        for (broken, field) in [
            (
                QuarantineRequest {
                    event_id: String::new(),
                    ..request.clone()
                },
                "event_id",
            ),
            (
                QuarantineRequest {
                    reason: "\0".into(),
                    ..request.clone()
                },
                "reason",
            ),
            (
                QuarantineRequest {
                    delivered_at: None,
                    ..request
                },
                "delivered_at",
            ),
        ] {
            let err = parse_quarantine(broken, true).unwrap_err();
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }

    #[test]
    fn private_metadata_is_kept_out_of_the_quarantine_unless_it_is_stored() {
        let body = serde_json::json!({
            "type": "user.updated",
            "data": {
                "id": "user_2x",
                "email_addresses": [],
                "private_metadata": {"ssn": "078-05-1120", "key": "sk_live_abc"},
            },
        })
        .to_string()
        .into_bytes();

        let kept = kept_body(body.clone(), false);
        let text = String::from_utf8(kept.body).unwrap();
        assert!(
            !text.contains("078-05-1120") && !text.contains("sk_live"),
            "{text}"
        );
        assert!(!text.contains("private_metadata"), "{text}");
        assert!(text.contains("email_addresses"), "{text}");
        assert_eq!(kept.user_id.as_ref().map(UserId::as_str), Some("user_2x"));
        assert!(!kept.withheld);

        // Stored: the body is kept byte for byte.
        let kept = kept_body(body.clone(), true);
        assert_eq!(kept.body, body);
        assert_eq!(kept.user_id.as_ref().map(UserId::as_str), Some("user_2x"));

        // Unreadable: not kept, and the reason says so.
        let request = QuarantineRequest {
            event_id: "msg_deep".into(),
            event_type: "user.created".into(),
            reason: "too deep".into(),
            body: b"{\"data\": {\"private_metadata\": [[[".to_vec(),
            delivered_at: Some(Timestamp {
                seconds: 5,
                nanos: 0,
            }),
        };
        let parsed = parse_quarantine(request.clone(), false).unwrap();
        assert!(parsed.body.is_empty());
        assert!(parsed.reason.contains("body not kept"), "{}", parsed.reason);
        assert_eq!(parsed.user_id, None);
        assert_eq!(
            parse_quarantine(request.clone(), true).unwrap().body,
            request.body
        );
        // Unreadable but holding none: kept as it came (a lone surrogate
        // escape spells no key).
        for harmless in [
            b"{\"type\":\"user.updated\",\0\xff}".to_vec(),
            br#"{"data":{"first_name":"\ud800"}}"#.to_vec(),
        ] {
            assert_eq!(kept_body(harmless.clone(), false).body, harmless);
        }
        // An escaped key could hide it: not kept.
        let hidden = br#"{"data":{"priv\u0061te_metadata":{"ssn":"1"}},"x":"\ud800"}"#;
        assert!(kept_body(hidden.to_vec(), false).withheld);

        // Only user events name a user.
        let organization = br#"{"type": "organization.created", "data": {"id": "org_1"}}"#;
        assert_eq!(kept_body(organization.to_vec(), false).user_id, None);
    }
}
