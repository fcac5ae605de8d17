//! What callers act on: account state (banned, locked, second factors),
//! verified-only email lookups, opt-in private metadata, and the upgrade of
//! a database written by the previous schema.

use clerk_sync_api::v1::{self, BannedFilter, FindUserByEmailRequest, ListUsersRequest};
use clerk_sync_service::{Config, auth::TokenList};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use tonic::Code;

use crate::helpers::{
    Backend, TestApp, TestDb, addresses, authorized, connect_sql, email, ts, user,
};

crate::on_both_backends!(
    account_state_is_stored_served_and_ordered_by_updated_at,
    list_users_selects_or_leaves_out_banned_users,
    only_verified_addresses_identify_a_user,
    private_metadata_is_dropped_unless_the_operator_opts_in,
    an_upgraded_database_keeps_its_users_and_heals_on_redelivery,
);

fn banned_and_locked(id: &str, updated_at_ms: i64) -> v1::User {
    v1::User {
        banned: true,
        locked: true,
        locked_until: Some(ts(updated_at_ms + 3_600_000)),
        two_factor_enabled: true,
        second_factors: Some(v1::SecondFactors {
            totp: true,
            backup_codes: true,
        }),
        has_image: true,
        last_active_at: Some(ts(1_654_012_700_000)),
        legal_accepted_at: Some(ts(1_654_012_591_514)),
        phone_numbers: vec![v1::PhoneNumber {
            number: "+15555550100".into(),
            verified: true,
            primary: true,
        }],
        external_accounts: vec![v1::ExternalAccount {
            provider: "oauth_google".into(),
            email_address: Some(format!("{id}@gmail.com")),
            verified: true,
        }],
        ..user(id, updated_at_ms)
    }
}

async fn account_state_is_stored_served_and_ordered_by_updated_at(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    app.created("msg_1", user("user_1", 100)).await;
    app.updated("msg_2", banned_and_locked("user_1", 200)).await;

    assert_eq!(
        app.get("user_1").await.unwrap(),
        banned_and_locked("user_1", 200)
    );

    // An older event that says "not banned" does not unban.
    let outcome = app.updated("msg_3", user("user_1", 150)).await;
    assert_eq!(outcome, v1::Outcome::Stale);
    let served = app.get("user_1").await.unwrap();
    assert!(served.banned && served.locked);

    // A newer one does.
    app.updated("msg_4", user("user_1", 300)).await;
    let served = app.get("user_1").await.unwrap();
    assert!(!served.banned && !served.locked);
    assert_eq!(served.locked_until, None);
    assert!(served.external_accounts.is_empty());
}

async fn list_users_selects_or_leaves_out_banned_users(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;
    for n in 0..5 {
        let id = format!("user_{n}");
        let profile = if n % 2 == 0 {
            banned_and_locked(&id, 100 + n)
        } else {
            user(&id, 100 + n)
        };
        app.created(&format!("msg_{n}"), profile).await;
    }
    let list = |banned: BannedFilter, page_token: String| {
        let mut directory = app.directory.clone();
        async move {
            directory
                .list_users(ListUsersRequest {
                    page_size: 2,
                    page_token,
                    banned: banned as i32,
                    ..Default::default()
                })
                .await
        }
    };
    let all_pages = |banned| async move {
        let (mut ids, mut token) = (Vec::new(), String::new());
        loop {
            let page = list(banned, token).await.unwrap().into_inner();
            ids.extend(page.users.into_iter().map(|u| u.id));
            if page.next_page_token.is_empty() {
                return ids;
            }
            token = page.next_page_token;
        }
    };
    assert_eq!(
        all_pages(BannedFilter::Only).await,
        ["user_0", "user_2", "user_4"]
    );
    assert_eq!(all_pages(BannedFilter::Exclude).await, ["user_1", "user_3"]);
    assert_eq!(all_pages(BannedFilter::Unspecified).await.len(), 5);

    // A token only continues the listing it came from.
    let first = list(BannedFilter::Only, String::new()).await.unwrap();
    let token = first.into_inner().next_page_token;
    let status = list(BannedFilter::Exclude, token).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "page_token was issued for different changed_since or banned filters"
    );
}

