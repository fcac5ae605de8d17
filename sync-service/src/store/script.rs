//! [`Script`]: statements of one transaction sent to the database together.
//! The write path fills one with its last steps and the change feed appends
//! its entries to it, so it sits below both.

use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, QueryResult, Statement,
    StatementBuilder,
};

/// Statements sent to the database in one call. sqlx runs the statements of
/// a SQLite call one after the other on the connection's thread, binding
/// each one's `?` parameters from the shared values in turn: one hand-off
/// for all of them. PostgreSQL's protocol takes a single statement per call
/// with parameters, so there they go one by one (the service's PostgreSQL
/// batches are one call of a function instead; the statements path runs there
/// only to be compared with that function).
pub(super) struct Script {
    backend: DbBackend,
    /// In the order they run, each with its own values.
    statements: Vec<Statement>,
}

impl Script {
    pub(super) fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            statements: Vec::new(),
        }
    }

    /// Appends `statement`; it runs after the ones appended before it.
    pub(super) fn push(&mut self, statement: &impl StatementBuilder) {
        self.statements.push(self.backend.build(statement));
    }

    /// Runs the statements in `txn`; returns the rows they return, in order.
    pub(super) async fn run(self, txn: &DatabaseTransaction) -> Result<Vec<QueryResult>, DbErr> {
        if self.statements.is_empty() {
            return Ok(Vec::new());
        }
        if self.backend != DbBackend::Sqlite {
            let mut rows = Vec::new();
            for statement in self.statements {
                rows.extend(txn.query_all_raw(statement).await?);
            }
            return Ok(rows);
        }
        let mut sql = String::new();
        let mut values = Vec::new();
        for statement in self.statements {
            if !sql.is_empty() {
                sql.push_str(";\n");
            }
            sql.push_str(&statement.sql);
            values.extend(statement.values.into_iter().flat_map(|values| values.0));
        }
        txn.query_all_raw(Statement::from_sql_and_values(self.backend, sql, values))
            .await
    }
}
