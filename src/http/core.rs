//! The resources links stand on: users, queues, issue types, statuses, fields, tokens.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::ctx::{Body, Ctx, Path, Query, named_ref, object, opt_string, paginated, user_ref};
use super::render;
use crate::domain::dates::now_ms;
use crate::domain::{
    FieldType, ISSUE_TYPES, Named, OrgId, QueueKey, STATUSES, SYSTEM_FIELDS, find_named, valid_field_id,
};
use crate::error::{Error, Result};
use crate::store::{CustomField, Locator, NewQueue};

/// `GET /myself`.
pub async fn get_myself(ctx: Ctx) -> Result<Json<Value>> {
    ctx.authorize()?;
    Ok(Json(render::user(&ctx, &ctx.user)))
}

/// `GET /users`.
pub async fn list_users(State(st): State<AppState>, ctx: Ctx, q: Query) -> Result<Response> {
    ctx.authorize()?;
    let page = q.page()?;
    let (users, total) = st.store.list_members(&ctx.org, page).await?;
    let items = users.iter().map(|u| render::user(&ctx, u)).collect();
    Ok(paginated(&ctx, "/users", &q, page, total, items))
}

/// `GET /users/{uid-or-login}`.
pub async fn get_user(State(st): State<AppState>, ctx: Ctx, Path(who): Path<String>) -> Result<Json<Value>> {
    let loc = match who.parse::<i64>() {
        Ok(uid) => Locator::Id(uid),
        Err(_) => Locator::Key(who.clone()),
    };
    let u = st
        .store
        .get_member(&ctx.org, &loc)
        .await?
        .ok_or_else(|| Error::not_found("user", format!("User {who} does not exist")))?;
    ctx.authorize()?;
    Ok(Json(render::user(&ctx, &u)))
}

/// Resolves a user reference to a member's uid: 422 when unknown (it names something in the body).
pub async fn resolve_user(st: &AppState, org: &OrgId, field: &str, v: &Value) -> Result<Option<i64>> {
    let Some(loc) = user_ref(field, v)? else {
        return Ok(None);
    };
    let u = st
        .store
        .get_member(org, &loc)
        .await?
        .ok_or_else(|| Error::rule(field, format!("User {} does not exist", describe(&loc))))?;
    Ok(Some(u.uid))
}

fn describe(l: &Locator) -> String {
    match l {
        Locator::Id(i) => i.to_string(),
        Locator::Key(s) | Locator::Name(s) => s.clone(),
    }
}

/// Resolves an issue type reference: 422 when unknown.
pub fn resolve_type(v: &Value) -> Result<Option<&'static Named>> {
    resolve_named(&ISSUE_TYPES, "type", "Issue type", v)
}

/// Resolves a status reference: 422 when unknown.
pub fn resolve_status(v: &Value) -> Result<Option<&'static Named>> {
    resolve_named(&STATUSES, "status", "Status", v)
}

