//! The pages (GET): queues, the issues of a queue, an issue with its links, its dependency graph, the issue form,
//! the login page and the organization chooser.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::graph::{self, Drawing};
use super::session::{Account, Session, local_path};
use super::{WebError, append_cookie, html, issue_key};
use crate::domain::dates::Millis;
use crate::domain::links::{Direction, LinkType, Relationship, find_cycles};
use crate::domain::{FieldType, ISSUE_TYPES, IssueKey, IssueLocator, QueueKey, STATUSES};
use crate::error::Error;
use crate::http::AppState;
use crate::http::ctx::{Path, Query};
use crate::store::{Issue, IssueFilter, IssueOrder, LinkView, Locator, OrderColumn, Page, RemoteLink};

/// Rows per page of the lists.
const PER_PAGE: i64 = 50;

/// The header of every signed-in page.
pub struct Nav {
    /// The user's display name.
    pub user: String,
    /// The organization in scope.
    pub org: String,
    /// The user's role there.
    pub role: &'static str,
    /// The CSRF token of the log-out form.
    pub csrf: String,
    /// Whether this is a browser session (which can log out).
    pub by_cookie: bool,
    /// Whether the user can switch organizations.
    pub several_orgs: bool,
}

impl Nav {
    /// The header for a session.
    pub fn of(s: &Session) -> Nav {
        Nav {
            user: s.user.display.clone(),
            org: s.org.as_str().to_owned(),
            role: s.role.as_str(),
            csrf: s.csrf.clone(),
            by_cookie: s.by_cookie,
            several_orgs: s.org_count > 1,
        }
    }
}

/// One `<option>` of a select.
pub struct Opt {
    /// The submitted value.
    pub value: String,
    /// What the user reads.
    pub label: String,
    /// Whether it is the current choice.
    pub selected: bool,
}

impl Opt {
    fn new(value: &str, label: &str, current: &str) -> Opt {
        Opt {
            value: value.to_owned(),
            label: label.to_owned(),
            selected: value == current,
        }
    }
}

/// Previous/next links of a paginated list.
pub struct Pager {
    /// The current page (1-based).
    pub page: i64,
    /// How many pages there are.
    pub pages: i64,
    /// The previous page's URL.
    pub prev: Option<String>,
    /// The next page's URL.
    pub next: Option<String>,
}

impl Pager {
    fn new(path: &str, params: &[(&str, &str)], page: i64, total: i64) -> Pager {
        let pages = ((total + PER_PAGE - 1) / PER_PAGE).max(1);
        let url = |p: i64| {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in params.iter().filter(|(_, v)| !v.is_empty()) {
                q.append_pair(k, v);
            }
            q.append_pair("page", &p.to_string());
            format!("{path}?{}", q.finish())
        };
        Pager {
            page,
            pages,
            prev: (page > 1).then(|| url(page - 1)),
            next: (page < pages).then(|| url(page + 1)),
        }
    }
}

/// A page number from `?page=` (anything unusable is page 1).
fn page_param(q: &Query) -> i64 {
    q.get("page")
        .and_then(|p| p.trim().parse::<i64>().ok())
        .filter(|p| (1..=1_000_000).contains(p))
        .unwrap_or(1)
}

/// Renders a page for a session, remembering an organization chosen with `?org=`.
pub fn respond<T: Template>(s: &Session, status: u16, t: &T) -> Response {
    let mut r = html(status, t);
    if let Some(c) = &s.remember_org {
        append_cookie(&mut r, c);
    }
    r
}

/// `YYYY-MM-DD hh:mm UTC`.
pub fn when(ms: Millis) -> String {
    let dt = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    dt.format(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute] UTC"
    ))
    .unwrap_or_default()
}

/// A status key's display name.
pub fn status_name(key: &str) -> String {
    crate::domain::status(key).map_or_else(|| key.to_owned(), |s| s.display.to_owned())
}

fn type_name(key: &str) -> String {
    crate::domain::issue_type(key).map_or_else(|| key.to_owned(), |t| t.display.to_owned())
}

/// Loads an issue by key in the session's organization (a 404 page when it does not exist there).
pub async fn load_issue(st: &AppState, s: &Session, key: &IssueKey) -> Result<Issue, WebError> {
    st.store
        .get_issue(&s.org, &IssueLocator::Key(key.clone()))
        .await?
        .ok_or_else(|| WebError::from(Error::not_found("issue", format!("Issue {key} does not exist"))))
}

