//! Issues: create, read, edit, search, import, and status changes through transitions.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::AppState;
use super::answers::Read;
use super::core::{resolve_status, resolve_type, resolve_user};
use super::ctx::{Body, Ctx, Path, Query, issue_locator, issue_ref, named_ref, object, opt_string, paginated};
use super::render;
use crate::domain::dates::{self, Millis, now_ms};
use crate::domain::{FieldType, IssueKey, OrgId, SYSTEM_FIELDS, TRANSITIONS, transitions_from};
use crate::error::{Error, Result};
use crate::store::{
    CustomField, FieldEdit, ImportIssue, Issue, IssueFilter, IssueOrder, IssuePatch, Locator, NewIssue, OrderColumn,
};

/// Loads an issue named in the path (404 when it does not exist in the caller's organization).
pub async fn load_issue(st: &AppState, ctx: &Ctx, which: &str) -> Result<Issue> {
    let loc = issue_locator(which)?;
    st.store
        .get_issue(&ctx.org, &loc)
        .await?
        .ok_or_else(|| Error::not_found("issue", format!("Issue {which} does not exist")))
}

/// [`load_issue`]'s lookup, for routes that need only the issue's id, key and creation time.
pub async fn load_issue_head(st: &AppState, ctx: &Ctx, which: &str) -> Result<crate::store::IssueHead> {
    let loc = issue_locator(which)?;
    st.store
        .issue_head(&ctx.org, &loc)
        .await?
        .ok_or_else(|| Error::not_found("issue", format!("Issue {which} does not exist")))
}

/// [`load_issue_ref`]'s lookup, for the same.
pub async fn load_issue_head_ref(
    st: &AppState,
    org: &OrgId,
    field: &str,
    v: &Value,
) -> Result<Option<crate::store::IssueHead>> {
    let Some(loc) = issue_ref(field, v)? else {
        return Ok(None);
    };
    let found = st.store.issue_head(org, &loc).await?;
    found
        .map(Some)
        .ok_or_else(|| Error::not_found("issue", format!("Issue {loc} does not exist")))
}

/// Loads an issue named in a body field (404 per contract §3 for `issue`, `parent`).
pub async fn load_issue_ref(st: &AppState, org: &OrgId, field: &str, v: &Value) -> Result<Option<Issue>> {
    let Some(loc) = issue_ref(field, v)? else {
        return Ok(None);
    };
    let found = st.store.get_issue(org, &loc).await?;
    found
        .map(Some)
        .ok_or_else(|| Error::not_found("issue", format!("Issue {loc} does not exist")))
}

async fn resolve_queue(st: &AppState, org: &OrgId, v: &Value) -> Result<Option<crate::store::Queue>> {
    let Some(loc) = named_ref("queue", v)? else {
        return Ok(None);
    };
    let q = st.store.get_queue(org, &loc).await?;
    let name = match &loc {
        Locator::Id(i) => i.to_string(),
        Locator::Key(k) | Locator::Name(k) => k.clone(),
    };
    q.map(Some)
        .ok_or_else(|| Error::not_found("queue", format!("Queue {name} does not exist")))
}

/// Validates a value for a custom field, turning it into what is stored.
async fn field_value(st: &AppState, org: &OrgId, f: &CustomField, v: &Value) -> Result<Value> {
    let bad = |what: &str| Error::rule(&f.id, format!("Field {} takes {what}", f.id));
    Ok(match (f.ty, v) {
        (_, Value::Null) => Value::Null,
        (FieldType::String, Value::String(_)) | (FieldType::Number, Value::Number(_)) => v.clone(),
        (FieldType::Date, Value::String(s)) => {
            let fmt = time::macros::format_description!("[year]-[month]-[day]");
            time::Date::parse(s, &fmt).map_err(|_| bad("a date YYYY-MM-DD"))?;
            v.clone()
        }
        (FieldType::DateTime, Value::String(s)) => {
            Value::String(dates::format_ms(dates::parse(s).ok_or_else(|| bad("a date and time"))?))
        }
        (FieldType::User, _) => match super::ctx::user_ref(&f.id, v)? {
            None => Value::Null,
            Some(loc) => {
                let u = st
                    .store
                    .get_member(org, &loc)
                    .await?
                    .ok_or_else(|| Error::rule(&f.id, format!("User {} does not exist", v)))?;
                // Stored as a reference without `self`; the issue JSON adds it in the request's version.
                serde_json::json!({"id": u.uid.to_string(), "display": u.display})
            }
        },
        (FieldType::StringArray, Value::String(s)) => Value::Array(vec![Value::String(s.clone())]),
        (FieldType::StringArray, Value::Array(items)) if items.iter().all(Value::is_string) => v.clone(),
        (FieldType::StringArray, _) => return Err(bad("an array of strings")),
        (FieldType::String, _) => return Err(bad("a string")),
        (FieldType::Number, _) => return Err(bad("a number")),
        (FieldType::Date | FieldType::DateTime, _) => return Err(bad("a date string")),
    })
}

