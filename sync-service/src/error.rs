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
    /// The database refused a value of the event for good (PostgreSQL data
    /// exception or integrity violation, SQLite constraint or too big): a
    /// retry of the same event cannot succeed.
    #[error("the database refused a value of this event")]
    Refused(#[source] DbErr),
    /// Too many events are waiting to be applied: shed, worth retrying.
    #[error("too many events in flight; retry later")]
    Overloaded,
    /// The caller holds or asks for more than the server gives one caller (too
    /// many change-feed watchers, a watcher that does not read); the message
    /// says what to do.
    #[error("{0}")]
    Exhausted(String),
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
        Self::of_class(classify(&err), err)
    }
}

/// From the SQLite batch writer's own connection (see `store::apply`),
/// classified by SQLite's result code as sqlx's errors are.
impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        let class = err
            .sqlite_error()
            .map_or(Class::Other, |e| classify_sqlite(e.extended_code));
        Self::of_class(class, DbErr::Custom(err.to_string()))
    }
}

impl Error {
    fn of_class(class: Class, err: DbErr) -> Self {
        match class {
            Class::Transient => Self::Unavailable(err),
            Class::Permanent => Self::Refused(err),
            Class::Other => Self::Database(err),
        }
    }
}

/// What a retry of the same request can do about a database error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// The database is unreachable, busy, shutting down or lost a race: retry.
    Transient,
    /// The data itself is refused: a retry fails the same way.
    Permanent,
    /// Anything else (a bug, a schema problem): internal error.
    Other,
}

/// Classifies by the backend that raised the error: SQLite's numeric result
/// codes and PostgreSQL's SQLSTATEs are different namespaces (PostgreSQL's
/// `22021`, U+0000 in text, must not read as SQLite's BUSY).
fn classify(err: &DbErr) -> Class {
    use sea_orm::sqlx::{Error as Sqlx, postgres::PgDatabaseError, sqlite::SqliteError};
    let sqlx_err = match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return Class::Transient,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => e,
        _ => return Class::Other,
    };
    match sqlx_err.as_ref() {
        Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => {
            Class::Transient
        }
        Sqlx::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                classify_sqlstate(pg.code())
            } else if db.try_downcast_ref::<SqliteError>().is_some() {
                db.code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .map_or(Class::Other, classify_sqlite)
            } else {
                Class::Other
            }
        }
        _ => Class::Other,
    }
}

/// PostgreSQL SQLSTATE classes: connection exceptions (08), insufficient
/// resources (53), operator intervention (57: shutdown, and the statement
/// timeout's 57014), lock_timeout (55P03), serialization failures and
/// deadlocks (40001, 40P01) are transient; data exceptions (22, e.g. U+0000 in
/// text) and integrity violations (23) are permanent.
fn classify_sqlstate(code: &str) -> Class {
    match code {
        "40001" | "40P01" | "55P03" => Class::Transient,
        _ if ["08", "53", "57"]
            .iter()
            .any(|class| code.starts_with(class)) =>
        {
            Class::Transient
        }
        _ if code.starts_with("22") || code.starts_with("23") => Class::Permanent,
        _ => Class::Other,
    }
}

/// SQLite primary result codes (the low byte of an extended code): BUSY (5),
/// LOCKED (6), IOERR (10), FULL (13) and CANTOPEN (14) are transient; TOOBIG
/// (18), CONSTRAINT (19) and MISMATCH (20) are permanent.
fn classify_sqlite(code: i32) -> Class {
    match code & 0xff {
        5 | 6 | 10 | 13 | 14 => Class::Transient,
        18..=20 => Class::Permanent,
        _ => Class::Other,
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = match &err {
            // Refused data is the event's fault: the gateway quarantines it.
            Error::InvalidArgument { .. } | Error::Refused(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Exhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) | Error::ShuttingDown | Error::Overloaded => Code::Unavailable,
            Error::Database(_) | Error::Corrupt(_) => Code::Internal,
        };
        match code {
            _ if matches!(err, Error::Refused(_)) => {
                tracing::warn!(error = %err, cause = ?std::error::Error::source(&err), "event refused by the database");
            }
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
    fn sqlstates_are_classified_by_class() {
        for code in [
            "08006", "08001", "53300", "53100", "57P01", "57014", "40001", "40P01", "55P03",
        ] {
            assert_eq!(classify_sqlstate(code), Class::Transient, "{code}");
        }
        for code in ["22021", "22001", "22P02", "23505", "23503"] {
            assert_eq!(classify_sqlstate(code), Class::Permanent, "{code}");
        }
        for code in ["42P01", "42601", "XX000"] {
            assert_eq!(classify_sqlstate(code), Class::Other, "{code}");
        }
    }

    #[test]
    fn sqlite_codes_are_classified_by_primary_code() {
        // 517 = SQLITE_BUSY_SNAPSHOT, 262 = SQLITE_LOCKED_SHAREDCACHE.
        for code in [5, 6, 517, 262, 10, 13] {
            assert_eq!(classify_sqlite(code), Class::Transient, "{code}");
        }
        // 2067 = SQLITE_CONSTRAINT_UNIQUE.
        for code in [18, 19, 2067, 20] {
            assert_eq!(classify_sqlite(code), Class::Permanent, "{code}");
        }
        // A PostgreSQL SQLSTATE such as 22021 parses as a number whose low
        // byte is 5 (BUSY): only SQLite errors are read as SQLite codes.
        assert_eq!(22021 & 0xff, 5);
        assert_eq!(classify_sqlstate("22021"), Class::Permanent);
        assert_eq!(classify_sqlite(1), Class::Other);
    }

    #[test]
    fn invalid_arguments_name_the_field() {
        let status = Status::from(Error::invalid("page_size", "must be at most 1000"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "page_size must be at most 1000");
    }
}
