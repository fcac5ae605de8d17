//! The sync-service's one error type and its one mapping to gRPC status codes.
//! The cause of an internal or database error is logged here, never sent.

use sea_orm::{DbErr, RuntimeErr};
use tonic::{Code, Status};

/// Everything that can go wrong serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message names the field.
    #[error("{field} {reason}")]
    InvalidArgument {
        /// Path of the offending field, e.g. `event.meta.event_id`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No live user matches.
    #[error("{0}")]
    NotFound(String),
    /// The database cannot be reached or is overloaded: worth retrying.
    #[error("database unavailable")]
    Unavailable(#[source] DbErr),
    /// The request cannot be served in the directory's current state (a
    /// change feed position it no longer keeps); the message says what to do.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The service is shutting down and takes no more writes.
    #[error("sync-service is shutting down")]
    ShuttingDown,
    /// Any other database failure.
    #[error("database error")]
    Database(#[source] DbErr),
    /// A stored value that cannot be decoded (corruption or a schema bug).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl Error {
    /// An `InvalidArgument` naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        if is_transient(&err) {
            Self::Unavailable(err)
        } else {
            Self::Database(err)
        }
    }
}

/// Connection failures, pool exhaustion, SQLite busy/locked, PostgreSQL
/// connection exceptions (class 08), shutdown (57P), too many connections
/// (53300), deadlocks (40P01) and serialization failures (40001).
fn is_transient(err: &DbErr) -> bool {
    let sqlx_err = match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => e,
        _ => return false,
    };
    use sea_orm::sqlx::Error as Sqlx;
    match sqlx_err.as_ref() {
        Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => true,
        Sqlx::Database(db) => db.code().is_some_and(|code| {
            // SQLite: 5 = SQLITE_BUSY, 6 = SQLITE_LOCKED (and their extended codes).
            let sqlite_busy = code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
            sqlite_busy
                || code.starts_with("08")
                || code.starts_with("57P")
                || code == "53300"
                || code == "40P01"
                || code == "40001"
        }),
        _ => false,
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) | Error::ShuttingDown => Code::Unavailable,
            Error::Database(_) | Error::Corrupt(_) => Code::Internal,
        };
        match code {
            Code::Internal | Code::Unavailable => {
                tracing::error!(error = %err, cause = ?std::error::Error::source(&err), "request failed");
            }
            _ => tracing::debug!(error = %err, "request rejected"),
        }
        let message = match code {
            Code::Internal => "internal error".to_owned(),
            _ => err.to_string(),
        };
        Status::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_details_never_reach_the_client() {
        let err = Error::from(DbErr::Custom("SELECT secret FROM users".into()));
        let status = Status::from(err);
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn lost_connections_are_unavailable() {
        let status = Status::from(Error::from(DbErr::Conn(RuntimeErr::Internal(
            "connection refused".into(),
        ))));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "database unavailable");
    }

    #[test]
    fn invalid_arguments_name_the_field() {
        let status = Status::from(Error::invalid("page_size", "must be at most 1000"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "page_size must be at most 1000");
    }
}
