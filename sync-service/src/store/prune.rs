//! Ledger pruning. `processed_events` grows by one row per event; an event id
//! only needs remembering while Svix may still redeliver it (about 28 hours of
//! retries), so rows older than the retention are deleted, a small batch per
//! statement so no transaction holds many locks or a long WAL.
//!
//! A replay after pruning stays harmless: the event is no longer a duplicate,
//! but last-write-wins makes an old create or update stale and a delete of a
//! tombstone changes nothing.

use sea_orm::{ConnectionTrait, Statement};

use clerk_sync_common::time::now_millis;

use super::Store;
use crate::{domain::Millis, error::Error};

impl Store {
    /// Deletes ledger rows processed before `cutoff` (Unix milliseconds),
    /// `batch` rows per statement, oldest first; returns how many went.
    pub async fn prune_ledger(&self, cutoff: Millis, batch: u64) -> Result<u64, Error> {
        let backend = self.db.get_database_backend();
        // The same SQL on both backends; the subquery walks the processed_at index.
        let sql = match backend {
            sea_orm::DatabaseBackend::Postgres => {
                "DELETE FROM processed_events WHERE event_id IN \
                 (SELECT event_id FROM processed_events WHERE processed_at < $1 \
                 ORDER BY processed_at LIMIT $2)"
            }
            _ => {
                "DELETE FROM processed_events WHERE event_id IN \
                 (SELECT event_id FROM processed_events WHERE processed_at < ? \
                 ORDER BY processed_at LIMIT ?)"
            }
        };
        let batch = batch.max(1);
        let mut total = 0;
        loop {
            let statement = Statement::from_sql_and_values(
                backend,
                sql,
                [cutoff.into(), (batch as i64).into()],
            );
            let deleted = self.db.execute_raw(statement).await?.rows_affected();
            total += deleted;
            if deleted < batch {
                return Ok(total);
            }
            // Let applies in the queue take the writer lock between batches.
            tokio::task::yield_now().await;
        }
    }

    /// Prunes what is older than `retention` from now.
    pub async fn prune_ledger_older_than(
        &self,
        retention: std::time::Duration,
        batch: u64,
    ) -> Result<u64, Error> {
        let retention = Millis::try_from(retention.as_millis()).unwrap_or(Millis::MAX);
        self.prune_ledger(now_millis().saturating_sub(retention), batch)
            .await
    }
}