async fn find(app: &TestApp, address: &str) -> Result<String, tonic::Status> {
    app.directory
        .clone()
        .find_user_by_email(FindUserByEmailRequest {
            email_address: address.into(),
        })
        .await
        .map(|response| response.into_inner().user.unwrap().id)
}

async fn only_verified_addresses_identify_a_user(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db.url).await;

    // Mallory adds the victim's address but cannot verify it.
    let mallory = v1::User {
        email_addresses: vec![
            email("mallory@example.net", true, true),
            email("victim@example.org", false, false),
        ],
        primary_email_address: Some("mallory@example.net".into()),
        ..user("user_mallory", 100)
    };
    app.created("msg_m", mallory).await;
    let status = find(&app, "victim@example.org").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // The answer is served as stored: the address is there, unverified.
    let served = app.get("user_mallory").await.unwrap();
    assert_eq!(
        addresses(&served),
        ["mallory@example.net", "victim@example.org"]
    );
    assert!(!served.email_addresses[1].verified);

    // The owner, verified, is found even though Mallory changed later.
    let victim = v1::User {
        email_addresses: vec![email("Victim@Example.org", true, true)],
        primary_email_address: Some("Victim@Example.org".into()),
        ..user("user_victim", 50)
    };
    app.created("msg_v", victim).await;
    assert_eq!(
        find(&app, "VICTIM@example.org").await.unwrap(),
        "user_victim"
    );
    app.updated(
        "msg_m2",
        v1::User {
            email_addresses: vec![
                email("mallory@example.net", true, true),
                email("victim@example.org", false, false),
            ],
            ..user("user_mallory", 300)
        },
    )
    .await;
    assert_eq!(
        find(&app, "victim@example.org").await.unwrap(),
        "user_victim"
    );
}

/// Reads one text column of a user straight from the database.
async fn stored_column(db: &DatabaseConnection, column: &str, id: &str) -> Option<String> {
    let backend = db.get_database_backend();
    let placeholder = if backend == sea_orm::DbBackend::Postgres {
        "$1"
    } else {
        "?"
    };
    let sql = format!("SELECT {column} FROM users WHERE id = {placeholder}");
    let row = db
        .query_one_raw(Statement::from_sql_and_values(backend, sql, [id.into()]))
        .await
        .unwrap()
        .expect("row exists");
    row.try_get_by_index(0).unwrap()
}

fn with_private_metadata(id: &str, updated_at_ms: i64) -> v1::User {
    v1::User {
        private_metadata: Some(clerk_sync_api::json::struct_from_json(
            serde_json::json!({"role": "admin", "api_key": "sk_live_do_not_copy"})
                .as_object()
                .unwrap()
                .clone(),
        )),
        ..user(id, updated_at_ms)
    }
}