// ---------------------------------------------------------------------------------------------------------------
// Queues

#[derive(Template)]
#[template(path = "queues.html")]
struct QueuesPage {
    nav: Option<Nav>,
    can_write: bool,
    queues: Vec<QueueRow>,
    pager: Pager,
}

struct QueueRow {
    key: String,
    name: String,
    lead: String,
    default_type: String,
}

/// `GET /`: the organization's queues.
pub async fn list_queues(State(st): State<AppState>, s: Session, q: Query) -> Result<Response, WebError> {
    let page = page_param(&q);
    let (queues, total) = st
        .store
        .list_queues(
            &s.org,
            Page {
                page,
                per_page: PER_PAGE,
            },
        )
        .await?;
    let rows = queues
        .into_iter()
        .map(|x| QueueRow {
            lead: x.lead.map(|l| l.display).unwrap_or_default(),
            default_type: type_name(&x.default_type),
            key: x.key,
            name: x.name,
        })
        .collect();
    let t = QueuesPage {
        nav: Some(Nav::of(&s)),
        can_write: s.can_write(),
        queues: rows,
        pager: Pager::new("/", &[], page, total),
    };
    Ok(respond(&s, 200, &t))
}

// ---------------------------------------------------------------------------------------------------------------
// The issues of a queue

#[derive(Template)]
#[template(path = "queue.html")]
struct QueuePage {
    nav: Option<Nav>,
    can_write: bool,
    key: String,
    name: String,
    statuses: Vec<Opt>,
    issues: Vec<IssueRow>,
    total: i64,
    pager: Pager,
}

struct IssueRow {
    key: String,
    summary: String,
    status_key: String,
    status: String,
    ty: String,
    assignee: String,
    updated: String,
}

/// `GET /queues/{KEY}?status=&page=`: the queue's issues, newest first.
pub async fn list_issues(
    State(st): State<AppState>,
    Path(key): Path<String>,
    s: Session,
    q: Query,
) -> Result<Response, WebError> {
    let missing = || WebError::from(Error::not_found("queue", format!("Queue {key} does not exist")));
    let qk = QueueKey::parse(&key).ok_or_else(missing)?;
    let queue = st
        .store
        .get_queue(&s.org, &Locator::Key(qk.as_str().to_owned()))
        .await?
        .ok_or_else(missing)?;
    let status = q.get("status").unwrap_or_default().trim().to_owned();
    if !status.is_empty() && crate::domain::status(&status).is_none() {
        let valid: Vec<_> = STATUSES.iter().map(|s| s.key).collect();
        return Err(WebError::page(
            400,
            format!("Status {status} does not exist; valid: {}", valid.join(", ")),
        ));
    }
    let page = page_param(&q);
    let filter = IssueFilter {
        queues: vec![queue.id],
        statuses: if status.is_empty() {
            Vec::new()
        } else {
            vec![status.clone()]
        },
        ..IssueFilter::default()
    };
    let order = IssueOrder {
        column: OrderColumn::Key,
        ascending: false,
    };
    let (issues, total) = st
        .store
        .search_issues(
            &s.org,
            &filter,
            order,
            Page {
                page,
                per_page: PER_PAGE,
            },
        )
        .await?;
    let mut statuses = vec![Opt::new("", "Any status", &status)];
    statuses.extend(STATUSES.iter().map(|x| Opt::new(x.key, x.display, &status)));
    let path = format!("/queues/{}", queue.key);
    let t = QueuePage {
        nav: Some(Nav::of(&s)),
        can_write: s.can_write(),
        pager: Pager::new(&path, &[("status", &status)], page, total),
        key: queue.key,
        name: queue.name,
        statuses,
        issues: issues
            .into_iter()
            .map(|i| IssueRow {
                status: status_name(&i.status),
                ty: type_name(&i.ty),
                assignee: i.assignee.map(|a| a.display).unwrap_or_default(),
                updated: when(i.updated_at),
                key: i.key,
                summary: i.summary,
                status_key: i.status,
            })
            .collect(),
        total,
    };
    Ok(respond(&s, 200, &t))
}

