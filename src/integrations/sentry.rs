//! The backend of a Sentry Integration Platform app (contract §8, seed 000): Sentry's issue-link and issue-create
//! forms, the selects that feed them, installation webhooks and two-way status sync.
//!
//! Every request from Sentry (but the browser redirect `/sentry/setup`) is verified before its JSON is parsed:
//! lower-case hex HMAC-SHA256 of the raw body keyed with the client secret, compared in constant time. Webhooks are
//! answered at once; their work goes through the outbox, deduplicated.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::domain::dates::{self, now_ms};
use crate::domain::{IssueLocator, OrgId, QueueKey};
use crate::error::Error;
use crate::http::AppState;
use crate::store::{
    DynStore, Installation, IssueFilter, IssueOrder, Locator, NewEvent, NewIssue, OrderColumn, OutboxEvent, Page,
    Secret, SentryLink,
};

/// Sentry settings (`--sentry-*`).
#[derive(Debug, Clone)]
pub struct SentryConfig {
    /// Sentry's base URL (`https://sentry.io` or a self-hosted one).
    pub base_url: String,
    /// The app's client id.
    pub client_id: String,
    /// The app's client secret: signs every request; without it every Sentry route answers 401.
    pub client_secret: Option<Secret>,
    /// The app's slug (its `serviceType` on Sentry's external issues).
    pub app_slug: Option<String>,
    /// The Tether organization new installations map to (default: the bootstrap organization).
    pub org_id: Option<OrgId>,
    /// Whether Sentry's resolve/unresolve close/reopen linked issues.
    pub status_sync: bool,
}

/// The integration: settings, an HTTP client for Sentry's API, and one token-refresh lock per installation.
pub struct Sentry {
    cfg: SentryConfig,
    store: DynStore,
    http: reqwest::Client,
    refresh_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

type HmacSha256 = hmac::Hmac<Sha256>;

/// The lower-case hex HMAC-SHA256 of `body` keyed with `secret`, as Sentry computes it.
pub fn signature(secret: &str, body: &[u8]) -> String {
    match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// An error in the shape Sentry shows its user: `{"message": "…"}`.
#[derive(Debug)]
pub struct SentryError(pub StatusCode, pub String);

impl IntoResponse for SentryError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"message": self.1}))).into_response()
    }
}

impl From<Error> for SentryError {
    fn from(e: Error) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if let Error::Internal(cause) = &e {
            tracing::error!(error = %format!("{cause:#}"), "sentry: internal error");
            return SentryError(status, "Tether could not update the issue".into());
        }
        SentryError(status, e.to_string())
    }
}

fn err(status: StatusCode, msg: impl Into<String>) -> SentryError {
    SentryError(status, msg.into())
}

