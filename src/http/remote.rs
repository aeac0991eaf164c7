//! External applications, remote links to their objects (contract §7, seed 003), object info, and the outbox's
//! admin endpoints.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};

use super::AppState;
use super::ctx::{Body, Ctx, Path, Query, object, opt_string};
use super::issues::load_issue;
use super::render;
use crate::domain::dates::{format_ms, now_ms};
use crate::domain::{OrgId, Role};
use crate::error::{Error, Result};
use crate::store::{Application, NewEvent, NewRemoteLink, OutboxEvent, RemoteLink, Secret};

/// Cached object info: `None` remembers a failure for a short while, so a failing app is not hammered. Behind an
/// `Arc` because the state is cloned for every request and a moka handle's clone is not cheap.
pub type InfoCache = Arc<moka::future::Cache<(String, String, String), Option<Arc<Value>>>>;

/// A small cache of object info: at most 10,000 objects, each kept 60 s.
pub fn info_cache() -> InfoCache {
    Arc::new(
        moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(60))
            .build(),
    )
}

/// A URL component: everything but RFC 3986's unreserved characters is encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Fills `{{name}}` placeholders, percent-encoding each value as a URL component.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        let encoded = utf8_percent_encode(value, COMPONENT).to_string();
        out = out.replace(&format!("{{{{{name}}}}}"), &encoded);
    }
    out
}