// ---------------------------------------------------------------------------------------------------------------
// The issue page

/// What the forms of an issue page hold: the values sent and the error they met, when re-shown after a failure.
pub struct IssueForms {
    /// The relationship chosen.
    pub link_rel: String,
    /// The target issue typed.
    pub link_issue: String,
    /// Why the link was refused.
    pub link_error: Option<String>,
    /// The application chosen.
    pub remote_origin: String,
    /// The object key typed.
    pub remote_key: String,
    /// Whether to ask the application to link back.
    pub remote_backlink: bool,
    /// Why the remote link was refused.
    pub remote_error: Option<String>,
}

impl Default for IssueForms {
    fn default() -> IssueForms {
        IssueForms {
            link_rel: "relates".into(),
            link_issue: String::new(),
            link_error: None,
            remote_origin: String::new(),
            remote_key: String::new(),
            remote_backlink: true,
            remote_error: None,
        }
    }
}

#[derive(Template)]
#[template(path = "issue.html")]
struct IssuePage {
    nav: Option<Nav>,
    org: String,
    can_write: bool,
    key: String,
    summary: String,
    description: Option<String>,
    status_key: String,
    status: String,
    ty: String,
    resolution: Option<String>,
    assignee: Option<String>,
    queue_key: String,
    queue_name: String,
    created_by: String,
    created_at: String,
    updated_by: String,
    updated_at: String,
    fields: Vec<(String, String)>,
    groups: Vec<LinkGroup>,
    remote_groups: Vec<RemoteGroup>,
    relationships: Vec<Opt>,
    apps: Vec<Opt>,
    forms: IssueForms,
}

/// The links of an issue whose objects play one role.
pub struct LinkGroup {
    /// The role the linked issues play, e.g. "Parent issue", "Blocks".
    pub label: &'static str,
    /// The role in words about this issue.
    pub hint: String,
    /// The links.
    pub items: Vec<LinkItem>,
}

/// One link as the issue page shows it.
pub struct LinkItem {
    /// The link id (for deletion).
    pub id: i64,
    /// The linked issue's key.
    pub key: String,
    /// Its summary.
    pub summary: String,
    /// Its status key.
    pub status_key: String,
    /// Its status.
    pub status: String,
    /// Its assignee.
    pub assignee: Option<String>,
}

/// Remote links of one application.
pub struct RemoteGroup {
    /// "Sentry issues" or the application's name.
    pub label: String,
    /// The links.
    pub items: Vec<RemoteItem>,
}

/// One remote link.
pub struct RemoteItem {
    /// The object's key.
    pub key: String,
    /// The object's page.
    pub href: Option<String>,
    /// The application's icon.
    pub icon: Option<String>,
    /// The application's name.
    pub app: String,
    /// Backlink delivery state, when one was asked for.
    pub backlink: Option<String>,
}

/// The link groups in the order the page shows them: (type, the side the linked issue is on, heading). The headings
/// are the type's role labels (contract §5), two of them in the plural.
pub const GROUPS: [(LinkType, Direction, &str); 11] = [
    (LinkType::Subtask, Direction::Outward, "Parent issue"),
    (LinkType::Subtask, Direction::Inward, "Sub-issues"),
    (LinkType::Epic, Direction::Inward, "Epic"),
    (LinkType::Epic, Direction::Outward, "Issues in epic"),
    (LinkType::Depends, Direction::Outward, "Depends on"),
    (LinkType::Depends, Direction::Inward, "Blocks"),
    (LinkType::Duplicates, Direction::Outward, "Duplicates"),
    (LinkType::Duplicates, Direction::Inward, "Duplicated by"),
    (LinkType::Clone, Direction::Outward, "Clone of"),
    (LinkType::Clone, Direction::Inward, "Cloned to"),
    (LinkType::Relates, Direction::Outward, "relates"),
];

