//! The Sentry integration (contract §8, seed 000) over HTTP, on SQLite and PostgreSQL, against a fake Sentry served
//! from inside each test on `127.0.0.1`: signatures, the issue-link and issue-create forms, the selects, webhooks,
//! installation and token refresh, and status sync in both directions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{Answer, Backend, TestApp};
use serde_json::{Value, json};
use tether::domain::Role;
use tether::integrations::sentry::{SentryConfig, signature};

/// How long any wait for an expected state may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(15);
/// The client secret Tether and the tests share.
const SECRET: &str = "test-secret";
/// The installation every test installs (the seed's own).
const U: &str = "14ee411f-4127-439d-a7ec-559ef41ea817";
/// The Sentry organization of the installations.
const SENTRY_ORG: &str = "it-hock";
/// The seed's example body, compact, exactly as Sentry sends it.
const SEED_BODY: &str = r#"{"fields":{"issue_id":"YT-123"},"issueId":1,"installationId":"14ee411f-4127-439d-a7ec-559ef41ea817","webUrl":"http://localhost:9000/organizations/it-hock/issues/1/","project":{"slug":"internal","id":1},"actor":{"type":"user","id":1,"name":""}}"#;

// ---------------------------------------------------------------------------------------------------------------
// The fake Sentry
// ---------------------------------------------------------------------------------------------------------------

/// One request the fake received.
#[derive(Debug, Clone)]
struct Hit {
    method: String,
    /// The raw path (Sentry's API paths end with `/`).
    path: String,
    headers: HeaderMap,
    body: Value,
}

impl Hit {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn is_refresh(&self) -> bool {
        self.method == "POST" && self.path.ends_with("/authorizations/") && self.body["grant_type"] == "refresh_token"
    }

    fn is_code_exchange(&self, uuid: &str) -> bool {
        self.method == "POST" && self.path == auth_path(uuid) && self.body["grant_type"] == "authorization_code"
    }
}

/// What the fake's `GET …/external-issues/` answers.
#[derive(Debug, Clone)]
enum External {
    /// 200 with this list.
    List(Value),
    /// 500.
    Fail,
}

#[derive(Debug)]
struct FakeState {
    hits: Mutex<Vec<Hit>>,
    external: Mutex<External>,
    /// Whether tokens issued for a grant code expire at once (to make the next call refresh).
    expired: AtomicBool,
    /// How long a refresh takes to answer (to make concurrent needs overlap).
    refresh_delay: Mutex<Duration>,
    /// Per installation: the generation of its current token pair (`tok-N`/`ref-N`).
    generation: Mutex<HashMap<String, u32>>,
    /// Grant codes already exchanged (single use, as in Sentry).
    used_codes: Mutex<Vec<String>>,
    /// While set, `PUT …/issues/{id}/` with `{"status":"resolved"}` answers 500 (Sentry briefly failing).
    fail_resolve: AtomicBool,
    /// The issue status changes the fake accepted, in order: (Sentry issue id, status).
    accepted: Mutex<Vec<(String, String)>>,
}

/// A tiny Sentry: token exchange and refresh, installation verification, external issues, issue status.
struct Fake {
    url: String,
    st: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn auth_path(uuid: &str) -> String {
    format!("/api/0/sentry-app-installations/{uuid}/authorizations/")
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339).unwrap()
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

async fn fake_handler(State(st): State<Arc<FakeState>>, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let bytes = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    st.hits.lock().unwrap().push(Hit {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
    });
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let valid_token = |st: &FakeState| {
        st.generation
            .lock()
            .unwrap()
            .values()
            .any(|g| bearer == format!("Bearer tok-{g}"))
    };
    match (method.as_str(), segs.as_slice()) {
        ("POST", ["api", "0", "sentry-app-installations", uuid, "authorizations"]) => {
            if body["client_id"] != "cid" || body["client_secret"] != SECRET {
                return json_response(StatusCode::UNAUTHORIZED, json!({"detail": "Invalid client"}));
            }
            let now = time::OffsetDateTime::now_utc();
            match body["grant_type"].as_str() {
                Some("authorization_code") => {
                    let code = body["code"].as_str().unwrap_or_default().to_owned();
                    let mut used = st.used_codes.lock().unwrap();
                    if !code.starts_with("grant-") || used.contains(&code) {
                        return json_response(StatusCode::UNAUTHORIZED, json!({"detail": "Could not find grant"}));
                    }
                    used.push(code);
                    drop(used);
                    st.generation.lock().unwrap().insert((*uuid).to_owned(), 1);
                    let expires = if st.expired.load(Ordering::SeqCst) {
                        now
                    } else {
                        now + time::Duration::hours(8)
                    };
                    json_response(
                        StatusCode::CREATED,
                        json!({"id": "38", "token": "tok-1", "refreshToken": "ref-1", "expiresAt": rfc3339(expires),
                               "dateCreated": rfc3339(now), "state": null, "application": null}),
                    )
                }
                Some("refresh_token") => {
                    let delay = *st.refresh_delay.lock().unwrap();
                    tokio::time::sleep(delay).await;
                    let mut gens = st.generation.lock().unwrap();
                    let Some(g) = gens.get_mut(*uuid) else {
                        return json_response(StatusCode::UNAUTHORIZED, json!({"detail": "Unknown installation"}));
                    };
                    // As in Sentry, a refresh deletes the old pair: a refresh token works once.
                    if body["refresh_token"] != format!("ref-{g}") {
                        return json_response(StatusCode::UNAUTHORIZED, json!({"detail": "Invalid refresh token"}));
                    }
                    *g += 1;
                    json_response(
                        StatusCode::CREATED,
                        json!({"id": "39", "token": format!("tok-{g}"), "refreshToken": format!("ref-{g}"),
                               "expiresAt": rfc3339(now + time::Duration::hours(8)), "dateCreated": rfc3339(now)}),
                    )
                }
                _ => json_response(StatusCode::BAD_REQUEST, json!({"detail": "Invalid grant_type"})),
            }
        }
        ("PUT", ["api", "0", "sentry-app-installations", uuid]) => {
            if !valid_token(&st) {
                return json_response(StatusCode::UNAUTHORIZED, json!({"detail": "Invalid token"}));
            }
            json_response(
                StatusCode::OK,
                json!({"app": {"uuid": "app-uuid", "slug": "tether"}, "organization": {"slug": SENTRY_ORG}, "uuid": uuid}),
            )
        }
        ("GET", ["api", "0", "organizations", _, "issues", _, "external-issues"]) => {
            if !valid_token(&st) {
                return json_response(StatusCode::UNAUTHORIZED, json!({"detail": "Invalid token"}));
            }
            match st.external.lock().unwrap().clone() {
                External::List(v) => json_response(StatusCode::OK, v),
                External::Fail => json_response(StatusCode::INTERNAL_SERVER_ERROR, json!({"detail": "Internal Error"})),
            }
        }
        ("PUT", ["api", "0", "organizations", _, "issues", id]) => {
            if !valid_token(&st) {
                return json_response(StatusCode::UNAUTHORIZED, json!({"detail": "Invalid token"}));
            }
            let status = body["status"].as_str().unwrap_or_default().to_owned();
            if status == "resolved" && st.fail_resolve.load(Ordering::SeqCst) {
                return json_response(StatusCode::INTERNAL_SERVER_ERROR, json!({"detail": "Internal Error"}));
            }
            st.accepted.lock().unwrap().push(((*id).to_owned(), status));
            json_response(StatusCode::OK, json!({"id": id, "status": body["status"]}))
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"detail": "Not found"})),
    }
}

