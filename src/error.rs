//! The one error type. Every failure a request can meet is one of these; `http::error` turns it into the
//! contract's envelope (`{"errors": {…}, "errorMessages": […], "statusCode": N}`).

use std::collections::BTreeMap;

/// An error with the HTTP status it stands for.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: malformed JSON, wrong types, bad query parameter, conflicting organization headers.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no or unknown token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: no access to the organization, or the role forbids the action.
    #[error("{0}")]
    Forbidden(String),
    /// 404: an object named in the path (or the target of a link) does not exist here.
    #[error("{message}")]
    NotFound {
        /// The field or object it is about (`issue`, `queue`, …).
        field: &'static str,
        /// What to tell the client.
        message: String,
    },
    /// 409: duplicate `unique`, remote object linked twice, `If-Match` mismatch.
    #[error("{0}")]
    Conflict(String),
    /// 408: the client took too long to send its request body.
    #[error("The request body took longer than {0} seconds to arrive")]
    SlowBody(u64),
    /// 413: body over the limit.
    #[error("Request body is larger than {0} bytes")]
    TooLarge(usize),
    /// 431: request headers over the limit.
    #[error("Request headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// 422: a well-formed request that breaks a rule or names something unknown in the body.
    #[error("{}", .errors.values().next().map(String::as_str).unwrap_or("Unprocessable entity"))]
    Unprocessable {
        /// field → message.
        errors: BTreeMap<String, String>,
    },
    /// 5xx: a real server fault. The cause is logged once; the client is told little.
    #[error("internal error: {0}")]
    Internal(#[from] anyhow::Error),
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// 404 about `field`.
    pub fn not_found(field: &'static str, message: impl Into<String>) -> Error {
        Error::NotFound {
            field,
            message: message.into(),
        }
    }

    /// 422 about one field.
    pub fn rule(field: &str, message: impl Into<String>) -> Error {
        let mut errors = BTreeMap::new();
        errors.insert(field.to_owned(), message.into());
        Error::Unprocessable { errors }
    }

    /// 422 for a missing required field.
    pub fn missing(field: &str) -> Error {
        Error::rule(field, format!("Field '{field}' is required"))
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound { .. } => 404,
            Error::Conflict(_) => 409,
            Error::SlowBody(_) => 408,
            Error::TooLarge(_) => 413,
            Error::HeadersTooLarge(_) => 431,
            Error::Unprocessable { .. } => 422,
            Error::Internal(_) => 500,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Internal(anyhow::Error::new(e))
    }
}

/// Whether a database error is a unique-constraint violation (a race lost to a concurrent writer).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