/// What a group means, said about the issue on the page.
fn hint(ty: LinkType, object_side: Direction, key: &str) -> String {
    use Direction::{Inward, Outward};
    match (ty, object_side) {
        (LinkType::Subtask, Outward) => format!("the parent of {key}"),
        (LinkType::Subtask, Inward) => format!("sub-issues of {key}"),
        (LinkType::Epic, Inward) => format!("the epic {key} belongs to"),
        (LinkType::Epic, Outward) => format!("issues in the epic {key}"),
        (LinkType::Depends, Outward) => format!("these depend on {key}"),
        (LinkType::Depends, Inward) => format!("these block {key}"),
        (LinkType::Duplicates, Outward) => format!("these duplicate {key}"),
        (LinkType::Duplicates, Inward) => format!("{key} duplicates these"),
        (LinkType::Clone, Outward) => format!("copies of {key}"),
        (LinkType::Clone, Inward) => format!("{key} was copied from these"),
        (LinkType::Relates, _) => format!("related to {key}"),
    }
}

/// Groups links by the role the linked issue plays relative to this one: `type[direction]` is this issue's role,
/// the object plays the other label (on a child, the parent is under "Parent issue").
pub fn group_links(key: &str, links: &[LinkView]) -> Vec<LinkGroup> {
    GROUPS
        .iter()
        .filter_map(|&(ty, side, label)| {
            let items: Vec<LinkItem> = links
                .iter()
                .filter(|l| l.ty == ty && (ty == LinkType::Relates || l.direction.opposite() == side))
                .map(|l| LinkItem {
                    id: l.id,
                    key: l.object.key.clone(),
                    summary: l.object.summary.clone(),
                    status_key: l.object_status.clone(),
                    status: status_name(&l.object_status),
                    assignee: l.object_assignee.as_ref().map(|a| a.display.clone()),
                })
                .collect();
            (!items.is_empty()).then(|| LinkGroup {
                label,
                hint: hint(ty, side, key),
                items,
            })
        })
        .collect()
}

/// Only http(s) URLs become links or images (an application's URL is checked on registration, a Sentry `webUrl`
/// is not).
fn web_url(u: &str) -> Option<String> {
    (u.starts_with("https://") || u.starts_with("http://")).then(|| u.to_owned())
}

/// Fills `{{remoteKey}}`, percent-encoded as a URL component (as the API does for `entityInfoUrl`).
pub fn front_url(template: &str, key: &str) -> String {
    const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    template.replace(
        "{{remoteKey}}",
        &percent_encoding::utf8_percent_encode(key, COMPONENT).to_string(),
    )
}

/// Groups remote links by application, Sentry's first as "Sentry issues".
fn group_remote(links: &[RemoteLink], apps: &[crate::store::Application]) -> Vec<RemoteGroup> {
    let mut by_app: BTreeMap<(bool, String), Vec<RemoteItem>> = BTreeMap::new();
    for r in links {
        let (app_id, _, app_name) = &r.app;
        let app = apps.iter().find(|a| a.id == *app_id);
        let href = r.web_url.as_deref().and_then(web_url).or_else(|| {
            app.and_then(|a| a.front_url.as_deref())
                .and_then(|t| web_url(&front_url(t, &r.key)))
        });
        let item = RemoteItem {
            key: r.key.clone(),
            href,
            icon: app.and_then(|a| a.default_icon_url.as_deref()).and_then(web_url),
            app: app_name.clone(),
            backlink: r.backlink.as_ref().map(|b| b.state.clone()),
        };
        let sentry = app_id == "sentry";
        let label = if sentry {
            "Sentry issues".to_owned()
        } else {
            app_name.clone()
        };
        by_app.entry((!sentry, label)).or_default().push(item);
    }
    by_app
        .into_iter()
        .map(|((_, label), items)| RemoteGroup { label, items })
        .collect()
}