impl Sentry {
    /// The integration over `store`.
    pub fn new(cfg: SentryConfig, store: DynStore, http: reqwest::Client) -> Sentry {
        Sentry {
            cfg,
            store,
            http,
            refresh_locks: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Checks `Sentry-Hook-Signature` or `Sentry-App-Signature` against the raw body, in constant time.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), SentryError> {
        let Some(secret) = &self.cfg.client_secret else {
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "The Sentry integration is not configured",
            ));
        };
        let given = ["sentry-hook-signature", "sentry-app-signature"]
            .iter()
            .find_map(|h| headers.get(*h))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| hex::decode(v.trim()).ok())
            .ok_or_else(|| err(StatusCode::UNAUTHORIZED, "Missing or malformed request signature"))?;
        let mut mac = HmacSha256::new_from_slice(secret.0.as_bytes())
            .map_err(|_| err(StatusCode::UNAUTHORIZED, "Invalid signature key"))?;
        mac.update(body);
        // `verify_slice` compares in constant time.
        mac.verify_slice(&given)
            .map_err(|_| err(StatusCode::UNAUTHORIZED, "Invalid request signature"))
    }

    fn api(&self, path: &str) -> String {
        format!("{}{path}", self.cfg.base_url.trim_end_matches('/'))
    }

    async fn post_authorization(
        &self,
        uuid: &str,
        grant: Value,
    ) -> Result<(Secret, Option<Secret>, Option<i64>), String> {
        let secret = self.cfg.client_secret.as_ref().ok_or("no client secret")?;
        let mut body = grant;
        body["client_id"] = json!(self.cfg.client_id);
        body["client_secret"] = json!(secret.0);
        let url = self.api(&format!("/api/0/sentry-app-installations/{uuid}/authorizations/"));
        let resp = self
            .http
            .post(url)
            .timeout(std::time::Duration::from_secs(10))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("token request failed: {}", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(format!("token request answered HTTP {}", resp.status().as_u16()));
        }
        let v: Value = resp
            .json()
            .await
            .map_err(|_| "token response is not JSON".to_string())?;
        let token = v
            .get("token")
            .and_then(Value::as_str)
            .ok_or("token response has no token")?;
        let refresh = v
            .get("refreshToken")
            .and_then(Value::as_str)
            .map(|s| Secret(s.to_owned()));
        let expires = v.get("expiresAt").and_then(Value::as_str).and_then(dates::parse);
        Ok((Secret(token.to_owned()), refresh, expires))
    }

    /// Exchanges a grant code for tokens and confirms the installation ("Verify Installation").
    pub async fn exchange(&self, uuid: &str, code: &str) -> Result<(), String> {
        let (token, refresh, expires) = self
            .post_authorization(uuid, json!({"grant_type": "authorization_code", "code": code}))
            .await?;
        self.store
            .set_installation_tokens(uuid, &token, refresh.as_ref(), expires, now_ms())
            .await
            .map_err(|e| format!("store: {e}"))?;
        let url = self.api(&format!("/api/0/sentry-app-installations/{uuid}/"));
        let resp = self
            .http
            .put(url)
            .bearer_auth(&token.0)
            .timeout(std::time::Duration::from_secs(10))
            .json(&json!({"status": "installed"}))
            .send()
            .await
            .map_err(|e| format!("verify installation failed: {}", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(format!("verify installation answered HTTP {}", resp.status().as_u16()));
        }
        // The answer names the app: webhooks it causes (our own status changes) are recognised by its uuid.
        let app_uuid = resp
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v.pointer("/app/uuid")?.as_str().map(str::to_owned));
        if let Some(app_uuid) = app_uuid
            && let Ok(Some(mut inst)) = self.store.get_installation(uuid).await
        {
            inst.app_uuid = Some(app_uuid);
            self.store
                .upsert_installation(&inst, now_ms())
                .await
                .map_err(|e| format!("store: {e}"))?;
        }
        Ok(())
    }

    /// A valid access token for an installation, refreshed when expired — one refresh at a time per installation.
    pub async fn token(&self, uuid: &str) -> Result<(Installation, Secret), String> {
        let fresh = |i: &Installation| i.token.is_some() && i.expires_at.is_none_or(|e| e > now_ms() + 60_000);
        let load = || async {
            self.store
                .get_installation(uuid)
                .await
                .map_err(|e| format!("store: {e}"))?
                .ok_or("unknown installation".to_string())
        };
        let inst = load().await?;
        if fresh(&inst)
            && let Some(t) = inst.token.clone()
        {
            return Ok((inst, t));
        }
        let lock = {
            let mut locks = self.refresh_locks.lock().map_err(|_| "lock poisoned".to_string())?;
            locks.entry(uuid.to_owned()).or_default().clone()
        };
        let _guard = lock.lock().await;
        // Another task may have refreshed while this one waited.
        let inst = load().await?;
        if fresh(&inst)
            && let Some(t) = inst.token.clone()
        {
            return Ok((inst, t));
        }
        let refresh = inst
            .refresh_token
            .clone()
            .ok_or("the installation has no refresh token")?;
        let (token, new_refresh, expires) = self
            .post_authorization(uuid, json!({"grant_type": "refresh_token", "refresh_token": refresh.0}))
            .await?;
        self.store
            .set_installation_tokens(uuid, &token, new_refresh.as_ref(), expires, now_ms())
            .await
            .map_err(|e| format!("store: {e}"))?;
        Ok((inst, token))
    }

    /// Whether Sentry still holds its side of the link (`GET …/issues/{id}/external-issues/`).
    pub async fn still_linked(&self, uuid: &str, sentry_issue: &str, page_url: &str) -> Result<bool, String> {
        let (inst, token) = self.token(uuid).await?;
        let slug = inst
            .sentry_org_slug
            .ok_or("the installation has no organization slug")?;
        let url = self.api(&format!(
            "/api/0/organizations/{slug}/issues/{sentry_issue}/external-issues/"
        ));
        let resp = self
            .http
            .get(url)
            .bearer_auth(&token.0)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("external-issues failed: {}", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(format!("external-issues answered HTTP {}", resp.status().as_u16()));
        }
        let items: Vec<Value> = resp
            .json()
            .await
            .map_err(|_| "external-issues is not a JSON list".to_string())?;
        Ok(items.iter().any(|i| {
            let ours_by_slug = self
                .cfg
                .app_slug
                .as_deref()
                .is_some_and(|s| i.get("serviceType").and_then(Value::as_str) == Some(s));
            let ours_by_url = i.get("webUrl").and_then(Value::as_str) == Some(page_url);
            ours_by_slug || ours_by_url
        }))
    }

    async fn set_status(&self, uuid: &str, sentry_issue: &str, status: &str) -> Result<(), String> {
        let (inst, token) = self.token(uuid).await?;
        let slug = inst
            .sentry_org_slug
            .ok_or("the installation has no organization slug")?;
        let url = self.api(&format!("/api/0/organizations/{slug}/issues/{sentry_issue}/"));
        let resp = self
            .http
            .put(url)
            .bearer_auth(&token.0)
            .timeout(std::time::Duration::from_secs(10))
            .json(&json!({"status": status}))
            .send()
            .await
            .map_err(|e| format!("status update failed: {}", e.without_url()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("status update answered HTTP {}", resp.status().as_u16()))
        }
    }

    /// Carries out an outbox event of kind `sentry.*`.
    pub async fn handle(&self, ev: &OutboxEvent) -> Result<(), String> {
        let body: Value = serde_json::from_str(ev.body.as_deref().unwrap_or("{}")).map_err(|_| "bad event body")?;
        let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        match ev.kind.as_str() {
            "sentry.install" => {
                let uuid = text("uuid");
                let inst = self
                    .store
                    .get_installation(&uuid)
                    .await
                    .map_err(|e| format!("store: {e}"))?;
                match inst {
                    // Already exchanged (by /sentry/setup or an earlier delivery): nothing to do.
                    Some(i) if i.token.is_some() => Ok(()),
                    Some(_) => self.exchange(&uuid, &text("code")).await,
                    None => Ok(()),
                }
            }
            "sentry.status" => {
                // Send the linked issue's status as it is now, not as it was when the event was queued: a retried
                // older event then cannot undo a newer change.
                let Some(link) = ev.remote_link_id else { return Ok(()) };
                let state = self
                    .store
                    .sentry_link_state(link)
                    .await
                    .map_err(|e| format!("store: {e}"))?;
                let Some((installation, issue, status)) = state else {
                    return Ok(());
                };
                let wanted = if status == "closed" { "resolved" } else { "unresolved" };
                self.set_status(&installation, &issue, wanted).await
            }
            "sentry.webhook" => self.apply_issue_webhook(&body).await,
            other => Err(format!("unknown event kind {other}")),
        }
    }

    async fn apply_issue_webhook(&self, body: &Value) -> Result<(), String> {
        let uuid = body
            .pointer("/installation/uuid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let action = body.get("action").and_then(Value::as_str).unwrap_or_default();
        let issue = match body.pointer("/data/issue/id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Ok(()),
        };
        let Some(inst) = self
            .store
            .get_installation(uuid)
            .await
            .map_err(|e| format!("store: {e}"))?
        else {
            return Ok(());
        };
        let org = OrgId::parse(&inst.org_id).ok_or("bad organization")?;
        let robot = self
            .store
            .sentry_robot(&org, now_ms())
            .await
            .map_err(|e| format!("store: {e}"))?;
        let (from, to): (&[&str], &str) = match action {
            "resolved" => (&["open", "inProgress"], "closed"),
            "unresolved" => (&["closed"], "open"),
            _ => return Ok(()),
        };
        for (id, status) in self
            .store
            .sentry_linked_issues(uuid, &issue)
            .await
            .map_err(|e| format!("store: {e}"))?
        {
            // Idempotent: an issue already in the target state is left alone.
            if from.contains(&status.as_str()) {
                let r = self
                    .store
                    .transition_issue(&org, id, from, to, None, robot, now_ms())
                    .await;
                if let Err(e) = r
                    && e.status() >= 500
                {
                    return Err(format!("transition failed: {e}"));
                }
            }
        }
        Ok(())
    }
}