impl Fake {
    async fn start(expired: bool) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Sentry");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let st = Arc::new(FakeState {
            hits: Mutex::new(Vec::new()),
            external: Mutex::new(External::List(json!([]))),
            expired: AtomicBool::new(expired),
            refresh_delay: Mutex::new(Duration::ZERO),
            generation: Mutex::new(HashMap::new()),
            used_codes: Mutex::new(Vec::new()),
            fail_resolve: AtomicBool::new(false),
            accepted: Mutex::new(Vec::new()),
        });
        let router = axum::Router::new().fallback(fake_handler).with_state(st.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Fake { url, st, task }
    }

    fn hits(&self) -> Vec<Hit> {
        self.st.hits.lock().unwrap().clone()
    }

    fn count(&self, pred: impl Fn(&Hit) -> bool) -> usize {
        self.hits().iter().filter(|h| pred(h)).count()
    }

    fn set_external(&self, e: External) {
        *self.st.external.lock().unwrap() = e;
    }

    fn set_fail_resolve(&self, on: bool) {
        self.st.fail_resolve.store(on, Ordering::SeqCst);
    }

    fn accepted(&self) -> Vec<(String, String)> {
        self.st.accepted.lock().unwrap().clone()
    }

    fn set_refresh_delay(&self, d: Duration) {
        *self.st.refresh_delay.lock().unwrap() = d;
    }

    /// Waits until the fake has received `n` requests matching `pred`, and returns them.
    async fn wait_for(&self, what: &str, n: usize, pred: impl Fn(&Hit) -> bool) -> Vec<Hit> {
        let start = Instant::now();
        loop {
            let found: Vec<Hit> = self.hits().into_iter().filter(|h| pred(h)).collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the fake Sentry never received {what}; it received: {:#?}",
                self.hits()
                    .iter()
                    .map(|h| format!("{} {} {}", h.method, h.path, h.body))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A Tether with the integration, installed through the real flow
// ---------------------------------------------------------------------------------------------------------------

struct Env {
    app: TestApp,
    fake: Fake,
}

fn config(fake: &Fake, secret: Option<&str>) -> SentryConfig {
    config_with(fake, secret, true)
}

fn config_with(fake: &Fake, secret: Option<&str>, status_sync: bool) -> SentryConfig {
    SentryConfig {
        base_url: fake.url.clone(),
        client_id: "cid".into(),
        client_secret: secret.map(|s| tether::store::Secret(s.into())),
        app_slug: Some("tether".into()),
        org_id: None,
        status_sync,
    }
}

fn install_body(uuid: &str, code: &str) -> String {
    json!({
        "action": "created",
        "installation": {"uuid": uuid},
        "data": {"installation": {"uuid": uuid, "status": "pending", "organization": {"slug": SENTRY_ORG},
                                  "app": {"uuid": "app-uuid", "slug": "tether"}, "code": code}},
        "actor": {"type": "user", "id": 1, "name": "x"}
    })
    .to_string()
}

fn request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// An issue webhook (`Sentry-Hook-Resource: issue`) about Sentry issue `id`.
fn issue_hook(action: &str, id: &str, actor: Value) -> String {
    let status = if action == "resolved" { "resolved" } else { "unresolved" };
    json!({
        "action": action,
        "installation": {"uuid": U},
        "data": {
            "issue": {"id": id, "shortId": format!("INTERNAL-{id}"), "title": "Crash", "status": status,
                      "substatus": null, "project": {"id": "1", "slug": "internal", "name": "internal"},
                      "web_url": format!("http://localhost:9000/organizations/{SENTRY_ORG}/issues/{id}/")},
            "resolution_type": "now"
        },
        "actor": actor
    })
    .to_string()
}

/// A link-form body for Sentry issue `sentry_id` and Tether issue `key`.
fn link_body(key: &str, sentry_id: u64) -> String {
    json!({
        "fields": {"issue_id": key},
        "issueId": sentry_id,
        "installationId": U,
        "webUrl": format!("http://localhost:9000/organizations/{SENTRY_ORG}/issues/{sentry_id}/"),
        "project": {"slug": "internal", "id": 1},
        "actor": {"type": "user", "id": 1, "name": "Jane"}
    })
    .to_string()
}

/// Asserts a Sentry-route error: the status and a body of exactly `{"message": "<non-empty>"}`.
fn expect_message(a: &Answer, status: u16) {
    assert_eq!(a.status.as_u16(), status, "unexpected status; body: {}", a.body);
    let obj = a
        .body
        .as_object()
        .unwrap_or_else(|| panic!("the error body must be a JSON object: {}", a.body));
    assert_eq!(obj.len(), 1, "the error body must be {{\"message\": …}}: {}", a.body);
    assert!(
        obj.get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty()),
        "the error body must carry a message: {}",
        a.body
    );
}

/// Waits until the condition holds, polling the server (bounded by `DEADLINE`).
macro_rules! eventually {
    ($what:expr, $cond:expr) => {{
        let start = Instant::now();
        while !$cond {
            assert!(start.elapsed() < DEADLINE, "timed out waiting until {}", $what);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }};
}

impl Env {
    /// A Tether with the integration, the queue `YT`, and installation `U` installed via `installation.created`.
    async fn start(backend: Backend) -> Option<Env> {
        Self::start_with(backend, false).await
    }

    /// As `start`; with `expired`, the installation's first token expires at once.
    async fn start_with(backend: Backend, expired: bool) -> Option<Env> {
        Self::start_opts(backend, expired, true).await
    }

    /// As `start_with`, with Sentry-to-Tether status sync on or off.
    async fn start_opts(backend: Backend, expired: bool, status_sync: bool) -> Option<Env> {
        let fake = Fake::start(expired).await;
        let app = TestApp::spawn_sentry(backend, config_with(&fake, Some(SECRET), status_sync)).await?;
        app.queue("YT").await;
        let env = Env { app, fake };
        env.install(U, "grant-1").await;
        Some(env)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.app.base, path)
    }

    /// Installs `uuid` with `installation.created` and waits for the code exchange and the verification.
    async fn install(&self, uuid: &str, code: &str) {
        let a = self.hook("installation", &install_body(uuid, code), "1700000000").await;
        assert!(a.status.is_success(), "installation.created: {} {}", a.status, a.body);
        let exchange = self
            .fake
            .wait_for("the code exchange", 1, |h| h.is_code_exchange(uuid))
            .await;
        assert_eq!(
            exchange[0].body,
            json!({"grant_type": "authorization_code", "code": code, "client_id": "cid", "client_secret": SECRET}),
            "the code exchange body"
        );
        let verify_path = format!("/api/0/sentry-app-installations/{uuid}/");
        let verify = self
            .fake
            .wait_for("the installation's verification", 1, |h| {
                h.method == "PUT" && h.path == verify_path
            })
            .await;
        assert_eq!(verify[0].body, json!({"status": "installed"}));
        assert_eq!(verify[0].header("authorization"), Some("Bearer tok-1"));
        // The token is stored before the verification is sent; wait until the install event is delivered too.
        eventually!("the install event is delivered", {
            self.outbox("sentry.install")
                .await
                .iter()
                .any(|e| e["state"] == "delivered")
        });
    }

    /// POSTs `body` to a UI-component route with `Sentry-App-Signature: sig` (None: no signature header).
    async fn ui_post_raw(&self, path: &str, body: &[u8], sig: Option<String>) -> Answer {
        let mut req = self
            .app
            .http
            .post(self.url(path))
            .header("Content-Type", "application/json")
            .header("Request-ID", request_id())
            .body(body.to_vec());
        if let Some(s) = sig {
            req = req.header("Sentry-App-Signature", s);
        }
        self.app.raw(req).await
    }

    /// POSTs `body` to a UI-component route, signed as Sentry signs it.
    async fn ui_post(&self, path: &str, body: &str) -> Answer {
        self.ui_post_raw(path, body.as_bytes(), Some(signature(SECRET, body.as_bytes())))
            .await
    }

    /// A select request: GET signed over the empty string.
    async fn ui_get(&self, path_and_query: &str) -> Answer {
        let req = self
            .app
            .http
            .get(self.url(path_and_query))
            .header("Content-Type", "application/json")
            .header("Request-ID", request_id())
            .header("Sentry-App-Signature", signature(SECRET, b""));
        self.app.raw(req).await
    }

    /// A webhook with the headers Sentry sends.
    async fn hook(&self, resource: &str, body: &str, stamp: &str) -> Answer {
        let req = self
            .app
            .http
            .post(self.url("/sentry/webhook"))
            .header("Content-Type", "application/json")
            .header("Request-ID", request_id())
            .header("Sentry-Hook-Resource", resource)
            .header("Sentry-Hook-Timestamp", stamp)
            .header("Sentry-Hook-Signature", signature(SECRET, body.as_bytes()))
            .body(body.to_owned());
        self.app.raw(req).await
    }

    /// Links Sentry issue `sentry_id` to `key` through the link form.
    async fn link(&self, key: &str, sentry_id: u64) -> Answer {
        self.ui_post("/sentry/issues/link", &link_body(key, sentry_id)).await
    }

    /// The issue's remote links of origin `sentry`.
    async fn sentry_links(&self, key: &str) -> Vec<Value> {
        let a = self.app.get(&format!("/v2/issues/{key}/remotelinks")).await;
        assert_eq!(a.status, 200, "remote links of {key}: {}", a.body);
        a.body
            .as_array()
            .expect("remote links are a list")
            .iter()
            .filter(|r| r["object"]["application"]["id"] == "sentry")
            .cloned()
            .collect()
    }

    async fn issue(&self, key: &str) -> Value {
        let a = self.app.get(&format!("/v2/issues/{key}")).await;
        assert_eq!(a.status, 200, "issue {key}: {}", a.body);
        a.body
    }

    /// The issue's `sentryIssues` (`Null` when unset).
    async fn field(&self, key: &str) -> Value {
        self.issue(key)
            .await
            .get("sentryIssues")
            .cloned()
            .unwrap_or(Value::Null)
    }

    async fn status(&self, key: &str) -> String {
        self.issue(key).await["status"]["key"]
            .as_str()
            .expect("status key")
            .to_owned()
    }

    /// The organization's outbox events of one kind (admin API).
    async fn outbox(&self, kind: &str) -> Vec<Value> {
        let a = self.app.get("/v2/_outbox?perPage=1000").await;
        assert_eq!(a.status, 200, "outbox: {}", a.body);
        a.body
            .as_array()
            .expect("the outbox is a list")
            .iter()
            .filter(|e| e["kind"] == kind)
            .cloned()
            .collect()
    }

    async fn transition(&self, key: &str, transition: &str) {
        let a = self
            .app
            .post(
                &format!("/v2/issues/{key}/transitions/{transition}/_execute"),
                json!({}),
            )
            .await;
        assert_eq!(a.status, 200, "{transition} {key}: {}", a.body);
    }

    /// The browser redirect after an install (no signature).
    async fn setup_page(&self, query: &str) -> Answer {
        let req = self.app.http.get(self.url(&format!("/sentry/setup{query}")));
        self.app.raw(req).await
    }

    /// The login of the user a `createdBy`/`updatedBy` reference names.
    async fn login_of(&self, user_ref: &Value) -> String {
        let id = user_ref["id"].as_str().expect("a user reference has an id");
        let a = self.app.get(&format!("/v2/users/{id}")).await;
        assert_eq!(a.status, 200, "user {id}: {}", a.body);
        a.body["login"].as_str().expect("login").to_owned()
    }
}

/// Generates each test twice, `sqlite::name` and `postgres::name`, calling `name(backend)`.
macro_rules! sentry_tests {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        mod sqlite {
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

sentry_tests! {
    seed_example_links_byte_for_byte,
    link_to_a_fresh_issue_shows_in_the_field,
    signature_test_vectors_and_escaped_non_ascii,
    unsigned_or_wrongly_signed_requests_are_401_and_write_nothing,
    without_a_client_secret_every_sentry_route_is_401,
    link_error_statuses_of_the_seed,
    same_link_twice_is_409_while_sentry_holds_it,
    relink_after_unlink_in_sentry_is_201_with_one_link,
    external_issues_failing_answers_409,
    a_sentry_issue_moves_to_the_new_tether_issue,
    deleting_the_remote_link_updates_the_field,
    create_from_sentry_makes_a_linked_issue,
    create_errors_write_nothing,
    create_with_a_bad_sentry_issue_id_writes_nothing,
    issue_and_queue_selects,
    issue_select_returns_at_most_50,
    installation_created_is_exchanged_once,
    resolve_and_unresolve_webhooks_close_and_reopen,
    installation_deleted_forgets_the_installation,
    closing_and_reopening_sets_the_sentry_status,
    expired_token_is_refreshed_before_the_next_call,
    concurrent_needs_for_a_token_refresh_once,
    setup_page_exchanges_the_code,
    status_sync_off_ignores_issue_webhooks,
    a_retried_status_sync_does_not_undo_a_later_change,
    own_echo_is_ignored_for_an_installation_made_by_the_setup_page,
}

// ---------------------------------------------------------------------------------------------------------------
// The link form (seed 000)
// ---------------------------------------------------------------------------------------------------------------

async fn seed_example_links_byte_for_byte(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    // The seed links YT-123: import it with that key.
    let me = env.app.get("/v2/myself").await;
    let imp = env
        .app
        .post(
            "/v2/issues/_import",
            json!({"queue": "YT", "key": "YT-123", "summary": "Crash on save",
                   "createdAt": "2024-01-02T03:04:05.000+0000", "createdBy": me.body["login"]}),
        )
        .await;
    assert_eq!(imp.status, 200, "import YT-123: {}", imp.body);

    let a = env
        .ui_post_raw(
            "/sentry/issues/link",
            SEED_BODY.as_bytes(),
            Some("c1f792f4773e80a075dd61c3b90060bb1a660bc261bbeea7cf65dc8f946a7e22".into()),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(
        a.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        a.headers
    );
    assert_eq!(
        a.body,
        json!({"webUrl": format!("{}/YT-123", env.app.base), "project": "1", "identifier": "YT-123"})
    );

    let links = env.sentry_links("YT-123").await;
    assert_eq!(links.len(), 1, "{links:?}");
    let link = &links[0];
    assert_eq!(link["object"]["key"], "1");
    assert_eq!(link["object"]["id"], "1");
    assert_eq!(link["object"]["application"]["id"], "sentry");
    assert_eq!(
        link["object"]["webUrl"],
        "http://localhost:9000/organizations/it-hock/issues/1/"
    );
    assert_eq!(link["direction"], "outward");
    assert_eq!(link["createdBy"]["display"], "Sentry");
    assert_eq!(env.login_of(&link["createdBy"]).await, "sentry");
    // The robot is a user of the organization, without a token.
    let robot = env.app.get("/v2/users/sentry").await;
    assert_eq!(robot.status, 200, "{}", robot.body);
    assert_eq!(robot.body["login"], "sentry");

    assert_eq!(env.field("YT-123").await, json!(["1"]));
    let fields = env.app.get("/v2/fields").await;
    assert_eq!(fields.status, 200);
    let f = fields
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "sentryIssues")
        .unwrap_or_else(|| panic!("/v2/fields lists no sentryIssues: {}", fields.body))
        .clone();
    assert_eq!(f["schema"]["type"], "array", "{f}");
    let apps = env.app.get("/v2/applications").await;
    assert_eq!(apps.status, 200);
    assert!(
        apps.body.as_array().unwrap().iter().any(|a| a["id"] == "sentry"),
        "/v2/applications lists no sentry: {}",
        apps.body
    );
}

async fn link_to_a_fresh_issue_shows_in_the_field(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Crash on save").await;
    // The seed's body with YT-1 instead of YT-123, byte for byte otherwise.
    let body = SEED_BODY.replace("YT-123", "YT-1");
    let a = env.ui_post("/sentry/issues/link", &body).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"webUrl": format!("{}/YT-1", env.app.base), "project": "1", "identifier": "YT-1"})
    );
    assert_eq!(env.field("YT-1").await, json!(["1"]));
    let links = env.sentry_links("YT-1").await;
    assert_eq!(links.len(), 1);
    assert_eq!(links[0]["object"]["key"], "1");
    assert_eq!(env.login_of(&links[0]["createdBy"]).await, "sentry");
    // A link by key number id works too (`fields.issue_id` as the issue's id).
    env.app.issue("YT", "Second").await;
    let id = env.issue("YT-2").await["id"].as_str().unwrap().to_owned();
    let a = env
        .ui_post(
            "/sentry/issues/link",
            &json!({"fields": {"issue_id": id}, "issueId": 2, "installationId": U, "webUrl": "http://s/2/",
                    "project": {"slug": "internal", "id": 1}, "actor": {"type": "user", "id": 1, "name": ""}})
            .to_string(),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["identifier"], "YT-2");
    assert_eq!(env.field("YT-2").await, json!(["2"]));
}

async fn signature_test_vectors_and_escaped_non_ascii(backend: Backend) {
    assert_eq!(
        signature("test-secret", SEED_BODY.as_bytes()),
        "c1f792f4773e80a075dd61c3b90060bb1a660bc261bbeea7cf65dc8f946a7e22"
    );
    assert_eq!(
        signature("test-secret", b""),
        "a41bc6d81d6413576ae0994995e0ad89a416ec97389515c3604f47722122eeeb"
    );
    let escaped = SEED_BODY.replace(r#""name":"""#, r#""name":"John Do\u00e9""#);
    assert!(escaped.contains(r"John Do\u00e9"), "{escaped}");
    assert_eq!(
        signature("test-secret", escaped.as_bytes()),
        "7c22b12fe66bf83915d59a2fbba5a13753403133a57ca4eb93322c89dcb2dd48"
    );

    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Crash on save").await;
    let body = escaped.replace("YT-123", "YT-1");
    // Signed over the unescaped re-serialisation ("John Doé"): not the bytes sent, so 401.
    let reserialised = serde_json::to_string(&serde_json::from_str::<Value>(&body).unwrap()).unwrap();
    assert!(reserialised.contains("John Doé"));
    let a = env
        .ui_post_raw(
            "/sentry/issues/link",
            body.as_bytes(),
            Some(signature(SECRET, reserialised.as_bytes())),
        )
        .await;
    expect_message(&a, 401);
    assert!(env.sentry_links("YT-1").await.is_empty());
    // Signed over the raw escaped bytes, as Sentry signs: 201.
    let a = env.ui_post("/sentry/issues/link", &body).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let links = env.sentry_links("YT-1").await;
    assert_eq!(links.len(), 1);

    // `issueId` as a string works too.
    env.app.issue("YT", "Other").await;
    let body = SEED_BODY
        .replace("YT-123", "YT-2")
        .replace(r#""issueId":1"#, r#""issueId":"31""#);
    let a = env.ui_post("/sentry/issues/link", &body).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["identifier"], "YT-2");
    assert_eq!(env.field("YT-2").await, json!(["31"]));
}

async fn unsigned_or_wrongly_signed_requests_are_401_and_write_nothing(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Crash on save").await;
    let body = link_body("YT-1", 1);

    let unsigned = env.ui_post_raw("/sentry/issues/link", body.as_bytes(), None).await;
    expect_message(&unsigned, 401);
    let forged = env
        .ui_post_raw("/sentry/issues/link", body.as_bytes(), Some("ab".repeat(32)))
        .await;
    expect_message(&forged, 401);
    let other = env
        .ui_post_raw(
            "/sentry/issues/link",
            body.as_bytes(),
            Some(signature(SECRET, br#"{"other":1}"#)),
        )
        .await;
    expect_message(&other, 401);
    let wrong_key = env
        .ui_post_raw(
            "/sentry/issues/link",
            body.as_bytes(),
            Some(signature("another-secret", body.as_bytes())),
        )
        .await;
    expect_message(&wrong_key, 401);
    let not_hex = env
        .ui_post_raw("/sentry/issues/link", body.as_bytes(), Some("not a signature".into()))
        .await;
    expect_message(&not_hex, 401);
    // A signature over the body with one byte more (a prefix must not do).
    let truncated = signature(SECRET, &body.as_bytes()[..body.len() - 1]);
    let a = env
        .ui_post_raw("/sentry/issues/link", body.as_bytes(), Some(truncated))
        .await;
    expect_message(&a, 401);

    // Nothing written: no link, no field, no robot, no application, no field definition.
    assert!(env.sentry_links("YT-1").await.is_empty());
    assert_eq!(env.field("YT-1").await, Value::Null);
    assert_eq!(env.app.get("/v2/users/sentry").await.status, 404);
    let apps = env.app.get("/v2/applications").await;
    assert!(
        !apps.body.as_array().unwrap().iter().any(|a| a["id"] == "sentry"),
        "{}",
        apps.body
    );
    let fields = env.app.get("/v2/fields").await;
    assert!(
        !fields
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == "sentryIssues"),
        "{}",
        fields.body
    );

    // The other routes check too.
    let create = json!({"fields": {"title": "Crash", "queue": "YT"}, "issueId": 9, "installationId": U,
                        "webUrl": "http://s/9/", "project": {"slug": "internal", "id": 1}, "actor": {"type": "user", "id": 1, "name": ""}})
    .to_string();
    let a = env.ui_post_raw("/sentry/issues/create", create.as_bytes(), None).await;
    expect_message(&a, 401);
    assert_eq!(env.app.count("issues").await, 1, "an unsigned create wrote an issue");
    for path in [
        format!("/sentry/issues?installationId={U}"),
        format!("/sentry/queues?installationId={U}"),
    ] {
        let a = env.app.raw(env.app.http.get(env.url(&path))).await;
        expect_message(&a, 401);
        // Signed over something else than the empty string.
        let a = env
            .app
            .raw(
                env.app
                    .http
                    .get(env.url(&path))
                    .header("Sentry-App-Signature", signature(SECRET, b"installationId")),
            )
            .await;
        expect_message(&a, 401);
    }
    env.link("YT-1", 5).await;
    let hook = issue_hook("resolved", "5", json!({"type": "user", "id": 1, "name": "Jane"}));
    let a = env
        .app
        .raw(
            env.app
                .http
                .post(env.url("/sentry/webhook"))
                .header("Content-Type", "application/json")
                .header("Sentry-Hook-Resource", "issue")
                .header("Sentry-Hook-Timestamp", "1700000000")
                .body(hook.clone()),
        )
        .await;
    expect_message(&a, 401);
    let a = env
        .app
        .raw(
            env.app
                .http
                .post(env.url("/sentry/webhook"))
                .header("Content-Type", "application/json")
                .header("Sentry-Hook-Resource", "issue")
                .header("Sentry-Hook-Timestamp", "1700000000")
                .header("Sentry-Hook-Signature", "ab".repeat(32))
                .body(hook),
        )
        .await;
    expect_message(&a, 401);
    assert!(
        env.outbox("sentry.webhook").await.is_empty(),
        "an unsigned webhook was recorded"
    );
    assert_eq!(env.status("YT-1").await, "open");
}

async fn without_a_client_secret_every_sentry_route_is_401(backend: Backend) {
    let fake = Fake::start(false).await;
    let Some(app) = TestApp::spawn_sentry(backend, config(&fake, None)).await else {
        return;
    };
    app.queue("YT").await;
    app.issue("YT", "Crash on save").await;
    let env = Env { app, fake };
    // Signed with the secret Sentry would use: still 401, the server has none.
    let install = install_body(U, "grant-1");
    let a = env.hook("installation", &install, "1700000000").await;
    expect_message(&a, 401);
    let a = env.link("YT-1", 1).await;
    expect_message(&a, 401);
    let create = json!({"fields": {"title": "Crash", "queue": "YT"}, "issueId": 9, "installationId": U,
                        "webUrl": "http://s/9/", "project": {"slug": "internal", "id": 1}, "actor": {"type": "user", "id": 1, "name": ""}})
    .to_string();
    let a = env.ui_post("/sentry/issues/create", &create).await;
    expect_message(&a, 401);
    let a = env.ui_get(&format!("/sentry/issues?installationId={U}")).await;
    expect_message(&a, 401);
    let a = env.ui_get(&format!("/sentry/queues?installationId={U}")).await;
    expect_message(&a, 401);
    let a = env
        .app
        .raw(env.app.http.get(env.url(&format!(
            "/sentry/setup?code=grant-1&installationId={U}&orgSlug={SENTRY_ORG}"
        ))))
        .await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        env.fake.hits().is_empty(),
        "Tether called Sentry: {:?}",
        env.fake.hits()
    );
    assert!(env.sentry_links("YT-1").await.is_empty());
    assert_eq!(env.app.count("issues").await, 1);
}

async fn link_error_statuses_of_the_seed(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Crash on save").await;
    let base = json!({"fields": {"issue_id": "YT-1"}, "issueId": 1, "installationId": U, "webUrl": "http://s/1/",
                      "project": {"slug": "internal", "id": 1}, "actor": {"type": "user", "id": 1, "name": ""}});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        v.to_string()
    };

    // No `fields.issue_id`: 403 (the seed).
    let a = env
        .ui_post("/sentry/issues/link", &with(&|v| v["fields"] = json!({})))
        .await;
    expect_message(&a, 403);
    let a = env
        .ui_post(
            "/sentry/issues/link",
            &with(&|v| {
                v.as_object_mut().unwrap().remove("fields");
            }),
        )
        .await;
    expect_message(&a, 403);
    // Unknown installation: 403.
    let a = env
        .ui_post(
            "/sentry/issues/link",
            &with(&|v| v["installationId"] = json!("00000000-0000-4000-8000-000000000000")),
        )
        .await;
    expect_message(&a, 403);
    // Unknown Tether issue: 404; also an issue of another organization.
    let a = env
        .ui_post(
            "/sentry/issues/link",
            &with(&|v| v["fields"]["issue_id"] = json!("YT-99")),
        )
        .await;
    expect_message(&a, 404);
    let other = env.app.user_token("other", "olga", Role::Admin).await;
    let other = env.app.as_user(&other, "other");
    other.queue("OT").await;
    other.issue("OT", "Crash elsewhere").await;
    let a = env
        .ui_post(
            "/sentry/issues/link",
            &with(&|v| v["fields"]["issue_id"] = json!("OT-1")),
        )
        .await;
    expect_message(&a, 404);
    let a = env
        .ui_post(
            "/sentry/issues/link",
            &with(&|v| v["fields"]["issue_id"] = json!("no such key")),
        )
        .await;
    expect_message(&a, 404);
    // Malformed JSON (signed), and JSON that is not an object: 400.
    let a = env
        .ui_post("/sentry/issues/link", r#"{"fields":{"issue_id":"YT-1"},"#)
        .await;
    expect_message(&a, 400);
    let a = env.ui_post("/sentry/issues/link", "[1,2]").await;
    expect_message(&a, 400);
    // No installationId: 400.
    let a = env
        .ui_post(
            "/sentry/issues/link",
            &with(&|v| {
                v.as_object_mut().unwrap().remove("installationId");
            }),
        )
        .await;
    expect_message(&a, 400);

    // None of these wrote anything.
    assert!(env.sentry_links("YT-1").await.is_empty());
    assert_eq!(env.field("YT-1").await, Value::Null);
    assert_eq!(other.get("/v2/issues/OT-1/remotelinks").await.body, json!([]));
    // And the body itself links.
    let a = env.ui_post("/sentry/issues/link", &base.to_string()).await;
    assert_eq!(a.status, 201, "{}", a.body);
}

async fn same_link_twice_is_409_while_sentry_holds_it(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Crash on save").await;
    assert_eq!(env.link("YT-1", 1).await.status, 201);
    env.fake.set_external(External::List(json!([{
        "id": "1", "issueId": 1, "serviceType": "tether", "displayName": "1#YT-1",
        "webUrl": format!("{}/YT-1", env.app.base)
    }])));
    let a = env.link("YT-1", 1).await;
    expect_message(&a, 409);
    let asked = env
        .fake
        .wait_for("the external-issues check", 1, |h| h.method == "GET")
        .await;
    assert_eq!(
        asked[0].path,
        format!("/api/0/organizations/{SENTRY_ORG}/issues/1/external-issues/")
    );
    assert_eq!(asked[0].header("authorization"), Some("Bearer tok-1"));
    let links = env.sentry_links("YT-1").await;
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(env.field("YT-1").await, json!(["1"]));
    // Recognised by its web URL too, whatever the service type says.
    env.fake.set_external(External::List(json!([{
        "id": "1", "issueId": 1, "serviceType": "renamed", "displayName": "1#YT-1",
        "webUrl": format!("{}/YT-1", env.app.base)
    }])));
    expect_message(&env.link("YT-1", 1).await, 409);
    assert_eq!(env.sentry_links("YT-1").await.len(), 1);
}

async fn relink_after_unlink_in_sentry_is_201_with_one_link(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Crash on save").await;
    assert_eq!(env.link("YT-1", 1).await.status, 201);
    let first = env.sentry_links("YT-1").await;
    assert_eq!(first.len(), 1);
    env.fake.set_external(External::List(json!([])));
    let a = env.link("YT-1", 1).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"webUrl": format!("{}/YT-1", env.app.base), "project": "1", "identifier": "YT-1"})
    );
    assert_eq!(
        env.fake
            .count(|h| h.method == "GET" && h.path.ends_with("/issues/1/external-issues/")),
        1
    );
    let links = env.sentry_links("YT-1").await;
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0]["object"]["key"], "1");
    assert_eq!(env.field("YT-1").await, json!(["1"]));
    // Another app's external issue on the Sentry issue is not ours: relinked as well.
    env.fake.set_external(External::List(json!([{
        "id": "2", "issueId": 1, "serviceType": "jira", "displayName": "JIRA#1", "webUrl": "https://jira.example/JIRA-1"
    }])));
    let a = env.link("YT-1", 1).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(env.sentry_links("YT-1").await.len(), 1);
    assert_eq!(env.field("YT-1").await, json!(["1"]));
}

