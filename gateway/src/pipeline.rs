//! The webhook pipeline after verification: parse the Clerk JSON, map it to a
//! sync message, check that protobuf and gRPC can carry it, forward it. The
//! HTTP handler runs it on every verified delivery and `quarantine retry`
//! runs it again on a quarantined one, so a fixed release redrives exactly
//! what an old one could not take.

use std::time::Instant;

use clerk_sync_api::v1::{Outcome, User};
use prost::Message;
use prost_types::{Struct, Value, value::Kind};
use tracing::Span;

use crate::{
    Error,
    clerk::{ClerkEvent, UserEvent},
    metrics,
    upstream::Upstream,
    verify::Delivery,
};

/// Deepest `public_metadata` forwarded, counting every object and array.
///
/// protobuf decoders stop at 100 nested messages, and each JSON object level
/// costs three (`Struct`, its map entry, `Value`), each array level two, on
/// top of the request's own four: 28 levels stay under 90.
pub const MAX_METADATA_DEPTH: usize = 28;

/// Runs the pipeline on a verified `body`: `Ok(None)` for an event type the
/// directory does not track, `Ok(Some(outcome))` once the sync-service has
/// committed it. Errors a retry cannot fix are the ones for which
/// [`Error::is_poison`] holds. `event_type` receives the event's type as a
/// metrics label as soon as the body is parsed.
pub async fn forward(
    upstream: &Upstream,
    max_message_bytes: usize,
    body: &[u8],
    delivery: &Delivery<'_>,
    event_type: &mut Option<&'static str>,
) -> Result<Option<Outcome>, Error> {
    let event = ClerkEvent::parse(body)?;
    let span = Span::current();
    span.record("event_type", event.event_type());
    *event_type = Some(metrics::event_type_label(event.event_type()));
    if let Some(user_id) = event.user_id() {
        span.record("user_id", user_id);
    }
    match UserEvent::from_clerk(event, delivery)? {
        None => Ok(None),
        Some(user_event) => {
            check_carriable(&user_event, max_message_bytes)?;
            let started = Instant::now();
            let forwarded = upstream.forward(user_event, delivery.id).await;
            metrics::record_forward(started.elapsed(), forwarded.as_ref().err());
            forwarded.map(Some)
        }
    }
}

/// The payload's `type`, when the body is JSON with a string `type`; for the
/// quarantine record of a body the pipeline could not parse.
pub fn event_type_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TypeOnly {
        #[serde(rename = "type")]
        event_type: Option<String>,
    }
    serde_json::from_slice::<TypeOnly>(body).ok()?.event_type
}

/// Refuses what the sync-service could not decode: metadata nested deeper
/// than [`MAX_METADATA_DEPTH`] or a message over the gRPC size limit.
pub fn check_carriable(event: &UserEvent, max_message_bytes: usize) -> Result<(), Error> {
    let (user, event_size) = match event {
        UserEvent::Created(event) => (event.user.as_ref(), event.encoded_len()),
        UserEvent::Updated(event) => (event.user.as_ref(), event.encoded_len()),
        UserEvent::Deleted(event) => (None, event.encoded_len()),
    };
    // The request wraps the event in field 1: a tag byte and a length prefix.
    let size = 1 + prost::length_delimiter_len(event_size) + event_size;
    if let Some(depth) = user
        .and_then(|user: &User| user.public_metadata.as_ref())
        .map(struct_depth)
        .filter(|depth| *depth > MAX_METADATA_DEPTH)
    {
        return Err(Error::Unmappable(format!(
            "public_metadata is nested {depth} levels deep; at most {MAX_METADATA_DEPTH} can be forwarded"
        )));
    }
    if size > max_message_bytes {
        return Err(Error::Unmappable(format!(
            "the event is {size} bytes as protobuf; at most {max_message_bytes} can be forwarded"
        )));
    }
    Ok(())
}

/// Nesting depth of a `Struct`: 1 for `{}` or an object of scalars.
fn struct_depth(object: &Struct) -> usize {
    1 + object.fields.values().map(value_depth).max().unwrap_or(0)
}

fn value_depth(value: &Value) -> usize {
    match &value.kind {
        Some(Kind::StructValue(object)) => struct_depth(object),
        Some(Kind::ListValue(list)) => 1 + list.values.iter().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clerk_sync_api::v1::{ApplyUserCreatedRequest, EventMeta, UserCreated};

    fn nested(depth: usize) -> serde_json::Map<String, serde_json::Value> {
        let mut value = serde_json::json!({"leaf": "x"});
        for _ in 1..depth {
            value = serde_json::json!({ "deeper": value });
        }
        value.as_object().unwrap().clone()
    }

    fn created_with_metadata(depth: usize) -> UserEvent {
        UserEvent::Created(UserCreated {
            meta: Some(EventMeta {
                event_id: "msg_1".into(),
                occurred_at: None,
            }),
            user: Some(User {
                id: "user_1".into(),
                public_metadata: Some(clerk_sync_api::json::struct_from_json(nested(depth))),
                ..User::default()
            }),
        })
    }

    fn decodes(event: &UserEvent) -> bool {
        let UserEvent::Created(created) = event else {
            unreachable!()
        };
        let bytes = ApplyUserCreatedRequest {
            event: Some(created.clone()),
        }
        .encode_to_vec();
        ApplyUserCreatedRequest::decode(bytes.as_slice()).is_ok()
    }

    #[test]
    fn the_deepest_forwarded_metadata_decodes_and_deeper_is_refused() {
        let deepest = created_with_metadata(MAX_METADATA_DEPTH);
        assert!(check_carriable(&deepest, usize::MAX).is_ok());
        assert!(decodes(&deepest), "protobuf must decode what is forwarded");

        let deeper = created_with_metadata(MAX_METADATA_DEPTH + 1);
        assert!(matches!(
            check_carriable(&deeper, usize::MAX),
            Err(Error::Unmappable(_))
        ));
        // Not a needless limit: about 33 levels cannot be decoded at all.
        assert!(!decodes(&created_with_metadata(34)));
    }

    #[test]
    fn arrays_count_as_levels() {
        let json = serde_json::json!({"a": [[{"b": [1]}]]});
        let object = clerk_sync_api::json::struct_from_json(json.as_object().unwrap().clone());
        assert_eq!(struct_depth(&object), 5);
    }

    #[test]
    fn the_size_checked_is_the_request_size() {
        let event = created_with_metadata(3);
        let UserEvent::Created(created) = &event else {
            unreachable!()
        };
        let size = ApplyUserCreatedRequest {
            event: Some(created.clone()),
        }
        .encoded_len();
        assert!(check_carriable(&event, size).is_ok());
        assert!(check_carriable(&event, size - 1).is_err());
    }

    #[test]
    fn messages_over_the_limit_are_refused() {
        let event = created_with_metadata(1);
        let error = check_carriable(&event, 10).unwrap_err();
        assert!(error.to_string().contains("at most 10"), "{error}");
    }

    #[test]
    fn the_type_is_read_from_any_json_object() {
        assert_eq!(
            event_type_of(br#"{"type":"user.created","data":7}"#).as_deref(),
            Some("user.created")
        );
        assert_eq!(event_type_of(b"{not json"), None);
        assert_eq!(event_type_of(br#"{"type":5}"#), None);
    }
}
