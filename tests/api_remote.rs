//! External applications, remote links and backlinks through the outbox (contract §1–§3, §7; seed 003), over HTTP,
//! on SQLite and PostgreSQL, against a fake external application served from inside each test on `127.0.0.1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{Answer, Backend, TestApp};
use reqwest::Method;
use serde_json::{Value, json};
use tether::domain::Role;
use tether::outbox::OutboxConfig;

/// How long any wait for an expected state may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);
/// The token of the fake application, sent by Tether as `Authorization: OAuth …`.
const APP_TOKEN: &str = "fake-app-oauth-token-5ecr3t-9f8e7d";
/// The fake application's id.
const APP: &str = "ru.example.fake";

// ---------------------------------------------------------------------------------------------------------------
// The fake external application
// ---------------------------------------------------------------------------------------------------------------

/// How the fake answers backlink calls (`createLinkUrl`, `removeLinkUrl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 201 at once.
    Ok,
    /// 500 at once.
    Fail,
    /// 200 after this long.
    Slow(Duration),
}

/// One request the fake received.
#[derive(Debug, Clone)]
struct Hit {
    /// When it arrived (before its body was read).
    at: Instant,
    method: String,
    /// The raw path, still percent-encoded.
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
    /// How the fake answered it.
    mode: Mode,
}