async fn external_issues_failing_answers_409(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Crash on save").await;
    assert_eq!(env.link("YT-1", 1).await.status, 201);
    env.fake.set_external(External::Fail);
    let a = env.link("YT-1", 1).await;
    expect_message(&a, 409);
    assert_eq!(
        env.fake
            .count(|h| h.method == "GET" && h.path.ends_with("/external-issues/")),
        1
    );
    assert_eq!(env.sentry_links("YT-1").await.len(), 1);
    assert_eq!(env.field("YT-1").await, json!(["1"]));
}

async fn a_sentry_issue_moves_to_the_new_tether_issue(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "First").await;
    env.app.issue("YT", "Second").await;
    assert_eq!(env.link("YT-1", 3).await.status, 201);
    assert_eq!(env.link("YT-1", 7).await.status, 201);
    assert_eq!(env.field("YT-1").await, json!(["3", "7"]));
    let a = env.link("YT-2", 7).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["identifier"], "YT-2");
    assert_eq!(env.field("YT-1").await, json!(["3"]));
    let left: Vec<Value> = env
        .sentry_links("YT-1")
        .await
        .iter()
        .map(|l| l["object"]["key"].clone())
        .collect();
    assert_eq!(left, vec![json!("3")]);
    assert_eq!(env.field("YT-2").await, json!(["7"]));
    // Moving the last one leaves no field at all.
    assert_eq!(env.link("YT-2", 3).await.status, 201);
    assert!(env.sentry_links("YT-1").await.is_empty());
    let one = env.issue("YT-1").await;
    assert!(one.get("sentryIssues").is_none(), "sentryIssues must be omitted: {one}");
    assert_eq!(env.field("YT-2").await, json!(["7", "3"]));
}