/// The Sentry routes (outside `/v2`; authenticated by Sentry's signature).
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/sentry/issues/link", post(link_issue))
        .route("/sentry/issues/create", post(create_issue))
        .route("/sentry/issues", get(issue_options))
        .route("/sentry/queues", get(queue_options))
        .route("/sentry/webhook", post(webhook))
        .route("/sentry/setup", get(setup))
}

/// The Sentry routes as the OpenAPI document lists them: (method, path, access, summary).
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    (
        "post",
        "/sentry/issues/link",
        "sentry-signature",
        "Link a Sentry issue to a Tether issue (seed 000)",
    ),
    (
        "post",
        "/sentry/issues/create",
        "sentry-signature",
        "Create a Tether issue from Sentry and link it",
    ),
    (
        "get",
        "/sentry/issues",
        "sentry-signature",
        "Issue select for Sentry's link form",
    ),
    (
        "get",
        "/sentry/queues",
        "sentry-signature",
        "Queue select for Sentry's create form",
    ),
    (
        "post",
        "/sentry/webhook",
        "sentry-signature",
        "Sentry webhooks (installation, issue)",
    ),
    (
        "get",
        "/sentry/setup",
        "public",
        "Redirect target after installing the app in Sentry",
    ),
];

fn integration(st: &AppState) -> Result<&Sentry, SentryError> {
    st.sentry
        .as_deref()
        .ok_or_else(|| err(StatusCode::UNAUTHORIZED, "The Sentry integration is not configured"))
}

