//! The webhook pipeline after verification: parse the Clerk JSON, map it to a
//! sync message, check that protobuf and gRPC can carry it, forward it. The
//! HTTP handler runs it on every verified delivery and `quarantine retry`
//! runs it again on a quarantined one, so a fixed release redrives exactly
//! what an old one could not take.

use std::time::Instant;

use clerk_sync_api::v1::{
    ApplyOrganizationEventRequest, Outcome, User, apply_organization_event_request::Event,
};
use prost::Message;
use prost_types::{Struct, Value, value::Kind};
use tracing::Span;

use crate::{
    Error,
    clerk::{ClerkEvent, UserEvent},
    metrics, organizations,
    upstream::Upstream,
    verify::Delivery,
};

/// Deepest `public_metadata` forwarded, counting every object and array.
///
/// protobuf decoders stop at 100 nested messages, and each JSON object level
/// costs three (`Struct`, its map entry, `Value`), each array level two, on
/// top of the request's own four: 28 levels stay under 90.
pub const MAX_METADATA_DEPTH: usize = 28;

/// What the sync-service takes: its message size limit, and whether it keeps
/// Clerk's `private_metadata` (what it would drop is not sent, so it can
/// never block an event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Carriage {
    /// The gRPC message limit, in bytes.
    pub max_message_bytes: usize,
    /// Whether `private_metadata` is forwarded.
    pub private_metadata: bool,
}

/// Readies a mapped event for the sync-service, whichever path it came by
/// (a webhook, `quarantine retry`, a backfill): drops `private_metadata`
/// unless it is forwarded, then refuses what could not be carried
/// ([`check_carriable`]).
pub fn prepare(mut event: UserEvent, carriage: Carriage) -> Result<UserEvent, Error> {
    if !carriage.private_metadata {
        let user = match &mut event {
            UserEvent::Created(event) => event.user.as_mut(),
            UserEvent::Updated(event) => event.user.as_mut(),
            UserEvent::Deleted(_) => None,
        };
        if let Some(user) = user {
            user.private_metadata = None;
        }
    }
    check_carriable(&event, carriage.max_message_bytes)?;
    Ok(event)
}

/// Runs the pipeline on a verified `body`: `Ok(None)` for an event type the
/// directory does not track, `Ok(Some(outcome))` once the sync-service has
/// committed it. Errors a retry cannot fix are the ones for which
/// [`Error::is_poison`] holds. `event_type` receives the event's type as a
/// metrics label as soon as the body is parsed.
pub async fn forward(
    upstream: &Upstream,
    carriage: Carriage,
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
    if let ClerkEvent::Organization { event_type, data } = event {
        let event = organizations::from_clerk(
            event_type,
            data.timestamp_ms,
            data.data,
            delivery,
            carriage.private_metadata,
        )?;
        if let Some(user_id) = organizations::member_of(&event) {
            span.record("user_id", user_id);
        }
        check_organization_carriable(&event, carriage.max_message_bytes)?;
        let started = Instant::now();
        let forwarded = upstream.forward_organization(event, delivery.id).await;
        metrics::record_forward(started.elapsed(), forwarded.as_ref().err());
        return forwarded.map(Some);
    }
    match UserEvent::from_clerk(event, delivery)? {
        None => Ok(None),
        Some(user_event) => {
            let user_event = prepare(user_event, carriage)?;
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

/// Refuses what the sync-service could not decode: metadata (public or
/// private) nested deeper than [`MAX_METADATA_DEPTH`] or a message over the
/// gRPC size limit.
pub fn check_carriable(event: &UserEvent, max_message_bytes: usize) -> Result<(), Error> {
    let (user, event_size) = match event {
        UserEvent::Created(event) => (event.user.as_ref(), event.encoded_len()),
        UserEvent::Updated(event) => (event.user.as_ref(), event.encoded_len()),
        UserEvent::Deleted(event) => (None, event.encoded_len()),
    };
    // The request wraps the event in field 1: a tag byte and a length prefix.
    let size = 1 + prost::length_delimiter_len(event_size) + event_size;
    let metadata = user.into_iter().flat_map(|user: &User| {
        [
            ("public_metadata", user.public_metadata.as_ref()),
            ("private_metadata", user.private_metadata.as_ref()),
        ]
    });
    check_limits(size, metadata, max_message_bytes)
}

/// [`check_carriable`] for an organization or membership event.
pub fn check_organization_carriable(event: &Event, max_message_bytes: usize) -> Result<(), Error> {
    let size = ApplyOrganizationEventRequest {
        event: Some(event.clone()),
    }
    .encoded_len();
    let metadata = match event {
        Event::OrganizationUpserted(e) => e
            .organization
            .as_ref()
            .map(|o| (o.public_metadata.as_ref(), o.private_metadata.as_ref())),
        Event::MembershipUpserted(e) => e
            .membership
            .as_ref()
            .map(|m| (m.public_metadata.as_ref(), m.private_metadata.as_ref())),
        Event::MembershipDeleted(e) => e
            .membership
            .as_ref()
            .map(|m| (m.public_metadata.as_ref(), m.private_metadata.as_ref())),
        Event::InvitationChanged(e) => e
            .invitation
            .as_ref()
            .map(|i| (i.public_metadata.as_ref(), i.private_metadata.as_ref())),
        Event::OrganizationDeleted(_)
        | Event::RoleChanged(_)
        | Event::RoleDeleted(_)
        | Event::PermissionChanged(_)
        | Event::PermissionDeleted(_) => None,
    };
    let metadata = metadata
        .into_iter()
        .flat_map(|(public, private)| [("public_metadata", public), ("private_metadata", private)]);
    check_limits(size, metadata, max_message_bytes)
}

/// Refuses a request of `size` bytes over `max_message_bytes`, or `metadata`
/// nested deeper than [`MAX_METADATA_DEPTH`].
fn check_limits<'a>(
    size: usize,
    metadata: impl Iterator<Item = (&'static str, Option<&'a Struct>)>,
    max_message_bytes: usize,
) -> Result<(), Error> {
    for (field, value) in metadata {
        if let Some(depth) = value
            .map(struct_depth)
            .filter(|depth| *depth > MAX_METADATA_DEPTH)
        {
            return Err(Error::Unmappable(format!(
                "{field} is nested {depth} levels deep; at most {MAX_METADATA_DEPTH} can be forwarded"
            )));
        }
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
    fn private_metadata_is_dropped_unless_forwarded_and_checked_when_it_is() {
        let deep = clerk_sync_api::json::struct_from_json(nested(40));
        let mut event = created_with_metadata(1);
        if let UserEvent::Created(created) = &mut event {
            created.user.as_mut().unwrap().private_metadata = Some(deep);
        }
        let carriage = |private_metadata| Carriage {
            max_message_bytes: usize::MAX,
            private_metadata,
        };

        let UserEvent::Created(prepared) = prepare(event.clone(), carriage(false)).unwrap() else {
            unreachable!()
        };
        assert_eq!(prepared.user.unwrap().private_metadata, None);

        let refused = prepare(event, carriage(true)).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("private_metadata is nested 40 levels"),
            "{refused}"
        );
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
