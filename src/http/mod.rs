//! The HTTP API. `routes!` below is the one list of every route: it builds the router, tags each route with the
//! role it requires (read back by the `Ctx` extractor) and feeds the OpenAPI document, so the three cannot drift.

pub mod answers;
pub mod bulk;
mod core;
pub mod ctx;
pub mod error;
pub(crate) mod issues;
pub(crate) mod links;
pub mod openapi;
pub(crate) mod remote;
mod render;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use tokio::net::TcpListener;
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;
use tower_http::trace::TraceLayer;

use crate::domain::Access;
use crate::error::Error;
use crate::store::DynStore;

/// Shared state: the store and the settings the handlers need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: DynStore,
    /// Public base URL without a trailing slash (`self` URLs start with it).
    pub base: Arc<str>,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Outbound HTTP (object info; the outbox worker has its own handle of the same client).
    pub http: reqwest::Client,
    /// Wakes the outbox worker after a change queued events.
    pub wakeup: crate::outbox::Wakeup,
    /// Object info fetched from applications.
    pub info: remote::InfoCache,
    /// Timeout of an object-info call.
    pub info_timeout: std::time::Duration,
    /// The Sentry integration, when configured.
    pub sentry: Option<Arc<crate::integrations::sentry::Sentry>>,
    /// Token → principal for a short time (`--auth-cache-ttl`).
    pub principals: ctx::PrincipalCache,
    /// Answers of the issue reads until the next write (`--read-cache-ttl`, `--read-cache-size`).
    pub answers: answers::ReadCache,
}

impl AppState {
    /// State with the default 1 MiB body limit.
    pub fn new(store: DynStore, base: &str) -> AppState {
        AppState {
            store,
            base: base.trim_end_matches('/').into(),
            body_limit: 1024 * 1024,
            http: crate::outbox::http_client(),
            wakeup: crate::outbox::Wakeup::default(),
            info: remote::info_cache(),
            info_timeout: std::time::Duration::from_secs(2),
            sentry: None,
            principals: ctx::PrincipalCache::new(ctx::PrincipalCache::DEFAULT_TTL),
            answers: answers::ReadCache::new(answers::ReadCache::DEFAULT_TTL, answers::ReadCache::DEFAULT_SIZE),
        }
    }
}

/// The API version of a request (`v2` or `v3`); `self` URLs use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiVersion(pub &'static str);

/// One row of the route table, as the OpenAPI document shows it.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    /// `get`, `post`, `patch`, `delete`.
    pub method: &'static str,
    /// Path under `/v2` and `/v3`, with `{param}` segments.
    pub path: &'static str,
    /// Handler name, the `operationId`.
    pub operation: &'static str,
    /// Required access.
    pub access: Access,
    /// Success status.
    pub status: u16,
    /// One line for the document.
    pub summary: &'static str,
    /// Whether it takes `perPage`/`page` and answers with pagination headers.
    pub paginated: bool,
}

macro_rules! routes {
    ($( $method:ident $path:literal => $module:ident :: $handler:ident, $access:ident, $status:literal, $paginated:literal, $summary:literal; )*) => {
        /// Every versioned API route.
        pub const ROUTES: &[RouteDoc] = &[$(
            RouteDoc {
                method: stringify!($method),
                path: $path,
                operation: stringify!($handler),
                access: Access::$access,
                status: $status,
                summary: $summary,
                paginated: $paginated,
            },
        )*];

        fn api_routes() -> Router<AppState> {
            Router::new()
            $( .route($path, axum::routing::$method($module::$handler).layer(Extension(Access::$access))) )*
        }
    };
}