/// A custom field's value as text (users by name).
async fn field_text(st: &AppState, s: &Session, ty: Option<FieldType>, v: &Value) -> Result<String, WebError> {
    Ok(match (ty, v) {
        (Some(FieldType::User), Value::String(uid)) => match uid.parse::<i64>() {
            Ok(id) => st
                .store
                .get_member(&s.org, &Locator::Id(id))
                .await?
                .map_or_else(|| uid.clone(), |u| u.display),
            Err(_) => uid.clone(),
        },
        (_, Value::String(x)) => x.clone(),
        (_, Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(", "),
        (_, other) => other.to_string(),
    })
}

/// Renders an issue page with `status` (200, or the status of the error a form met).
pub async fn render_issue(
    st: &AppState,
    s: &Session,
    issue: Issue,
    forms: IssueForms,
    status: u16,
) -> Result<Response, WebError> {
    let links = st.store.list_links(&s.org, issue.id).await?;
    let remote = st.store.list_remote_links(&s.org, issue.id).await?;
    let apps = st.store.list_apps(&s.org).await?;
    let defs = st.store.list_fields(&s.org).await?;
    let mut fields = Vec::new();
    for (id, v) in &issue.custom {
        let def = defs.iter().find(|d| d.id == *id);
        let name = def.map_or_else(|| id.clone(), |d| d.name.clone());
        fields.push((name, field_text(st, s, def.map(|d| d.ty), v).await?));
    }
    let mut relationships: Vec<Opt> = Relationship::names(false)
        .into_iter()
        .map(|n| Opt::new(n, n, &forms.link_rel))
        .collect();
    if !relationships.iter().any(|o| o.selected)
        && let Some(first) = relationships.first_mut()
    {
        first.selected = true;
    }
    let app_opts = apps
        .iter()
        .filter(|a| a.can_link_from_front)
        .map(|a| Opt::new(&a.id, &a.name, &forms.remote_origin))
        .collect();
    let t = IssuePage {
        nav: Some(Nav::of(s)),
        org: s.org.as_str().to_owned(),
        can_write: s.can_write(),
        groups: group_links(&issue.key, &links),
        remote_groups: group_remote(&remote, &apps),
        status: status_name(&issue.status),
        ty: type_name(&issue.ty),
        assignee: issue.assignee.map(|a| a.display),
        created_by: issue.created_by.display,
        created_at: when(issue.created_at),
        updated_by: issue.updated_by.display,
        updated_at: when(issue.updated_at),
        key: issue.key,
        summary: issue.summary,
        description: issue.description.filter(|d| !d.trim().is_empty()),
        status_key: issue.status,
        resolution: issue.resolution,
        queue_key: issue.queue.1,
        queue_name: issue.queue.2,
        fields,
        relationships,
        apps: app_opts,
        forms,
    };
    Ok(respond(s, status, &t))
}

/// `GET /{KEY}`: an issue, its fields and its links. Paths that are not issue keys are the API's 404.
pub async fn show_issue(
    State(st): State<AppState>,
    Path(key): Path<String>,
    s: Result<Session, WebError>,
) -> Result<Response, WebError> {
    let key = issue_key(&key)?;
    let s = s?;
    let issue = load_issue(&st, &s, &key).await?;
    render_issue(&st, &s, issue, IssueForms::default(), 200).await
}

// ---------------------------------------------------------------------------------------------------------------
// The dependency graph

#[derive(Template)]
#[template(path = "graph.html")]
struct GraphPage {
    nav: Option<Nav>,
    key: String,
    summary: String,
    depths: Vec<Opt>,
    drawing: Drawing,
    nodes: Vec<graph::Node>,
    cycles: Vec<Vec<String>>,
}

/// `GET /{KEY}/graph?depth=N`: transitive blockers and dependents, the subtask tree and the epic, as an SVG drawn
/// on the server.
pub async fn show_graph(
    State(st): State<AppState>,
    Path(key): Path<String>,
    s: Result<Session, WebError>,
    q: Query,
) -> Result<Response, WebError> {
    let key = issue_key(&key)?;
    let s = s?;
    let root = load_issue(&st, &s, &key).await?;
    let depth = match q.get("depth").map(str::trim).filter(|d| !d.is_empty()) {
        None => 3,
        Some(d) => d
            .parse::<i64>()
            .ok()
            .filter(|d| (1..=10).contains(d))
            .ok_or_else(|| WebError::page(400, "depth must be a number from 1 to 10"))?,
    };
    let types = [LinkType::Depends, LinkType::Subtask, LinkType::Epic];
    let g = st.store.issue_graph(&s.org, root.id, &types, true, true, depth).await?;
    let mut cycles = Vec::new();
    for t in types {
        let of_type: Vec<(String, String)> = g
            .edges
            .iter()
            .filter(|(_, _, ty)| *ty == t)
            .map(|(a, b, _)| (a.clone(), b.clone()))
            .collect();
        cycles.extend(find_cycles(&of_type));
    }
    let nodes: Vec<graph::Node> = g
        .nodes
        .iter()
        .map(|n| graph::Node {
            key: n.issue.key.clone(),
            summary: n.issue.summary.clone(),
            status_key: n.status.clone(),
            status: status_name(&n.status),
            assignee: n.assignee.as_ref().map(|a| a.display.clone()),
        })
        .collect();
    let drawing = graph::draw(&root.key, &nodes, &g.edges, &cycles);
    let depth_text = depth.to_string();
    let t = GraphPage {
        nav: Some(Nav::of(&s)),
        depths: (1..=10)
            .map(|d| {
                let d = d.to_string();
                Opt::new(&d, &d, &depth_text)
            })
            .collect(),
        drawing,
        nodes,
        cycles,
        key: root.key,
        summary: root.summary,
    };
    Ok(respond(&s, 200, &t))
}

// ---------------------------------------------------------------------------------------------------------------
// The issue form

#[derive(Template)]
#[template(path = "new.html")]
pub struct NewIssuePage {
    pub nav: Option<Nav>,
    pub queues: Vec<Opt>,
    pub types: Vec<Opt>,
    pub summary: String,
    pub description: String,
    pub error: Option<String>,
}

impl NewIssuePage {
    /// The form with `queue`, `ty`, … filled in.
    pub async fn build(
        st: &AppState,
        s: &Session,
        queue: &str,
        ty: &str,
        summary: String,
        description: String,
        error: Option<String>,
    ) -> Result<NewIssuePage, WebError> {
        let (queues, _) = st
            .store
            .list_queues(
                &s.org,
                Page {
                    page: 1,
                    per_page: 1000,
                },
            )
            .await?;
        let mut types = vec![Opt::new("", "Queue default", ty)];
        types.extend(ISSUE_TYPES.iter().map(|t| Opt::new(t.key, t.display, ty)));
        Ok(NewIssuePage {
            nav: Some(Nav::of(s)),
            queues: queues
                .iter()
                .map(|q| Opt::new(&q.key, &format!("{} — {}", q.key, q.name), queue))
                .collect(),
            types,
            summary,
            description,
            error,
        })
    }
}

/// `GET /new?queue=KEY`: the form that creates an issue.
pub async fn new_issue(State(st): State<AppState>, s: Session, q: Query) -> Result<Response, WebError> {
    s.check_writer()?;
    let queue = q.get("queue").unwrap_or_default().to_owned();
    let t = NewIssuePage::build(&st, &s, &queue, "", String::new(), String::new(), None).await?;
    Ok(respond(&s, 200, &t))
}

// ---------------------------------------------------------------------------------------------------------------
// Signing in

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub nav: Option<Nav>,
    pub next: String,
    pub error: Option<String>,
}