fn app_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks an application URL: absolute http(s), with the placeholders it must carry.
fn check_url(field: &str, v: &Option<String>, needs: &[&str]) -> Result<()> {
    let Some(u) = v else { return Ok(()) };
    let probe = fill(u, &[("remoteKey", "k"), ("issueKey", "K-1")]);
    let parsed = url::Url::parse(&probe).map_err(|_| Error::rule(field, format!("{field} must be an absolute URL")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(Error::rule(field, format!("{field} must be an http or https URL")));
    }
    for p in needs {
        if !u.contains(&format!("{{{{{p}}}}}")) {
            return Err(Error::rule(field, format!("{field} must contain {{{{{p}}}}}")));
        }
    }
    Ok(())
}

fn url_field(b: &Map<String, Value>, name: &str, current: Option<String>) -> Result<Option<String>> {
    match b.get(name) {
        None => Ok(current),
        Some(v) => Ok(opt_string(name, Some(v))?.filter(|s| !s.is_empty())),
    }
}

/// Builds an application from a body, over `base` (PATCH) or from scratch (create).
fn application_from(b: &Map<String, Value>, base: Option<Application>) -> Result<Application> {
    let id = match &base {
        Some(a) => a.id.clone(),
        None => {
            let id = opt_string("id", b.get("id"))?.ok_or_else(|| Error::missing("id"))?;
            if !app_id_ok(&id) {
                return Err(Error::rule("id", "An application id is 1 to 100 of [A-Za-z0-9._-]"));
            }
            id
        }
    };
    // `null` means absent (contract §1): on PATCH it keeps the current value.
    let given = |k: &str| b.get(k).filter(|v| !v.is_null());
    let name = match (opt_string("name", given("name"))?, &base) {
        (Some(n), _) if !n.trim().is_empty() => n,
        (None, Some(a)) => a.name.clone(),
        (None, None) => return Err(Error::missing("name")),
        _ => return Err(Error::rule("name", "name cannot be empty")),
    };
    let ty = opt_string("type", b.get("type"))?
        .or_else(|| base.as_ref().map(|a| a.ty.clone()))
        .unwrap_or_else(|| id.clone());
    let can_link_from_front = match b.get("canLinkFromFront") {
        None | Some(Value::Null) => base.as_ref().is_some_and(|a| a.can_link_from_front),
        Some(Value::Bool(v)) => *v,
        Some(_) => return Err(Error::BadRequest("canLinkFromFront must be true or false".into())),
    };
    // An empty string removes the token; `null` leaves it as it is.
    let oauth_token = match given("oauthToken") {
        None => base.as_ref().and_then(|a| a.oauth_token.clone()),
        Some(v) => opt_string("oauthToken", Some(v))?.filter(|s| !s.is_empty()).map(Secret),
    };
    let base_ref = base.as_ref();
    let app = Application {
        id,
        name,
        ty,
        default_icon_url: url_field(b, "defaultIconUrl", base_ref.and_then(|a| a.default_icon_url.clone()))?,
        front_url: url_field(b, "frontUrl", base_ref.and_then(|a| a.front_url.clone()))?,
        responsible: match b.get("responsible") {
            None => base_ref.and_then(|a| a.responsible.clone()),
            Some(Value::Object(o)) => o
                .get("login")
                .or_else(|| o.get("id"))
                .map(|v| v.to_string().trim_matches('"').to_owned()),
            Some(v) => opt_string("responsible", Some(v))
                .ok()
                .flatten()
                .or_else(|| v.as_i64().map(|n| n.to_string())),
        },
        oauth_token,
        entity_info_url: url_field(b, "entityInfoUrl", base_ref.and_then(|a| a.entity_info_url.clone()))?,
        create_link_url: url_field(b, "createLinkUrl", base_ref.and_then(|a| a.create_link_url.clone()))?,
        remove_link_url: url_field(b, "removeLinkUrl", base_ref.and_then(|a| a.remove_link_url.clone()))?,
        can_link_from_front,
    };
    check_url("defaultIconUrl", &app.default_icon_url, &[])?;
    check_url("frontUrl", &app.front_url, &["remoteKey"])?;
    check_url("entityInfoUrl", &app.entity_info_url, &["remoteKey"])?;
    check_url("createLinkUrl", &app.create_link_url, &[])?;
    check_url("removeLinkUrl", &app.remove_link_url, &["issueKey", "remoteKey"])?;
    Ok(app)
}

fn app_ref(ctx: &Ctx, id: &str, ty: &str, name: &str) -> Value {
    json!({"self": ctx.url(&format!("/applications/{id}")), "id": id, "type": ty, "name": name})
}

/// An application; admins also see its settings (never `oauthToken`).
fn app_json(ctx: &Ctx, a: &Application) -> Value {
    let mut v = app_ref(ctx, &a.id, &a.ty, &a.name);
    if ctx.role == Role::Admin {
        let m = v.as_object_mut();
        if let Some(m) = m {
            for (k, val) in [
                ("defaultIconUrl", &a.default_icon_url),
                ("frontUrl", &a.front_url),
                ("responsible", &a.responsible),
                ("entityInfoUrl", &a.entity_info_url),
                ("createLinkUrl", &a.create_link_url),
                ("removeLinkUrl", &a.remove_link_url),
            ] {
                if let Some(s) = val {
                    m.insert(k.into(), json!(s));
                }
            }
            m.insert("canLinkFromFront".into(), json!(a.can_link_from_front));
            m.insert("hasOauthToken".into(), json!(a.oauth_token.is_some()));
        }
    }
    v
}

/// `GET /applications`.
pub async fn list_applications(State(st): State<AppState>, ctx: Ctx) -> Result<Json<Value>> {
    ctx.authorize()?;
    let apps = st.store.list_apps(&ctx.org).await?;
    Ok(Json(Value::Array(apps.iter().map(|a| app_json(&ctx, a)).collect())))
}

/// `POST /applications` (admin).
pub async fn create_application(State(st): State<AppState>, ctx: Ctx, body: Body) -> Result<Response> {
    ctx.authorize()?;
    let b = object(body.json()?)?;
    let app = application_from(&b, None)?;
    st.store.create_app(&ctx.org, &app, now_ms()).await?;
    Ok((StatusCode::CREATED, Json(app_json(&ctx, &app))).into_response())
}

async fn load_app(st: &AppState, org: &OrgId, id: &str) -> Result<Application> {
    st.store
        .get_app(org, id)
        .await?
        .ok_or_else(|| Error::not_found("application", format!("Application {id} does not exist")))
}

/// `GET /applications/{id}`.
pub async fn get_application(State(st): State<AppState>, ctx: Ctx, Path(id): Path<String>) -> Result<Json<Value>> {
    let app = load_app(&st, &ctx.org, &id).await?;
    ctx.authorize()?;
    Ok(Json(app_json(&ctx, &app)))
}

/// `PATCH /applications/{id}` (admin).
pub async fn update_application(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>> {
    let current = load_app(&st, &ctx.org, &id).await?;
    ctx.authorize()?;
    let b = object(body.json()?)?;
    if b.get("id").and_then(Value::as_str).is_some_and(|x| x != id) {
        return Err(Error::rule("id", "An application's id cannot change"));
    }
    let app = application_from(&b, Some(current))?;
    st.store.update_app(&ctx.org, &app).await?;
    Ok(Json(app_json(&ctx, &app)))
}

/// `DELETE /applications/{id}` (admin): 422 while remote links use it.
pub async fn delete_application(State(st): State<AppState>, ctx: Ctx, Path(id): Path<String>) -> Result<StatusCode> {
    load_app(&st, &ctx.org, &id).await?;
    ctx.authorize()?;
    if st.store.delete_app(&ctx.org, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found(
            "application",
            format!("Application {id} does not exist"),
        ))
    }
}

/// Object info from the application's `entityInfoUrl`: cached, bounded by a short timeout, `None` on any failure.
pub async fn object_info(st: &AppState, org: &OrgId, app: &Application, key: &str) -> Option<Arc<Value>> {
    let template = app.entity_info_url.clone()?;
    let cache_key = (org.as_str().to_owned(), app.id.clone(), key.to_owned());
    let token = app.oauth_token.clone();
    let http = st.http.clone();
    let timeout = st.info_timeout;
    let key = key.to_owned();
    st.info
        .get_with(cache_key, async move {
            let url = fill(&template, &[("remoteKey", &key)]);
            let mut req = http.get(url).timeout(timeout);
            if let Some(t) = token {
                req = req.header(reqwest::header::AUTHORIZATION, format!("OAuth {}", t.0));
            }
            let resp = req.send().await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let v: Value = resp.json().await.ok()?;
            // `key` and `summary` are required; anything else is optional and passed through.
            (v.get("key").is_some_and(|k| k.is_string() || k.is_number())
                && v.get("summary").is_some_and(Value::is_string))
            .then(|| Arc::new(v))
        })
        .await
}

fn remote_json(ctx: &Ctx, r: &RemoteLink, info: Option<&Value>) -> Value {
    let (app_id, app_ty, app_name) = &r.app;
    let mut object = json!({
        "self": ctx.url(&format!("/applications/{app_id}/objects/{}", utf8_percent_encode(&r.key, COMPONENT))),
        "id": r.key,
        "key": r.key,
        "application": app_ref(ctx, app_id, app_ty, app_name),
    });
    if let Some(w) = &r.web_url {
        object["webUrl"] = json!(w);
    }
    if let Some(i) = info {
        object["info"] = i.clone();
        for f in [
            "summary",
            "status",
            "iconUrl",
            "resolution",
            "assignee",
            "updated",
            "deadline",
        ] {
            if let Some(x) = i.get(f) {
                object[f] = x.clone();
            }
        }
    }
    let mut v = json!({
        "self": ctx.url(&format!("/issues/{}/remotelinks/{}", r.issue_key, r.id)),
        "id": r.id,
        "type": {"self": ctx.url("/linktypes/relates"), "id": "relates", "inward": "relates", "outward": "relates"},
        "direction": "outward",
        "object": object,
        "createdBy": render::user_ref(ctx, &r.created_by),
        "updatedBy": render::user_ref(ctx, &r.updated_by),
        "createdAt": format_ms(r.created_at),
        "updatedAt": format_ms(r.updated_at),
    });
    if let Some(b) = &r.backlink {
        let mut d = json!({"state": b.state, "attempts": b.attempts});
        if let Some(e) = &b.last_error {
            d["lastError"] = json!(e);
        }
        v["backlink"] = d;
    }
    v
}

async fn render_remote(st: &AppState, ctx: &Ctx, links: &[RemoteLink], expand: bool) -> Result<Vec<Value>> {
    if !expand {
        return Ok(links.iter().map(|r| remote_json(ctx, r, None)).collect());
    }
    let apps = st.store.list_apps(&ctx.org).await?;
    // Fetch every object's info concurrently: one slow application costs one timeout, not one per link.
    let infos = futures_util::future::join_all(links.iter().map(|r| {
        let app = apps.iter().find(|a| a.id == r.app.0);
        async move {
            match app {
                Some(a) => object_info(st, &ctx.org, a, &r.key).await,
                None => None,
            }
        }
    }))
    .await;
    Ok(links
        .iter()
        .zip(infos)
        .map(|(r, i)| remote_json(ctx, r, i.as_deref()))
        .collect())
}

fn expand_info(q: &Query) -> bool {
    q.get("expand")
        .is_some_and(|e| e.split(',').any(|x| x.trim() == "info"))
}

/// `POST /issues/{issue}/remotelinks[?backlink=true]` → 201.
pub async fn create_remote_link(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(which): Path<String>,
    q: Query,
    body: Body,
) -> Result<Response> {
    let issue = load_issue(&st, &ctx, &which).await?;
    ctx.authorize()?;
    let backlink = q.flag("backlink")?;
    let b = object(body.json()?)?;
    let (new, _) = remote_link_request(&st, &ctx.org, &issue, &b, backlink, ctx.user.uid).await?;
    let queued = new.backlink.is_some();
    let link = st.store.create_remote_link(&new).await?;
    if queued {
        st.wakeup.wake();
    }
    Ok((StatusCode::CREATED, Json(remote_json(&ctx, &link, None))).into_response())
}

/// Validates a remote-link request `{"relationship", "key", "origin"}` on `issue` — the API's and the web form's —
/// and builds the backlink event when one is asked for and the application takes it.
pub(crate) async fn remote_link_request(
    st: &AppState,
    org: &OrgId,
    issue: &crate::store::Issue,
    b: &Map<String, Value>,
    backlink: bool,
    by: i64,
) -> Result<(NewRemoteLink, Application)> {
    let rel = opt_string("relationship", b.get("relationship"))?.ok_or_else(|| Error::missing("relationship"))?;
    if !rel.trim().eq_ignore_ascii_case("relates") {
        return Err(Error::rule(
            "relationship",
            format!("Unknown relationship '{rel}' for a remote link; valid: relates"),
        ));
    }
    let key = match b.get("key") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 500 => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        None | Some(Value::Null) => return Err(Error::missing("key")),
        Some(Value::String(_)) => return Err(Error::rule("key", "key must be 1 to 500 characters")),
        Some(_) => return Err(Error::BadRequest("key must be a string".into())),
    };
    let origin = opt_string("origin", b.get("origin"))?.ok_or_else(|| Error::missing("origin"))?;
    let app = st
        .store
        .get_app(org, &origin)
        .await?
        .ok_or_else(|| Error::rule("origin", format!("Application {origin} is not registered")))?;
    let event = match (&app.create_link_url, backlink) {
        (Some(url), true) => Some(NewEvent {
            kind: "backlink.create".into(),
            method: "POST".into(),
            url: url.clone(),
            body: Some(json!({"issueKey": issue.key, "entityIds": [key]}).to_string()),
            app_id: Some(app.id.clone()),
        }),
        _ => None,
    };
    let new = NewRemoteLink {
        org: org.clone(),
        issue_id: issue.id,
        app_id: app.id.clone(),
        key,
        web_url: None,
        actor: None,
        backlink: event,
        by,
        at: now_ms(),
    };
    Ok((new, app))
}

