//! [`Script`]: statements of one transaction, in the order they run. The
//! SQLite write path fills one with its last steps and the change feed
//! appends its entries to it, so it sits below both.

use sea_orm::{DbBackend, Statement, StatementBuilder};

/// Statements to run one after the other, each with its own values.
pub(super) struct Script {
    backend: DbBackend,
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

    /// The statements, in the order they run.
    pub(super) fn statements(&self) -> &[Statement] {
        &self.statements
    }
}
