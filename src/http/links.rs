//! Links between issues (contract §5) and link import (§6).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::AppState;
use super::answers::Read;
use super::core::resolve_user;
use super::ctx::{Body, Ctx, Path, object, opt_string};
use super::issues::{history_pair, load_issue_head, load_issue_head_ref, required_date};
use super::render;
use crate::domain::OrgId;
use crate::domain::dates::now_ms;
use crate::domain::links::{LINK_TYPES, LinkType, Relationship};
use crate::error::{Error, Result};
use crate::store::{IssueHead, NewLink};

/// `GET /linktypes`.
pub async fn list_link_types(ctx: Ctx) -> Result<Json<Value>> {
    ctx.authorize()?;
    Ok(Json(Value::Array(
        LINK_TYPES.iter().map(|t| render::link_type(&ctx, *t)).collect(),
    )))
}

/// `GET /linktypes/{id}`.
pub async fn get_link_type(ctx: Ctx, Path(id): Path<String>) -> Result<Json<Value>> {
    let t =
        LinkType::parse(&id).ok_or_else(|| Error::not_found("linktype", format!("Link type {id} does not exist")))?;
    ctx.authorize()?;
    Ok(Json(render::link_type(&ctx, t)))
}

/// Parses `relationship`: 422 when missing or unknown (listing the valid names), or import-only outside import.
fn relationship(b: &Map<String, Value>, import: bool) -> Result<Relationship> {
    let name = opt_string("relationship", b.get("relationship"))?.ok_or_else(|| Error::missing("relationship"))?;
    let valid = || Relationship::names(import).join(", ");
    let rel = Relationship::parse(&name).ok_or_else(|| {
        Error::rule(
            "relationship",
            format!("Unknown relationship '{name}'; valid: {}", valid()),
        )
    })?;
    if rel.import_only && !import {
        return Err(Error::rule(
            "relationship",
            format!(
                "Relationship '{}' can only be imported; valid here: {}",
                rel.name,
                valid()
            ),
        ));
    }
    Ok(rel)
}

/// The target issue of a link body: 422 when missing, 404 when unknown, 422 when it is the issue itself.
async fn target(st: &AppState, org: &OrgId, this: &IssueHead, b: &Map<String, Value>) -> Result<IssueHead> {
    let v = b
        .get("issue")
        .filter(|v| !v.is_null())
        .ok_or_else(|| Error::missing("issue"))?;
    let other = load_issue_head_ref(st, org, "issue", v)
        .await?
        .ok_or_else(|| Error::missing("issue"))?;
    if other.id == this.id {
        return Err(Error::rule(
            "issue",
            format!("An issue cannot be linked to itself ({})", this.key),
        ));
    }
    Ok(other)
}

/// `POST /issues/{issue}/links` → 201.
pub async fn create_link(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(which): Path<String>,
    body: Body,
) -> Result<Response> {
    let this = load_issue_head(&st, &ctx, &which).await?;
    ctx.authorize()?;
    let b = object(body.json()?)?;
    let new = link_request(&st, &ctx.org, &this, &b, ctx.user.uid).await?;
    let link = st.store.create_link(&new).await?;
    Ok((StatusCode::CREATED, Json(render::link(&ctx, &link, true))).into_response())
}

/// Validates a link request `{"relationship", "issue"}` about `this` — the API's and the web form's.
pub(crate) async fn link_request(
    st: &AppState,
    org: &OrgId,
    this: &IssueHead,
    b: &Map<String, Value>,
    by: i64,
) -> Result<NewLink> {
    // The target is an object the request names: its 404 comes before 400/422 (contract §2).
    let other = target(st, org, this, b).await?;
    let rel = relationship(b, false)?;
    let now = now_ms();
    Ok(NewLink {
        org: org.clone(),
        this: this.id,
        other: other.id,
        relationship: rel,
        created: (by, now),
        updated: (by, now),
        import: false,
    })
}

/// Validates one seed-001 import record about `this` (relationship, issue, createdAt, createdBy, updatedAt +
/// updatedBy, the time window of contract §6). Shared by the single import, the bulk endpoint and the CLI.
pub async fn import_record(st: &AppState, org: &OrgId, this: &IssueHead, b: &Map<String, Value>) -> Result<NewLink> {
    let other = target(st, org, this, b).await?;
    let rel = relationship(b, true)?;
    let created_at = required_date(b, "createdAt")?;
    let by_v = b
        .get("createdBy")
        .filter(|v| !v.is_null())
        .ok_or_else(|| Error::missing("createdBy"))?;
    let created_by = resolve_user(st, org, "createdBy", by_v)
        .await?
        .ok_or_else(|| Error::missing("createdBy"))?;
    let now = now_ms();
    let earliest = this.created_at.max(other.created_at);
    if created_at < earliest || created_at > now {
        return Err(Error::rule(
            "createdAt",
            format!(
                "createdAt must be between the later creation of {} and {} ({}) and now",
                this.key,
                other.key,
                crate::domain::dates::format_ms(earliest)
            ),
        ));
    }
    let updated = history_pair(st, org, b, created_at, now)
        .await?
        .unwrap_or((created_at, created_by));
    Ok(NewLink {
        org: org.clone(),
        this: this.id,
        other: other.id,
        relationship: rel,
        created: (created_by, created_at),
        updated: (updated.1, updated.0),
        import: true,
    })
}

/// `POST /issues/{issue}/links/_import` → 200 with the historical authors and dates.
pub async fn import_link(
    State(st): State<AppState>,
    ctx: Ctx,
    Path(which): Path<String>,
    body: Body,
) -> Result<Response> {
    let this = load_issue_head(&st, &ctx, &which).await?;
    ctx.authorize()?;
    let b = object(body.json()?)?;
    let new = import_record(&st, &ctx.org, &this, &b).await?;
    let link = st.store.create_link(&new).await?;
    Ok(Json(render::link(&ctx, &link, true)).into_response())
}

