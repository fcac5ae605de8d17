//! The trust boundary: bearer tokens and roles, TLS and mutual TLS, checked
//! with the generated clients and with the real grpcurl binary.

use clerk_sync_api::v1::{self, ApplyUserDeletedRequest, GetUserRequest, UserDeleted};
use clerk_sync_service::{Config, auth::TokenList};
use tonic::{
    Code,
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
};

use crate::helpers::{Backend, TestApp, TestCerts, TestDb, authorized, grpcurl, meta, user};

const WRITE_TOKEN: &str = "write-token-4Jq8Z1x0Lw6p";
const READ_TOKEN: &str = "read-token-Hs72kQmzP01c";

crate::on_both_backends!(a_reader_cannot_write_and_a_stranger_cannot_do_anything,);

fn with_tokens(database_url: &str) -> Config {
    let mut config = Config::with_database(database_url);
    config.write_tokens = TokenList::parse(WRITE_TOKEN).unwrap();
    config.read_tokens =
        TokenList::parse(&format!("old-read-token-0000000, {READ_TOKEN}")).unwrap();
    config
}

fn delete(user_id: &str) -> ApplyUserDeletedRequest {
    ApplyUserDeletedRequest {
        event: Some(UserDeleted {
            meta: Some(meta(&format!("msg_del_{user_id}"), 500)),
            user_id: user_id.into(),
        }),
    }
}