async fn private_metadata_is_dropped_unless_the_operator_opts_in(backend: Backend) {
    const READ_TOKEN: &str = "read-token-for-private-md";
    let db = TestDb::new(backend).await;
    let sql = connect_sql(&db.url).await;
    let mut config = Config::with_database(&db.url);
    config.write_tokens = TokenList::parse("write-token-for-private-md").unwrap();
    config.read_tokens = TokenList::parse(READ_TOKEN).unwrap();

    let write = Some("write-token-for-private-md");
    let event = |event_id: &str, updated_at| v1::UserUpdated {
        meta: Some(crate::helpers::meta(event_id, 0)),
        user: Some(with_private_metadata("user_1", updated_at)),
    };
    let apply = |app: &TestApp, event| {
        let mut sync = app.sync.clone();
        let request = authorized(v1::ApplyUserUpdatedRequest { event: Some(event) }, write);
        async move { sync.apply_user_updated(request).await.unwrap() }
    };

    // Off (the default): dropped on arrival.
    let app = TestApp::spawn_with(config.clone()).await;
    apply(&app, event("msg_1", 100)).await;
    assert_eq!(
        stored_column(&sql, "private_metadata", "user_1").await,
        None
    );
    app.stop().await;

    // On: stored, and served to a caller with a token.
    config.store_private_metadata = true;
    let app = TestApp::spawn_with(config.clone()).await;
    apply(&app, event("msg_2", 200)).await;
    let stored = stored_column(&sql, "private_metadata", "user_1")
        .await
        .unwrap();
    assert!(stored.contains("sk_live_do_not_copy"), "{stored}");
    let get = authorized(
        v1::GetUserRequest {
            id: "user_1".into(),
        },
        Some(READ_TOKEN),
    );
    let served = app.directory.clone().get_user(get).await.unwrap();
    let private = served.into_inner().user.unwrap().private_metadata.unwrap();
    assert!(private.fields.contains_key("role"));
    app.stop().await;

    // Off again: what was stored is erased at start-up.
    config.store_private_metadata = false;
    let app = TestApp::spawn_with(config).await;
    assert_eq!(
        stored_column(&sql, "private_metadata", "user_1").await,
        None
    );
    app.stop().await;

    // On, but without tokens nobody is identified: stored, never served.
    let mut open = Config::with_database(&db.url);
    open.store_private_metadata = true;
    let app = TestApp::spawn_with(open).await;
    app.updated("msg_3", with_private_metadata("user_1", 300))
        .await;
    assert!(
        stored_column(&sql, "private_metadata", "user_1")
            .await
            .is_some()
    );
    assert_eq!(app.get("user_1").await.unwrap().private_metadata, None);
}

async fn an_upgraded_database_keeps_its_users_and_heals_on_redelivery(backend: Backend) {
    use clerk_sync_migrations::{Migrator, MigratorTrait};
    let db = TestDb::new(backend).await;
    let sql = connect_sql(&db.url).await;
    // The previous release's schema, with a user as it wrote them: bare
    // address strings, and every address in the email index.
    Migrator::up(&sql, Some(1)).await.unwrap();
    let backend_kind = sql.get_database_backend();
    let statement = |text: &str| Statement::from_string(backend_kind, text.to_owned());
    sql.execute_raw(statement(
        r#"INSERT INTO users (id, primary_email_address, email_addresses, first_name, display_name, public_metadata, updated_at)
           VALUES ('user_old', 'Old@Example.com', '["Old@Example.com","unverified@example.com"]', 'Olga', 'Olga', '{"plan":"pro"}', 100)"#,
    ))
    .await
    .unwrap();
    sql.execute_raw(statement(
        "INSERT INTO user_email_addresses (email_lower, user_id) VALUES ('old@example.com', 'user_old'), ('unverified@example.com', 'user_old')",
    ))
    .await
    .unwrap();

    // The new release migrates on start and serves the old row.
    let app = TestApp::spawn(&db.url).await;
    let served = app.get("user_old").await.unwrap();
    assert_eq!(served.first_name.as_deref(), Some("Olga"));
    assert_eq!(
        addresses(&served),
        ["Old@Example.com", "unverified@example.com"]
    );
    assert!(served.email_addresses[0].primary);
    assert!(served.email_addresses.iter().all(|e| !e.verified));
    assert!(!served.banned);
    // Which addresses were verified was never recorded: none identifies.
    assert_eq!(
        find(&app, "old@example.com").await.unwrap_err().code(),
        Code::NotFound
    );

    // The same Clerk version delivered again (a backfill) fills the row in.
    let redelivered = v1::User {
        email_addresses: vec![
            email("Old@Example.com", true, true),
            email("unverified@example.com", false, false),
        ],
        primary_email_address: Some("Old@Example.com".into()),
        banned: true,
        ..user("user_old", 100)
    };
    assert_eq!(
        app.updated("msg_backfill", redelivered.clone()).await,
        v1::Outcome::Applied
    );
    assert_eq!(find(&app, "old@example.com").await.unwrap(), "user_old");
    assert_eq!(
        find(&app, "unverified@example.com")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert!(app.get("user_old").await.unwrap().banned);
    // Once written by this release, the same version again is stale as ever.
    assert_eq!(
        app.updated("msg_again", redelivered).await,
        v1::Outcome::Stale
    );
}
