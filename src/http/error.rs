//! The error envelope of contract §3.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::error::Error;

/// Builds `{"errors": {field: msg}, "errorMessages": [msg], "statusCode": N}`.
pub fn envelope(status: u16, field: Option<&str>, message: &str) -> Response {
    let mut errors = Map::new();
    if let Some(f) = field {
        errors.insert(f.to_owned(), Value::String(message.to_owned()));
    }
    respond(status, errors, vec![message.to_owned()])
}

fn respond(status: u16, errors: Map<String, Value>, messages: Vec<String>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"errors": errors, "errorMessages": messages, "statusCode": status});
    (code, axum::Json(body)).into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        match self {
            Error::Internal(cause) => {
                // Logged once, here; the client learns only that it was our fault.
                tracing::error!(error = %format!("{cause:#}"), "internal error");
                envelope(status, None, "Internal server error")
            }
            Error::NotFound { field, message } => envelope(status, Some(field), &message),
            Error::Unprocessable { errors } => {
                let messages = errors.values().cloned().collect();
                let map = errors.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
                respond(status, map, messages)
            }
            Error::Unauthorized(m) => {
                let mut r = envelope(status, None, &m);
                r.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("OAuth realm=\"tether\""),
                );
                r
            }
            other => envelope(status, None, &other.to_string()),
        }
    }
}
