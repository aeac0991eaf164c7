//! Test harness: a real Tether on `127.0.0.1:0` with a fresh database per test, on SQLite or PostgreSQL.
//!
//! PostgreSQL tests use `TETHER_TEST_DATABASE_URL` (a server where the role may `CREATE DATABASE`; `scripts/test.sh`
//! sets it). Without it they fail, unless `TETHER_TEST_SKIP_POSTGRES=1` says to skip them on purpose.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use tether::domain::dates::now_ms;
use tether::domain::{OrgId, Role};
use tether::http::ctx::hash_token;
use tether::outbox::OutboxConfig;
use tether::store::{DynStore, Synchronous};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The organization and admin token every test app starts with.
pub const ORG: &str = "acme";
pub const TOKEN: &str = "test-admin-token-0123456789";

/// A running server and a way to talk to it.
pub struct TestApp {
    pub base: String,
    pub store: DynStore,
    pub backend: Backend,
    pub http: reqwest::Client,
    pub token: String,
    pub org: String,
    /// The database URL the server uses.
    pub url: String,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    _dir: Option<tempfile::TempDir>,
    pg_cleanup: Option<(String, String)>,
}

/// An HTTP answer: status, headers and JSON body (`Value::Null` when empty).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status and the contract's error envelope, returning the first message.
    pub fn expect_error(&self, status: u16) -> String {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        assert!(
            self.body["errors"].is_object(),
            "errors must be an object: {}",
            self.body
        );
        assert_eq!(self.body["statusCode"], json!(status), "{}", self.body);
        let msgs = self.body["errorMessages"]
            .as_array()
            .expect("errorMessages must be a list");
        assert!(!msgs.is_empty(), "errorMessages must not be empty");
        msgs[0].as_str().expect("messages are strings").to_owned()
    }
}

/// Whether PostgreSQL tests should run (panics when they cannot and were not told to skip).
pub fn postgres_url() -> Option<String> {
    match std::env::var("TETHER_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("TETHER_TEST_SKIP_POSTGRES").as_deref() == Ok("1") => None,
        _ => panic!(
            "TETHER_TEST_DATABASE_URL is not set: run `bash scripts/test.sh`, or set TETHER_TEST_SKIP_POSTGRES=1"
        ),
    }
}

/// A fresh PostgreSQL database; returns its URL.
pub async fn fresh_pg_database(admin_url: &str) -> (String, String) {
    use sqlx::Connection;
    let name = format!("tether_t_{:016x}", rand::random::<u64>());
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connect to TETHER_TEST_DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create db");
    let mut url = url::Url::parse(admin_url).expect("TETHER_TEST_DATABASE_URL is a URL");
    url.set_path(&name);
    (url.to_string(), name)
}

impl TestApp {
    /// Starts a server on a fresh database. `None` when PostgreSQL tests are skipped on purpose.
    pub async fn spawn(backend: Backend) -> Option<TestApp> {
        Self::spawn_with(backend, fast_outbox()).await
    }

    /// Starts a server whose outbox worker uses `cfg`.
    pub async fn spawn_with(backend: Backend, cfg: OutboxConfig) -> Option<TestApp> {
        Self::spawn_full(backend, cfg, None).await
    }

    /// Starts a server with the Sentry integration configured (`cfg.base_url` is usually a fake Sentry).
    pub async fn spawn_sentry(backend: Backend, cfg: tether::integrations::sentry::SentryConfig) -> Option<TestApp> {
        Self::spawn_full(backend, fast_outbox(), Some(cfg)).await
    }