async fn deleting_the_remote_link_updates_the_field(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Crash on save").await;
    assert_eq!(env.link("YT-1", 1).await.status, 201);
    assert_eq!(env.link("YT-1", 2).await.status, 201);
    assert_eq!(env.field("YT-1").await, json!(["1", "2"]));
    let links = env.sentry_links("YT-1").await;
    let id_of = |key: &str| {
        links
            .iter()
            .find(|l| l["object"]["key"] == key)
            .map(|l| l["id"].clone())
            .unwrap()
    };
    let a = env
        .app
        .delete(&format!("/v2/issues/YT-1/remotelinks/{}", id_of("1")))
        .await;
    assert_eq!(a.status, 204, "{}", a.body);
    assert_eq!(env.field("YT-1").await, json!(["2"]));
    let a = env
        .app
        .delete(&format!("/v2/issues/YT-1/remotelinks/{}", id_of("2")))
        .await;
    assert_eq!(a.status, 204, "{}", a.body);
    let issue = env.issue("YT-1").await;
    assert!(
        issue.get("sentryIssues").is_none(),
        "sentryIssues must be omitted: {issue}"
    );
    assert!(env.sentry_links("YT-1").await.is_empty());
    // Linking again after the deletion is a plain new link.
    let a = env.link("YT-1", 1).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(env.field("YT-1").await, json!(["1"]));
}