fn parse_body(body: &[u8]) -> Result<Value, SentryError> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, "The request body is not a JSON object"))
}

async fn installation(st: &AppState, id: &str) -> Result<(Installation, OrgId), SentryError> {
    let inst = st
        .store
        .get_installation(id)
        .await?
        .ok_or_else(|| err(StatusCode::FORBIDDEN, format!("Unknown Sentry installation {id}")))?;
    let org =
        OrgId::parse(&inst.org_id).ok_or_else(|| err(StatusCode::FORBIDDEN, "The installation has no organization"))?;
    Ok((inst, org))
}

fn installation_id(v: &Value) -> Result<String, SentryError> {
    v.get("installationId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, "installationId is missing"))
}

fn scalar(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// The Sentry issue id of a link or create request (a number, or a string of digits).
fn sentry_issue_id(v: &Value) -> Result<String, SentryError> {
    scalar(v.get("issueId"))
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, "issueId must be a Sentry issue id"))
}

/// Links the Sentry issue of `v` to `issue_id`; on a duplicate, asks Sentry whether it still holds the link.
async fn link_to(
    st: &AppState,
    sentry: &Sentry,
    v: &Value,
    inst: &Installation,
    org: &OrgId,
    issue: &crate::store::Issue,
) -> Result<Response, SentryError> {
    let sentry_issue = sentry_issue_id(v)?;
    let project = scalar(v.pointer("/project/id")).unwrap_or_default();
    let robot = st.store.sentry_robot(org, now_ms()).await?;
    let page = format!("{}/{}", st.base, issue.key);
    let mut link = SentryLink {
        org: org.clone(),
        issue_id: issue.id,
        sentry_issue: sentry_issue.clone(),
        web_url: v.get("webUrl").and_then(Value::as_str).map(str::to_owned),
        actor: v.get("actor").map(Value::to_string),
        installation: inst.uuid.clone(),
        replace: false,
        at: now_ms(),
    };
    match st.store.sentry_link(&link, robot).await {
        Ok(_) => {}
        Err(Error::Conflict(msg)) => {
            // Sentry hides its Link button while it holds a link, so a second request usually means the user unlinked
            // in Sentry (which sends no webhook). Ask; if Sentry cannot tell, keep the seed's 409.
            match sentry.still_linked(&inst.uuid, &sentry_issue, &page).await {
                Ok(false) => {
                    link.replace = true;
                    st.store.sentry_link(&link, robot).await?;
                }
                Ok(true) => return Err(err(StatusCode::CONFLICT, msg)),
                Err(e) => {
                    tracing::warn!(error = %e, "sentry: cannot check the external issue; answering 409");
                    return Err(err(StatusCode::CONFLICT, msg));
                }
            }
        }
        Err(e) => return Err(e.into()),
    }
    let answer = json!({"webUrl": page, "project": project, "identifier": issue.key});
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `POST /sentry/issues/link` (seed 000).
async fn link_issue(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, SentryError> {
    let sentry = integration(&st)?;
    sentry.verify(&headers, &body)?;
    let v = parse_body(&body)?;
    let inst_id = installation_id(&v)?;
    let target = scalar(v.pointer("/fields/issue_id"))
        .ok_or_else(|| err(StatusCode::FORBIDDEN, "fields.issue_id is missing"))?;
    let (inst, org) = installation(&st, &inst_id).await?;
    let missing = || err(StatusCode::NOT_FOUND, format!("Issue {target} does not exist"));
    let loc = IssueLocator::parse(&target).ok_or_else(missing)?;
    let issue = st.store.get_issue(&org, &loc).await?.ok_or_else(missing)?;
    link_to(&st, sentry, &v, &inst, &org, &issue).await
}

/// `POST /sentry/issues/create`: a new issue from Sentry's form (`title`, `description`, `queue`), then linked.
async fn create_issue(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, SentryError> {
    let sentry = integration(&st)?;
    sentry.verify(&headers, &body)?;
    let v = parse_body(&body)?;
    let inst_id = installation_id(&v)?;
    let (inst, org) = installation(&st, &inst_id).await?;
    // Checked before the issue is created, so a refused request writes nothing.
    sentry_issue_id(&v)?;
    let title =
        scalar(v.pointer("/fields/title")).ok_or_else(|| err(StatusCode::BAD_REQUEST, "fields.title is missing"))?;
    let queue_key =
        scalar(v.pointer("/fields/queue")).ok_or_else(|| err(StatusCode::BAD_REQUEST, "fields.queue is missing"))?;
    let queue = match QueueKey::parse(&queue_key) {
        Some(k) => st.store.get_queue(&org, &Locator::Key(k.as_str().to_owned())).await?,
        None => None,
    }
    .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("Queue {queue_key} does not exist")))?;
    let robot = st.store.sentry_robot(&org, now_ms()).await?;
    let new = NewIssue {
        org: org.clone(),
        queue_id: queue.id,
        summary: title,
        description: v
            .pointer("/fields/description")
            .and_then(Value::as_str)
            .map(str::to_owned),
        ty: crate::domain::issue_type("bug").map_or("task", |t| t.key).to_owned(),
        assignee: None,
        parent: None,
        unique: None,
        custom: Default::default(),
        by: robot,
        at: now_ms(),
    };
    let issue = st.store.create_issue(&new).await?;
    link_to(&st, sentry, &v, &inst, &org, &issue).await
}

/// `GET /sentry/issues?installationId=&query=`: recent open issues without a query, a search by key or summary with
/// one; at most 50, as `[{label, value}]`.
async fn issue_options(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, SentryError> {
    let sentry = integration(&st)?;
    sentry.verify(&headers, b"")?;
    let inst_id = q
        .get("installationId")
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, "installationId is missing"))?;
    let (_, org) = installation(&st, inst_id).await?;
    let query = q.get("query").map(|s| s.trim()).filter(|s| !s.is_empty());
    let filter = match query {
        None => IssueFilter {
            statuses: vec!["open".into(), "inProgress".into()],
            ..Default::default()
        },
        Some(text) => IssueFilter {
            text: Some(text.to_owned()),
            ..Default::default()
        },
    };
    let order = IssueOrder {
        column: OrderColumn::UpdatedAt,
        ascending: false,
    };
    let (issues, _) = st
        .store
        .search_issues(&org, &filter, order, Page { page: 1, per_page: 50 })
        .await?;
    let items = issues
        .iter()
        .map(|i| json!({"label": format!("[{}] {}", i.key, i.summary), "value": i.key}))
        .collect();
    Ok(Json(Value::Array(items)))
}