routes! {
    get    "/myself" => core::get_myself, Reader, 200, false, "The user of the token";
    get    "/users" => core::list_users, Reader, 200, true, "Users of the organization";
    get    "/users/{user}" => core::get_user, Reader, 200, false, "A user by uid or login";
    get    "/queues" => core::list_queues, Reader, 200, true, "Queues";
    post   "/queues" => core::create_queue, Admin, 201, false, "Create a queue";
    get    "/queues/{queue}" => core::get_queue, Reader, 200, false, "A queue by key or id";
    get    "/issuetypes" => core::list_issue_types, Reader, 200, false, "Issue types";
    get    "/issuetypes/{id}" => core::get_issue_type, Reader, 200, false, "An issue type";
    get    "/statuses" => core::list_statuses, Reader, 200, false, "Statuses";
    get    "/statuses/{id}" => core::get_status, Reader, 200, false, "A status";
    get    "/fields" => core::list_fields, Reader, 200, false, "System and custom fields";
    post   "/fields" => core::create_field, Admin, 201, false, "Create a custom field";
    get    "/fields/{id}" => core::get_field, Reader, 200, false, "A field";
    get    "/_tokens" => core::list_tokens, Reader, 200, false, "The caller's tokens (Tether extension)";
    delete "/_tokens/{id}" => core::revoke_token, Reader, 204, false, "Revoke one of the caller's tokens (Tether extension)";
    post   "/issues" => issues::create_issue, Member, 201, false, "Create an issue";
    post   "/issues/_search" => issues::search_issues, Reader, 200, true, "Search issues";
    post   "/issues/_findByUnique" => issues::find_issue_by_unique, Reader, 200, false, "Find an issue by its unique value";
    post   "/issues/_import" => issues::import_issue, Admin, 200, false, "Import an issue with its history";
    get    "/issues/{issue}" => issues::get_issue, Reader, 200, false, "An issue by key or id";
    patch  "/issues/{issue}" => issues::update_issue, Member, 200, false, "Edit an issue";
    get    "/issues/{issue}/transitions" => issues::list_transitions, Reader, 200, false, "Transitions available now";
    get    "/issues/{issue}/transitions/{transition}" => issues::get_transition, Reader, 200, false, "One transition";
    post   "/issues/{issue}/transitions/{transition}/_execute" => issues::execute_transition, Member, 200, false, "Execute a transition";
    get    "/linktypes" => links::list_link_types, Reader, 200, false, "Link types";
    get    "/linktypes/{id}" => links::get_link_type, Reader, 200, false, "A link type";
    post   "/issues/{issue}/links" => links::create_link, Member, 201, false, "Link two issues";
    get    "/issues/{issue}/links" => links::list_links, Reader, 200, true, "Links of an issue";
    post   "/issues/{issue}/links/_import" => links::import_link, Member, 200, false, "Import a link with its history";
    get    "/issues/{issue}/links/{link}" => links::get_link, Reader, 200, false, "One link of an issue";
    delete "/issues/{issue}/links/{link}" => links::delete_link, Member, 204, false, "Delete a link";
    get    "/issues/{issue}/_graph" => links::get_issue_graph, Reader, 200, false, "Dependency graph of an issue (Tether extension)";
    get    "/applications" => remote::list_applications, Reader, 200, false, "Registered applications";
    post   "/applications" => remote::create_application, Admin, 201, false, "Register an application (Tether extension)";
    get    "/applications/{app}" => remote::get_application, Reader, 200, false, "An application";
    patch  "/applications/{app}" => remote::update_application, Admin, 200, false, "Edit an application (Tether extension)";
    delete "/applications/{app}" => remote::delete_application, Admin, 204, false, "Delete an unused application (Tether extension)";
    get    "/applications/{app}/objects/{key}" => remote::get_application_object, Reader, 200, false, "An object of an application";
    post   "/issues/{issue}/remotelinks" => remote::create_remote_link, Member, 201, false, "Link an issue to an object of an application";
    get    "/issues/{issue}/remotelinks" => remote::list_remote_links, Reader, 200, false, "Remote links of an issue";
    get    "/issues/{issue}/remotelinks/{link}" => remote::get_remote_link, Reader, 200, false, "One remote link";
    delete "/issues/{issue}/remotelinks/{link}" => remote::delete_remote_link, Member, 204, false, "Delete a remote link";
    get    "/_outbox" => remote::list_outbox, Admin, 200, false, "Outbox events (Tether extension)";
    post   "/_outbox/{id}/_retry" => remote::retry_outbox_event, Admin, 200, false, "Retry a failed outbox event (Tether extension)";
    post   "/_bulk/links/_import" => bulk::bulk_import_links, Member, 200, false, "Import links from NDJSON, streamed (Tether extension)";
}