/// `GET /issues/{issue}/links`: every link, each with the linked issue's status and assignee; whole, as in Tracker,
/// unless the request gives `perPage` (contract §1).
pub async fn list_links(
    State(st): State<AppState>,
    ctx: Ctx,
    read: Read,
    Path(which): Path<String>,
    q: super::ctx::Query,
) -> Result<Response> {
    read.answer(&st, &ctx, list_links_fresh(&st, &ctx, which, q)).await
}

async fn list_links_fresh(st: &AppState, ctx: &Ctx, which: String, q: super::ctx::Query) -> Result<Response> {
    let this = load_issue_head(st, ctx, &which).await?;
    ctx.authorize()?;
    let links = st.store.list_links(&ctx.org, this.id).await?;
    if q.get("perPage").is_none() {
        return Ok(Json(links.iter().map(|l| render::link(ctx, l, true)).collect::<Vec<_>>()).into_response());
    }
    let page = q.page()?;
    let total = links.len() as i64;
    let start = usize::try_from(page.offset()).unwrap_or(usize::MAX).min(links.len());
    let end = start
        .saturating_add(usize::try_from(page.per_page).unwrap_or(0))
        .min(links.len());
    let items: Vec<_> = links[start..end].iter().map(|l| render::link(ctx, l, true)).collect();
    Ok(super::ctx::paginated(
        ctx,
        &format!("/issues/{}/links", this.key),
        &q,
        page,
        total,
        items,
    ))
}

fn link_id(s: &str) -> Result<i64> {
    s.parse()
        .map_err(|_| Error::not_found("link", format!("Link {s} does not exist")))
}

/// `GET /issues/{issue}/links/{link}`.
pub async fn get_link(
    State(st): State<AppState>,
    ctx: Ctx,
    read: Read,
    Path((which, link)): Path<(String, String)>,
) -> Result<Response> {
    read.answer(&st, &ctx, get_link_fresh(&st, &ctx, which, link)).await
}

async fn get_link_fresh(st: &AppState, ctx: &Ctx, which: String, link: String) -> Result<Response> {
    let this = load_issue_head(st, ctx, &which).await?;
    let id = link_id(&link)?;
    let view = st
        .store
        .get_link(&ctx.org, this.id, id)
        .await?
        .ok_or_else(|| Error::not_found("link", format!("Link {link} does not exist on {}", this.key)))?;
    ctx.authorize()?;
    Ok(Json(render::link(ctx, &view, true)).into_response())
}

/// `DELETE /issues/{issue}/links/{link}` → 204, from either side.
pub async fn delete_link(
    State(st): State<AppState>,
    ctx: Ctx,
    Path((which, link)): Path<(String, String)>,
) -> Result<StatusCode> {
    let this = load_issue_head(&st, &ctx, &which).await?;
    let id = link_id(&link)?;
    let exists = st.store.get_link(&ctx.org, this.id, id).await?.is_some();
    if !exists {
        return Err(Error::not_found(
            "link",
            format!("Link {link} does not exist on {}", this.key),
        ));
    }
    ctx.authorize()?;
    if st.store.delete_link(&ctx.org, this.id, id, now_ms()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found(
            "link",
            format!("Link {link} does not exist on {}", this.key),
        ))
    }
}

/// `GET /issues/{issue}/_graph?types=&direction=both|out|in&depth=N` (contract §9): the issue's neighbourhood
/// through the given link types, `from` being each link's outward side, and the cycles among them.
pub async fn get_issue_graph(
    State(st): State<AppState>,
    ctx: Ctx,
    read: Read,
    Path(which): Path<String>,
    q: super::ctx::Query,
) -> Result<Response> {
    read.answer(&st, &ctx, get_issue_graph_fresh(&st, &ctx, which, q)).await
}

async fn get_issue_graph_fresh(st: &AppState, ctx: &Ctx, which: String, q: super::ctx::Query) -> Result<Response> {
    let root = load_issue_head(st, ctx, &which).await?;
    ctx.authorize()?;
    let types: Vec<LinkType> = match q.get("types") {
        None | Some("") => vec![LinkType::Depends, LinkType::Subtask, LinkType::Epic],
        Some(list) => list
            .split(',')
            .map(|t| {
                LinkType::parse(t.trim()).ok_or_else(|| {
                    Error::BadRequest(format!(
                        "Unknown link type {t}; valid: relates, depends, subtask, duplicates, epic, clone"
                    ))
                })
            })
            .collect::<Result<_>>()?,
    };
    let (out, inward) = match q.get("direction").unwrap_or("both") {
        "both" => (true, true),
        "out" => (true, false),
        "in" => (false, true),
        other => return Err(Error::BadRequest(format!("direction is both, out or in, not {other}"))),
    };
    let depth = match q.get("depth") {
        None => 3,
        Some(d) => d
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|d| (1..=10).contains(d))
            .ok_or_else(|| Error::BadRequest("depth must be a number from 1 to 10".into()))?,
    };
    let graph = st
        .store
        .issue_graph(&ctx.org, root.id, &types, out, inward, depth)
        .await?;
    let mut cycles = Vec::new();
    for t in &types {
        let of_type: Vec<(String, String)> = graph
            .edges
            .iter()
            .filter(|(_, _, ty)| ty == t)
            .map(|(a, b, _)| (a.clone(), b.clone()))
            .collect();
        cycles.extend(crate::domain::links::find_cycles(&of_type));
    }
    Ok(Json(render::graph(ctx, &graph, &cycles)).into_response())
}