/// `GET /sentry/queues?installationId=`: the queue select.
async fn queue_options(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, SentryError> {
    let sentry = integration(&st)?;
    sentry.verify(&headers, b"")?;
    let inst_id = q
        .get("installationId")
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, "installationId is missing"))?;
    let (_, org) = installation(&st, inst_id).await?;
    let (queues, _) = st
        .store
        .list_queues(
            &org,
            Page {
                page: 1,
                per_page: 1000,
            },
        )
        .await?;
    let items = queues
        .iter()
        .map(|q| json!({"label": q.name, "value": q.key}))
        .collect();
    Ok(Json(Value::Array(items)))
}

async fn default_org(st: &AppState, sentry: &Sentry) -> Result<OrgId, SentryError> {
    if let Some(o) = &sentry.cfg.org_id {
        return Ok(o.clone());
    }
    let org = st.store.bootstrap_org().await?.and_then(|o| OrgId::parse(&o));
    org.ok_or_else(|| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No organization for Sentry installations",
        )
    })
}

/// `POST /sentry/webhook`: verified, recorded, answered at once; the work happens in the outbox.
async fn webhook(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, SentryError> {
    let sentry = integration(&st)?;
    sentry.verify(&headers, &body)?;
    let v = parse_body(&body)?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let action = v.get("action").and_then(Value::as_str).unwrap_or_default().to_owned();
    let uuid = v
        .pointer("/installation/uuid")
        .or_else(|| v.pointer("/data/installation/uuid"))
        .and_then(Value::as_str)
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, "installation.uuid is missing"))?
        .to_owned();
    let resource = match header("sentry-hook-resource") {
        r if !r.is_empty() => r,
        _ if v.pointer("/data/issue").is_some() => "issue".into(),
        _ => "installation".into(),
    };
    let now = now_ms();
    match (resource.as_str(), action.as_str()) {
        ("installation", "created") => {
            let org = default_org(&st, sentry).await?;
            let inst = Installation {
                uuid: uuid.clone(),
                org_id: org.as_str().to_owned(),
                sentry_org_slug: v
                    .pointer("/data/installation/organization/slug")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                app_uuid: v
                    .pointer("/data/installation/app/uuid")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                ..Default::default()
            };
            st.store.upsert_installation(&inst, now).await?;
            let code = v
                .pointer("/data/installation/code")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let ev = sentry_event("sentry.install", json!({"uuid": uuid, "code": code}));
            st.store
                .enqueue_event(org.as_str(), &ev, Some(&format!("sentry-install-{uuid}-{code}")), now)
                .await?;
            st.wakeup.wake();
        }
        ("installation", "deleted") => {
            st.store.delete_installation(&uuid).await?;
        }
        ("issue", "resolved" | "unresolved") if sentry.cfg.status_sync => {
            let Some(inst) = st.store.get_installation(&uuid).await? else {
                return Ok((StatusCode::OK, Json(json!({"ignored": "unknown installation"}))).into_response());
            };
            let ours = v.pointer("/actor/type").and_then(Value::as_str) == Some("application")
                && inst.app_uuid.is_some()
                && scalar(v.pointer("/actor/id")) == inst.app_uuid;
            if ours {
                // Caused by our own status sync: acting on it again would echo back and forth.
                return Ok((StatusCode::OK, Json(json!({"ignored": "our own change"}))).into_response());
            }
            // Request-ID differs per attempt, so deduplicate on what the event is about.
            let issue = scalar(v.pointer("/data/issue/id")).unwrap_or_default();
            let stamp = header("sentry-hook-timestamp");
            let dedup = hex::encode(Sha256::digest(
                format!("{uuid}|{resource}|{action}|{issue}|{stamp}").as_bytes(),
            ));
            let ev = sentry_event("sentry.webhook", v.clone());
            st.store
                .enqueue_event(&inst.org_id, &ev, Some(&format!("sentry-webhook-{dedup}")), now)
                .await?;
            st.wakeup.wake();
        }
        _ => {}
    }
    Ok((StatusCode::OK, Json(json!({"ok": true}))).into_response())
}