/// `GET /login?next=`: the token form.
pub async fn login_page(q: Query) -> Response {
    let t = LoginPage {
        nav: None,
        next: local_path(q.get("next")),
        error: None,
    };
    html(200, &t)
}

#[derive(Template)]
#[template(path = "orgs.html")]
struct OrgsPage {
    nav: Option<Nav>,
    user: String,
    csrf: String,
    by_cookie: bool,
    orgs: Vec<OrgChoice>,
}

struct OrgChoice {
    id: String,
    name: String,
    role: &'static str,
    href: String,
}

/// `GET /orgs?next=`: choose the organization to work in (each choice is a link with `?org=`).
pub async fn choose_org(State(st): State<AppState>, account: Account, q: Query) -> Result<Response, WebError> {
    let next = local_path(q.get("next"));
    let (path, query) = next.split_once('?').unwrap_or((&next, ""));
    let names = st.store.list_orgs().await?;
    let orgs = account
        .principal
        .memberships
        .iter()
        .map(|(id, role)| {
            let mut qs = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in url::form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k != "org") {
                qs.append_pair(&k, &v);
            }
            qs.append_pair("org", id);
            OrgChoice {
                id: id.clone(),
                name: names
                    .iter()
                    .find(|(o, _)| o == id)
                    .map_or_else(|| id.clone(), |(_, n)| n.clone()),
                role: role.as_str(),
                href: format!("{path}?{}", qs.finish()),
            }
        })
        .collect();
    let t = OrgsPage {
        nav: None,
        user: account.principal.user.display.clone(),
        csrf: account.csrf.clone(),
        by_cookie: account.by_cookie(),
        orgs,
    };
    Ok(html(200, &t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{IssueBrief, UserRef};

    fn link(id: i64, ty: LinkType, direction: Direction, other: &str) -> LinkView {
        let u = UserRef {
            uid: 1,
            display: "A".into(),
        };
        LinkView {
            id,
            ty,
            direction,
            this_key: "T-1".into(),
            object: IssueBrief {
                id: id + 100,
                key: other.into(),
                summary: format!("summary of {other}"),
            },
            object_status: "open".into(),
            object_assignee: None,
            created_by: u.clone(),
            updated_by: u,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn labels(groups: &[LinkGroup]) -> Vec<(&str, Vec<&str>)> {
        groups
            .iter()
            .map(|g| (g.label, g.items.iter().map(|i| i.key.as_str()).collect()))
            .collect()
    }

    #[test]
    fn a_child_shows_its_parent_under_parent_issue_and_a_parent_its_children_under_sub_issues() {
        // The child is the inward side of `subtask`: its parent (outward) plays "Parent issue".
        let on_child = group_links("T-1", &[link(1, LinkType::Subtask, Direction::Inward, "T-9")]);
        assert_eq!(labels(&on_child), vec![("Parent issue", vec!["T-9"])]);
        let on_parent = group_links("T-9", &[link(1, LinkType::Subtask, Direction::Outward, "T-1")]);
        assert_eq!(labels(&on_parent), vec![("Sub-issues", vec!["T-1"])]);
    }

    #[test]
    fn a_dependent_lists_its_blockers_under_blocks() {
        // "T-1 depends on T-2": T-1 is outward ("Depends on"), so T-2 plays "Blocks" on T-1's page.
        let on_dependent = group_links("T-1", &[link(1, LinkType::Depends, Direction::Outward, "T-2")]);
        assert_eq!(labels(&on_dependent), vec![("Blocks", vec!["T-2"])]);
        assert_eq!(on_dependent[0].hint, "these block T-1");
        let on_blocker = group_links("T-2", &[link(1, LinkType::Depends, Direction::Inward, "T-1")]);
        assert_eq!(labels(&on_blocker), vec![("Depends on", vec!["T-1"])]);
    }

    #[test]
    fn groups_follow_the_fixed_order_and_relates_is_one_group_from_either_side() {
        let links = [
            link(1, LinkType::Relates, Direction::Inward, "T-5"),
            link(2, LinkType::Relates, Direction::Outward, "T-6"),
            link(3, LinkType::Epic, Direction::Outward, "T-7"),
            link(4, LinkType::Duplicates, Direction::Inward, "T-8"),
        ];
        assert_eq!(
            labels(&group_links("T-1", &links)),
            vec![
                ("Epic", vec!["T-7"]),
                ("Duplicates", vec!["T-8"]),
                ("relates", vec!["T-5", "T-6"]),
            ]
        );
    }

    #[test]
    fn every_group_heading_is_the_role_label_of_its_side() {
        for (ty, side, heading) in GROUPS {
            let label = ty.label(side);
            assert!(
                heading == label || heading == format!("{label}s") || heading == label.replacen("Issue", "Issues", 1),
                "{heading} vs {label}"
            );
        }
    }

    #[test]
    fn a_front_url_gets_the_remote_key_percent_encoded() {
        assert_eq!(
            front_url("https://s.example/issues/{{remoteKey}}/", "12 3/4"),
            "https://s.example/issues/12%203%2F4/"
        );
    }

    #[test]
    fn only_http_urls_become_links() {
        assert_eq!(web_url("javascript:alert(1)"), None);
        assert_eq!(web_url("https://x.example/").as_deref(), Some("https://x.example/"));
    }

    #[test]
    fn the_pager_keeps_the_filter_and_stops_at_the_ends() {
        let p = Pager::new("/queues/Q", &[("status", "open")], 1, 120);
        assert_eq!(p.pages, 3);
        assert_eq!(p.prev, None);
        assert_eq!(p.next.as_deref(), Some("/queues/Q?status=open&page=2"));
        let last = Pager::new("/queues/Q", &[("status", "")], 3, 120);
        assert_eq!(last.prev.as_deref(), Some("/queues/Q?page=2"));
        assert_eq!(last.next, None);
        assert_eq!(Pager::new("/", &[], 1, 0).pages, 1);
    }
}