/// `GET /issues/{issue}/remotelinks[?expand=info]`.
pub async fn list_remote_links(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(which): Path<String>,
    q: Query,
) -> Result<Json<Value>> {
    let issue = load_issue(&st, &ctx, &which).await?;
    ctx.authorize()?;
    let links = st.store.list_remote_links(&ctx.org, issue.id).await?;
    Ok(Json(Value::Array(
        render_remote(&st, &ctx, &links, expand_info(&q)).await?,
    )))
}

async fn load_remote(st: &AppState, ctx: &Ctx, which: &str, id: &str) -> Result<RemoteLink> {
    let issue = load_issue(st, ctx, which).await?;
    let missing = || {
        Error::not_found(
            "remotelink",
            format!("Remote link {id} does not exist on {}", issue.key),
        )
    };
    let n: i64 = id.parse().map_err(|_| missing())?;
    st.store
        .get_remote_link(&ctx.org, issue.id, n)
        .await?
        .ok_or_else(missing)
}

/// `GET /issues/{issue}/remotelinks/{id}[?expand=info]`.
pub async fn get_remote_link(
    State(st): State<AppState>,
    ctx: Ctx,
    Path((which, id)): Path<(String, String)>,
    q: Query,
) -> Result<Json<Value>> {
    let link = load_remote(&st, &ctx, &which, &id).await?;
    ctx.authorize()?;
    let mut out = render_remote(&st, &ctx, std::slice::from_ref(&link), expand_info(&q)).await?;
    Ok(Json(out.pop().unwrap_or(Value::Null)))
}

