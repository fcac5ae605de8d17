//! The server side of `UserDirectoryService` over replies that carry their
//! users already encoded, for a server that keeps each user's encoding
//! rather than building and encoding a [`v1::User`](crate::v1::User) at every
//! read.
//!
//! A `User` embedded in a message and a `bytes` field holding that `User`'s
//! encoding are one and the same on the wire (the field's tag, wire type 2,
//! the length, the bytes). The reply types below declare `bytes` where
//! `directory.proto` has a `User` and are otherwise field for field the
//! generated ones: what they encode is what [`crate::v1`]'s types decode, so
//! clients, reflection and the descriptors see no difference.
//! [`user_directory_service_server`] is tonic's server generated from the same
//! service, over these replies (and `WatchUsers`' messages, alike) and
//! [`crate::v1`]'s other messages.

use prost::bytes::Bytes;

/// `clerk.sync.v1.GetUserResponse`, its user encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetUserResponse {
    /// An encoded `clerk.sync.v1.User`.
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub user: Option<Bytes>,
}

/// `clerk.sync.v1.FindUserByEmailResponse`, its user encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FindUserByEmailResponse {
    /// An encoded `clerk.sync.v1.User`.
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub user: Option<Bytes>,
}

/// `clerk.sync.v1.BatchGetUsersResponse`, its users encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchGetUsersResponse {
    /// Encoded `clerk.sync.v1.User`s.
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub users: Vec<Bytes>,
    /// The ids asked for that name no live user.
    #[prost(string, repeated, tag = "2")]
    pub missing_ids: Vec<String>,
}

/// `clerk.sync.v1.ListUsersResponse`, its users encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListUsersResponse {
    /// Encoded `clerk.sync.v1.User`s.
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub users: Vec<Bytes>,
    /// Where the next page starts; empty on the last page.
    #[prost(string, tag = "2")]
    pub next_page_token: String,
}

/// `clerk.sync.v1.WatchUsersResponse`, its user encoded: a change is
/// encoded once and shared by every watcher that may see it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchUsersResponse {
    /// The change's position in the log.
    #[prost(int64, tag = "1")]
    pub position: i64,
    /// What happened there.
    #[prost(oneof = "watch_users_response::Event", tags = "2, 3, 4")]
    pub event: Option<watch_users_response::Event>,
}

/// The oneof of [`WatchUsersResponse`].
pub mod watch_users_response {
    use prost::bytes::Bytes;

    /// `clerk.sync.v1.WatchUsersResponse.event`, its user encoded.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Event {
        /// An encoded `clerk.sync.v1.User`: the user as it now is.
        #[prost(bytes = "bytes", tag = "2")]
        User(Bytes),
        /// The user was deleted.
        #[prost(message, tag = "3")]
        Deleted(crate::v1::UserDeletion),
        /// The watcher has caught up with the log.
        #[prost(message, tag = "4")]
        CaughtUp(crate::v1::CaughtUp),
    }
}

#[allow(missing_docs, unreachable_pub, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/encoded/clerk.sync.v1.rs"));
}

pub use generated::user_directory_service_server;

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::v1;

    fn user(id: &str) -> v1::User {
        v1::User {
            id: id.into(),
            display_name: format!("{id} shown"),
            primary_email_address: Some(format!("{id}@example.com")),
            email_addresses: vec![v1::EmailAddress {
                address: format!("{id}@example.com"),
                verified: true,
                primary: true,
            }],
            public_metadata: Some(crate::json::struct_from_json_ref(
                serde_json::json!({"plan": "pro", "seats": 3})
                    .as_object()
                    .unwrap(),
            )),
            ..Default::default()
        }
    }

    fn encoded(user: &v1::User) -> Bytes {
        user.encode_to_vec().into()
    }

    #[test]
    fn encoded_replies_are_the_generated_replies_on_the_wire() {
        let (a, b) = (user("user_a"), user("user_b"));

        let batch = BatchGetUsersResponse {
            users: vec![encoded(&a), encoded(&b)],
            missing_ids: vec!["user_gone".into()],
        };
        let expected = v1::BatchGetUsersResponse {
            users: vec![a.clone(), b.clone()],
            missing_ids: vec!["user_gone".into()],
        };
        assert_eq!(batch.encode_to_vec(), expected.encode_to_vec());
        let decoded = v1::BatchGetUsersResponse::decode(&*batch.encode_to_vec()).unwrap();
        assert_eq!(decoded, expected);

        let page = ListUsersResponse {
            users: vec![encoded(&b)],
            next_page_token: "next".into(),
        };
        let expected = v1::ListUsersResponse {
            users: vec![b.clone()],
            next_page_token: "next".into(),
        };
        assert_eq!(page.encode_to_vec(), expected.encode_to_vec());

        let one = GetUserResponse {
            user: Some(encoded(&a)),
        };
        let expected = v1::GetUserResponse {
            user: Some(a.clone()),
        };
        assert_eq!(one.encode_to_vec(), expected.encode_to_vec());
        let by_email = FindUserByEmailResponse {
            user: Some(encoded(&a)),
        };
        let expected = v1::FindUserByEmailResponse {
            user: Some(a.clone()),
        };
        assert_eq!(by_email.encode_to_vec(), expected.encode_to_vec());

        use v1::watch_users_response::Event as Expected;
        use watch_users_response::Event;
        let deletion = v1::UserDeletion {
            id: "user_gone".into(),
            deleted_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        };
        for (event, expected) in [
            (Event::User(encoded(&a)), Expected::User(a)),
            (
                Event::Deleted(deletion.clone()),
                Expected::Deleted(deletion),
            ),
            (
                Event::CaughtUp(v1::CaughtUp {}),
                Expected::CaughtUp(v1::CaughtUp {}),
            ),
        ] {
            let message = WatchUsersResponse {
                position: 42,
                event: Some(event),
            };
            let expected = v1::WatchUsersResponse {
                position: 42,
                event: Some(expected),
            };
            assert_eq!(message.encode_to_vec(), expected.encode_to_vec());
        }
    }

    #[test]
    fn an_empty_user_is_still_a_present_user() {
        // A default User encodes to no bytes; the reply must still say the
        // field is set, as the generated type does.
        let reply = GetUserResponse {
            user: Some(encoded(&v1::User::default())),
        };
        let decoded = v1::GetUserResponse::decode(&*reply.encode_to_vec()).unwrap();
        assert_eq!(decoded.user, Some(v1::User::default()));
    }
}
