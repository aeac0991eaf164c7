//! The web UI: server-rendered pages (askama templates in `templates/`, compile-time checked and auto-escaped) for
//! people, outside the versioned API. It needs no JavaScript: every action is a form, every view a page.
//!
//! A browser signs in with an API token (kept in an `HttpOnly` cookie); a script may fetch the same pages with the
//! API's `Authorization` and `X-Org-ID` headers. Pages call the same store methods as the API and show the API's
//! error messages next to the form that caused them.

mod forms;
mod graph;
mod pages;
mod session;

use askama::Template;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::domain::IssueKey;
use crate::error::Error;
use crate::http::AppState;
pub use session::{ORG_COOKIE, SESSION_COOKIE, csrf_token};

/// The web routes. They are kept out of `/v2`, `/v3` and the OpenAPI document; `/{key}` answers only issue keys
/// (anything else gets the API's 404), so unknown paths keep answering as before.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::list_queues))
        .route("/login", get(pages::login_page).post(forms::log_in))
        .route("/logout", post(forms::log_out))
        .route("/orgs", get(pages::choose_org))
        .route("/new", get(pages::new_issue).post(forms::create_issue))
        .route("/queues/{queue}", get(pages::list_issues))
        .route("/{key}", get(pages::show_issue).fallback(not_found))
        .route("/{key}/graph", get(pages::show_graph).fallback(not_found))
        .route("/{key}/links", post(forms::create_link).fallback(not_found))
        .route("/{key}/links/{id}/delete", post(forms::delete_link).fallback(not_found))
        .route(
            "/{key}/remotelinks",
            post(forms::create_remote_link).fallback(not_found),
        )
        .layer(axum::middleware::map_response(security_headers))
}

/// Why a page could not be shown.
#[derive(Debug)]
pub enum WebError {
    /// Not signed in (or the session's token was revoked): 303 to the login page, then back to `next`.
    Login {
        /// Where to go after logging in.
        next: String,
        /// `Some(secure)`: delete the session cookies (the token no longer works).
        clear: Option<bool>,
    },
    /// Signed in with several organizations and none chosen: 303 to the chooser.
    ChooseOrg {
        /// Where to go after choosing.
        next: String,
    },
    /// An error page with this status and message.
    Page {
        /// HTTP status.
        status: u16,
        /// What to tell the user.
        message: String,
    },
    /// A path that is no page of the UI: the API's 404 envelope, as before the UI existed.
    NotFound,
}

impl WebError {
    /// An error page.
    pub fn page(status: u16, message: impl Into<String>) -> WebError {
        WebError::Page {
            status,
            message: message.into(),
        }
    }
}

impl From<Error> for WebError {
    fn from(e: Error) -> WebError {
        match e {
            Error::Internal(cause) => {
                // Logged once, here; the page says only that it was our fault.
                tracing::error!(error = %format!("{cause:#}"), "internal error in the web UI");
                WebError::page(500, "Something went wrong on the server")
            }
            other => WebError::page(other.status(), other.to_string()),
        }
    }
}

/// The error page.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: Option<pages::Nav>,
    status: u16,
    message: String,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match self {
            WebError::Login { next, clear } => {
                let target = format!(
                    "/login?{}",
                    url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("next", &next)
                        .finish()
                );
                let mut r = redirect(&target);
                if let Some(secure) = clear {
                    for name in [SESSION_COOKIE, ORG_COOKIE] {
                        append_cookie(&mut r, &session::clear_cookie(name, secure));
                    }
                }
                r
            }
            WebError::ChooseOrg { next } => redirect(&format!(
                "/orgs?{}",
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", &next)
                    .finish()
            )),
            WebError::NotFound => Error::not_found("path", "No such resource").into_response(),
            WebError::Page { status, message } => {
                let page = ErrorPage {
                    nav: None,
                    status,
                    message,
                };
                html(status, &page)
            }
        }
    }
}

/// A rendered template with its status (a template that fails to render is a 500, logged once).
pub(crate) fn html<T: Template>(status: u16, t: &T) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match t.render() {
        Ok(body) => (
            code,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template rendering failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong on the server").into_response()
        }
    }
}

/// A 303 See Other to a local path.
pub(crate) fn redirect(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Adds a `Set-Cookie` header.
pub(crate) fn append_cookie(r: &mut Response, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Parses the `{key}` of a web path: only issue keys are pages; anything else is the API's 404.
pub(crate) fn issue_key(s: &str) -> Result<IssueKey, WebError> {
    IssueKey::parse(s).ok_or(WebError::NotFound)
}

async fn not_found() -> WebError {
    WebError::NotFound
}

/// Pages hold private data and run no scripts: no caching, no framing, no script at all.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src http: https: data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in set {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    }
    r
}