fn is_system(key: &str) -> bool {
    SYSTEM_FIELDS.iter().any(|(f, _, _)| *f == key)
}

/// The fields of an issue create or import that are common to both.
pub(crate) struct IssueInput {
    pub(crate) new: NewIssue,
    queue_key: String,
}

pub(crate) async fn issue_input(
    st: &AppState,
    org: &OrgId,
    b: &Map<String, Value>,
    by: i64,
    at: Millis,
) -> Result<IssueInput> {
    let summary = opt_string("summary", b.get("summary"))?;
    let queue_v = b
        .get("queue")
        .filter(|v| !v.is_null())
        .ok_or_else(|| Error::missing("queue"))?;
    let summary = summary
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| Error::missing("summary"))?;
    let queue = resolve_queue(st, org, queue_v)
        .await?
        .ok_or_else(|| Error::missing("queue"))?;
    let ty = match b.get("type") {
        Some(v) => resolve_type(v)?.map(|t| t.key),
        None => None,
    }
    .unwrap_or_else(|| crate::domain::issue_type(&queue.default_type).map_or("task", |t| t.key));
    let description = opt_string("description", b.get("description"))?;
    let assignee = match b.get("assignee") {
        Some(v) => resolve_user(st, org, "assignee", v).await?,
        None => None,
    };
    let parent = match b.get("parent") {
        Some(v) => load_issue_ref(st, org, "parent", v).await?.map(|p| p.id),
        None => None,
    };
    let unique = match b.get("unique") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(Error::BadRequest("Field unique must be a string".into())),
    };
    // Indexed: PostgreSQL's b-tree entries are limited to about 2.7 kB.
    if unique.as_ref().is_some_and(|u| u.len() > 512) {
        return Err(Error::rule("unique", "unique must be at most 512 bytes"));
    }
    let defs = st.store.list_fields(org).await?;
    let mut custom = BTreeMap::new();
    for f in &defs {
        if let Some(v) = b.get(&f.id) {
            let val = field_value(st, org, f, v).await?;
            if !val.is_null() {
                custom.insert(f.id.clone(), val);
            }
        }
    }
    Ok(IssueInput {
        queue_key: queue.key.clone(),
        new: NewIssue {
            org: org.clone(),
            queue_id: queue.id,
            summary,
            description,
            ty: ty.to_owned(),
            assignee,
            parent,
            unique,
            custom,
            by,
            at,
        },
    })
}

/// `POST /issues`.
pub async fn create_issue(State(st): State<AppState>, ctx: Ctx, body: Body) -> Result<Response> {
    ctx.authorize()?;
    let b = object(body.json()?)?;
    let input = issue_input(&st, &ctx.org, &b, ctx.user.uid, now_ms()).await?;
    let issue = st.store.create_issue(&input.new).await?;
    Ok((StatusCode::CREATED, Json(render::issue(&ctx, &issue))).into_response())
}

/// `POST /issues/_import`: an issue with its historical author, dates, key and status (admin).
pub async fn import_issue(State(st): State<AppState>, ctx: Ctx, body: Body) -> Result<Response> {
    ctx.authorize()?;
    let b = object(body.json()?)?;
    let now = now_ms();
    let created_at = required_date(&b, "createdAt")?;
    let created_by_v = b
        .get("createdBy")
        .filter(|v| !v.is_null())
        .ok_or_else(|| Error::missing("createdBy"))?;
    let created_by = resolve_user(&st, &ctx.org, "createdBy", created_by_v)
        .await?
        .ok_or_else(|| Error::missing("createdBy"))?;
    let updated = history_pair(&st, &ctx.org, &b, created_at, now).await?;
    if created_at > now {
        return Err(Error::rule("createdAt", "createdAt must not be in the future"));
    }
    let input = issue_input(&st, &ctx.org, &b, created_by, created_at).await?;
    let number = match opt_string("key", b.get("key"))? {
        None => None,
        Some(k) => {
            let key = IssueKey::parse(&k).ok_or_else(|| Error::rule("key", format!("{k} is not an issue key")))?;
            // Keep every key the queue hands out afterwards readable (a key has at most 18 digits).
            if key.number > 999_999_999_999_999 {
                return Err(Error::rule("key", format!("Key {k} has too large a number")));
            }
            if key.queue.as_str() != input.queue_key {
                return Err(Error::rule(
                    "key",
                    format!("Key {k} does not belong to queue {}", input.queue_key),
                ));
            }
            Some(key.number)
        }
    };
    let status = match b.get("status") {
        Some(v) => resolve_status(v)?.map_or("open", |s| s.key),
        None => "open",
    };
    let imp = ImportIssue {
        issue: input.new,
        number,
        status: status.to_owned(),
        updated,
    };
    let issue = st.store.import_issue(&imp).await?;
    Ok(Json(render::issue(&ctx, &issue)).into_response())
}