fn sentry_event(kind: &str, body: Value) -> NewEvent {
    NewEvent {
        kind: kind.into(),
        method: "POST".into(),
        url: String::new(),
        body: Some(body.to_string()),
        app_id: None,
    }
}

#[derive(Template)]
#[template(path = "sentry_setup.html")]
struct SetupPage {
    ok: bool,
    message: String,
    org_slug: String,
}

/// `GET /sentry/setup?code&installationId&orgSlug`: the browser lands here after installing the app; the code is
/// exchanged now unless the webhook already did it.
async fn setup(State(st): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let page = |ok: bool, message: String, code: StatusCode| {
        let org_slug = q.get("orgSlug").cloned().unwrap_or_default();
        match (SetupPage { ok, message, org_slug }).render() {
            Ok(html) => (code, Html(html)).into_response(),
            Err(_) => code.into_response(),
        }
    };
    let Some(sentry) = st.sentry.as_deref().filter(|s| s.cfg.client_secret.is_some()) else {
        return page(
            false,
            "The Sentry integration is not configured on this Tether.".into(),
            StatusCode::UNAUTHORIZED,
        );
    };
    let (Some(uuid), Some(code)) = (q.get("installationId"), q.get("code")) else {
        return page(
            false,
            "The link from Sentry is missing installationId or code.".into(),
            StatusCode::BAD_REQUEST,
        );
    };
    let org = match default_org(&st, sentry).await {
        Ok(o) => o,
        Err(e) => return page(false, e.1, StatusCode::INTERNAL_SERVER_ERROR),
    };
    let existing = st.store.get_installation(uuid).await.ok().flatten();
    if existing.as_ref().is_some_and(|i| i.token.is_some()) {
        return page(true, "Tether is connected to Sentry.".into(), StatusCode::OK);
    }
    let inst = Installation {
        uuid: uuid.clone(),
        org_id: existing.map_or_else(|| org.as_str().to_owned(), |i| i.org_id),
        sentry_org_slug: q.get("orgSlug").cloned(),
        ..Default::default()
    };
    if st.store.upsert_installation(&inst, now_ms()).await.is_err() {
        return page(
            false,
            "Tether could not record the installation.".into(),
            StatusCode::INTERNAL_SERVER_ERROR,
        );
    }
    match sentry.exchange(uuid, code).await {
        Ok(()) => page(true, "Tether is connected to Sentry.".into(), StatusCode::OK),
        Err(e) => {
            tracing::warn!(error = %e, "sentry: code exchange at setup failed");
            page(
                false,
                "Sentry did not accept the installation code; try installing again.".into(),
                StatusCode::BAD_GATEWAY,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_contracts_test_vectors() {
        let body = r#"{"fields":{"issue_id":"YT-123"},"issueId":1,"installationId":"14ee411f-4127-439d-a7ec-559ef41ea817","webUrl":"http://localhost:9000/organizations/it-hock/issues/1/","project":{"slug":"internal","id":1},"actor":{"type":"user","id":1,"name":""}}"#;
        assert_eq!(
            signature("test-secret", body.as_bytes()),
            "c1f792f4773e80a075dd61c3b90060bb1a660bc261bbeea7cf65dc8f946a7e22"
        );
        assert_eq!(
            signature("test-secret", b""),
            "a41bc6d81d6413576ae0994995e0ad89a416ec97389515c3604f47722122eeeb"
        );
    }
}