/// Public routes outside `/v2` and `/v3`.
pub const PUBLIC_ROUTES: &[(&str, &str, &str)] = &[
    ("get", "/healthz", "Liveness"),
    ("get", "/readyz", "Readiness: the database answers"),
    ("get", "/openapi.json", "This document"),
];

/// The whole application.
pub fn router(state: AppState) -> Router {
    let api = api_routes();
    Router::new()
        .nest("/v2", api.clone().layer(Extension(ApiVersion("v2"))))
        .nest("/v3", api.layer(Extension(ApiVersion("v3"))))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::get_openapi))
        .merge(crate::integrations::sentry::router())
        .merge(crate::web::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), limit_body))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let path = req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map_or("unmatched", axum::extract::MatchedPath::as_str);
            tracing::info_span!("http.request", http.method = %req.method(), http.route = path)
        }))
        .with_state(state)
}

/// How long a client may take to send a request's headers, and then its body, before the connection is closed.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// See [`HEADER_READ_TIMEOUT`].
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The largest request head accepted (a larger one closes the connection with 431).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Serves the application on `listener` until `shutdown` completes, then drains open requests (30 s at most).
///
/// Connections are served with hyper directly rather than `axum::serve`, which cannot bound how long a client takes
/// to send its headers: a slow client is cut off after [`HEADER_READ_TIMEOUT`] (body: [`BODY_READ_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    // Trailing slashes are trimmed before routing: `/v2/issues/` and `/v2/issues` are the same route.
    let app = NormalizePathLayer::trim_trailing_slash()
        .layer(router(state).layer(tower_http::timeout::RequestBodyTimeoutLayer::new(BODY_READ_TIMEOUT)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(std::time::Duration::from_secs(30)) => {
            tracing::warn!("shutdown: connections still open after 30 s; closing them");
        }
    }
    Ok(())
}

/// 413 before anything else when the declared length is over the limit (contract §2: first check wins).
/// The bulk import streams bodies of any length (each line is limited instead).
async fn limit_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.uri().path().ends_with("/_bulk/links/_import") {
        return next.run(req).await;
    }
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.body_limit as u64) {
        return Error::TooLarge(state.body_limit).into_response();
    }
    // hyper bounds its read buffer only approximately (one read can overshoot it), so count the head exactly.
    let head: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().to_string().len();
    if head > MAX_HEADER_BYTES {
        return Error::HeadersTooLarge(MAX_HEADER_BYTES).into_response();
    }
    // PostgreSQL cannot store U+0000; a path or query carrying it is refused before anything reads it.
    let raw = req.uri().path_and_query().map_or("", |p| p.as_str());
    if raw.to_ascii_lowercase().contains("%00") {
        return Error::BadRequest("The URL must not contain the NUL character (%00)".into()).into_response();
    }
    next.run(req).await
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(serde_json::json!({"status": "ok", "database": state.store.backend()})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            let mut r = Json(serde_json::json!({"status": "unavailable"})).into_response();
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    }
}

async fn not_found() -> Error {
    Error::not_found("path", "No such resource")
}

async fn method_not_allowed() -> Response {
    let mut r = error::envelope(405, None, "Method not allowed on this resource");
    r.headers_mut()
        .insert("allow", HeaderValue::from_static("GET, POST, PATCH, DELETE"));
    r
}
