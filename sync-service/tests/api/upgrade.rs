//! Upgrades (PostgreSQL; SQLite has no stored function and runs the same
//! migration list): a database as every earlier release left it is handed to
//! the real sync-service, which migrates it on start; then the sync semantics
//! hold and `clerk_sync_apply_batch` is the current function, whatever
//! version the database held.
//!
//! The earlier releases: the first k migrations, for every k, and the batch
//! function in each version that shipped. The function changed twice by edits
//! of its first migration's file, which a migrated database never re-runs;
//! those versions are rebuilt here from their texts as they shipped (the
//! pinned migration files, and `fixtures/` for the one only git keeps).

use clerk_sync_migrations::{APPLY_BATCH_FUNCTION, Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use crate::{
    feed,
    helpers::{Backend, TestDb, connect_sql},
    queries, semantics,
};

/// The migration that first installed the function.
const FUNCTION_MIGRATION: &str = "m20261129_000001_apply_batch_function";

/// The function's texts after its first, each as it shipped in the commit
/// named (the first is what `FUNCTION_MIGRATION` still installs).
const LATER_FUNCTIONS: [(&str, &str); 2] = [
    (
        "bb48163",
        include_str!("fixtures/apply_batch_v2_bb48163.sql"),
    ),
    (
        "dd5a27d",
        include_str!("../../../migrations/src/apply_batch_v3.sql"),
    ),
];

/// A database as an earlier release left it.
#[derive(Clone, Copy, Debug)]
struct Earlier {
    /// How many of today's migrations it ran.
    migrations: usize,
    /// The function text it holds, when not the one its migrations install.
    function: Option<(&'static str, &'static str)>,
}

impl Earlier {
    /// Every earlier release's database.
    fn all() -> Vec<Self> {
        let migrations = Migrator::migrations();
        let with_function = 1 + migrations
            .iter()
            .position(|m| m.name() == FUNCTION_MIGRATION)
            .expect("the function's first migration is listed");
        let by_count = (0..migrations.len()).map(|migrations| Self {
            migrations,
            function: None,
        });
        let by_function = LATER_FUNCTIONS.map(|function| Self {
            migrations: with_function,
            function: Some(function),
        });
        by_count.chain(by_function).collect()
    }

    /// A new PostgreSQL database in this state.
    async fn build(self) -> TestDb {
        let db = TestDb::new(Backend::Postgres).await;
        let sql = connect_sql(&db.url).await;
        Migrator::up(&sql, Some(self.migrations as u32))
            .await
            .unwrap();
        if let Some((commit, text)) = self.function {
            sql.execute_unprepared(text).await.unwrap();
            assert_eq!(
                function_source(&sql).await.as_deref(),
                Some(body(text)),
                "the function as shipped in {commit} is installed"
            );
        }
        sql.close().await.unwrap();
        db
    }
}

/// The body of a `CREATE FUNCTION … AS $fn$ body $fn$` text.
fn body(text: &str) -> &str {
    let mut parts = text.split("$fn$");
    parts.next();
    parts
        .next()
        .expect("the function's body is quoted with $fn$")
}

/// The installed function's body, if there is one.
async fn function_source(sql: &DatabaseConnection) -> Option<String> {
    let row = sql
        .query_one_raw(Statement::from_string(
            sql.get_database_backend(),
            "SELECT prosrc FROM pg_proc WHERE proname = 'clerk_sync_apply_batch'",
        ))
        .await
        .unwrap()?;
    Some(row.try_get("", "prosrc").unwrap())
}

/// The installed function's whole definition (body, arguments, settings),
/// if there is one.
async fn function_definition(url: &str) -> Option<String> {
    let sql = connect_sql(url).await;
    let row = sql
        .query_one_raw(Statement::from_string(
            sql.get_database_backend(),
            "SELECT pg_get_functiondef(\
             to_regprocedure('clerk_sync_apply_batch(json, json, json, bigint)')) AS def",
        ))
        .await
        .unwrap()
        .expect("one row");
    sql.close().await.unwrap();
    row.try_get("", "def").unwrap()
}

/// The function a database migrated from nothing holds, checked against the
/// current text.
async fn current_definition() -> String {
    let db = Earlier {
        migrations: Migrator::migrations().len(),
        function: None,
    }
    .build()
    .await;
    let sql = connect_sql(&db.url).await;
    assert_eq!(
        function_source(&sql).await.as_deref(),
        Some(body(APPLY_BATCH_FUNCTION))
    );
    sql.close().await.unwrap();
    function_definition(&db.url).await.expect("installed")
}

/// Runs `$check` (a test taking its database) on a database of every
/// earlier release, then checks that the function is the current one.
macro_rules! after_every_upgrade {
    ($($name:ident: $check:path),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let current = current_definition().await;
            let mut replaced = 0;
            for earlier in Earlier::all() {
                let db = earlier.build().await;
                let before = function_definition(&db.url).await;
                $check(&db).await;
                let after = function_definition(&db.url).await;
                assert_eq!(
                    after.as_ref(),
                    Some(&current),
                    "the function after upgrading from {earlier:?}"
                );
                replaced += usize::from(before.is_some_and(|before| before != current));
            }
            // Some earlier database held an older function: the check saw an
            // upgrade replace it, not only a fresh install.
            assert!(replaced > 0);
        }
    )*};
}

after_every_upgrade!(
    duplicates_change_nothing_after_an_upgrade: semantics::duplicate_event_ids_change_nothing,
    the_newest_version_wins_after_an_upgrade: semantics::older_and_equal_versions_are_stale,
    deletes_are_final_after_an_upgrade: semantics::deletes_are_final_and_erase_personal_data,
    the_email_index_follows_after_an_upgrade:
        queries::find_by_email_matches_any_address_case_insensitively,
    the_change_feed_keeps_positions_after_an_upgrade:
        feed::list_changes_pages_in_order_and_keeps_one_entry_per_user,
);