/// A required date field: 422 when missing or unparsable.
pub fn required_date(b: &Map<String, Value>, field: &str) -> Result<Millis> {
    let s = opt_string(field, b.get(field))?.ok_or_else(|| Error::missing(field))?;
    dates::parse(&s).ok_or_else(|| {
        Error::rule(
            field,
            format!("{field} must be a date like 2017-08-29T12:34:41.740+0000"),
        )
    })
}

/// `updatedAt` + `updatedBy`: both or neither (422), `updatedAt` in [`createdAt`, now].
pub async fn history_pair(
    st: &AppState,
    org: &OrgId,
    b: &Map<String, Value>,
    created_at: Millis,
    now: Millis,
) -> Result<Option<(Millis, i64)>> {
    let has = |f: &str| b.get(f).is_some_and(|v| !v.is_null());
    match (has("updatedAt"), has("updatedBy")) {
        (false, false) => Ok(None),
        (true, false) => Err(Error::rule(
            "updatedBy",
            "updatedAt is only accepted together with updatedBy",
        )),
        (false, true) => Err(Error::rule(
            "updatedAt",
            "updatedBy is only accepted together with updatedAt",
        )),
        (true, true) => {
            let at = required_date(b, "updatedAt")?;
            let by_v = b.get("updatedBy").unwrap_or(&Value::Null);
            let by = resolve_user(st, org, "updatedBy", by_v)
                .await?
                .ok_or_else(|| Error::missing("updatedBy"))?;
            if at < created_at || at > now {
                return Err(Error::rule("updatedAt", "updatedAt must be between createdAt and now"));
            }
            Ok(Some((at, by)))
        }
    }
}

/// `GET /issues/{issue}`.
pub async fn get_issue(
    State(st): State<AppState>,
    ctx: Ctx,
    read: Read,
    Path(which): Path<String>,
) -> Result<Response> {
    read.answer(&st, &ctx, get_issue_fresh(&st, &ctx, which)).await
}

async fn get_issue_fresh(st: &AppState, ctx: &Ctx, which: String) -> Result<Response> {
    let issue = load_issue(st, ctx, &which).await?;
    ctx.authorize()?;
    Ok(Json(render::issue(ctx, &issue)).into_response())
}

fn if_match(headers: &HeaderMap) -> Result<Option<i64>> {
    let Some(v) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| Error::BadRequest("If-Match must be a version number".into()))?;
    let s = s.trim().trim_start_matches("W/").trim_matches('"');
    s.parse()
        .map(Some)
        .map_err(|_| Error::BadRequest("If-Match must be a version number".into()))
}