fn resolve_named(table: &'static [Named], field: &str, what: &str, v: &Value) -> Result<Option<&'static Named>> {
    let Some(loc) = named_ref(field, v)? else {
        return Ok(None);
    };
    let found = match &loc {
        Locator::Id(i) => find_named(table, None, Some(&i.to_string()), None),
        Locator::Key(k) => find_named(table, Some(k), None, None),
        Locator::Name(n) => find_named(table, None, None, Some(n)),
    };
    found.map(Some).ok_or_else(|| {
        let valid: Vec<_> = table.iter().map(|n| n.key).collect();
        Error::rule(
            field,
            format!("{what} {} does not exist; valid: {}", describe(&loc), valid.join(", ")),
        )
    })
}

/// `GET /queues`.
pub async fn list_queues(State(st): State<AppState>, ctx: Ctx, q: Query) -> Result<Response> {
    ctx.authorize()?;
    let page = q.page()?;
    let (queues, total) = st.store.list_queues(&ctx.org, page).await?;
    let items = queues.iter().map(|x| render::queue(&ctx, x)).collect();
    Ok(paginated(&ctx, "/queues", &q, page, total, items))
}

/// `POST /queues`.
pub async fn create_queue(State(st): State<AppState>, ctx: Ctx, body: Body) -> Result<Response> {
    ctx.authorize()?;
    let mut b = object(body.json()?)?;
    let key = opt_string("key", b.get("key"))?.ok_or_else(|| Error::missing("key"))?;
    let key =
        QueueKey::parse(&key).ok_or_else(|| Error::rule("key", "A queue key is 1 to 15 uppercase Latin letters"))?;
    let name = opt_string("name", b.get("name"))?.unwrap_or_else(|| key.as_str().to_owned());
    let lead = match b.remove("lead") {
        Some(v) => resolve_user(&st, &ctx.org, "lead", &v).await?,
        None => None,
    };
    let default_type = match b.get("defaultType") {
        Some(v) => resolve_type(v)?.map_or("task", |t| t.key),
        None => "task",
    };
    let q = NewQueue {
        key: key.as_str().to_owned(),
        name,
        lead: lead.or(Some(ctx.user.uid)),
        default_type: default_type.into(),
    };
    let created = st.store.create_queue(&ctx.org, &q, now_ms()).await?;
    Ok((StatusCode::CREATED, Json(render::queue(&ctx, &created))).into_response())
}

/// `GET /queues/{key-or-id}`.
pub async fn get_queue(State(st): State<AppState>, ctx: Ctx, Path(which): Path<String>) -> Result<Json<Value>> {
    let loc = match which.parse::<i64>() {
        Ok(id) => Locator::Id(id),
        Err(_) => Locator::Key(which.clone()),
    };
    let q = st
        .store
        .get_queue(&ctx.org, &loc)
        .await?
        .ok_or_else(|| Error::not_found("queue", format!("Queue {which} does not exist")))?;
    ctx.authorize()?;
    Ok(Json(render::queue(&ctx, &q)))
}

fn find_in(table: &'static [Named], what: &'static str, id: &str) -> Result<&'static Named> {
    let by_id = id.parse::<i64>().ok().and_then(|n| table.iter().find(|x| x.id == n));
    by_id
        .or_else(|| table.iter().find(|x| x.key == id))
        .ok_or_else(|| Error::not_found(what, format!("{what} {id} does not exist")))
}

/// `GET /issuetypes`.
pub async fn list_issue_types(ctx: Ctx) -> Result<Json<Value>> {
    ctx.authorize()?;
    Ok(Json(Value::Array(
        ISSUE_TYPES
            .iter()
            .map(|t| render::named(&ctx, "issuetypes", t))
            .collect(),
    )))
}

/// `GET /issuetypes/{id}`.
pub async fn get_issue_type(ctx: Ctx, Path(id): Path<String>) -> Result<Json<Value>> {
    let t = find_in(&ISSUE_TYPES, "issuetype", &id)?;
    ctx.authorize()?;
    Ok(Json(render::named(&ctx, "issuetypes", t)))
}

/// `GET /statuses`.
pub async fn list_statuses(ctx: Ctx) -> Result<Json<Value>> {
    ctx.authorize()?;
    Ok(Json(Value::Array(
        STATUSES.iter().map(|t| render::named(&ctx, "statuses", t)).collect(),
    )))
}

/// `GET /statuses/{id}`.
pub async fn get_status(ctx: Ctx, Path(id): Path<String>) -> Result<Json<Value>> {
    let s = find_in(&STATUSES, "status", &id)?;
    ctx.authorize()?;
    Ok(Json(render::named(&ctx, "statuses", s)))
}

/// `GET /fields`.
pub async fn list_fields(State(st): State<AppState>, ctx: Ctx) -> Result<Json<Value>> {
    ctx.authorize()?;
    let mut out: Vec<Value> = SYSTEM_FIELDS
        .iter()
        .map(|(id, name, ty)| render::system_field(&ctx, id, name, ty))
        .collect();
    for f in st.store.list_fields(&ctx.org).await? {
        out.push(render::custom_field(&ctx, &f));
    }
    Ok(Json(Value::Array(out)))
}