/// `DELETE /issues/{issue}/remotelinks/{id}` → 204; a backlinked link also removes the backlink.
pub async fn delete_remote_link(
    State(st): State<AppState>,
    ctx: Ctx,
    Path((which, id)): Path<(String, String)>,
) -> Result<StatusCode> {
    let link = load_remote(&st, &ctx, &which, &id).await?;
    ctx.authorize()?;
    let remove = match &link.backlink {
        Some(_) => st
            .store
            .get_app(&ctx.org, &link.app.0)
            .await?
            .and_then(|a| a.remove_link_url)
            .map(|tpl| NewEvent {
                kind: "backlink.remove".into(),
                method: "DELETE".into(),
                url: fill(&tpl, &[("issueKey", &link.issue_key), ("remoteKey", &link.key)]),
                body: None,
                app_id: Some(link.app.0.clone()),
            }),
        None => None,
    };
    if st
        .store
        .delete_remote_link(&ctx.org, link.issue_id, link.id, remove, now_ms())
        .await?
    {
        st.wakeup.wake();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found(
            "remotelink",
            format!("Remote link {id} does not exist"),
        ))
    }
}

/// `GET /applications/{app}/objects/{key}`: the object a remote link points at, with its info when the app has it.
pub async fn get_application_object(
    State(st): State<AppState>,
    ctx: Ctx,
    Path((app_id, key)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let app = load_app(&st, &ctx.org, &app_id).await?;
    ctx.authorize()?;
    let mut v = json!({
        "self": ctx.url(&format!("/applications/{app_id}/objects/{}", utf8_percent_encode(&key, COMPONENT))),
        "id": key,
        "key": key,
        "application": app_ref(&ctx, &app.id, &app.ty, &app.name),
    });
    if let Some(front) = &app.front_url {
        v["webUrl"] = json!(fill(front, &[("remoteKey", &key)]));
    }
    if let Some(info) = object_info(&st, &ctx.org, &app, &key).await {
        v["info"] = (*info).clone();
    }
    Ok(Json(v))
}

fn event_json(ctx: &Ctx, e: &OutboxEvent) -> Value {
    let mut v = json!({
        "self": ctx.url(&format!("/_outbox/{}", e.id)),
        "id": e.id,
        "kind": e.kind,
        "method": e.method,
        "url": e.url,
        "state": e.state,
        "attempts": e.attempts,
        "idempotencyKey": e.idempotency_key,
        "createdAt": format_ms(e.created_at),
        "updatedAt": format_ms(e.updated_at),
    });
    if e.state == "pending" {
        v["nextAttemptAt"] = json!(format_ms(e.next_attempt_at));
    }
    if let Some(d) = e.delivered_at {
        v["deliveredAt"] = json!(format_ms(d));
    }
    if let Some(err) = &e.last_error {
        v["lastError"] = json!(err);
    }
    if let Some(r) = e.remote_link_id {
        v["remoteLinkId"] = json!(r);
    }
    v
}

/// `GET /_outbox?state=` (admin).
pub async fn list_outbox(State(st): State<AppState>, ctx: Ctx, q: Query) -> Result<Json<Value>> {
    ctx.authorize()?;
    let state = q.get("state");
    if let Some(s) = state
        && !matches!(s, "pending" | "delivered" | "failed" | "cancelled")
    {
        return Err(Error::BadRequest(
            "state is pending, delivered, failed or cancelled".into(),
        ));
    }
    let limit = q.page()?.per_page;
    let events = st.store.list_events(&ctx.org, state, limit).await?;
    Ok(Json(Value::Array(events.iter().map(|e| event_json(&ctx, e)).collect())))
}

/// `POST /_outbox/{id}/_retry` (admin): a failed or cancelled event goes back in the queue.
pub async fn retry_outbox_event(State(st): State<AppState>, ctx: Ctx, Path(id): Path<String>) -> Result<Json<Value>> {
    ctx.authorize()?;
    let missing = || Error::not_found("event", format!("Event {id} does not exist"));
    let n: i64 = id.parse().map_err(|_| missing())?;
    let ev = st.store.retry_event(&ctx.org, n, now_ms()).await?.ok_or_else(missing)?;
    st.wakeup.wake();
    Ok(Json(event_json(&ctx, &ev)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_percent_encoded() {
        assert_eq!(
            fill(
                "https://a.example/x/{{issueKey}}/{{remoteKey}}?k={{remoteKey}}",
                &[("issueKey", "T-1"), ("remoteKey", "a b/c")]
            ),
            "https://a.example/x/T-1/a%20b%2Fc?k=a%20b%2Fc"
        );
    }

    #[test]
    fn application_urls_need_their_placeholders() {
        assert!(
            check_url(
                "removeLinkUrl",
                &Some("https://x.example/{{issueKey}}".into()),
                &["issueKey", "remoteKey"]
            )
            .is_err()
        );
        assert!(
            check_url(
                "frontUrl",
                &Some("ftp://x.example/{{remoteKey}}".into()),
                &["remoteKey"]
            )
            .is_err()
        );
        assert!(check_url("frontUrl", &Some("not a url {{remoteKey}}".into()), &["remoteKey"]).is_err());
        assert!(
            check_url(
                "frontUrl",
                &Some("http://127.0.0.1:9/{{remoteKey}}".into()),
                &["remoteKey"]
            )
            .is_ok()
        );
    }
}