// ---------------------------------------------------------------------------------------------------------------
// The create form and the selects
// ---------------------------------------------------------------------------------------------------------------

fn create_body(fields: Value, issue_id: Value) -> String {
    json!({
        "fields": fields,
        "issueId": issue_id,
        "installationId": U,
        "webUrl": "http://localhost:9000/organizations/it-hock/issues/9/",
        "project": {"slug": "internal", "id": 1},
        "actor": {"type": "user", "id": 1, "name": "Jane"}
    })
    .to_string()
}

async fn create_from_sentry_makes_a_linked_issue(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Existing").await;
    let a = env
        .ui_post(
            "/sentry/issues/create",
            &create_body(json!({"title": "Crash", "description": "d", "queue": "YT"}), json!(9)),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"webUrl": format!("{}/YT-2", env.app.base), "project": "1", "identifier": "YT-2"})
    );
    let issue = env.issue("YT-2").await;
    assert_eq!(issue["summary"], "Crash");
    assert_eq!(issue["description"], "d");
    assert_eq!(issue["queue"]["key"], "YT");
    assert_eq!(issue["status"]["key"], "open");
    assert_eq!(issue["sentryIssues"], json!(["9"]));
    assert_eq!(env.login_of(&issue["createdBy"]).await, "sentry");
    let links = env.sentry_links("YT-2").await;
    assert_eq!(links.len(), 1);
    assert_eq!(links[0]["object"]["key"], "9");
    assert_eq!(
        links[0]["object"]["webUrl"],
        "http://localhost:9000/organizations/it-hock/issues/9/"
    );
    // The description is optional.
    let a = env
        .ui_post(
            "/sentry/issues/create",
            &create_body(json!({"title": "Another", "queue": "YT"}), json!("10")),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["identifier"], "YT-3");
    assert_eq!(env.field("YT-3").await, json!(["10"]));
}