/// `GET /fields/{id}`.
pub async fn get_field(State(st): State<AppState>, ctx: Ctx, Path(id): Path<String>) -> Result<Json<Value>> {
    let v = if let Some((id, name, ty)) = SYSTEM_FIELDS.iter().find(|(f, _, _)| *f == id) {
        render::system_field(&ctx, id, name, ty)
    } else {
        let f = st
            .store
            .list_fields(&ctx.org)
            .await?
            .into_iter()
            .find(|f| f.id == id)
            .ok_or_else(|| Error::not_found("field", format!("Field {id} does not exist")))?;
        render::custom_field(&ctx, &f)
    };
    ctx.authorize()?;
    Ok(Json(v))
}

/// `POST /fields`: a custom field `{"id", "name", "schema": {"type", "items"?}}`.
pub async fn create_field(State(st): State<AppState>, ctx: Ctx, body: Body) -> Result<Response> {
    ctx.authorize()?;
    let b = object(body.json()?)?;
    let id = opt_string("id", b.get("id"))?.ok_or_else(|| Error::missing("id"))?;
    if !valid_field_id(&id) {
        return Err(Error::rule(
            "id",
            "A field id starts with a Latin letter and has letters, digits or _ (at most 64)",
        ));
    }
    // Keys issue JSON already uses cannot be custom fields: the value would be hidden or clash.
    let reserved = ["self", "resolution", "previousStatus", "priority", "followers"];
    if SYSTEM_FIELDS.iter().any(|(f, _, _)| f.eq_ignore_ascii_case(&id))
        || reserved.iter().any(|r| r.eq_ignore_ascii_case(&id))
    {
        return Err(Error::rule("id", format!("{id} is a system field")));
    }
    let name = opt_string("name", b.get("name"))?.unwrap_or_else(|| id.clone());
    let schema = b
        .get("schema")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::missing("schema"))?;
    let ty = opt_string("schema.type", schema.get("type"))?.ok_or_else(|| Error::missing("schema.type"))?;
    let items = opt_string("schema.items", schema.get("items"))?;
    let ty = FieldType::parse(&ty, items.as_deref()).ok_or_else(|| {
        Error::rule(
            "schema",
            "Field type must be string, number, date, datetime, user, or array of string",
        )
    })?;
    let f = CustomField { id, name, ty };
    let created = st.store.create_field(&ctx.org, &f, now_ms()).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    // Creating an existing field again answers with the field as it is stored.
    let stored = st
        .store
        .list_fields(&ctx.org)
        .await?
        .into_iter()
        .find(|x| x.id == f.id)
        .unwrap_or(f);
    Ok((status, Json(render::custom_field(&ctx, &stored))).into_response())
}

/// `GET /_tokens`: the caller's own tokens, never their secrets.
pub async fn list_tokens(State(st): State<AppState>, ctx: Ctx) -> Result<Json<Value>> {
    ctx.authorize()?;
    let tokens = st.store.list_tokens(Some(ctx.user.uid)).await?;
    let items = tokens
        .iter()
        .map(|t| {
            let mut v = json!({
                "self": ctx.url(&format!("/_tokens/{}", t.id)),
                "id": t.id,
                "name": t.name,
                "createdAt": crate::domain::dates::format_ms(t.created_at),
                "current": t.id == ctx.token_id,
            });
            if let Some(r) = t.revoked_at {
                v["revokedAt"] = json!(crate::domain::dates::format_ms(r));
            }
            v
        })
        .collect();
    Ok(Json(Value::Array(items)))
}

/// `DELETE /_tokens/{id}`: revokes one of the caller's tokens.
pub async fn revoke_token(State(st): State<AppState>, ctx: Ctx, Path(id): Path<String>) -> Result<StatusCode> {
    let id: i64 = id
        .parse()
        .map_err(|_| Error::not_found("token", "Token does not exist"))?;
    ctx.authorize()?;
    if st.store.revoke_token(id, Some(ctx.user.uid), now_ms()).await? {
        st.principals.clear();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found("token", "Token does not exist"))
    }
}