impl Hit {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

#[derive(Debug)]
struct FakeState {
    /// Backlink calls, in arrival order.
    hits: Mutex<Vec<Hit>>,
    /// Object-info calls.
    info_hits: Mutex<Vec<Hit>>,
    mode: Mutex<Mode>,
    /// When slow answers were sent: (index in `hits`, instant).
    answered: Mutex<Vec<(usize, Instant)>>,
}

/// A tiny external application: `POST /links` (createLinkUrl), `DELETE /links/…` (removeLinkUrl), and object info
/// under `/info/{key}` (good), `/slow-info/`, `/bad-info/` (500), `/garbage-info/` (not JSON), `/partial-info/`
/// (no `summary`).
struct Fake {
    addr: SocketAddr,
    st: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Fake {
    async fn start() -> Fake {
        Self::on(0).await
    }

    /// Starts the fake on a given port (0: any).
    async fn on(port: u16) -> Fake {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the fake application");
        let addr = listener.local_addr().unwrap();
        let st = Arc::new(FakeState {
            hits: Mutex::new(Vec::new()),
            info_hits: Mutex::new(Vec::new()),
            mode: Mutex::new(Mode::Ok),
            answered: Mutex::new(Vec::new()),
        });
        let router = axum::Router::new().fallback(fake_handler).with_state(st.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Fake { addr, st, task }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set_mode(&self, mode: Mode) {
        *self.st.mode.lock().unwrap() = mode;
    }

    fn hits(&self) -> Vec<Hit> {
        self.st.hits.lock().unwrap().clone()
    }

    fn info_hits(&self) -> Vec<Hit> {
        self.st.info_hits.lock().unwrap().clone()
    }

    fn answered(&self) -> Vec<(usize, Instant)> {
        self.st.answered.lock().unwrap().clone()
    }

    /// Waits until at least `n` backlink calls arrived; returns them all.
    async fn wait_hits(&self, n: usize) -> Vec<Hit> {
        eventually(&format!("{n} calls at the fake application"), || async {
            let h = self.hits();
            (h.len() >= n).then_some(h)
        })
        .await
    }

    /// Asserts that the number of backlink calls stays `n` for `window` (a bounded look for calls that must not come).
    async fn assert_quiet(&self, n: usize, window: Duration) {
        let end = Instant::now() + window;
        while Instant::now() < end {
            let h = self.hits();
            assert_eq!(
                h.len(),
                n,
                "unexpected calls at the fake application: {:#?}",
                &h[n.min(h.len())..]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fake_handler(State(st): State<Arc<FakeState>>, req: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let mode = *st.mode.lock().unwrap();
    let hit = Hit {
        at,
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
        mode,
    };
    let info = |rest: &str| {
        let key = percent_encoding::percent_decode_str(rest)
            .decode_utf8_lossy()
            .into_owned();
        json!({"key": key, "summary": format!("Summary of {key}"), "status": {"name": "Open"}})
    };
    for (prefix, kind) in [
        ("/info/", 0),
        ("/slow-info/", 1),
        ("/bad-info/", 2),
        ("/garbage-info/", 3),
        ("/partial-info/", 4),
    ] {
        if let Some(rest) = path.strip_prefix(prefix) {
            st.info_hits.lock().unwrap().push(hit);
            return match kind {
                0 => axum::Json(info(rest)).into_response(),
                1 => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    axum::Json(info(rest)).into_response()
                }
                2 => (StatusCode::INTERNAL_SERVER_ERROR, "info is down").into_response(),
                3 => (StatusCode::OK, "<html>not json</html>").into_response(),
                _ => axum::Json(json!({"key": rest})).into_response(),
            };
        }
    }
    let index = {
        let mut hits = st.hits.lock().unwrap();
        hits.push(hit);
        hits.len() - 1
    };
    match mode {
        Mode::Ok => (StatusCode::CREATED, axum::Json(json!({"ok": true}))).into_response(),
        Mode::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "boom: the receiver failed").into_response(),
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            st.answered.lock().unwrap().push((index, Instant::now()));
            (StatusCode::OK, "slow but fine").into_response()
        }
    }
}

/// A port nothing listens on (bound once by the OS, then released).
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------------------------
// Talking to Tether
// ---------------------------------------------------------------------------------------------------------------

/// Anything that sends authenticated API requests: a [`TestApp`] or an [`Api`] on a restartable server.
trait Client: Sync {
    fn send(&self, method: Method, path: &str, body: Option<Value>) -> impl Future<Output = Answer> + Send;
    fn base_url(&self) -> &str;

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(Method::POST, path, Some(body)).await
    }
    async fn delete(&self, path: &str) -> Answer {
        self.send(Method::DELETE, path, None).await
    }
}

impl Client for TestApp {
    fn send(&self, method: Method, path: &str, body: Option<Value>) -> impl Future<Output = Answer> + Send {
        self.call(method, path, body)
    }
    fn base_url(&self) -> &str {
        &self.base
    }
}

/// The path (and query) of an absolute `self` URL of this server — or of an earlier process on the same database,
/// whose listen address was another.
fn path_of<C: Client>(c: &C, url: &Value) -> String {
    let raw = url.as_str().expect("self is a string");
    let parsed = url::Url::parse(raw).unwrap_or_else(|e| panic!("self {raw} is not a URL: {e}"));
    assert!(
        raw.starts_with(c.base_url()) || parsed.host_str() == Some("127.0.0.1"),
        "{raw} is not a URL of this server ({})",
        c.base_url()
    );
    match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_owned(),
    }
}

/// Polls `f` until it gives `Some`, for at most [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `YYYY-MM-DDThh:mm:ss.sss+0000`.
fn is_tracker_date(v: &Value) -> bool {
    let pat = b"dddd-dd-ddTdd:dd:dd.ddd+0000";
    v.as_str().is_some_and(|s| {
        s.len() == pat.len()
            && s.bytes()
                .zip(pat.iter())
                .all(|(c, p)| if *p == b'd' { c.is_ascii_digit() } else { c == *p })
    })
}

fn keys_of(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// An application on the fake: info, create and remove URLs (the remove URL repeats the key in the query).
fn app_body(id: &str, fake_base: &str, token: Option<&str>) -> Value {
    let mut v = json!({
        "id": id,
        "name": format!("App {id}"),
        "frontUrl": format!("{fake_base}/front/{{{{remoteKey}}}}"),
        "entityInfoUrl": format!("{fake_base}/info/{{{{remoteKey}}}}"),
        "createLinkUrl": format!("{fake_base}/links"),
        "removeLinkUrl": format!("{fake_base}/links/{{{{issueKey}}}}/{{{{remoteKey}}}}?k={{{{remoteKey}}}}"),
    });
    if let Some(t) = token {
        v["oauthToken"] = json!(t);
    }
    v
}

async fn register<C: Client>(c: &C, body: Value) -> Value {
    let a = c.post("/v2/applications", body.clone()).await;
    assert_eq!(a.status, 201, "register {body}: {}", a.body);
    a.body
}

/// Creates a remote link (asserting 201) and returns its JSON.
async fn remote<C: Client>(c: &C, issue: &str, origin: &str, key: &str, backlink: bool) -> Value {
    let q = if backlink { "?backlink=true" } else { "" };
    let a = c
        .post(
            &format!("/v2/issues/{issue}/remotelinks{q}"),
            json!({"relationship": "RELATES", "key": key, "origin": origin}),
        )
        .await;
    assert_eq!(a.status, 201, "remote link {issue} → {origin}/{key}: {}", a.body);
    a.body
}

/// Polls a remote link (by its `self`) until `pred` holds for it.
async fn wait_link<C: Client>(c: &C, link: &Value, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let path = path_of(c, &link["self"]);
    let mut last = Value::Null;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let a = c.get(&path).await;
        assert_eq!(a.status, 200, "GET {path}: {}", a.body);
        if pred(&a.body) {
            return a.body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the link is {last}"
        );
        last = a.body;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn backlink_state(link: &Value) -> &str {
    link["backlink"]["state"].as_str().unwrap_or("")
}

/// `GET /v2/_outbox[?state=]` (admin), asserting 200.
async fn events<C: Client>(c: &C, state: Option<&str>) -> Vec<Value> {
    let path = match state {
        Some(s) => format!("/v2/_outbox?state={s}&perPage=1000"),
        None => "/v2/_outbox?perPage=1000".to_owned(),
    };
    let a = c.get(&path).await;
    assert_eq!(a.status, 200, "GET {path}: {}", a.body);
    a.body.as_array().expect("the outbox is a list").clone()
}

/// The outbox events about one remote link.
async fn events_of<C: Client>(c: &C, link_id: &Value) -> Vec<Value> {
    events(c, None)
        .await
        .into_iter()
        .filter(|e| e["remoteLinkId"] == *link_id)
        .collect()
}

async fn event_of<C: Client>(c: &C, link_id: &Value, kind: &str) -> Value {
    events_of(c, link_id)
        .await
        .into_iter()
        .find(|e| e["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event for remote link {link_id}"))
}

/// A queue `RL` with one issue; returns the issue's key.
async fn issue(app: &TestApp) -> String {
    app.queue("RL").await;
    let i = app.issue("RL", "An issue with remote links").await;
    i["key"].as_str().unwrap().to_owned()
}

/// A fake application registered as [`APP`] (with [`APP_TOKEN`]) and an issue; returns both.
async fn setup(app: &TestApp) -> (Fake, String) {
    let fake = Fake::start().await;
    register(app, app_body(APP, &fake.base(), Some(APP_TOKEN))).await;
    (fake, issue(app).await)
}

/// Outbox settings with more attempts than [`common::fast_outbox`].
fn outbox(timeout_ms: u64, backoff_ms: u64, max_ms: u64, attempts: u32) -> OutboxConfig {
    OutboxConfig {
        timeout: Duration::from_millis(timeout_ms),
        backoff: Duration::from_millis(backoff_ms),
        backoff_max: Duration::from_millis(max_ms),
        max_attempts: attempts,
        poll: Duration::from_millis(20),
    }
}

/// Asserts the shape of a remote link (contract §7) seen through API version `v`.
fn assert_remote_shape(app: &TestApp, v: &str, link: &Value, issue: &str, origin: &str, key: &str) {
    let base = &app.base;
    let id = link["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("id must be a number: {link}"));
    assert_eq!(
        link["self"],
        json!(format!("{base}/{v}/issues/{issue}/remotelinks/{id}")),
        "{link}"
    );
    assert_eq!(
        keys_of(&link["type"]),
        set(&["self", "id", "inward", "outward"]),
        "{link}"
    );
    assert_eq!(link["type"]["self"], json!(format!("{base}/{v}/linktypes/relates")));
    assert_eq!(link["type"]["id"], "relates");
    assert!(link["type"]["inward"].as_str().is_some_and(|s| !s.is_empty()), "{link}");
    assert!(
        link["type"]["outward"].as_str().is_some_and(|s| !s.is_empty()),
        "{link}"
    );
    assert_eq!(link["direction"], "outward");
    let obj = &link["object"];
    let enc = percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string();
    let obj_self = obj["self"].as_str().unwrap_or_else(|| panic!("object.self: {link}"));
    assert!(
        obj_self == format!("{base}/{v}/applications/{origin}/objects/{key}")
            || obj_self
                .strip_prefix(&format!("{base}/{v}/applications/{origin}/objects/"))
                .is_some_and(|rest| percent_encoding::percent_decode_str(rest).decode_utf8_lossy() == key),
        "object.self {obj_self} (key {key}, fully encoded {enc})"
    );
    assert_eq!(obj["id"], json!(key));
    assert_eq!(obj["key"], json!(key));
    assert_eq!(
        keys_of(&obj["application"]),
        set(&["self", "id", "type", "name"]),
        "{link}"
    );
    assert_eq!(
        obj["application"]["self"],
        json!(format!("{base}/{v}/applications/{origin}"))
    );
    assert_eq!(obj["application"]["id"], json!(origin));
    for who in ["createdBy", "updatedBy"] {
        let u = &link[who];
        assert!(
            u["self"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{base}/{v}/users/"))),
            "{who}: {link}"
        );
        assert!(u["id"].is_string() || u["id"].is_number(), "{who}.id: {link}");
        assert!(u["display"].is_string(), "{who}.display: {link}");
    }
    assert_eq!(link["createdBy"], link["updatedBy"]);
    assert!(is_tracker_date(&link["createdAt"]), "createdAt: {link}");
    assert!(is_tracker_date(&link["updatedAt"]), "updatedAt: {link}");
}

// ---------------------------------------------------------------------------------------------------------------
// Tests on both backends
// ---------------------------------------------------------------------------------------------------------------

both_backends! {
    // ----- the application registry -----

    async fn applications_are_registered_and_read_on_both_versions(app) {
        for v in ["v2", "v3"] {
            let id = format!("com.example.{v}");
            let body = json!({
                "id": id,
                "name": "Example",
                "type": "app",
                "defaultIconUrl": "https://example.com/icon.png",
                "frontUrl": "https://example.com/o/{{remoteKey}}",
                "responsible": "admin",
                "oauthToken": APP_TOKEN,
                "entityInfoUrl": "https://example.com/api/{{remoteKey}}",
                "createLinkUrl": "https://example.com/api/links",
                "removeLinkUrl": "https://example.com/api/links/{{issueKey}}/{{remoteKey}}",
                "canLinkFromFront": true,
            });
            let a = app.post(&format!("/{v}/applications"), body.clone()).await;
            assert_eq!(a.status, 201, "{}", a.body);
            let created = a.body;
            assert_eq!(created["self"], json!(format!("{}/{v}/applications/{id}", app.base)));
            assert_eq!(created["id"], json!(id));
            assert_eq!(created["type"], "app");
            assert_eq!(created["name"], "Example");
            for f in ["defaultIconUrl", "frontUrl", "entityInfoUrl", "createLinkUrl", "removeLinkUrl"] {
                assert_eq!(created[f], body[f], "{f}: {created}");
            }
            assert_eq!(created["canLinkFromFront"], true);
            assert!(created.get("oauthToken").is_none(), "{created}");

            let one = app.get(&format!("/{v}/applications/{id}")).await;
            assert_eq!(one.status, 200, "{}", one.body);
            assert_eq!(one.body, created);

            let list = app.get(&format!("/{v}/applications")).await;
            assert_eq!(list.status, 200);
            let found: Vec<&Value> = list.body.as_array().unwrap().iter().filter(|x| x["id"] == json!(id)).collect();
            assert_eq!(found.len(), 1, "{}", list.body);
            assert_eq!(*found[0], created);
        }
        // The same route with a trailing slash.
        let a = app.get("/v2/applications/").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body.as_array().unwrap().len(), 2);
    }

    async fn application_type_defaults_to_id_and_ids_are_checked(app) {
        let a = register(&app, json!({"id": "sentry", "name": "Sentry"})).await;
        assert_eq!(a["type"], "sentry");
        assert_eq!(a["canLinkFromFront"], false);
        let long_ok = "a".repeat(100);
        register(&app, json!({"id": long_ok, "name": "Long"})).await;
        let a = register(&app, json!({"id": "A-b_c.9", "name": "Chars", "type": null})).await;
        assert_eq!(a["type"], "A-b_c.9");

        for bad in ["", "has space", "slash/inside", "ünï", &"a".repeat(101), "a{b}"] {
            let r = app.post("/v2/applications", json!({"id": bad, "name": "x"})).await;
            r.expect_error(422);
            assert!(r.body["errors"].get("id").is_some(), "{bad:?}: {}", r.body);
        }
        let r = app.post("/v2/applications", json!({"name": "no id"})).await;
        r.expect_error(422);
        assert!(r.body["errors"].get("id").is_some(), "{}", r.body);
        let r = app.post("/v2/applications", json!({"id": "noname"})).await;
        r.expect_error(422);
        assert!(r.body["errors"].get("name").is_some(), "{}", r.body);

        let list = app.get("/v2/applications").await;
        assert_eq!(list.body.as_array().unwrap().len(), 3, "{}", list.body);
    }

    async fn application_urls_are_validated(app) {
        let cases: &[(&str, &str)] = &[
            ("frontUrl", "https://example.com/no-placeholder"),
            ("frontUrl", "ftp://example.com/{{remoteKey}}"),
            ("frontUrl", "javascript:alert(1)//{{remoteKey}}"),
            ("frontUrl", "file:///etc/{{remoteKey}}"),
            ("frontUrl", "not a url {{remoteKey}}"),
            ("frontUrl", "/relative/{{remoteKey}}"),
            ("entityInfoUrl", "https://example.com/api/no-placeholder"),
            ("entityInfoUrl", "gopher://example.com/{{remoteKey}}"),
            ("createLinkUrl", "ftp://example.com/links"),
            ("createLinkUrl", "data:text/plain,hello"),
            ("createLinkUrl", "example.com/links"),
            ("removeLinkUrl", "https://example.com/{{issueKey}}"),
            ("removeLinkUrl", "https://example.com/{{remoteKey}}"),
            ("removeLinkUrl", "ssh://example.com/{{issueKey}}/{{remoteKey}}"),
            ("defaultIconUrl", "data:image/png;base64,AAAA"),
        ];
        for (field, url) in cases {
            let r = app
                .post("/v2/applications", json!({"id": "bad", "name": "Bad", *field: url}))
                .await;
            let msg = r.expect_error(422);
            assert!(r.body["errors"].get(*field).is_some(), "{field}={url}: {}", r.body);
            assert!(!msg.is_empty());
        }
        // Well-formed requests with wrong JSON: 400.
        let raw = app
            .raw(
                app.http
                    .post(format!("{}/v2/applications", app.base))
                    .header("Authorization", format!("OAuth {}", app.token))
                    .header("X-Org-ID", &app.org)
                    .header("Content-Type", "application/json")
                    .body("{\"id\": \"x\", "),
            )
            .await;
        raw.expect_error(400);
        app.post("/v2/applications", json!({"id": "x", "name": 5})).await.expect_error(400);
        app.post("/v2/applications", json!({"id": 7, "name": "x"})).await.expect_error(400);
        app.post("/v2/applications", json!({"id": "x", "name": "x", "canLinkFromFront": "yes"}))
            .await
            .expect_error(400);
        app.post("/v2/applications", json!(["x"])).await.expect_error(400);
        // Nothing was written.
        assert_eq!(app.get("/v2/applications").await.body, json!([]));
        // http and https both pass.
        register(&app, json!({"id": "ok", "name": "Ok", "frontUrl": "http://127.0.0.1:9/{{remoteKey}}",
            "createLinkUrl": "https://example.com/links"})).await;
    }

    async fn duplicate_application_is_409(app) {
        register(&app, json!({"id": "dup", "name": "First"})).await;
        for v in ["v2", "v3"] {
            let r = app.post(&format!("/{v}/applications"), json!({"id": "dup", "name": "Second"})).await;
            r.expect_error(409);
        }
        let one = app.get("/v2/applications/dup").await;
        assert_eq!(one.body["name"], "First");
    }

    async fn only_admins_manage_applications(app) {
        register(&app, json!({"id": "kept", "name": "Kept"})).await;
        for role in [Role::Member, Role::Reader] {
            let login = format!("{role}-user").to_lowercase();
            let token = app.user_token(common::ORG, &login, role).await;
            let u = app.as_user(&token, common::ORG);
            u.post("/v2/applications", json!({"id": "mine", "name": "Mine"})).await.expect_error(403);
            u.patch("/v2/applications/kept", json!({"name": "Changed"})).await.expect_error(403);
            u.delete("/v2/applications/kept").await.expect_error(403);
            // 404 comes before 403 (contract §2).
            u.patch("/v2/applications/nope", json!({"name": "x"})).await.expect_error(404);
            u.delete("/v2/applications/nope").await.expect_error(404);
            // The outbox is admin-only too.
            u.get("/v2/_outbox").await.expect_error(403);
            u.post("/v2/_outbox/1/_retry", json!({})).await.expect_error(403);
        }
        let one = app.get("/v2/applications/kept").await;
        assert_eq!(one.body["name"], "Kept");
        assert_eq!(app.get("/v2/applications").await.body.as_array().unwrap().len(), 1);
    }

    async fn members_see_only_the_reference_of_applications(app) {
        register(&app, app_body("full.app", "http://127.0.0.1:9", Some(APP_TOKEN))).await;
        register(&app, json!({"id": "bare", "name": "Bare", "type": "kind"})).await;
        let token = app.user_token(common::ORG, "mem", Role::Member).await;
        let member = app.as_user(&token, common::ORG);
        let token = app.user_token(common::ORG, "rdr", Role::Reader).await;
        let reader = app.as_user(&token, common::ORG);
        for u in [&member, &reader] {
            for v in ["v2", "v3"] {
                let list = u.get(&format!("/{v}/applications")).await;
                assert_eq!(list.status, 200, "{}", list.body);
                let items = list.body.as_array().unwrap();
                assert_eq!(items.len(), 2);
                for item in items {
                    assert_eq!(keys_of(item), set(&["self", "id", "type", "name"]), "{item}");
                    assert_eq!(item["self"], json!(format!("{}/{v}/applications/{}", app.base, item["id"].as_str().unwrap())));
                }
                let bare = items.iter().find(|i| i["id"] == "bare").unwrap();
                assert_eq!(bare["type"], "kind");
                assert_eq!(bare["name"], "Bare");
                let one = u.get(&format!("/{v}/applications/full.app")).await;
                assert_eq!(one.status, 200);
                assert_eq!(keys_of(&one.body), set(&["self", "id", "type", "name"]), "{}", one.body);
            }
        }
        // Admins also see the settings.
        let one = app.get("/v2/applications/full.app").await;
        assert!(one.body["createLinkUrl"].is_string(), "{}", one.body);
        assert!(one.body["removeLinkUrl"].is_string(), "{}", one.body);
        assert!(one.body["entityInfoUrl"].is_string(), "{}", one.body);
    }

    async fn oauth_token_is_never_returned(app) {
        let fake = Fake::start().await;
        let created = register(&app, app_body(APP, &fake.base(), Some(APP_TOKEN))).await;
        let mut seen = vec![created.to_string()];
        let patched = app.patch(&format!("/v2/applications/{APP}"), json!({"name": "Renamed"})).await;
        assert_eq!(patched.status, 200);
        seen.push(patched.body.to_string());
        let patched = app.patch(&format!("/v3/applications/{APP}"), json!({"oauthToken": format!("{APP_TOKEN}-2")})).await;
        assert_eq!(patched.status, 200);
        seen.push(patched.body.to_string());
        let key = issue(&app).await;
        let link = remote(&app, &key, APP, "42", true).await;
        seen.push(link.to_string());
        wait_link(&app, &link, "delivery", |l| backlink_state(l) == "delivered").await;
        let token = app.user_token(common::ORG, "mem", Role::Member).await;
        let member = app.as_user(&token, common::ORG);
        for v in ["v2", "v3"] {
            for u in [&app, &member] {
                for path in [
                    format!("/{v}/applications"),
                    format!("/{v}/applications/{APP}"),
                    format!("/{v}/issues/{key}/remotelinks"),
                    format!("/{v}/issues/{key}/remotelinks?expand=info"),
                    format!("/{v}/applications/{APP}/objects/42"),
                ] {
                    let a = u.get(&path).await;
                    assert_eq!(a.status, 200, "{path}: {}", a.body);
                    seen.push(a.body.to_string());
                    seen.push(format!("{:?}", a.headers));
                }
            }
            let a = app.get(&format!("/{v}/_outbox")).await;
            assert_eq!(a.status, 200);
            seen.push(a.body.to_string());
        }
        for s in &seen {
            assert!(!s.contains(APP_TOKEN), "the application's token leaked: {s}");
            assert!(!s.contains("\"oauthToken\""), "oauthToken is write-only: {s}");
        }
        // Meanwhile the token was used where it belongs.
        let hits = fake.wait_hits(1).await;
        assert_eq!(hits[0].header("authorization"), Some(format!("OAuth {APP_TOKEN}-2").as_str()));
    }

    async fn application_patch_changes_only_what_is_given(app) {
        let created = register(&app, app_body("p.app", "http://127.0.0.1:9", Some(APP_TOKEN))).await;
        let a = app.patch("/v2/applications/p.app", json!({"name": "New name"})).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let mut expected = created.clone();
        expected["name"] = json!("New name");
        assert_eq!(a.body, expected);
        assert_eq!(app.get("/v2/applications/p.app").await.body, expected);

        let a = app.patch("/v3/applications/p.app", json!({"type": "tracker", "canLinkFromFront": true})).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["self"], json!(format!("{}/v3/applications/p.app", app.base)));
        assert_eq!(a.body["type"], "tracker");
        assert_eq!(a.body["canLinkFromFront"], true);
        assert_eq!(a.body["createLinkUrl"], created["createLinkUrl"]);

        // Broken rules change nothing.
        let before = app.get("/v2/applications/p.app").await.body;
        app.patch("/v2/applications/p.app", json!({"id": "other"})).await.expect_error(422);
        app.patch("/v2/applications/p.app", json!({"frontUrl": "https://x.example/none"})).await.expect_error(422);
        app.patch("/v2/applications/p.app", json!({"removeLinkUrl": "https://x.example/{{remoteKey}}"})).await.expect_error(422);
        app.patch("/v2/applications/p.app", json!({"createLinkUrl": "ftp://x.example/"})).await.expect_error(422);
        app.patch("/v2/applications/p.app", json!({"name": ""})).await.expect_error(422);
        app.patch("/v2/applications/p.app", json!({"name": 3})).await.expect_error(400);
        assert_eq!(app.get("/v2/applications/p.app").await.body, before);
        // The same id is allowed in the body.
        let a = app.patch("/v2/applications/p.app", json!({"id": "p.app", "name": "Same"})).await;
        assert_eq!(a.status, 200, "{}", a.body);

        app.patch("/v2/applications/nope", json!({"name": "x"})).await.expect_error(404);
        app.get("/v2/applications/nope").await.expect_error(404);
        app.get("/v3/applications/nope").await.expect_error(404);
    }

    async fn application_patch_null_token_keeps_the_token(app) {
        let fake = Fake::start().await;
        register(&app, app_body(APP, &fake.base(), Some(APP_TOKEN))).await;
        let key = issue(&app).await;
        // Contract §1: `null` means absent, so this changes nothing.
        let a = app.patch(&format!("/v2/applications/{APP}"), json!({"oauthToken": null})).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let link = remote(&app, &key, APP, "n1", true).await;
        wait_link(&app, &link, "delivery", |l| backlink_state(l) == "delivered").await;
        let hits = fake.wait_hits(1).await;
        assert_eq!(
            hits[0].header("authorization"),
            Some(format!("OAuth {APP_TOKEN}").as_str()),
            "the token was dropped by a null"
        );
    }

    async fn application_patch_null_name_keeps_the_name(app) {
        register(&app, json!({"id": APP, "name": "Kept name"})).await;
        let a = app.patch(&format!("/v2/applications/{APP}"), json!({"name": null, "type": "t"})).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["name"], "Kept name");
        assert_eq!(a.body["type"], "t");
    }

    async fn application_delete_rules(app) {
        let (fake, key) = setup(&app).await;
        drop(fake);
        app.delete("/v2/applications/unknown").await.expect_error(404);
        register(&app, json!({"id": "unused", "name": "Unused"})).await;
        let a = app.delete("/v3/applications/unused").await;
        assert_eq!(a.status, 204, "{}", a.body);
        assert!(a.body.is_null());
        app.get("/v2/applications/unused").await.expect_error(404);
        app.delete("/v2/applications/unused").await.expect_error(404);

        let link = remote(&app, &key, APP, "in-use", false).await;
        let r = app.delete(&format!("/v2/applications/{APP}")).await;
        r.expect_error(422);
        assert_eq!(app.get(&format!("/v2/applications/{APP}")).await.status, 200);
        assert_eq!(app.get(&path_of(&app, &link["self"])).await.status, 200);

        let d = app.delete(&path_of(&app, &link["self"])).await;
        assert_eq!(d.status, 204);
        let a = app.delete(&format!("/v2/applications/{APP}")).await;
        assert_eq!(a.status, 204, "{}", a.body);
        app.get(&format!("/v2/applications/{APP}")).await.expect_error(404);
        // An unregistered origin cannot be linked any more.
        let r = app
            .post(&format!("/v2/issues/{key}/remotelinks"), json!({"relationship": "relates", "key": "x", "origin": APP}))
            .await;
        r.expect_error(422);
    }

    async fn applications_belong_to_one_organization(app) {
        register(&app, json!({"id": "shared.id", "name": "Acme's"})).await;
        register(&app, json!({"id": "acme.only", "name": "Acme only"})).await;
        let token = app.user_token("other", "other-admin", Role::Admin).await;
        let other = app.as_user(&token, "other");
        assert_eq!(other.get("/v2/applications").await.body, json!([]));
        other.get("/v2/applications/acme.only").await.expect_error(404);
        other.patch("/v2/applications/acme.only", json!({"name": "x"})).await.expect_error(404);
        other.delete("/v2/applications/acme.only").await.expect_error(404);
        // The same id in another organization is another application.
        let a = other.post("/v2/applications", json!({"id": "shared.id", "name": "Other's"})).await;
        assert_eq!(a.status, 201, "{}", a.body);
        assert_eq!(app.get("/v2/applications/shared.id").await.body["name"], "Acme's");
        // An origin from another organization is unknown.
        other.queue("OT").await;
        let i = other.issue("OT", "x").await;
        let r = other
            .post(
                &format!("/v2/issues/{}/remotelinks", i["key"].as_str().unwrap()),
                json!({"relationship": "relates", "key": "1", "origin": "acme.only"}),
            )
            .await;
        r.expect_error(422);
    }

    // ----- remote links -----

    async fn remote_link_shape_on_both_versions(app) {
        register(&app, json!({"id": "ru.yandex.bitbucket", "name": "test-app", "type": "app"})).await;
        let key = issue(&app).await;
        let issue_id = app.get(&format!("/v2/issues/{key}")).await.body["id"].as_str().unwrap().to_owned();
        for (v, obj) in [("v2", "TEST-17"), ("v3", "13570010")] {
            let a = app
                .post(
                    &format!("/{v}/issues/{key}/remotelinks"),
                    json!({"relationship": "RELATES", "key": obj, "origin": "ru.yandex.bitbucket"}),
                )
                .await;
            assert_eq!(a.status, 201, "{}", a.body);
            let link = a.body;
            assert_eq!(
                keys_of(&link),
                set(&["self", "id", "type", "direction", "object", "createdBy", "updatedBy", "createdAt", "updatedAt"]),
                "{link}"
            );
            assert_remote_shape(&app, v, &link, &key, "ru.yandex.bitbucket", obj);
            assert_eq!(link["object"]["application"]["type"], "app");
            assert_eq!(link["object"]["application"]["name"], "test-app");
            let me = app.get("/v2/myself").await.body;
            assert_eq!(link["createdBy"]["id"].to_string().trim_matches('"'), me["uid"].to_string().trim_matches('"'));

            // GET one (by issue key and by issue id) and the list show the same JSON.
            let id = link["id"].as_u64().unwrap();
            let one = app.get(&format!("/{v}/issues/{key}/remotelinks/{id}")).await;
            assert_eq!(one.status, 200);
            assert_eq!(one.body, link);
            let one = app.get(&format!("/{v}/issues/{issue_id}/remotelinks/{id}")).await;
            assert_eq!(one.status, 200);
            assert_eq!(one.body, link);
            let list = app.get(&format!("/{v}/issues/{key}/remotelinks")).await;
            assert_eq!(list.status, 200);
            assert!(list.body.as_array().unwrap().contains(&link), "{}", list.body);
            // The type's self resolves.
            let t = app.get(&path_of(&app, &link["type"]["self"])).await;
            assert_eq!(t.status, 200, "{}", t.body);
            // The application's self resolves.
            let t = app.get(&path_of(&app, &link["object"]["application"]["self"])).await;
            assert_eq!(t.status, 200, "{}", t.body);
        }
        // The list is a plain array, oldest first, on both versions.
        let list = app.get(&format!("/v3/issues/{key}/remotelinks/")).await;
        let keys: Vec<&Value> = list.body.as_array().unwrap().iter().map(|l| &l["object"]["key"]).collect();
        assert_eq!(keys, [&json!("TEST-17"), &json!("13570010")]);
        // Created through the issue id too.
        let a = app
            .post(
                &format!("/v2/issues/{issue_id}/remotelinks"),
                json!({"relationship": "relates", "key": "by-id", "origin": "ru.yandex.bitbucket"}),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        assert_remote_shape(&app, "v2", &a.body, &key, "ru.yandex.bitbucket", "by-id");
    }

    async fn remote_link_relationship_is_relates_in_any_case(app) {
        let (_fake, key) = setup(&app).await;
        for (i, rel) in ["RELATES", "relates", "Relates", "rElAtEs"].iter().enumerate() {
            let a = app
                .post(&format!("/v2/issues/{key}/remotelinks"), json!({"relationship": rel, "key": format!("k{i}"), "origin": APP}))
                .await;
            assert_eq!(a.status, 201, "{rel}: {}", a.body);
            assert_eq!(a.body["type"]["id"], "relates");
            assert_eq!(a.body["direction"], "outward");
        }
        for rel in ["depends on", "is subtask for", "duplicates", "has epic", "clone", "relatesx", ""] {
            let r = app
                .post(&format!("/v2/issues/{key}/remotelinks"), json!({"relationship": rel, "key": "other", "origin": APP}))
                .await;
            r.expect_error(422);
            assert!(r.body["errors"].get("relationship").is_some(), "{rel}: {}", r.body);
        }
        assert_eq!(app.get(&format!("/v2/issues/{key}/remotelinks")).await.body.as_array().unwrap().len(), 4);
    }

    async fn remote_link_body_errors(app) {
        let (_fake, key) = setup(&app).await;
        let path = format!("/v2/issues/{key}/remotelinks");
        for (body, field) in [
            (json!({"key": "1", "origin": APP}), "relationship"),
            (json!({"relationship": "relates", "origin": APP}), "key"),
            (json!({"relationship": "relates", "key": "1"}), "origin"),
            (json!({"relationship": "relates", "key": null, "origin": APP}), "key"),
            (json!({"relationship": "relates", "key": "1", "origin": "no.such.app"}), "origin"),
            (json!({"relationship": "relates", "key": "1", "origin": ""}), "origin"),
        ] {
            let r = app.post(&path, body.clone()).await;
            r.expect_error(422);
            assert!(r.body["errors"].get(field).is_some(), "{body}: {}", r.body);
        }
        let r = app.post(&path, json!({"relationship": "relates", "key": "x".repeat(501), "origin": APP})).await;
        r.expect_error(422);
        for body in [
            json!({"relationship": 1, "key": "1", "origin": APP}),
            json!({"relationship": "relates", "key": "1", "origin": 5}),
            json!({"relationship": "relates", "key": {"a": 1}, "origin": APP}),
            json!(["relates"]),
        ] {
            app.post(&path, body.clone()).await.expect_error(400);
        }
        let raw = app
            .raw(
                app.http
                    .post(format!("{}{path}", app.base))
                    .header("Authorization", format!("OAuth {}", app.token))
                    .header("X-Org-ID", &app.org)
                    .header("Content-Type", "application/json")
                    .body("{\"relationship\": "),
            )
            .await;
        raw.expect_error(400);
        // Unknown fields are ignored.
        let a = app
            .post(&path, json!({"relationship": "relates", "key": "ok", "origin": APP, "whatever": [1, 2]}))
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        assert_eq!(app.get(&path).await.body.as_array().unwrap().len(), 1);
    }

    async fn same_object_twice_on_one_issue_is_409(app) {
        let (fake, key) = setup(&app).await;
        register(&app, app_body("second.app", &fake.base(), None)).await;
        remote(&app, &key, APP, "TEST-17", false).await;
        for v in ["v2", "v3"] {
            for rel in ["RELATES", "relates"] {
                let r = app
                    .post(&format!("/{v}/issues/{key}/remotelinks"), json!({"relationship": rel, "key": "TEST-17", "origin": APP}))
                    .await;
                let msg = r.expect_error(409);
                assert!(msg.contains("already linked"), "{msg}");
            }
        }
        // With backlink=true too, and then no backlink event is queued.
        let r = app
            .post(&format!("/v2/issues/{key}/remotelinks?backlink=true"), json!({"relationship": "relates", "key": "TEST-17", "origin": APP}))
            .await;
        r.expect_error(409);
        assert!(events(&app, None).await.is_empty());
        // The same key of another application, and the same object on another issue, are fine.
        remote(&app, &key, "second.app", "TEST-17", false).await;
        let other = app.issue("RL", "another").await;
        remote(&app, other["key"].as_str().unwrap(), APP, "TEST-17", false).await;
        assert_eq!(app.get(&format!("/v2/issues/{key}/remotelinks")).await.body.as_array().unwrap().len(), 2);
        fake.assert_quiet(0, Duration::from_millis(100)).await;
    }

    async fn racing_duplicates_leave_one_link(app) {
        let (_fake, key) = setup(&app).await;
        let app = Arc::new(app);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let app = app.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                app.post(
                    &format!("/v2/issues/{key}/remotelinks?backlink=true"),
                    json!({"relationship": "relates", "key": "race", "origin": APP}),
                )
                .await
                .status
                .as_u16()
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
        assert_eq!(app.get(&format!("/v2/issues/{key}/remotelinks")).await.body.as_array().unwrap().len(), 1);
        // Exactly one backlink event.
        let evs = events(&*app, None).await;
        assert_eq!(evs.len(), 1, "{evs:?}");
    }

    async fn remote_link_404s_and_roles(app) {
        let (_fake, key) = setup(&app).await;
        let body = json!({"relationship": "relates", "key": "1", "origin": APP});
        for v in ["v2", "v3"] {
            app.post(&format!("/{v}/issues/RL-999/remotelinks"), body.clone()).await.expect_error(404);
            app.post(&format!("/{v}/issues/NOQ-1/remotelinks"), body.clone()).await.expect_error(404);
            app.get(&format!("/{v}/issues/RL-999/remotelinks")).await.expect_error(404);
            app.get(&format!("/{v}/issues/RL-999/remotelinks/1")).await.expect_error(404);
            app.delete(&format!("/{v}/issues/RL-999/remotelinks/1")).await.expect_error(404);
            app.get(&format!("/{v}/issues/{key}/remotelinks/999999")).await.expect_error(404);
            app.get(&format!("/{v}/issues/{key}/remotelinks/abc")).await.expect_error(404);
            app.delete(&format!("/{v}/issues/{key}/remotelinks/999999")).await.expect_error(404);
        }
        let link = remote(&app, &key, APP, "1", false).await;
        let id = link["id"].as_u64().unwrap();
        // A link seen through another issue does not exist.
        let other = app.issue("RL", "other").await;
        let other = other["key"].as_str().unwrap();
        app.get(&format!("/v2/issues/{other}/remotelinks/{id}")).await.expect_error(404);
        app.delete(&format!("/v2/issues/{other}/remotelinks/{id}")).await.expect_error(404);

        let token = app.user_token(common::ORG, "rdr", Role::Reader).await;
        let reader = app.as_user(&token, common::ORG);
        reader.post(&format!("/v2/issues/{key}/remotelinks"), json!({"relationship": "relates", "key": "2", "origin": APP}))
            .await
            .expect_error(403);
        reader.post(&format!("/v2/issues/{key}/remotelinks?backlink=true"), json!({"relationship": "relates", "key": "2", "origin": APP}))
            .await
            .expect_error(403);
        reader.delete(&format!("/v2/issues/{key}/remotelinks/{id}")).await.expect_error(403);
        // 404 before 403.
        reader.post("/v2/issues/RL-999/remotelinks", body.clone()).await.expect_error(404);
        // Readers read.
        let list = reader.get(&format!("/v2/issues/{key}/remotelinks")).await;
        assert_eq!(list.status, 200);
        assert_eq!(list.body, json!([link]));
        assert_eq!(reader.get(&format!("/v2/issues/{key}/remotelinks/{id}")).await.body, link);
        assert!(events(&app, None).await.is_empty());

        let token = app.user_token(common::ORG, "mem", Role::Member).await;
        let member = app.as_user(&token, common::ORG);
        let made = member
            .post(&format!("/v2/issues/{key}/remotelinks?backlink=true"), json!({"relationship": "relates", "key": "3", "origin": APP}))
            .await;
        assert_eq!(made.status, 201, "{}", made.body);
        assert_eq!(made.body["createdBy"]["display"], "mem");
        let d = member.delete(&path_of(&app, &link["self"])).await;
        assert_eq!(d.status, 204, "{}", d.body);

        // Another organization sees nothing of it.
        let token = app.user_token("other", "stranger", Role::Admin).await;
        let stranger = app.as_user(&token, "other");
        stranger.get(&format!("/v2/issues/{key}/remotelinks")).await.expect_error(404);
        stranger.get(&path_of(&app, &made.body["self"])).await.expect_error(404);
        stranger.delete(&path_of(&app, &made.body["self"])).await.expect_error(404);
        stranger.post(&format!("/v2/issues/{key}/remotelinks"), body.clone()).await.expect_error(404);
        assert_eq!(app.get(&path_of(&app, &made.body["self"])).await.status, 200);
    }

    async fn remote_link_list_get_delete(app) {
        let (fake, key) = setup(&app).await;
        assert_eq!(app.get(&format!("/v2/issues/{key}/remotelinks")).await.body, json!([]));
        let a = remote(&app, &key, APP, "A-1", false).await;
        let b = remote(&app, &key, APP, "A-2", false).await;
        assert!(b["id"].as_u64() > a["id"].as_u64());
        for v in ["v2", "v3"] {
            let list = app.get(&format!("/{v}/issues/{key}/remotelinks")).await;
            assert_eq!(list.status, 200);
            let items = list.body.as_array().unwrap();
            assert_eq!(items.len(), 2);
            assert_remote_shape(&app, v, &items[0], &key, APP, "A-1");
            assert_remote_shape(&app, v, &items[1], &key, APP, "A-2");
            assert_eq!(items[0]["id"], a["id"]);
        }
        let d = app.delete(&format!("/v3/issues/{key}/remotelinks/{}", a["id"])).await;
        assert_eq!(d.status, 204, "{}", d.body);
        assert!(d.body.is_null(), "204 has an empty body: {}", d.body);
        app.get(&path_of(&app, &a["self"])).await.expect_error(404);
        app.delete(&path_of(&app, &a["self"])).await.expect_error(404);
        let list = app.get(&format!("/v2/issues/{key}/remotelinks")).await;
        assert_eq!(list.body, json!([b]));
        // Bodiless DELETE with a JSON content type is fine (contract §1).
        let raw = app
            .raw(
                app.http
                    .delete(format!("{}{}", app.base, path_of(&app, &b["self"])))
                    .header("Authorization", format!("OAuth {}", app.token))
                    .header("X-Org-ID", &app.org)
                    .header("Content-Type", "application/json"),
            )
            .await;
        assert_eq!(raw.status, 204, "{}", raw.body);
        assert_eq!(app.get(&format!("/v2/issues/{key}/remotelinks")).await.body, json!([]));
        // Links made without backlink=true never call the application.
        fake.assert_quiet(0, Duration::from_millis(150)).await;
    }

    async fn object_self_resolves_even_for_awkward_keys(app) {
        let (_fake, key) = setup(&app).await;
        for obj in ["a b/c", "ключ", "x?y#z&w=1"] {
            let link = remote(&app, &key, APP, obj, false).await;
            assert_remote_shape(&app, "v2", &link, &key, APP, obj);
            let o = app.get(&path_of(&app, &link["object"]["self"])).await;
            assert_eq!(o.status, 200, "{obj}: {}", o.body);
            assert_eq!(o.body["key"], json!(obj), "{}", o.body);
            assert_eq!(o.body["application"]["id"], APP);
        }
    }

    async fn expand_info_shows_the_object_info(app) {
        let (fake, key) = setup(&app).await;
        let link = remote(&app, &key, APP, "TEST 17", false).await;
        for v in ["v2", "v3"] {
            let list = app.get(&format!("/{v}/issues/{key}/remotelinks?expand=info")).await;
            assert_eq!(list.status, 200, "{}", list.body);
            let obj = &list.body[0]["object"];
            assert_eq!(obj["info"], json!({"key": "TEST 17", "summary": "Summary of TEST 17", "status": {"name": "Open"}}), "{obj}");
            assert_eq!(obj["summary"], "Summary of TEST 17");
            assert_eq!(obj["status"], json!({"name": "Open"}));
            assert_remote_shape(&app, v, &list.body[0], &key, APP, "TEST 17");
            let one = app.get(&format!("/{v}/issues/{key}/remotelinks/{}?expand=info", link["id"])).await;
            assert_eq!(one.status, 200);
            assert_eq!(one.body["object"]["info"]["summary"], "Summary of TEST 17");
            // Without expand: no info.
            let plain = app.get(&format!("/{v}/issues/{key}/remotelinks")).await;
            assert!(plain.body[0]["object"].get("info").is_none(), "{}", plain.body);
            assert!(plain.body[0]["object"].get("summary").is_none(), "{}", plain.body);
        }
        // The call: GET entityInfoUrl with the key percent-encoded and the app's token.
        let hits = fake.info_hits();
        assert!(!hits.is_empty());
        for h in &hits {
            assert_eq!(h.method, "GET");
            assert_eq!(h.path, "/info/TEST%2017");
            assert_eq!(h.header("authorization"), Some(format!("OAuth {APP_TOKEN}").as_str()));
        }
        assert!(fake.hits().is_empty(), "expand=info makes no backlink calls");
    }

    async fn failing_object_info_does_not_break_the_list(app) {
        let (fake, key) = setup(&app).await;
        let dead = format!("http://127.0.0.1:{}", dead_port());
        for (id, base, path) in [
            ("slow.app", fake.base(), "slow-info"),
            ("bad.app", fake.base(), "bad-info"),
            ("garbage.app", fake.base(), "garbage-info"),
            ("partial.app", fake.base(), "partial-info"),
            ("dead.app", dead, "info"),
        ] {
            register(&app, json!({"id": id, "name": id, "entityInfoUrl": format!("{base}/{path}/{{{{remoteKey}}}}")})).await;
            remote(&app, &key, id, "obj-1", false).await;
            remote(&app, &key, id, "obj-2", false).await;
        }
        remote(&app, &key, APP, "good", false).await;
        for v in ["v2", "v3"] {
            let started = Instant::now();
            let list = app.get(&format!("/{v}/issues/{key}/remotelinks?expand=info")).await;
            let took = started.elapsed();
            assert_eq!(list.status, 200, "{}", list.body);
            // Two slow objects cost one info timeout (2 s), not two, and far less than the app's 30 s.
            assert!(took < Duration::from_secs(5), "the list took {took:?}");
            let items = list.body.as_array().unwrap();
            assert_eq!(items.len(), 11);
            for item in items {
                let obj = &item["object"];
                if obj["key"] == "good" {
                    assert_eq!(obj["info"]["summary"], "Summary of good", "{obj}");
                } else {
                    assert!(obj.get("info").is_none(), "{obj}");
                    assert!(obj.get("summary").is_none(), "{obj}");
                }
            }
            // One link alone, too.
            let slow = &items[0];
            assert_eq!(slow["object"]["application"]["id"], "slow.app");
            let started = Instant::now();
            let one = app.get(&format!("{}?expand=info", path_of(&app, &slow["self"]))).await;
            assert_eq!(one.status, 200);
            assert!(started.elapsed() < Duration::from_secs(5));
            assert!(one.body["object"].get("info").is_none());
        }
        // The application's object page too.
        let o = app.get("/v2/applications/bad.app/objects/obj-1").await;
        assert_eq!(o.status, 200, "{}", o.body);
        assert!(o.body.get("info").is_none());
        assert!(fake.hits().is_empty());
    }

    // ----- backlinks -----

    async fn backlink_call_is_exactly_as_the_contract_says(app) {
        let (fake, key) = setup(&app).await;
        let a = app
            .post(
                &format!("/v2/issues/{key}/remotelinks?backlink=true"),
                json!({"relationship": "RELATES", "key": "TEST-17", "origin": APP}),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        let link = a.body;
        assert_remote_shape(&app, "v2", &link, &key, APP, "TEST-17");
        assert_eq!(link["backlink"]["state"], "pending", "{link}");
        assert_eq!(link["backlink"]["attempts"], 0, "{link}");
        assert!(link["backlink"].get("lastError").is_none(), "{link}");

        let done = wait_link(&app, &link, "delivery", |l| backlink_state(l) == "delivered").await;
        assert_eq!(done["backlink"], json!({"state": "delivered", "attempts": 1}), "{done}");

        let hits = fake.wait_hits(1).await;
        fake.assert_quiet(1, Duration::from_millis(200)).await;
        let h = &hits[0];
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/links");
        assert_eq!(h.query, None);
        assert_eq!(h.json(), json!({"issueKey": key, "entityIds": ["TEST-17"]}));
        assert_eq!(h.header("authorization"), Some(format!("OAuth {APP_TOKEN}").as_str()));
        assert_eq!(h.header("content-type"), Some("application/json"));
        let idem = h.header("idempotency-key").expect("Idempotency-Key").to_owned();

        let ev = event_of(&app, &link["id"], "backlink.create").await;
        assert_eq!(ev["idempotencyKey"], json!(idem));
        assert_eq!(ev["state"], "delivered");
        assert_eq!(ev["attempts"], 1);
        assert_eq!(ev["method"], "POST");
        assert_eq!(ev["url"], json!(format!("{}/links", fake.base())));
        assert!(is_tracker_date(&ev["deliveredAt"]), "{ev}");
        assert_eq!(ev["self"], json!(format!("{}/v2/_outbox/{}", app.base, ev["id"])));
        let delivered = events(&app, Some("delivered")).await;
        assert!(delivered.iter().any(|e| e["id"] == ev["id"]));
        assert!(events(&app, Some("pending")).await.is_empty());
        assert!(events(&app, Some("failed")).await.is_empty());
        // Every event gets its own key.
        let second = remote(&app, &key, APP, "TEST-18", true).await;
        wait_link(&app, &second, "delivery", |l| backlink_state(l) == "delivered").await;
        let hits = fake.wait_hits(2).await;
        assert_ne!(hits[1].header("idempotency-key"), Some(idem.as_str()));
        assert_eq!(hits[1].json(), json!({"issueKey": key, "entityIds": ["TEST-18"]}));
    }

    async fn backlink_on_v3_and_by_issue_id(app) {
        let (fake, key) = setup(&app).await;
        let id = app.get(&format!("/v2/issues/{key}")).await.body["id"].as_str().unwrap().to_owned();
        let a = app
            .post(&format!("/v3/issues/{id}/remotelinks?backlink=true"), json!({"relationship": "relates", "key": "v3-obj", "origin": APP}))
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        assert_remote_shape(&app, "v3", &a.body, &key, APP, "v3-obj");
        wait_link(&app, &a.body, "delivery", |l| backlink_state(l) == "delivered").await;
        let hits = fake.wait_hits(1).await;
        // The issue key, never the id, goes to the application.
        assert_eq!(hits[0].json(), json!({"issueKey": key, "entityIds": ["v3-obj"]}));
    }

    async fn backlink_without_an_app_token_sends_no_authorization(app) {
        let fake = Fake::start().await;
        register(&app, app_body("no.token", &fake.base(), None)).await;
        let key = issue(&app).await;
        let link = remote(&app, &key, "no.token", "1", true).await;
        wait_link(&app, &link, "delivery", |l| backlink_state(l) == "delivered").await;
        let hits = fake.wait_hits(1).await;
        assert_eq!(hits[0].header("authorization"), None);
        assert!(hits[0].header("idempotency-key").is_some());
        assert_eq!(hits[0].header("content-type"), Some("application/json"));
    }

    async fn no_backlink_without_the_flag(app) {
        let (fake, key) = setup(&app).await;
        let plain = remote(&app, &key, APP, "p1", false).await;
        let a = app
            .post(&format!("/v2/issues/{key}/remotelinks?backlink=false"), json!({"relationship": "relates", "key": "p2", "origin": APP}))
            .await;
        assert_eq!(a.status, 201);
        for l in [&plain, &a.body] {
            assert!(l.get("backlink").is_none(), "{l}");
        }
        assert!(events(&app, None).await.is_empty());
        fake.assert_quiet(0, Duration::from_millis(300)).await;
        // Removing them calls nothing either.
        for l in [&plain, &a.body] {
            assert_eq!(app.delete(&path_of(&app, &l["self"])).await.status, 204);
        }
        assert!(events(&app, None).await.is_empty());
        fake.assert_quiet(0, Duration::from_millis(300)).await;
        // A flag that is not a boolean is a bad request, and writes nothing.
        app.post(&format!("/v2/issues/{key}/remotelinks?backlink=yes"), json!({"relationship": "relates", "key": "p3", "origin": APP}))
            .await
            .expect_error(400);
        assert_eq!(app.get(&format!("/v2/issues/{key}/remotelinks")).await.body, json!([]));
    }

    async fn backlink_to_an_app_without_create_url_queues_nothing(app) {
        let fake = Fake::start().await;
        register(&app, json!({"id": "info.only", "name": "Info only",
            "entityInfoUrl": format!("{}/info/{{{{remoteKey}}}}", fake.base()),
            "removeLinkUrl": format!("{}/links/{{{{issueKey}}}}/{{{{remoteKey}}}}", fake.base())})).await;
        let key = issue(&app).await;
        let link = remote(&app, &key, "info.only", "1", true).await;
        assert!(link.get("backlink").is_none(), "{link}");
        assert!(events(&app, None).await.is_empty());
        assert_eq!(app.delete(&path_of(&app, &link["self"])).await.status, 204);
        assert!(events(&app, None).await.is_empty());
        fake.assert_quiet(0, Duration::from_millis(300)).await;
    }

    async fn receiver_down_then_500_then_slow_then_up_is_delivered_once(app) {
        // Many attempts, short backoff, an 800 ms timeout.
        let app = TestApp::spawn_with(app.backend, outbox(800, 50, 400, 40)).await.unwrap();
        let port = dead_port();
        let base = format!("http://127.0.0.1:{port}");
        register(&app, app_body(APP, &base, Some(APP_TOKEN))).await;
        let key = issue(&app).await;
        let link = remote(&app, &key, APP, "TEST-17", true).await;

        // Down: connection refused.
        let l = wait_link(&app, &link, "a refused attempt", |l| {
            l["backlink"]["attempts"].as_u64() >= Some(1) && l["backlink"]["lastError"].is_string()
        })
        .await;
        assert_eq!(l["backlink"]["state"], "pending", "{l}");
        assert_eq!(l["backlink"]["lastError"], "connection failed", "{l}");

        // Up, but answering 500.
        let fake = Fake::on(port).await;
        fake.set_mode(Mode::Fail);
        fake.wait_hits(1).await;
        let l = wait_link(&app, &link, "an HTTP 500 error", |l| {
            l["backlink"]["lastError"].as_str().is_some_and(|e| e.starts_with("HTTP 500"))
        })
        .await;
        assert_eq!(l["backlink"]["state"], "pending");
        assert!(l["backlink"]["lastError"].as_str().unwrap().contains("boom"), "{l}");

        // Slower than the timeout.
        fake.set_mode(Mode::Slow(Duration::from_secs(3)));
        eventually("a slow attempt", || async { fake.hits().iter().any(|h| matches!(h.mode, Mode::Slow(_))).then_some(()) }).await;
        let l = wait_link(&app, &link, "a timeout", |l| l["backlink"]["lastError"] == "timed out").await;
        assert_eq!(l["backlink"]["state"], "pending");

        // Up.
        fake.set_mode(Mode::Ok);
        let done = wait_link(&app, &link, "delivery", |l| backlink_state(l) == "delivered").await;
        assert!(done["backlink"].get("lastError").is_none(), "{done}");
        fake.assert_quiet(fake.hits().len(), Duration::from_millis(500)).await;

        let hits = fake.hits();
        let modes: Vec<Mode> = hits.iter().map(|h| h.mode).collect();
        assert_eq!(modes.iter().filter(|m| **m == Mode::Ok).count(), 1, "{modes:?}");
        assert_eq!(modes.last(), Some(&Mode::Ok), "{modes:?}");
        assert_eq!(modes[0], Mode::Fail, "{modes:?}");
        assert!(modes.iter().any(|m| matches!(m, Mode::Slow(_))));
        let first_slow = modes.iter().position(|m| matches!(m, Mode::Slow(_))).unwrap();
        assert!(modes[..first_slow].iter().all(|m| *m == Mode::Fail), "{modes:?}");
        assert!(modes[first_slow..modes.len() - 1].iter().all(|m| matches!(m, Mode::Slow(_))), "{modes:?}");
        // Every attempt is the same call with the same Idempotency-Key.
        let ev = event_of(&app, &link["id"], "backlink.create").await;
        for h in &hits {
            assert_eq!(h.method, "POST");
            assert_eq!(h.path, "/links");
            assert_eq!(h.json(), json!({"issueKey": key, "entityIds": ["TEST-17"]}));
            assert_eq!(h.header("authorization"), Some(format!("OAuth {APP_TOKEN}").as_str()));
            assert_eq!(h.header("content-type"), Some("application/json"));
            assert_eq!(h.header("idempotency-key"), ev["idempotencyKey"].as_str());
        }
        // The attempt count includes the refused ones.
        assert!(done["backlink"]["attempts"].as_u64().unwrap() > hits.len() as u64, "{done} vs {} hits", hits.len());
        assert_eq!(ev["attempts"], done["backlink"]["attempts"]);
        assert_eq!(ev["state"], "delivered");
    }

    async fn backoff_grows_between_attempts(app) {
        let app = TestApp::spawn_with(app.backend, outbox(1000, 100, 1600, 5)).await.unwrap();
        let (fake, key) = setup(&app).await;
        fake.set_mode(Mode::Fail);
        let link = remote(&app, &key, APP, "TEST-17", true).await;
        let done = wait_link(&app, &link, "failure", |l| backlink_state(l) == "failed").await;
        assert_eq!(done["backlink"]["attempts"], 5, "{done}");
        fake.assert_quiet(5, Duration::from_millis(300)).await;
        let hits = fake.hits();
        let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1].at - w[0].at).collect();
        // Delay after the n-th failure: 100 ms · 2^(n-1), with equal jitter (half of it fixed).
        let floors = [50u64, 100, 200, 400];
        for (g, floor) in gaps.iter().zip(floors) {
            assert!(*g + Duration::from_millis(3) >= Duration::from_millis(floor), "gaps {gaps:?}");
        }
        assert!(gaps[2] > gaps[0] && gaps[3] > gaps[1] && gaps[3] > gaps[0], "gaps must grow: {gaps:?}");
        assert!(gaps[3] < Duration::from_millis(1600 + 500), "capped: {gaps:?}");
    }

    async fn always_failing_receiver_ends_failed_and_retry_delivers(app) {
        let (fake, key) = setup(&app).await;
        fake.set_mode(Mode::Fail);
        let link = remote(&app, &key, APP, "TEST-17", true).await;
        // common::fast_outbox: 5 attempts.
        let failed = wait_link(&app, &link, "failure", |l| backlink_state(l) == "failed").await;
        assert_eq!(failed["backlink"]["attempts"], 5, "{failed}");
        let err = failed["backlink"]["lastError"].as_str().expect("lastError");
        assert!(err.starts_with("HTTP 500") && err.contains("boom"), "{err}");
        fake.assert_quiet(5, Duration::from_millis(300)).await;

        let listed = events(&app, Some("failed")).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        let ev = &listed[0];
        assert_eq!(ev["kind"], "backlink.create");
        assert_eq!(ev["remoteLinkId"], link["id"]);
        assert_eq!(ev["attempts"], 5);
        assert_eq!(ev["lastError"], json!(err));
        assert!(ev.get("deliveredAt").is_none());
        assert!(events(&app, Some("pending")).await.is_empty());
        assert!(events(&app, Some("delivered")).await.is_empty());
        assert!(events(&app, Some("cancelled")).await.is_empty());
        for s in ["bogus", "FAILED", ""] {
            if s.is_empty() {
                continue;
            }
            app.get(&format!("/v2/_outbox?state={s}")).await.expect_error(400);
        }

        // A new token, a fixed receiver, and a retry.
        let p = app.patch(&format!("/v2/applications/{APP}"), json!({"oauthToken": "rotated-token"})).await;
        assert_eq!(p.status, 200);
        fake.set_mode(Mode::Ok);
        let r = app.post(&format!("/v2/_outbox/{}/_retry", ev["id"]), json!({})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["id"], ev["id"]);
        assert!(matches!(r.body["state"].as_str(), Some("pending" | "delivered")), "{}", r.body);
        let done = wait_link(&app, &link, "delivery after retry", |l| backlink_state(l) == "delivered").await;
        assert_eq!(done["backlink"], json!({"state": "delivered", "attempts": 1}), "{done}");
        let hits = fake.wait_hits(6).await;
        fake.assert_quiet(6, Duration::from_millis(200)).await;
        let keys: BTreeSet<&str> = hits.iter().map(|h| h.header("idempotency-key").unwrap()).collect();
        assert_eq!(keys.len(), 1, "one event, one Idempotency-Key: {keys:?}");
        assert_eq!(hits[5].header("authorization"), Some("OAuth rotated-token"));
        assert_eq!(hits[4].header("authorization"), Some(format!("OAuth {APP_TOKEN}").as_str()));
        assert!(events(&app, Some("failed")).await.is_empty());
        assert_eq!(events(&app, Some("delivered")).await.len(), 1);
    }

    async fn outbox_admin_endpoint_errors(app) {
        let (fake, key) = setup(&app).await;
        fake.set_mode(Mode::Fail);
        let link = remote(&app, &key, APP, "1", true).await;
        wait_link(&app, &link, "failure", |l| backlink_state(l) == "failed").await;
        let ev = event_of(&app, &link["id"], "backlink.create").await;
        app.post("/v2/_outbox/999999/_retry", json!({})).await.expect_error(404);
        app.post("/v2/_outbox/abc/_retry", json!({})).await.expect_error(404);
        app.get("/v2/_outbox?state=nope").await.expect_error(400);
        let token = app.user_token("other", "other-admin", Role::Admin).await;
        let other = app.as_user(&token, "other");
        assert_eq!(other.get("/v2/_outbox").await.body, json!([]));
        other.post(&format!("/v2/_outbox/{}/_retry", ev["id"]), json!({})).await.expect_error(404);
        let token = app.user_token(common::ORG, "mem", Role::Member).await;
        let member = app.as_user(&token, common::ORG);
        member.get("/v2/_outbox?state=failed").await.expect_error(403);
        member.post(&format!("/v2/_outbox/{}/_retry", ev["id"]), json!({})).await.expect_error(403);
        // Still failed: neither retry went through.
        assert_eq!(event_of(&app, &link["id"], "backlink.create").await["state"], "failed");
        fake.assert_quiet(5, Duration::from_millis(200)).await;
        // v3 lists the same events.
        let v3 = app.get("/v3/_outbox?state=failed").await;
        assert_eq!(v3.status, 200);
        assert_eq!(v3.body[0]["self"], json!(format!("{}/v3/_outbox/{}", app.base, ev["id"])));
    }

    async fn removing_a_backlinked_link_sends_delete_with_encoded_placeholders(app) {
        let (fake, key) = setup(&app).await;
        let link = remote(&app, &key, APP, "a b/c", true).await;
        wait_link(&app, &link, "delivery", |l| backlink_state(l) == "delivered").await;
        let create = fake.wait_hits(1).await[0].clone();
        assert_eq!(create.json(), json!({"issueKey": key, "entityIds": ["a b/c"]}));

        let d = app.delete(&path_of(&app, &link["self"])).await;
        assert_eq!(d.status, 204, "{}", d.body);
        let hits = fake.wait_hits(2).await;
        fake.assert_quiet(2, Duration::from_millis(300)).await;
        let h = &hits[1];
        assert_eq!(h.method, "DELETE");
        assert_eq!(h.path, format!("/links/{key}/a%20b%2Fc"));
        assert_eq!(h.query.as_deref(), Some("k=a%20b%2Fc"));
        assert!(h.body.is_empty(), "no body: {:?}", h.body);
        assert_eq!(h.header("authorization"), Some(format!("OAuth {APP_TOKEN}").as_str()));
        let idem = h.header("idempotency-key").expect("Idempotency-Key");
        assert_ne!(Some(idem), create.header("idempotency-key"));

        let remove = eventually("the remove event delivered", || async {
            let e = event_of(&app, &link["id"], "backlink.remove").await;
            (e["state"] == "delivered").then_some(e)
        })
        .await;
        assert_eq!(remove["method"], "DELETE");
        assert_eq!(remove["idempotencyKey"], json!(idem));
        assert_eq!(remove["url"], json!(format!("{}/links/{key}/a%20b%2Fc?k=a%20b%2Fc", fake.base())));
        app.get(&path_of(&app, &link["self"])).await.expect_error(404);
    }

    async fn removing_a_link_whose_create_is_pending_cancels_both(app) {
        // A long backoff: after the first refused attempt the next one is 1–2 s away.
        let app = TestApp::spawn_with(app.backend, outbox(1000, 2000, 2000, 5)).await.unwrap();
        let port = dead_port();
        register(&app, app_body(APP, &format!("http://127.0.0.1:{port}"), Some(APP_TOKEN))).await;
        let key = issue(&app).await;
        let link = remote(&app, &key, APP, "TEST-17", true).await;
        wait_link(&app, &link, "a refused attempt", |l| l["backlink"]["lastError"] == "connection failed").await;

        let d = app.delete(&path_of(&app, &link["self"])).await;
        assert_eq!(d.status, 204, "{}", d.body);
        let evs = events_of(&app, &link["id"]).await;
        assert_eq!(evs.len(), 1, "no remove event is queued: {evs:?}");
        assert_eq!(evs[0]["kind"], "backlink.create");
        assert_eq!(evs[0]["state"], "cancelled", "{}", evs[0]);
        assert_eq!(events(&app, Some("cancelled")).await.len(), 1);
        assert!(events(&app, Some("pending")).await.is_empty());

        // The receiver comes up; nothing ever arrives (the cancelled attempt would have been due within 2 s).
        let fake = Fake::on(port).await;
        fake.assert_quiet(0, Duration::from_millis(2500)).await;
        assert_eq!(event_of(&app, &link["id"], "backlink.create").await["state"], "cancelled");
    }

    async fn removing_a_link_while_its_create_is_in_flight_deletes_after_the_create(app) {
        let (fake, key) = setup(&app).await;
        fake.set_mode(Mode::Slow(Duration::from_millis(700)));
        let link = remote(&app, &key, APP, "TEST-17", true).await;
        fake.wait_hits(1).await;
        // The create is being answered now.
        let d = app.delete(&path_of(&app, &link["self"])).await;
        assert_eq!(d.status, 204, "{}", d.body);
        let hits = fake.wait_hits(2).await;
        fake.assert_quiet(2, Duration::from_millis(300)).await;
        assert_eq!(hits[0].method, "POST");
        assert_eq!(hits[1].method, "DELETE");
        assert_eq!(hits[1].path, format!("/links/{key}/TEST-17"));
        let answered = fake.answered();
        let create_done = answered.iter().find(|(i, _)| *i == 0).expect("the create was answered").1;
        assert!(hits[1].at >= create_done, "the DELETE came before the create was answered");
        let evs = events_of(&app, &link["id"]).await;
        assert_eq!(evs.len(), 2, "{evs:?}");
        let evs = eventually("both delivered", || async {
            let evs = events_of(&app, &link["id"]).await;
            evs.iter().all(|e| e["state"] == "delivered").then_some(evs)
        })
        .await;
        assert_eq!(evs.len(), 2);
    }

    async fn removing_a_link_while_its_create_is_in_flight_then_the_create_fails_sends_nothing(app) {
        // One attempt only, with a 500 ms timeout.
        let app = TestApp::spawn_with(app.backend, outbox(500, 40, 400, 1)).await.unwrap();
        let (fake, key) = setup(&app).await;
        fake.set_mode(Mode::Slow(Duration::from_secs(5)));
        let link = remote(&app, &key, APP, "TEST-17", true).await;
        fake.wait_hits(1).await;
        let d = app.delete(&path_of(&app, &link["self"])).await;
        assert_eq!(d.status, 204);
        let evs = eventually("the create failed", || async {
            let evs = events_of(&app, &link["id"]).await;
            evs.iter().any(|e| e["kind"] == "backlink.create" && e["state"] == "failed").then_some(evs)
        })
        .await;
        let create = evs.iter().find(|e| e["kind"] == "backlink.create").unwrap();
        assert_eq!(create["lastError"], "timed out");
        if evs.iter().any(|e| e["kind"] == "backlink.remove") {
            let remove = eventually("the remove cancelled", || async {
                let e = event_of(&app, &link["id"], "backlink.remove").await;
                (e["state"] != "pending").then_some(e)
            })
            .await;
            assert_eq!(remove["state"], "cancelled", "{remove}");
        }
        fake.set_mode(Mode::Ok);
        fake.assert_quiet(1, Duration::from_millis(500)).await;
    }

    async fn removing_a_link_whose_create_failed_sends_nothing(app) {
        let (fake, key) = setup(&app).await;
        fake.set_mode(Mode::Fail);
        let link = remote(&app, &key, APP, "TEST-17", true).await;
        wait_link(&app, &link, "failure", |l| backlink_state(l) == "failed").await;
        fake.set_mode(Mode::Ok);
        let d = app.delete(&path_of(&app, &link["self"])).await;
        assert_eq!(d.status, 204);
        fake.assert_quiet(5, Duration::from_millis(400)).await;
        let evs = events_of(&app, &link["id"]).await;
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert_eq!(evs[0]["state"], "failed");
    }

    async fn retrying_the_failed_create_of_a_removed_link_sends_nothing(app) {
        let (fake, key) = setup(&app).await;
        fake.set_mode(Mode::Fail);
        let link = remote(&app, &key, APP, "failed-then-removed", true).await;
        wait_link(&app, &link, "failure", |l| backlink_state(l) == "failed").await;
        assert_eq!(app.delete(&path_of(&app, &link["self"])).await.status, 204);
        let ev = event_of(&app, &link["id"], "backlink.create").await;
        fake.set_mode(Mode::Ok);
        let r = app.post(&format!("/v2/_outbox/{}/_retry", ev["id"]), json!({})).await;
        // Either refused, or accepted without calling the application: the link is gone.
        assert!(r.status == 422 || r.status == 200, "{}", r.body);
        // A revived create is due at once; give it far longer than one poll.
        fake.assert_quiet(5, Duration::from_millis(1500)).await;
        assert_ne!(event_of(&app, &link["id"], "backlink.create").await["state"], "delivered");
    }

    async fn retrying_the_cancelled_create_of_a_removed_link_sends_nothing(app) {
        let app = TestApp::spawn_with(app.backend, outbox(1000, 5000, 5000, 5)).await.unwrap();
        let port = dead_port();
        register(&app, app_body(APP, &format!("http://127.0.0.1:{port}"), None)).await;
        let key = issue(&app).await;
        let link = remote(&app, &key, APP, "cancelled", true).await;
        wait_link(&app, &link, "a refused attempt", |l| l["backlink"]["lastError"] == "connection failed").await;
        assert_eq!(app.delete(&path_of(&app, &link["self"])).await.status, 204);
        let ev = event_of(&app, &link["id"], "backlink.create").await;
        assert_eq!(ev["state"], "cancelled");
        let fake = Fake::on(port).await;
        let r = app.post(&format!("/v2/_outbox/{}/_retry", ev["id"]), json!({})).await;
        assert!(r.status == 422 || r.status == 200, "{}", r.body);
        fake.assert_quiet(0, Duration::from_millis(1500)).await;
        assert_ne!(event_of(&app, &link["id"], "backlink.create").await["state"], "delivered");
    }

    async fn removing_a_backlinked_link_of_an_app_without_remove_url_calls_nothing(app) {
        let fake = Fake::start().await;
        register(&app, json!({"id": "create.only", "name": "Create only", "createLinkUrl": format!("{}/links", fake.base())})).await;
        let key = issue(&app).await;
        let link = remote(&app, &key, "create.only", "1", true).await;
        wait_link(&app, &link, "delivery", |l| backlink_state(l) == "delivered").await;
        assert_eq!(app.delete(&path_of(&app, &link["self"])).await.status, 204);
        fake.assert_quiet(1, Duration::from_millis(300)).await;
        assert_eq!(events(&app, None).await.len(), 1);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A database that outlives a server: restarts and a controlled race
// ---------------------------------------------------------------------------------------------------------------

mod restartable {
    use super::*;
    use tether::domain::OrgId;
    use tether::domain::dates::now_ms;
    use tether::http::ctx::hash_token;
    use tether::store::{DynStore, Synchronous};

    /// A SQLite file or a fresh PostgreSQL database (dropped at the end), shared by several servers in turn.
    pub struct Db {
        pub url: String,
        _dir: Option<tempfile::TempDir>,
        pg: Option<(String, String)>,
    }

    impl Db {
        pub async fn new(backend: Backend) -> Option<Db> {
            Some(match backend {
                Backend::Sqlite => {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let url = format!("sqlite://{}", dir.path().join("tether.db").display());
                    Db {
                        url,
                        _dir: Some(dir),
                        pg: None,
                    }
                }
                Backend::Postgres => {
                    let admin = common::postgres_url()?;
                    let (url, name) = common::fresh_pg_database(&admin).await;
                    Db {
                        url,
                        _dir: None,
                        pg: Some((admin, name)),
                    }
                }
            })
        }
    }

    impl Drop for Db {
        fn drop(&mut self) {
            if let Some((admin, name)) = self.pg.take() {
                let _ = std::thread::spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                        return;
                    };
                    rt.block_on(async {
                        use sqlx::Connection;
                        if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            )))
                            .execute(&mut c)
                            .await;
                        }
                    });
                })
                .join();
            }
        }
    }

    /// One Tether process's worth: its own store (pool), HTTP server and, optionally, outbox worker.
    pub struct Server {
        pub base: String,
        pub store: DynStore,
        http: reqwest::Client,
        stop: tokio::sync::watch::Sender<bool>,
        server_task: tokio::task::JoinHandle<()>,
        worker_task: Option<tokio::task::JoinHandle<()>>,
    }

    impl Server {
        /// Opens `db` (running migrations, bootstrapping once) and serves it, as `tether serve` would.
        pub async fn start(db: &Db, outbox: Option<OutboxConfig>) -> Server {
            let store = tether::store::open(&db.url, Synchronous::Normal)
                .await
                .expect("open store");
            store
                .bootstrap(
                    &OrgId::parse(common::ORG).unwrap(),
                    &hash_token(common::TOKEN),
                    now_ms(),
                )
                .await
                .expect("bootstrap");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let base = format!("http://{}", listener.local_addr().unwrap());
            let state = tether::AppState::new(store.clone(), &base);
            let (tx, rx) = tokio::sync::watch::channel(false);
            let worker_task = outbox.map(|cfg| {
                let worker = tether::outbox::Worker::new(store.clone(), state.http.clone(), cfg, state.wakeup.clone());
                let mut rx = rx.clone();
                tokio::spawn(worker.run(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                }))
            });
            let mut server_rx = rx;
            let server_task = tokio::spawn(async move {
                let _ = tether::serve(listener, state, async move {
                    let _ = server_rx.wait_for(|stop| *stop).await;
                })
                .await;
            });
            Server {
                base,
                store,
                http: reqwest::Client::new(),
                stop: tx,
                server_task,
                worker_task,
            }
        }

        /// A graceful stop (SIGTERM): the worker finishes its attempt, the server drains.
        pub async fn stop(self) {
            let _ = self.stop.send(true);
            tokio::time::timeout(DEADLINE, self.server_task)
                .await
                .expect("server stops")
                .unwrap();
            if let Some(w) = self.worker_task {
                tokio::time::timeout(DEADLINE, w).await.expect("worker stops").unwrap();
            }
        }

        /// A crash (SIGKILL): everything stops mid-flight.
        pub async fn crash(self) {
            self.server_task.abort();
            if let Some(w) = self.worker_task {
                w.abort();
                let _ = w.await;
            }
            let _ = self.server_task.await;
        }
    }

    impl Client for Server {
        fn send(&self, method: Method, path: &str, body: Option<Value>) -> impl Future<Output = Answer> + Send {
            let mut req = self
                .http
                .request(method, format!("{}{}", self.base, path))
                .header("Authorization", format!("OAuth {}", common::TOKEN))
                .header("X-Org-ID", common::ORG);
            if let Some(b) = body {
                req = req.header("Content-Type", "application/json").body(b.to_string());
            }
            async move {
                let resp = req.send().await.expect("request");
                let status = resp.status();
                let headers = resp.headers().clone();
                let bytes = resp.bytes().await.expect("body");
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
                };
                Answer { status, headers, body }
            }
        }
        fn base_url(&self) -> &str {
            &self.base
        }
    }

    /// A queue, an issue, and the application at `app_base`; returns the issue key.
    pub async fn prepare(s: &Server, app_base: &str) -> String {
        register(s, app_body(APP, app_base, Some(APP_TOKEN))).await;
        let q = s.post("/v2/queues", json!({"key": "RS", "name": "Restart"})).await;
        assert_eq!(q.status, 201, "{}", q.body);
        let i = s
            .post("/v2/issues", json!({"queue": "RS", "summary": "survives restarts"}))
            .await;
        assert_eq!(i.status, 201, "{}", i.body);
        i.body["key"].as_str().unwrap().to_owned()
    }

    /// A restart between attempts loses nothing: the event, its attempt count, its next due time and its
    /// Idempotency-Key are all in the database.
    pub async fn restart_between_attempts_loses_nothing(backend: Backend) {
        let Some(db) = Db::new(backend).await else { return };
        let cfg = outbox(1000, 2000, 2000, 10);
        let port = dead_port();
        let s1 = Server::start(&db, Some(cfg)).await;
        let key = prepare(&s1, &format!("http://127.0.0.1:{port}")).await;
        let link = remote(&s1, &key, APP, "TEST-17", true).await;
        let l = wait_link(&s1, &link, "a refused attempt", |l| {
            l["backlink"]["lastError"] == "connection failed"
        })
        .await;
        let before = event_of(&s1, &link["id"], "backlink.create").await;
        assert_eq!(before["state"], "pending");
        s1.stop().await;

        let fake = Fake::on(port).await;
        let s2 = Server::start(&db, Some(cfg)).await;
        let after = event_of(&s2, &link["id"], "backlink.create").await;
        assert_eq!(after["idempotencyKey"], before["idempotencyKey"]);
        assert_eq!(after["attempts"], l["backlink"]["attempts"]);
        let done = wait_link(&s2, &link, "delivery after the restart", |l| {
            backlink_state(l) == "delivered"
        })
        .await;
        assert_eq!(
            done["backlink"]["attempts"].as_u64(),
            l["backlink"]["attempts"].as_u64().map(|n| n + 1),
            "{done}"
        );
        let hits = fake.wait_hits(1).await;
        fake.assert_quiet(1, Duration::from_millis(300)).await;
        assert_eq!(hits[0].header("idempotency-key"), before["idempotencyKey"].as_str());
        assert_eq!(hits[0].json(), json!({"issueKey": key, "entityIds": ["TEST-17"]}));
        assert_eq!(
            hits[0].header("authorization"),
            Some(format!("OAuth {APP_TOKEN}").as_str())
        );
        s2.stop().await;
    }

    /// A crash in the middle of an attempt loses nothing either: the claim's lease runs out (timeout + 5 s) and the
    /// next process sends the same event again, with the same Idempotency-Key.
    pub async fn crash_during_an_attempt_loses_nothing(backend: Backend) {
        let Some(db) = Db::new(backend).await else { return };
        let cfg = outbox(500, 50, 400, 10);
        let fake = Fake::start().await;
        fake.set_mode(Mode::Slow(Duration::from_secs(60)));
        let s1 = Server::start(&db, Some(cfg)).await;
        let key = prepare(&s1, &fake.base()).await;
        let link = remote(&s1, &key, APP, "TEST-17", true).await;
        fake.wait_hits(1).await;
        s1.crash().await;

        fake.set_mode(Mode::Ok);
        let s2 = Server::start(&db, Some(cfg)).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let done = loop {
            let l = s2.get(&path_of(&s2, &link["self"])).await.body;
            if backlink_state(&l) == "delivered" {
                break l;
            }
            assert!(Instant::now() < deadline, "not delivered after the crash: {l}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(done["backlink"]["attempts"], 2, "{done}");
        let hits = fake.wait_hits(2).await;
        fake.assert_quiet(2, Duration::from_millis(300)).await;
        assert_eq!(hits[0].header("idempotency-key"), hits[1].header("idempotency-key"));
        assert_eq!(hits[0].body, hits[1].body);
        s2.stop().await;
    }

    /// PostgreSQL, several processes: `DELETE …/remotelinks/{id}` reads the create event, then cancels it. If a
    /// worker claims the event in between (its claim commits after the delete's read), the create is sent anyway.
    /// The contract wants: a create being sent is followed by a remove once it has gone through.
    pub async fn delete_racing_a_claim_still_removes_the_backlink() {
        use sqlx::Connection;
        let Some(db) = Db::new(Backend::Postgres).await else {
            return;
        };
        // No worker: this test plays the worker, to pin the order of the race.
        let s = Server::start(&db, None).await;
        let key = prepare(&s, "http://127.0.0.1:9").await;
        let link = remote(&s, &key, APP, "TEST-17", true).await;
        let ev = event_of(&s, &link["id"], "backlink.create").await;
        let ev_id = ev["id"].as_i64().unwrap();

        // A worker claims the event: the same write as Store::claim_events, in a transaction still open.
        let mut worker = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut worker).await.unwrap();
        let now = now_ms();
        sqlx::query("UPDATE outbox SET locked_until = $2, attempts = attempts + 1, updated_at = $1 WHERE id = $3 AND state = 'pending'")
            .bind(now)
            .bind(now + 60_000)
            .bind(ev_id)
            .execute(&mut worker)
            .await
            .unwrap();

        // The delete runs meanwhile, and waits for the row.
        let path = path_of(&s, &link["self"]);
        let s = Arc::new(s);
        let deleting = {
            let s = s.clone();
            tokio::spawn(async move { s.delete(&path).await })
        };
        let mut watcher = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut watcher)
            .await
            .unwrap();
            if n > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the delete never waited for the claimed row");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The claim commits: the worker now sends the create.
        sqlx::query("COMMIT").execute(&mut worker).await.unwrap();
        let d = deleting.await.unwrap();
        assert_eq!(d.status, 204, "{}", d.body);
        // The create goes through.
        s.store.event_delivered(ev_id, now_ms()).await.unwrap();

        let evs = events_of(&*s, &link["id"]).await;
        let create = evs.iter().find(|e| e["kind"] == "backlink.create").unwrap();
        assert_eq!(create["state"], "delivered", "{evs:?}");
        assert!(
            evs.iter()
                .any(|e| e["kind"] == "backlink.remove" && e["state"] == "pending"),
            "the create reached the application, the link is gone, and no remove call is queued: {evs:?}"
        );
    }
}