/// `PATCH /issues/{issue}`: summary, description, assignee and custom fields; `If-Match` guards the version.
pub async fn update_issue(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(which): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let issue = load_issue(&st, &ctx, &which).await?;
    ctx.authorize()?;
    let expected = if_match(&headers)?;
    let b = object(body.json()?)?;
    let defs = st.store.list_fields(&ctx.org).await?;
    let mut patch = IssuePatch::default();
    for (key, raw) in &b {
        // `{"set": v}` works for every field; `add`/`remove` for arrays.
        let (op, v) = match raw.as_object() {
            Some(o) if o.len() == 1 && ["set", "add", "remove"].iter().any(|k| o.contains_key(*k)) => {
                let (k, v) = o
                    .iter()
                    .next()
                    .map(|(k, v)| (k.as_str(), v))
                    .unwrap_or(("set", &Value::Null));
                (k, v)
            }
            _ => ("set", raw),
        };
        match key.as_str() {
            "summary" | "description" | "assignee" if op != "set" => {
                return Err(Error::rule(key, format!("Field {key} takes only set")));
            }
            "summary" => {
                let s = opt_string("summary", Some(v))?.filter(|s| !s.trim().is_empty());
                patch.summary = Some(s.ok_or_else(|| Error::rule("summary", "Summary cannot be empty"))?);
            }
            "description" => patch.description = Some(opt_string("description", Some(v))?),
            "assignee" => patch.assignee = Some(resolve_user(&st, &ctx.org, "assignee", v).await?),
            k if is_system(k) => return Err(Error::rule(k, format!("Field {k} cannot be changed here"))),
            k => {
                let f = defs
                    .iter()
                    .find(|f| f.id == k)
                    .ok_or_else(|| Error::rule(k, format!("Field {k} does not exist")))?;
                let edit = match op {
                    "set" => FieldEdit::Set(field_value(&st, &ctx.org, f, v).await?),
                    _ if f.ty != FieldType::StringArray => {
                        return Err(Error::rule(k, format!("Field {k} is not an array: use set")));
                    }
                    "add" => FieldEdit::Add(array_items(f, field_value(&st, &ctx.org, f, v).await?)),
                    _ => FieldEdit::Remove(array_items(f, field_value(&st, &ctx.org, f, v).await?)),
                };
                patch.custom.push((k.to_owned(), edit));
            }
        }
    }
    if patch.summary.is_none() && patch.description.is_none() && patch.assignee.is_none() && patch.custom.is_empty() {
        // Nothing to change: no new version.
        if expected.is_some_and(|e| e != issue.version) {
            return Err(Error::Conflict(format!(
                "The issue is at version {}, not {}",
                issue.version,
                expected.unwrap_or(0)
            )));
        }
        return Ok(Json(render::issue(&ctx, &issue)).into_response());
    }
    let updated = st
        .store
        .update_issue(&ctx.org, issue.id, &patch, expected, ctx.user.uid, now_ms())
        .await?;
    Ok(Json(render::issue(&ctx, &updated)).into_response())
}

fn array_items(_f: &CustomField, v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

/// `POST /issues/_findByUnique?unique=`.
pub async fn find_issue_by_unique(State(st): State<AppState>, ctx: Ctx, q: Query) -> Result<Response> {
    ctx.authorize()?;
    let unique = q
        .get("unique")
        .ok_or_else(|| Error::BadRequest("Query parameter unique is required".into()))?;
    let issue = st
        .store
        .find_by_unique(&ctx.org, unique)
        .await?
        .ok_or_else(|| Error::not_found("issue", format!("No issue has unique {unique}")))?;
    Ok(Json(render::issue(&ctx, &issue)).into_response())
}

/// A filter's values: a list, one value, or none.
fn values(v: Option<&Value>) -> Vec<Value> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => vec![other.clone()],
    }
}

fn strings(field: &str, v: &Value) -> Result<Vec<String>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items.iter().map(|x| scalar_text(field, x)).collect(),
        other => Ok(vec![scalar_text(field, other)?]),
    }
}

fn scalar_text(field: &str, v: &Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Object(o) => o
            .get("key")
            .or_else(|| o.get("id"))
            .or_else(|| o.get("login"))
            .map(|x| scalar_text(field, x))
            .unwrap_or_else(|| Err(Error::BadRequest(format!("Filter {field} has an unsupported value")))),
        _ => Err(Error::BadRequest(format!("Filter {field} has an unsupported value"))),
    }
}

fn parse_order(v: Option<&Value>) -> Result<IssueOrder> {
    let s = match v {
        None | Some(Value::Null) => {
            return Ok(IssueOrder {
                column: OrderColumn::Key,
                ascending: true,
            });
        }
        Some(Value::String(s)) => s.trim(),
        // The Python client always sends a list (`["+key"]`); its first entry decides.
        Some(Value::Array(items)) if items.len() <= 1 => return parse_order(items.first()),
        Some(Value::Array(_)) => return Err(Error::BadRequest("order takes one column".into())),
        Some(_) => {
            return Err(Error::BadRequest(
                "order must be a string like \"+key\" or \"-updatedAt\"".into(),
            ));
        }
    };
    let (ascending, name) = match s.as_bytes().first() {
        Some(b'-') => (false, &s[1..]),
        Some(b'+') => (true, &s[1..]),
        _ => (true, s),
    };
    let column = match name {
        "key" => OrderColumn::Key,
        "createdAt" | "created" => OrderColumn::CreatedAt,
        "updatedAt" | "updated" => OrderColumn::UpdatedAt,
        "status" => OrderColumn::Status,
        "summary" => OrderColumn::Summary,
        other => return Err(Error::BadRequest(format!("Cannot order by {other}"))),
    };
    Ok(IssueOrder { column, ascending })
}