async fn create_errors_write_nothing(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Existing").await;
    let a = env
        .ui_post(
            "/sentry/issues/create",
            &create_body(json!({"title": "Crash", "queue": "NOPE"}), json!(9)),
        )
        .await;
    expect_message(&a, 404);
    let a = env
        .ui_post("/sentry/issues/create", &create_body(json!({"queue": "YT"}), json!(9)))
        .await;
    expect_message(&a, 400);
    let a = env
        .ui_post(
            "/sentry/issues/create",
            &create_body(json!({"title": "Crash"}), json!(9)),
        )
        .await;
    expect_message(&a, 400);
    let a = env.ui_post("/sentry/issues/create", "{not json").await;
    expect_message(&a, 400);
    assert_eq!(
        env.app.count("issues").await,
        1,
        "a rejected create left an issue behind"
    );
}

async fn create_with_a_bad_sentry_issue_id_writes_nothing(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Existing").await;
    for bad in [json!("not-a-number"), Value::Null] {
        let a = env
            .ui_post(
                "/sentry/issues/create",
                &create_body(json!({"title": "Crash", "queue": "YT"}), bad.clone()),
            )
            .await;
        expect_message(&a, 400);
        assert_eq!(
            env.app.count("issues").await,
            1,
            "a create rejected for issueId {bad} left an issue behind: {}",
            env.app
                .post("/v2/issues/_search", json!({"filter": {"queue": "YT"}}))
                .await
                .body
        );
    }
}

async fn issue_and_queue_selects(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Crash on save").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    env.app.issue("YT", "Slow page").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    env.app.issue("YT", "Crash when closed").await;
    env.transition("YT-3", "close").await;
    let other = env.app.user_token("other", "olga", Role::Admin).await;
    let other = env.app.as_user(&other, "other");
    other.queue("OT").await;
    other.issue("OT", "Crash elsewhere").await;

    // No query: the open issues, most recent first.
    let a = env
        .ui_get(&format!("/sentry/issues?installationId={U}&projectSlug=internal"))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body,
        json!([
            {"label": "[YT-2] Slow page", "value": "YT-2"},
            {"label": "[YT-1] Crash on save", "value": "YT-1"}
        ])
    );
    // By summary, case-insensitively.
    let a = env
        .ui_get(&format!(
            "/sentry/issues?installationId={U}&projectSlug=internal&query=crash"
        ))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let values: Vec<&str> = a
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["value"].as_str().unwrap())
        .collect();
    assert!(values.contains(&"YT-1"), "{}", a.body);
    assert!(!values.contains(&"YT-2"), "{}", a.body);
    assert!(
        !values.iter().any(|v| v.starts_with("OT")),
        "another organization's issue: {}",
        a.body
    );
    assert!(
        a.body
            .as_array()
            .unwrap()
            .contains(&json!({"label": "[YT-1] Crash on save", "value": "YT-1"})),
        "{}",
        a.body
    );
    let a = env
        .ui_get(&format!("/sentry/issues?installationId={U}&query=CRASH%20ON"))
        .await;
    assert_eq!(a.body, json!([{"label": "[YT-1] Crash on save", "value": "YT-1"}]));
    // By key.
    let a = env
        .ui_get(&format!("/sentry/issues?installationId={U}&query=YT-2"))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!([{"label": "[YT-2] Slow page", "value": "YT-2"}]));
    // LIKE wildcards are plain characters.
    for wild in ["%25", "_", "%5C"] {
        let a = env
            .ui_get(&format!("/sentry/issues?installationId={U}&query={wild}"))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body, json!([]), "query {wild}");
    }
    let a = env
        .ui_get(&format!("/sentry/issues?installationId={U}&query=OT-1"))
        .await;
    assert_eq!(a.body, json!([]), "another organization's issue by key");
    let a = env
        .ui_get(&format!("/sentry/issues?installationId={U}&query=elsewhere"))
        .await;
    assert_eq!(a.body, json!([]), "another organization's issue by summary");
    // Unknown or missing installation.
    let a = env
        .ui_get("/sentry/issues?installationId=00000000-0000-4000-8000-000000000000")
        .await;
    expect_message(&a, 403);
    let a = env.ui_get("/sentry/issues").await;
    expect_message(&a, 400);

    // The queue select: this organization's queues only.
    let a = env
        .ui_get(&format!("/sentry/queues?installationId={U}&projectSlug=internal"))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!([{"label": "Queue YT", "value": "YT"}]));
    let a = env.ui_get("/sentry/queues").await;
    expect_message(&a, 400);
}