    async fn spawn_full(
        backend: Backend,
        cfg: OutboxConfig,
        sentry: Option<tether::integrations::sentry::SentryConfig>,
    ) -> Option<TestApp> {
        let (url, dir, pg_cleanup) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("tether.db").display());
                (url, Some(dir), None)
            }
            Backend::Postgres => {
                let admin = postgres_url()?;
                let (url, name) = fresh_pg_database(&admin).await;
                (url, None, Some((admin, name)))
            }
        };
        let store = tether::store::open(&url, Synchronous::Normal)
            .await
            .expect("open store");
        store
            .bootstrap(&OrgId::parse(ORG).unwrap(), &hash_token(TOKEN), now_ms())
            .await
            .expect("bootstrap");
        let mut app = Self::serve(store, backend, dir, pg_cleanup, cfg, sentry).await;
        app.url = url;
        Some(app)
    }

    async fn serve(
        store: DynStore,
        backend: Backend,
        dir: Option<tempfile::TempDir>,
        pg_cleanup: Option<(String, String)>,
        cfg: OutboxConfig,
        sentry: Option<tether::integrations::sentry::SentryConfig>,
    ) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut state = tether::AppState::new(store.clone(), &base);
        state.sentry = sentry.map(|c| {
            Arc::new(tether::integrations::sentry::Sentry::new(
                c,
                store.clone(),
                state.http.clone(),
            ))
        });
        let (tx, rx) = tokio::sync::watch::channel(false);
        let worker = tether::outbox::Worker::new(store.clone(), state.http.clone(), cfg, state.wakeup.clone())
            .with_sentry(state.sentry.clone());
        let mut worker_rx = rx.clone();
        tokio::spawn(worker.run(async move {
            let _ = worker_rx.wait_for(|stop| *stop).await;
        }));
        let mut server_rx = rx;
        tokio::spawn(async move {
            let _ = tether::serve(listener, state, async move {
                let _ = server_rx.wait_for(|stop| *stop).await;
            })
            .await;
        });
        TestApp {
            base,
            store,
            backend,
            http: reqwest::Client::new(),
            token: TOKEN.into(),
            org: ORG.into(),
            url: String::new(),
            shutdown: Some(tx),
            _dir: dir,
            pg_cleanup,
        }
    }

    /// A second handle with another user's token (same server).
    pub fn as_user(&self, token: &str, org: &str) -> TestApp {
        TestApp {
            base: self.base.clone(),
            store: self.store.clone(),
            backend: self.backend,
            http: self.http.clone(),
            token: token.into(),
            org: org.into(),
            url: self.url.clone(),
            shutdown: None,
            _dir: None,
            pg_cleanup: None,
        }
    }

    /// Creates a user with a role in `org` (creating the organization when needed) and returns its token.
    pub async fn user_token(&self, org: &str, login: &str, role: Role) -> String {
        let org_id = OrgId::parse(org).unwrap();
        let _ = self.store.create_org(&org_id, org, now_ms()).await;
        let user = match self.store.create_user(login, login, None, now_ms()).await {
            Ok(u) => u,
            Err(_) => self
                .store
                .find_user(&tether::store::Locator::Key(login.into()))
                .await
                .unwrap()
                .unwrap(),
        };
        self.store.set_membership(&org_id, user.uid, role).await.unwrap();
        let token = tether::new_token();
        self.store
            .create_token(user.uid, "test", &hash_token(&token), now_ms())
            .await
            .unwrap();
        token
    }

    /// Sends a request with this handle's token and organization.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("Authorization", format!("OAuth {}", self.token))
            .header("X-Org-ID", &self.org);
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b.to_string());
        }
        Self::answer(req.send().await.expect("request")).await
    }

    /// Sends a raw request (custom headers and body, no default auth).
    pub async fn raw(&self, req: reqwest::RequestBuilder) -> Answer {
        Self::answer(req.send().await.expect("request")).await
    }

    async fn answer(resp: reqwest::Response) -> Answer {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Answer { status, headers, body }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Answer {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, None).await
    }

    /// Creates a queue (as this handle's user) and asserts 201.
    pub async fn queue(&self, key: &str) {
        let a = self
            .post("/v2/queues", json!({"key": key, "name": format!("Queue {key}")}))
            .await;
        assert_eq!(a.status, 201, "create queue {key}: {}", a.body);
    }

    /// Creates an issue and returns its JSON.
    pub async fn issue(&self, queue: &str, summary: &str) -> Value {
        self.issue_with(json!({"queue": queue, "summary": summary})).await
    }

    /// Creates an issue from a body and returns its JSON (asserting 201).
    pub async fn issue_with(&self, body: Value) -> Value {
        let a = self.post("/v2/issues", body).await;
        assert_eq!(a.status, 201, "create issue: {}", a.body);
        a.body
    }

    /// Links `from` to `to` with `rel` (asserting 201) and returns the link JSON.
    pub async fn link(&self, from: &str, rel: &str, to: &str) -> Value {
        let a = self
            .post(
                &format!("/v2/issues/{from}/links"),
                json!({"relationship": rel, "issue": to}),
            )
            .await;
        assert_eq!(a.status, 201, "link {from} {rel} {to}: {}", a.body);
        a.body
    }

    /// Counts rows of a table straight from the database (to prove that failures wrote nothing).
    pub async fn count(&self, table: &str) -> i64 {
        let filter = tether::store::IssueFilter::default();
        match table {
            "issues" => {
                let page = tether::store::Page { page: 1, per_page: 1 };
                let order = tether::store::IssueOrder {
                    column: tether::store::OrderColumn::Key,
                    ascending: true,
                };
                self.store
                    .search_issues(&OrgId::parse(&self.org).unwrap(), &filter, order, page)
                    .await
                    .unwrap()
                    .1
            }
            "links" => {
                let org = OrgId::parse(&self.org).unwrap();
                let page = tether::store::Page {
                    page: 1,
                    per_page: 1000,
                };
                let order = tether::store::IssueOrder {
                    column: tether::store::OrderColumn::Key,
                    ascending: true,
                };
                let (issues, _) = self.store.search_issues(&org, &filter, order, page).await.unwrap();
                let mut n = 0;
                for i in issues {
                    n += self.store.list_links(&org, i.id).await.unwrap().len() as i64;
                }
                n / 2
            }
            other => panic!("count({other}) is not supported"),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some((admin, name)) = self.pg_cleanup.take() {
            // Drop the per-test database from another thread: Drop cannot await.
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

/// Outbox settings for tests: millisecond backoff, five attempts.
pub fn fast_outbox() -> OutboxConfig {
    OutboxConfig {
        timeout: Duration::from_millis(1500),
        backoff: Duration::from_millis(40),
        backoff_max: Duration::from_millis(400),
        max_attempts: 5,
        poll: Duration::from_millis(20),
    }
}

/// Shared for tests that need it across tasks.
pub type Shared = Arc<TestApp>;

/// Generates each test twice: `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! both_backends {
    ($( $(#[$meta:meta])* async fn $name:ident($app:ident) $body:block )*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some($app) = $crate::common::TestApp::spawn($crate::common::Backend::Sqlite).await else { return };
                    $body
                }
            )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some($app) = $crate::common::TestApp::spawn($crate::common::Backend::Postgres).await else { return };
                    $body
                }
            )*
        }
    };
}