/// `POST /issues/_search`: `{"filter": {queue, status, assignee, type}}`, `{"queue": K}` or `{"keys": [..]}`.
pub async fn search_issues(State(st): State<AppState>, ctx: Ctx, q: Query, body: Body) -> Result<Response> {
    ctx.authorize()?;
    let page = q.page()?;
    let b = object(body.json()?)?;
    if b.get("query").is_some_and(|v| !v.is_null()) {
        return Err(Error::BadRequest(
            "The query language is not supported; use filter, queue or keys".into(),
        ));
    }
    let order = parse_order(b.get("order"))?;
    let mut filter = IssueFilter::default();
    let empty = Map::new();
    let fo = match b.get("filter") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(_) => return Err(Error::BadRequest("filter must be an object".into())),
    };
    // Each filter value takes every reference form (key, id, {"key"|"id"|"name"}), one value or a list.
    let mut queue_refs = values(b.get("queue"));
    queue_refs.extend(values(fo.get("queue")));
    for v in queue_refs {
        let q = resolve_queue(&st, &ctx.org, &v).await.map_err(|e| match e {
            Error::NotFound { message, .. } => Error::rule("queue", message),
            other => other,
        })?;
        filter.queues.extend(q.map(|q| q.id));
    }
    for v in values(fo.get("status")) {
        filter.statuses.extend(resolve_status(&v)?.map(|s| s.key.to_owned()));
    }
    for v in values(fo.get("type")) {
        filter.types.extend(resolve_type(&v)?.map(|t| t.key.to_owned()));
    }
    if let Some(a) = fo.get("assignee") {
        let values = match a {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        for v in values {
            if v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("empty()")) {
                filter.assignees.push(None);
            } else {
                filter
                    .assignees
                    .push(resolve_user(&st, &ctx.org, "assignee", &v).await?);
            }
        }
    }
    filter.keys = strings("keys", b.get("keys").unwrap_or(&Value::Null))?;
    let (issues, total) = st.store.search_issues(&ctx.org, &filter, order, page).await?;
    let items: Vec<_> = issues.iter().map(|i| render::issue(&ctx, i)).collect();
    Ok(paginated(&ctx, "/issues/_search", &q, page, total, items))
}

/// `GET /issues/{issue}/transitions`.
pub async fn list_transitions(State(st): State<AppState>, ctx: Ctx, Path(which): Path<String>) -> Result<Json<Value>> {
    let issue = load_issue(&st, &ctx, &which).await?;
    ctx.authorize()?;
    Ok(Json(transitions_json(&ctx, &issue)))
}

fn transitions_json(ctx: &Ctx, issue: &Issue) -> Value {
    Value::Array(
        transitions_from(&issue.status)
            .map(|t| render::transition(ctx, &issue.key, t))
            .collect(),
    )
}

fn available(issue: &Issue, id: &str) -> Result<&'static crate::domain::Transition> {
    TRANSITIONS
        .iter()
        .find(|t| t.id == id && t.from.contains(&issue.status.as_str()))
        .ok_or_else(|| {
            Error::not_found(
                "transition",
                format!("Transition {id} is not available for {}", issue.key),
            )
        })
}

/// `GET /issues/{issue}/transitions/{id}`.
pub async fn get_transition(
    State(st): State<AppState>,
    ctx: Ctx,
    Path((which, id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let issue = load_issue(&st, &ctx, &which).await?;
    let t = available(&issue, &id)?;
    ctx.authorize()?;
    Ok(Json(render::transition(&ctx, &issue.key, t)))
}

/// `POST /issues/{issue}/transitions/{id}/_execute` → the transitions available afterwards.
pub async fn execute_transition(
    State(st): State<AppState>,
    ctx: Ctx,
    Path((which, id)): Path<(String, String)>,
    body: Body,
) -> Result<Json<Value>> {
    let issue = load_issue(&st, &ctx, &which).await?;
    let t = available(&issue, &id)?;
    ctx.authorize()?;
    let b = object(body.json()?)?;
    let resolution = match b.get("resolution") {
        None | Some(Value::Null) => None,
        Some(v) => match named_ref("resolution", v)? {
            Some(Locator::Key(k) | Locator::Name(k)) if !k.trim().is_empty() => Some(k),
            Some(Locator::Key(_) | Locator::Name(_)) => None,
            Some(Locator::Id(i)) => Some(i.to_string()),
            None => None,
        },
    };
    let updated = st
        .store
        .transition_issue(
            &ctx.org,
            issue.id,
            t.from,
            t.to,
            resolution.as_deref(),
            ctx.user.uid,
            now_ms(),
        )
        .await?;
    // A linked Sentry issue's status is synced through the outbox.
    st.wakeup.wake();
    Ok(Json(transitions_json(&ctx, &updated)))
}