async fn issue_select_returns_at_most_50(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    for i in 1..=53 {
        env.app.issue("YT", &format!("Crash number {i}")).await;
    }
    let a = env.ui_get(&format!("/sentry/issues?installationId={U}")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let items = a.body.as_array().unwrap();
    assert_eq!(items.len(), 50);
    for item in items {
        let obj = item.as_object().unwrap();
        assert_eq!(obj.len(), 2, "{item}");
        assert!(obj["label"].is_string() && obj["value"].is_string(), "{item}");
    }
    let a = env
        .ui_get(&format!("/sentry/issues?installationId={U}&query=crash"))
        .await;
    assert_eq!(a.body.as_array().unwrap().len(), 50);
}

// ---------------------------------------------------------------------------------------------------------------
// Installation and webhooks
// ---------------------------------------------------------------------------------------------------------------

async fn installation_created_is_exchanged_once(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    // `Env::start` saw the exchange and the verification; a redelivery of the same webhook does not exchange again.
    let a = env
        .hook("installation", &install_body(U, "grant-1"), "1700000000")
        .await;
    assert!(a.status.is_success(), "{} {}", a.status, a.body);
    assert_eq!(env.outbox("sentry.install").await.len(), 1);
    assert_eq!(env.fake.count(|h| h.is_code_exchange(U)), 1);
    // The installation maps to the bootstrap organization: its selects work.
    let a = env.ui_get(&format!("/sentry/queues?installationId={U}")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!([{"label": "Queue YT", "value": "YT"}]));
}

async fn resolve_and_unresolve_webhooks_close_and_reopen(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Crash on save").await;
    assert_eq!(env.link("YT-1", 5).await.status, 201);
    let jane = json!({"type": "user", "id": 1, "name": "Jane"});

    let resolved = issue_hook("resolved", "5", jane.clone());
    let a = env.hook("issue", &resolved, "1700000100").await;
    assert!(a.status.is_success(), "{} {}", a.status, a.body);
    eventually!("YT-1 is closed", { env.status("YT-1").await == "closed" });
    let issue = env.issue("YT-1").await;
    assert_eq!(env.login_of(&issue["updatedBy"]).await, "sentry");
    // Sentry's own change is not sent back to Sentry.
    assert!(
        env.outbox("sentry.status").await.is_empty(),
        "{:?}",
        env.outbox("sentry.status").await
    );

    // The same delivery again (a retry: same body and timestamp, another Request-ID) is recorded once.
    let a = env.hook("issue", &resolved, "1700000100").await;
    assert!(a.status.is_success(), "{} {}", a.status, a.body);
    assert_eq!(env.outbox("sentry.webhook").await.len(), 1);
    assert_eq!(env.status("YT-1").await, "closed");

    // Unresolved reopens.
    let a = env
        .hook("issue", &issue_hook("unresolved", "5", jane.clone()), "1700000200")
        .await;
    assert!(a.status.is_success(), "{} {}", a.status, a.body);
    eventually!("YT-1 is open again", { env.status("YT-1").await == "open" });
    assert_eq!(env.outbox("sentry.webhook").await.len(), 2);
    assert!(env.outbox("sentry.status").await.is_empty());

    // A resolve caused by our own app (the echo of a status sync) is ignored.
    let ours = issue_hook(
        "resolved",
        "5",
        json!({"type": "application", "id": "app-uuid", "name": "Tether"}),
    );
    let a = env.hook("issue", &ours, "1700000300").await;
    assert!(a.status.is_success(), "{} {}", a.status, a.body);
    assert_eq!(
        env.outbox("sentry.webhook").await.len(),
        2,
        "our own change was recorded"
    );
    assert_eq!(env.status("YT-1").await, "open");

    // An automatic resolve by Sentry itself is not ours: it closes.
    let auto = issue_hook(
        "resolved",
        "5",
        json!({"type": "application", "id": "sentry", "name": "Sentry"}),
    );
    let a = env.hook("issue", &auto, "1700000400").await;
    assert!(a.status.is_success(), "{} {}", a.status, a.body);
    eventually!("YT-1 is closed by Sentry", { env.status("YT-1").await == "closed" });

    // A resolve of a Sentry issue that is not linked changes nothing.
    env.app.issue("YT", "Unrelated").await;
    let a = env
        .hook("issue", &issue_hook("resolved", "404", jane), "1700000500")
        .await;
    assert!(a.status.is_success(), "{} {}", a.status, a.body);
    eventually!("the unlinked webhook is handled", {
        env.outbox("sentry.webhook")
            .await
            .iter()
            .all(|e| e["state"] == "delivered")
    });
    assert_eq!(env.status("YT-2").await, "open");
}

async fn installation_deleted_forgets_the_installation(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Crash on save").await;
    assert_eq!(env.link("YT-1", 1).await.status, 201);
    let deleted = json!({
        "action": "deleted",
        "installation": {"uuid": U},
        "data": {"installation": {"uuid": U, "status": "installed", "organization": {"slug": SENTRY_ORG},
                                  "app": {"uuid": "app-uuid", "slug": "tether"}}},
        "actor": {"type": "user", "id": 1, "name": "x"}
    })
    .to_string();
    let a = env.hook("installation", &deleted, "1700000600").await;
    assert!(a.status.is_success(), "{} {}", a.status, a.body);
    expect_message(&env.link("YT-1", 2).await, 403);
    expect_message(&env.ui_get(&format!("/sentry/issues?installationId={U}")).await, 403);
    expect_message(&env.ui_get(&format!("/sentry/queues?installationId={U}")).await, 403);
    let a = env
        .ui_post(
            "/sentry/issues/create",
            &create_body(json!({"title": "Crash", "queue": "YT"}), json!(9)),
        )
        .await;
    expect_message(&a, 403);
    assert_eq!(env.app.count("issues").await, 1);
}

// ---------------------------------------------------------------------------------------------------------------
// Status sync to Sentry, tokens, setup
// ---------------------------------------------------------------------------------------------------------------

fn status_put(id: &str) -> impl Fn(&Hit) -> bool {
    let path = format!("/api/0/organizations/{SENTRY_ORG}/issues/{id}/");
    move |h: &Hit| h.method == "PUT" && h.path == path
}

async fn closing_and_reopening_sets_the_sentry_status(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Crash on save").await;
    env.app.issue("YT", "Not linked").await;
    assert_eq!(env.link("YT-1", 3).await.status, 201);

    env.transition("YT-1", "close").await;
    let puts = env
        .fake
        .wait_for("the resolve of Sentry issue 3", 1, status_put("3"))
        .await;
    assert_eq!(puts[0].body, json!({"status": "resolved"}));
    assert_eq!(puts[0].header("authorization"), Some("Bearer tok-1"));

    env.transition("YT-1", "reopen").await;
    let puts = env
        .fake
        .wait_for("the unresolve of Sentry issue 3", 2, status_put("3"))
        .await;
    assert_eq!(puts[1].body, json!({"status": "unresolved"}));
    assert_eq!(puts[1].header("authorization"), Some("Bearer tok-1"));

    // Starting progress is no status change for Sentry; an unlinked issue sends nothing.
    env.transition("YT-1", "start_progress").await;
    env.transition("YT-2", "close").await;
    eventually!("the status events are delivered", {
        let evs = env.outbox("sentry.status").await;
        evs.len() == 2 && evs.iter().all(|e| e["state"] == "delivered")
    });
    assert_eq!(
        env.fake
            .count(|h| h.method == "PUT" && h.path.starts_with("/api/0/organizations/")),
        2
    );
    // Closing from inProgress resolves too.
    env.transition("YT-1", "close").await;
    let puts = env.fake.wait_for("the second resolve", 3, status_put("3")).await;
    assert_eq!(puts[2].body, json!({"status": "resolved"}));
}

async fn expired_token_is_refreshed_before_the_next_call(backend: Backend) {
    let Some(env) = Env::start_with(backend, true).await else {
        return;
    };
    env.app.issue("YT", "Crash on save").await;
    assert_eq!(env.link("YT-1", 1).await.status, 201);
    env.fake.set_external(External::List(json!([])));
    let before = env.fake.hits().len();
    let a = env.link("YT-1", 1).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let after: Vec<Hit> = env.fake.hits().into_iter().skip(before).collect();
    let seen: Vec<String> = after.iter().map(|h| format!("{} {}", h.method, h.path)).collect();
    assert_eq!(
        seen,
        vec![
            format!("POST {}", auth_path(U)),
            format!("GET /api/0/organizations/{SENTRY_ORG}/issues/1/external-issues/"),
        ]
    );
    assert_eq!(
        after[0].body,
        json!({"grant_type": "refresh_token", "refresh_token": "ref-1", "client_id": "cid", "client_secret": SECRET})
    );
    assert_eq!(after[1].header("authorization"), Some("Bearer tok-2"));

    // The refreshed token is kept: a status sync uses tok-2 without refreshing again.
    env.transition("YT-1", "close").await;
    let puts = env
        .fake
        .wait_for("the resolve of Sentry issue 1", 1, status_put("1"))
        .await;
    assert_eq!(puts[0].header("authorization"), Some("Bearer tok-2"));
    assert_eq!(env.fake.count(Hit::is_refresh), 1);
}

async fn concurrent_needs_for_a_token_refresh_once(backend: Backend) {
    let Some(env) = Env::start_with(backend, true).await else {
        return;
    };
    for s in ["One", "Two", "Three"] {
        env.app.issue("YT", s).await;
    }
    assert_eq!(env.link("YT-1", 11).await.status, 201);
    assert_eq!(env.link("YT-2", 12).await.status, 201);
    assert_eq!(env.link("YT-3", 13).await.status, 201);
    assert_eq!(env.fake.count(Hit::is_refresh), 0);
    env.fake.set_external(External::List(json!([])));
    // A slow refresh, so that every need for a token arrives while it is under way.
    env.fake.set_refresh_delay(Duration::from_millis(500));
    let (_, _, relink) = tokio::join!(
        env.transition("YT-1", "close"),
        env.transition("YT-2", "close"),
        env.link("YT-3", 13),
    );
    assert_eq!(relink.status, 201, "{}", relink.body);
    let p11 = env.fake.wait_for("the resolve of 11", 1, status_put("11")).await;
    let p12 = env.fake.wait_for("the resolve of 12", 1, status_put("12")).await;
    assert_eq!(
        env.fake.count(Hit::is_refresh),
        1,
        "concurrent needs refreshed more than once: {:#?}",
        env.fake
            .hits()
            .iter()
            .map(|h| format!("{} {} {}", h.method, h.path, h.body))
            .collect::<Vec<_>>()
    );
    assert_eq!(p11[0].header("authorization"), Some("Bearer tok-2"));
    assert_eq!(p12[0].header("authorization"), Some("Bearer tok-2"));
    let check = env
        .fake
        .hits()
        .into_iter()
        .find(|h| h.method == "GET" && h.path.ends_with("/issues/13/external-issues/"))
        .expect("the relink asked Sentry");
    assert_eq!(check.header("authorization"), Some("Bearer tok-2"));
    eventually!("the status events are delivered", {
        let evs = env.outbox("sentry.status").await;
        evs.len() == 2 && evs.iter().all(|e| e["state"] == "delivered" && e["attempts"] == 1)
    });
}

async fn setup_page_exchanges_the_code(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    let u2 = "5b0d1c6e-2f4a-4c1b-9e3d-7a8b9c0d1e2f";
    let a = env
        .setup_page(&format!("?code=grant-2&installationId={u2}&orgSlug={SENTRY_ORG}"))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.header("content-type").is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        a.headers
    );
    let html = a.body.as_str().expect("an HTML page");
    assert!(html.contains("<html"), "{html}");
    assert!(html.contains(SENTRY_ORG), "{html}");
    let exchange: Vec<Hit> = env.fake.hits().into_iter().filter(|h| h.is_code_exchange(u2)).collect();
    assert_eq!(exchange.len(), 1);
    assert_eq!(
        exchange[0].body,
        json!({"grant_type": "authorization_code", "code": "grant-2", "client_id": "cid", "client_secret": SECRET})
    );
    let verify_path = format!("/api/0/sentry-app-installations/{u2}/");
    assert_eq!(env.fake.count(|h| h.method == "PUT" && h.path == verify_path), 1);
    // The installation works now, in the bootstrap organization.
    let a = env.ui_get(&format!("/sentry/queues?installationId={u2}")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!([{"label": "Queue YT", "value": "YT"}]));
    // Visiting again does not spend another code.
    let a = env
        .setup_page(&format!("?code=grant-2&installationId={u2}&orgSlug={SENTRY_ORG}"))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(env.fake.count(|h| h.is_code_exchange(u2)), 1);

    // Without a code: 400, nothing exchanged.
    let u3 = "6c1e2d7f-3a5b-4d2c-8f4e-8b9c0d1e2f3a";
    let a = env
        .setup_page(&format!("?installationId={u3}&orgSlug={SENTRY_ORG}"))
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let a = env.setup_page("").await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(env.fake.count(|h| h.is_code_exchange(u3)), 0);
    expect_message(&env.ui_get(&format!("/sentry/queues?installationId={u3}")).await, 403);
    // The organization slug is shown escaped.
    let a = env.setup_page("?orgSlug=%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    assert_eq!(a.status, 400);
    assert!(!a.body.as_str().unwrap_or_default().contains("<script>"), "{}", a.body);
}

async fn status_sync_off_ignores_issue_webhooks(backend: Backend) {
    let Some(env) = Env::start_opts(backend, false, false).await else {
        return;
    };
    env.app.issue("YT", "Crash on save").await;
    assert_eq!(env.link("YT-1", 5).await.status, 201);
    let a = env
        .hook(
            "issue",
            &issue_hook("resolved", "5", json!({"type": "user", "id": 1, "name": "Jane"})),
            "1700000100",
        )
        .await;
    assert!(a.status.is_success(), "{} {}", a.status, a.body);
    assert!(env.outbox("sentry.webhook").await.is_empty());
    assert_eq!(env.status("YT-1").await, "open");
}

async fn a_retried_status_sync_does_not_undo_a_later_change(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    env.app.issue("YT", "Crash on save").await;
    assert_eq!(env.link("YT-1", 3).await.status, 201);
    // Sentry fails the resolve for a while; meanwhile the issue is reopened in Tether.
    env.fake.set_fail_resolve(true);
    env.transition("YT-1", "close").await;
    env.fake
        .wait_for("the first (failing) resolve", 1, status_put("3"))
        .await;
    env.transition("YT-1", "reopen").await;
    // Give the reopen a bounded chance to be sent while the resolve is still failing.
    let start = Instant::now();
    while env.fake.accepted().is_empty() && start.elapsed() < Duration::from_millis(150) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    env.fake.set_fail_resolve(false);
    eventually!("the status events are settled", {
        let evs = env.outbox("sentry.status").await;
        evs.len() == 2 && evs.iter().all(|e| e["state"] != "pending")
    });
    assert_eq!(env.status("YT-1").await, "open");
    let accepted = env.fake.accepted();
    assert_eq!(
        accepted.last().map(|(_, s)| s.as_str()),
        Some("unresolved"),
        "Sentry ends {accepted:?} while the Tether issue is open"
    );
}

async fn own_echo_is_ignored_for_an_installation_made_by_the_setup_page(backend: Backend) {
    let Some(env) = Env::start(backend).await else { return };
    let u2 = "5b0d1c6e-2f4a-4c1b-9e3d-7a8b9c0d1e2f";
    let a = env
        .setup_page(&format!("?code=grant-2&installationId={u2}&orgSlug={SENTRY_ORG}"))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    env.app.issue("YT", "Crash on save").await;
    let body = link_body("YT-1", 21).replace(U, u2);
    assert_eq!(env.ui_post("/sentry/issues/link", &body).await.status, 201);
    env.transition("YT-1", "close").await;
    env.fake.wait_for("the resolve of 21", 1, status_put("21")).await;
    env.transition("YT-1", "reopen").await;
    env.fake.wait_for("the unresolve of 21", 2, status_put("21")).await;
    // Now Sentry's webhook for our own resolve arrives (late): it must not close the issue again.
    let echo = issue_hook(
        "resolved",
        "21",
        json!({"type": "application", "id": "app-uuid", "name": "Tether"}),
    )
    .replace(U, u2);
    let a = env.hook("issue", &echo, "1700000700").await;
    assert!(a.status.is_success(), "{} {}", a.status, a.body);
    assert!(
        env.outbox("sentry.webhook").await.is_empty(),
        "the echo of Tether's own change was recorded"
    );
    assert_eq!(env.status("YT-1").await, "open");
}