mod restart {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_restart_between_attempts_loses_nothing() {
        restartable::restart_between_attempts_loses_nothing(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_restart_between_attempts_loses_nothing() {
        restartable::restart_between_attempts_loses_nothing(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_crash_during_an_attempt_loses_nothing() {
        restartable::crash_during_an_attempt_loses_nothing(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_crash_during_an_attempt_loses_nothing() {
        restartable::crash_during_an_attempt_loses_nothing(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_delete_racing_a_claim_still_removes_the_backlink() {
        restartable::delete_racing_a_claim_still_removes_the_backlink().await;
    }
}

/// Create a backlinked remote link and delete it at once, many times, with the real worker racing the deletes: every
/// create that reached the application must be followed by a remove, and an event must not say `cancelled` when its
/// call went out.
async fn create_then_delete_at_once_never_leaves_a_backlink(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (fake, key) = setup(&app).await;
    let n = 120;
    for i in 0..n {
        let link = remote(&app, &key, APP, &format!("k{i}"), true).await;
        let d = app.delete(&path_of(&app, &link["self"])).await;
        assert_eq!(d.status, 204, "{}", d.body);
    }
    let evs = eventually("the outbox to drain", || async {
        let evs = events(&app, None).await;
        evs.iter().all(|e| e["state"] != "pending").then_some(evs)
    })
    .await;
    fake.assert_quiet(fake.hits().len(), Duration::from_millis(300)).await;
    let hits = fake.hits();
    let mut problems = Vec::new();
    for i in 0..n {
        let k = format!("k{i}");
        let posted = hits
            .iter()
            .filter(|h| h.method == "POST" && h.json()["entityIds"][0] == json!(k))
            .count();
        let deleted = hits
            .iter()
            .filter(|h| h.method == "DELETE" && h.path == format!("/links/{key}/{k}"))
            .count();
        if posted > 0 && deleted == 0 {
            problems.push(format!("{k}: created at the application, never removed"));
        }
        if posted == 0 && deleted > 0 {
            problems.push(format!("{k}: removed without a create"));
        }
    }
    let cancelled = evs.iter().filter(|e| e["state"] == "cancelled").count();
    let posts = hits.iter().filter(|h| h.method == "POST").count();
    assert!(
        problems.is_empty(),
        "{} of {n} links left a backlink behind ({posts} creates sent, {cancelled} events cancelled): {problems:?}",
        problems.len()
    );
    assert_eq!(
        posts + cancelled,
        n,
        "every create is either sent or cancelled, never both"
    );
}

mod race {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_create_then_delete_at_once_never_leaves_a_backlink() {
        create_then_delete_at_once_never_leaves_a_backlink(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_create_then_delete_at_once_never_leaves_a_backlink() {
        create_then_delete_at_once_never_leaves_a_backlink(Backend::Postgres).await;
    }
}