async fn a_reader_cannot_write_and_a_stranger_cannot_do_anything(backend: Backend) {
    let db = TestDb::new(backend).await;
    // Health answers without a token: spawning waits for SERVING through it.
    let app = TestApp::spawn_with(with_tokens(&db.url)).await;
    let (mut sync, mut directory) = (app.sync.clone(), app.directory.clone());
    let get = |token| {
        authorized(
            GetUserRequest {
                id: "user_1".into(),
            },
            token,
        )
    };

    let created = v1::ApplyUserCreatedRequest {
        event: Some(v1::UserCreated {
            meta: Some(meta("msg_1", 0)),
            user: Some(user("user_1", 100)),
        }),
    };
    let outcome = sync
        .apply_user_created(authorized(created, Some(WRITE_TOKEN)))
        .await
        .unwrap();
    assert_eq!(outcome.into_inner().outcome(), v1::Outcome::Applied);

    // Readers read; writers read too.
    for token in [READ_TOKEN, WRITE_TOKEN] {
        let found = directory.get_user(get(Some(token))).await.unwrap();
        assert_eq!(found.into_inner().user.unwrap().id, "user_1");
    }

    // A reader cannot erase anyone, and the answer says only that.
    let denied = sync
        .apply_user_deleted(authorized(delete("user_1"), Some(READ_TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(
        denied.message(),
        "this token's role may not call this method"
    );

    // No token, an unknown one, a near miss, or another scheme: nothing at
    // all, with one answer that does not tell which tokens exist.
    let near_miss = format!("{WRITE_TOKEN}x");
    for token in [
        None,
        Some("not-a-token-of-this-server"),
        Some(near_miss.as_str()),
    ] {
        for status in [
            directory.get_user(get(token)).await.unwrap_err(),
            sync.apply_user_deleted(authorized(delete("user_1"), token))
                .await
                .unwrap_err(),
        ] {
            assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
            assert_eq!(
                status.message(),
                "a valid bearer token is required (authorization: Bearer <token>)"
            );
        }
    }

    // Nothing the refused calls asked for happened.
    let still_there = directory.get_user(get(Some(READ_TOKEN))).await.unwrap();
    assert_eq!(
        still_there.into_inner().user.unwrap().first_name.unwrap(),
        "v100"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_needs_a_token_for_the_directory_but_not_for_reflection_or_health() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(with_tokens(&db.url)).await;
    let address = app.address.to_string();
    let reader = format!("authorization: Bearer {READ_TOKEN}");
    let get = ["-d", r#"{"id": "user_1"}"#];

    let listed = grpcurl(&["-plaintext", &address, "list"]).await;
    assert!(listed.status.success(), "{}", listed.stderr);
    assert!(listed.stdout.contains("clerk.sync.v1.UserDirectoryService"));
    let health = grpcurl(&["-plaintext", &address, "grpc.health.v1.Health/Check"]).await;
    assert!(health.stdout.contains("SERVING"), "{}", health.stderr);

    let anonymous = grpcurl(
        &[
            &["-plaintext"],
            &get[..],
            &[&address, "clerk.sync.v1.UserDirectoryService/GetUser"],
        ]
        .concat(),
    )
    .await;
    assert!(!anonymous.status.success());
    assert!(
        anonymous.stderr.contains("Code: Unauthenticated"),
        "{}",
        anonymous.stderr
    );

    let as_reader = grpcurl(
        &[
            &["-plaintext", "-H", &reader],
            &get[..],
            &[&address, "clerk.sync.v1.UserDirectoryService/GetUser"],
        ]
        .concat(),
    )
    .await;
    // Authenticated and allowed: the user simply does not exist.
    assert!(
        as_reader.stderr.contains("Code: NotFound"),
        "{}",
        as_reader.stderr
    );

    let reader_deletes = grpcurl(&[
        "-plaintext",
        "-H",
        &reader,
        "-d",
        r#"{"event": {"meta": {"event_id": "msg_x", "occurred_at": "2024-01-01T00:00:00Z"}, "user_id": "user_1"}}"#,
        &address,
        "clerk.sync.v1.UserSyncService/ApplyUserDeleted",
    ])
    .await;
    assert!(
        reader_deletes.stderr.contains("Code: PermissionDenied"),
        "{}",
        reader_deletes.stderr
    );
}

fn tls_config(database_url: &str, certs: &TestCerts, mutual: bool) -> Config {
    let mut config = with_tokens(database_url);
    config.tls_cert = Some(certs.path("server.pem"));
    config.tls_key = Some(certs.path("server-key.pem"));
    if mutual {
        config.tls_client_ca = Some(certs.path("ca.pem"));
    }
    config
}

fn tls_endpoint(
    address: std::net::SocketAddr,
    certs: &TestCerts,
    client: Option<&str>,
) -> Endpoint {
    let ca = std::fs::read(certs.path("ca.pem")).unwrap();
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(name) = client {
        let cert = std::fs::read(certs.path(&format!("{name}.pem"))).unwrap();
        let key = std::fs::read(certs.path(&format!("{name}-key.pem"))).unwrap();
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(2))
}

async fn get_over(endpoint: Endpoint) -> Result<v1::User, tonic::Status> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("cannot connect: {e}")))?;
    v1::user_directory_service_client::UserDirectoryServiceClient::new(channel)
        .get_user(authorized(
            GetUserRequest {
                id: "user_1".into(),
            },
            Some(READ_TOKEN),
        ))
        .await
        .map(|response| response.into_inner().user.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_trusting_clients_and_refuses_plaintext_cleanly() {
    let db = TestDb::new(Backend::Sqlite).await;
    let certs = TestCerts::new();
    let app = TestApp::spawn_reached_by(tls_config(&db.url, &certs, false), |address| {
        tls_endpoint(address, &certs, None)
    })
    .await;
    let mut sync = app.sync.clone();
    sync.apply_user_created(authorized(
        v1::ApplyUserCreatedRequest {
            event: Some(v1::UserCreated {
                meta: Some(meta("msg_1", 0)),
                user: Some(user("user_1", 100)),
            }),
        },
        Some(WRITE_TOKEN),
    ))
    .await
    .unwrap();

    assert_eq!(
        get_over(tls_endpoint(app.address, &certs, None))
            .await
            .unwrap()
            .id,
        "user_1"
    );

    // Plain text against the TLS port fails, and the server carries on.
    let plaintext = Endpoint::from_shared(format!("http://{}", app.address))
        .unwrap()
        .timeout(std::time::Duration::from_secs(2));
    let refused = get_over(plaintext).await.unwrap_err();
    // How the failure surfaces depends on who notices first (the connection,
    // the call's own timer); never with an answer.
    assert!(
        matches!(
            refused.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{refused:?}"
    );
    assert_eq!(
        get_over(tls_endpoint(app.address, &certs, None))
            .await
            .unwrap()
            .id,
        "user_1"
    );

    // The README's grpcurl example: TLS with the operator's CA, and a token.
    let address = app.address.to_string();
    let found = grpcurl(&[
        "-cacert",
        certs.path("ca.pem").to_str().unwrap(),
        "-H",
        &format!("authorization: Bearer {READ_TOKEN}"),
        "-d",
        r#"{"id": "user_1"}"#,
        &address,
        "clerk.sync.v1.UserDirectoryService/GetUser",
    ])
    .await;
    assert!(found.status.success(), "{}", found.stderr);
    assert!(
        found.stdout.contains("\"id\": \"user_1\""),
        "{}",
        found.stdout
    );
    let untrusted = grpcurl(&["-plaintext", &address, "list"]).await;
    assert!(!untrusted.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_configured_ca() {
    let db = TestDb::new(Backend::Sqlite).await;
    let certs = TestCerts::new();
    let app = TestApp::spawn_reached_by(tls_config(&db.url, &certs, true), |address| {
        tls_endpoint(address, &certs, Some("client"))
    })
    .await;

    let status = get_over(tls_endpoint(app.address, &certs, Some("client")))
        .await
        .unwrap_err();
    // Through: authenticated by certificate and token; the user is unknown.
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    for client in [None, Some("other-client")] {
        let refused = get_over(tls_endpoint(app.address, &certs, client))
            .await
            .unwrap_err();
        assert_ne!(refused.code(), Code::NotFound, "{client:?} got through");
    }

    let address = app.address.to_string();
    let without_cert = grpcurl(&[
        "-cacert",
        certs.path("ca.pem").to_str().unwrap(),
        &address,
        "list",
    ])
    .await;
    assert!(!without_cert.status.success());
    let with_cert = grpcurl(&[
        "-cacert",
        certs.path("ca.pem").to_str().unwrap(),
        "-cert",
        certs.path("client.pem").to_str().unwrap(),
        "-key",
        certs.path("client-key.pem").to_str().unwrap(),
        &address,
        "list",
    ])
    .await;
    assert!(with_cert.status.success(), "{}", with_cert.stderr);
}
