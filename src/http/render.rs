//! JSON shapes of the Tracker API. Every entity and nested reference carries `self` (absolute, in the request's
//! version), `id`, and `key`/`display` where it has them; absent optional fields are omitted, never `null`.
//!
//! The answers read most (an issue, a link, a list of links, a graph) are serialised from borrowed, typed views
//! ([`IssueJson`], [`LinkJson`], [`GraphJson`]) straight into the response bytes: no `serde_json::Value` tree, no
//! `String` per `self` URL or date. The profile in `docs/benchmarks.md` found the `Value` trees were 43 % of a list
//! of links. The rest build `Value`s, which is simpler where speed does not matter.

use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Value, json};

use super::ctx::Ctx;
use crate::domain::dates::Millis;
use crate::domain::links::LinkType;
use crate::domain::{Named, Transition};
use crate::store::{CustomField, Graph, GraphNode, Issue, IssueBrief, LinkView, Queue, User, UserRef};

/// `{self, id, display}` of a user.
pub fn user_ref(ctx: &Ctx, u: &UserRef) -> Value {
    json!({"self": ctx.url(&format!("/users/{}", u.uid)), "id": u.uid.to_string(), "display": u.display})
}

/// A full user.
pub fn user(ctx: &Ctx, u: &User) -> Value {
    let mut v = json!({
        "self": ctx.url(&format!("/users/{}", u.uid)),
        "uid": u.uid,
        "login": u.login,
        "display": u.display,
    });
    if let Some(e) = &u.email {
        v["email"] = json!(e);
    }
    v
}

/// An issue type or status reference (`kind` is `issuetypes` or `statuses`).
pub fn named(ctx: &Ctx, kind: &str, n: &Named) -> Value {
    json!({"self": ctx.url(&format!("/{kind}/{}", n.id)), "id": n.id.to_string(), "key": n.key, "display": n.display})
}

/// A status reference by key (unknown keys render as their key).
pub fn status_ref(ctx: &Ctx, key: &str) -> Value {
    match crate::domain::status(key) {
        Some(s) => named(ctx, "statuses", s),
        None => json!({"self": ctx.url(&format!("/statuses/{key}")), "id": key, "key": key, "display": key}),
    }
}

/// An issue type reference by key.
pub fn type_ref(ctx: &Ctx, key: &str) -> Value {
    match crate::domain::issue_type(key) {
        Some(t) => named(ctx, "issuetypes", t),
        None => json!({"self": ctx.url(&format!("/issuetypes/{key}")), "id": key, "key": key, "display": key}),
    }
}

/// A queue reference.
pub fn queue_ref(ctx: &Ctx, id: i64, key: &str, name: &str) -> Value {
    json!({"self": ctx.url(&format!("/queues/{key}")), "id": id.to_string(), "key": key, "display": name})
}

/// A full queue.
pub fn queue(ctx: &Ctx, q: &Queue) -> Value {
    let mut v = queue_ref(ctx, q.id, &q.key, &q.name);
    v["name"] = json!(q.name);
    v["defaultType"] = type_ref(ctx, &q.default_type);
    if let Some(l) = &q.lead {
        v["lead"] = user_ref(ctx, l);
    }
    v
}

/// A full issue.
pub fn issue<'a>(ctx: &'a Ctx, i: &'a Issue) -> IssueJson<'a> {
    IssueJson { ctx, i }
}

/// An issue's JSON, serialised from the borrowed issue (see the module comment). Key order follows Tracker's.
pub struct IssueJson<'a> {
    ctx: &'a Ctx,
    i: &'a Issue,
}

/// The fields an issue always or sometimes has: a custom field with one of these ids never shadows them.
const ISSUE_FIELDS: [&str; 17] = [
    "self",
    "id",
    "key",
    "version",
    "summary",
    "description",
    "type",
    "status",
    "resolution",
    "queue",
    "assignee",
    "parent",
    "createdBy",
    "updatedBy",
    "createdAt",
    "updatedAt",
    "unique",
];

impl Serialize for IssueJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (ctx, i) = (self.ctx, self.i);
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("self", &Href(ctx, "/issues/", &i.key))?;
        m.serialize_entry("id", &IdStr(i.id))?;
        m.serialize_entry("key", &i.key)?;
        m.serialize_entry("version", &i.version)?;
        m.serialize_entry("summary", &i.summary)?;
        if let Some(d) = &i.description {
            m.serialize_entry("description", d)?;
        }
        m.serialize_entry("type", &NamedJson::of_type(ctx, &i.ty))?;
        m.serialize_entry("status", &NamedJson::of_status(ctx, &i.status))?;
        if let Some(r) = &i.resolution {
            m.serialize_entry("resolution", &NamedJson::plain(ctx, "/resolutions/", r))?;
        }
        m.serialize_entry(
            "queue",
            &RefJson {
                href: Href(ctx, "/queues/", &i.queue.1),
                id: IdStr(i.queue.0),
                key: Some(&i.queue.1),
                display: &i.queue.2,
            },
        )?;
        if let Some(a) = &i.assignee {
            m.serialize_entry("assignee", &user_ref_json(ctx, a))?;
        }
        if let Some(p) = &i.parent {
            m.serialize_entry("parent", &issue_ref_json(ctx, p))?;
        }
        m.serialize_entry("createdBy", &user_ref_json(ctx, &i.created_by))?;
        m.serialize_entry("updatedBy", &user_ref_json(ctx, &i.updated_by))?;
        m.serialize_entry("createdAt", &Date(i.created_at))?;
        m.serialize_entry("updatedAt", &Date(i.updated_at))?;
        if let Some(u) = &i.unique {
            m.serialize_entry("unique", u)?;
        }
        for (k, v) in &i.custom {
            if ISSUE_FIELDS.contains(&k.as_str()) {
                continue;
            }
            // A user-typed field is stored as `{id, display}`; give it its `self` like every other reference.
            if let Value::Object(o) = v
                && o.len() == 2
                && let (Some(Value::String(id)), Some(display)) = (o.get("id"), o.get("display"))
            {
                m.serialize_entry(
                    k,
                    &UserValueJson {
                        href: Href(ctx, "/users/", id),
                        id,
                        display,
                    },
                )?;
            } else {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// A link type.
pub fn link_type(ctx: &Ctx, t: LinkType) -> Value {
    json!({"self": ctx.url(&format!("/linktypes/{}", t.id())), "id": t.id(), "inward": t.inward(), "outward": t.outward()})
}

/// A link as seen from `view.this_key`; `with_object_state` adds the linked issue's `status` and `assignee`.
pub fn link<'a>(ctx: &'a Ctx, l: &'a LinkView, with_object_state: bool) -> LinkJson<'a> {
    LinkJson {
        ctx,
        l,
        with_object_state,
    }
}

/// A link's JSON, serialised from the borrowed view (see the module comment).
pub struct LinkJson<'a> {
    ctx: &'a Ctx,
    l: &'a LinkView,
    with_object_state: bool,
}

impl Serialize for LinkJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (ctx, l) = (self.ctx, self.l);
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("self", &Href(ctx, "/issues/", LinkPath(&l.this_key, l.id)))?;
        m.serialize_entry("id", &l.id)?;
        m.serialize_entry("type", &LinkTypeJson(ctx, l.ty))?;
        m.serialize_entry("direction", l.direction.as_str())?;
        m.serialize_entry("object", &issue_ref_json(ctx, &l.object))?;
        m.serialize_entry("createdBy", &user_ref_json(ctx, &l.created_by))?;
        m.serialize_entry("updatedBy", &user_ref_json(ctx, &l.updated_by))?;
        m.serialize_entry("createdAt", &Date(l.created_at))?;
        m.serialize_entry("updatedAt", &Date(l.updated_at))?;
        if self.with_object_state {
            m.serialize_entry("status", &NamedJson::of_status(ctx, &l.object_status))?;
            if let Some(a) = &l.object_assignee {
                m.serialize_entry("assignee", &user_ref_json(ctx, a))?;
            }
        }
        m.end()
    }
}

/// The dependency graph of an issue (contract §9): `{nodes, edges, cycles}`.
pub fn graph<'a>(ctx: &'a Ctx, g: &'a Graph, cycles: &'a [Vec<String>]) -> GraphJson<'a> {
    GraphJson {
        nodes: g.nodes.iter().map(|n| GraphNodeJson(ctx, n)).collect(),
        edges: g
            .edges
            .iter()
            .map(|(from, to, t)| EdgeJson { from, to, ty: t.id() })
            .collect(),
        cycles,
    }
}

/// A graph's JSON (see the module comment).
#[derive(serde::Serialize)]
pub struct GraphJson<'a> {
    nodes: Vec<GraphNodeJson<'a>>,
    edges: Vec<EdgeJson<'a>>,
    cycles: &'a [Vec<String>],
}

/// A node: the issue's reference plus `summary`, `status` and `assignee`.
struct GraphNodeJson<'a>(&'a Ctx, &'a GraphNode);

impl Serialize for GraphNodeJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (ctx, n) = (self.0, self.1);
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("self", &Href(ctx, "/issues/", &n.issue.key))?;
        m.serialize_entry("id", &IdStr(n.issue.id))?;
        m.serialize_entry("key", &n.issue.key)?;
        m.serialize_entry("display", &n.issue.summary)?;
        m.serialize_entry("summary", &n.issue.summary)?;
        m.serialize_entry("status", &NamedJson::of_status(ctx, &n.status))?;
        if let Some(a) = &n.assignee {
            m.serialize_entry("assignee", &user_ref_json(ctx, a))?;
        }
        m.end()
    }
}

/// An edge: outward key, inward key, link type.
#[derive(serde::Serialize)]
struct EdgeJson<'a> {
    from: &'a str,
    to: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
}

// -- borrowed pieces of the typed views --------------------------------------------------------------------------

/// An absolute API URL `{base}/{version}{prefix}{tail}`, written straight into the output.
struct Href<'a, T: fmt::Display>(&'a Ctx, &'static str, T);

impl<T: fmt::Display> Serialize for Href<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!(
            "{}/{}{}{}",
            self.0.base(),
            self.0.version(),
            self.1,
            self.2
        ))
    }
}

/// `{issue key}/links/{link id}`, the tail of a link's `self`.
struct LinkPath<'a>(&'a str, i64);

impl fmt::Display for LinkPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/links/{}", self.0, self.1)
    }
}

/// A numeric id written as a JSON string, as Tracker does for references.
struct IdStr(i64);

impl Serialize for IdStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A date in Tracker's format (`2014-06-18T12:06:02.401+0000`).
struct Date(Millis);

impl Serialize for Date {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&crate::domain::dates::Formatted(self.0))
    }
}

/// `{self, id, key?, display}`: the shape of every nested reference.
#[derive(serde::Serialize)]
struct RefJson<'a, T: fmt::Display> {
    #[serde(rename = "self")]
    href: Href<'a, T>,
    id: IdStr,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    display: &'a str,
}

/// `{self, id, display}` of a user.
fn user_ref_json<'a>(ctx: &'a Ctx, u: &'a UserRef) -> RefJson<'a, i64> {
    RefJson {
        href: Href(ctx, "/users/", u.uid),
        id: IdStr(u.uid),
        key: None,
        display: &u.display,
    }
}

/// A user-typed custom field value stored as `{id, display}`, given its `self`.
#[derive(serde::Serialize)]
struct UserValueJson<'a> {
    #[serde(rename = "self")]
    href: Href<'a, &'a String>,
    id: &'a String,
    display: &'a Value,
}

/// `{self, id, key, display}` of an issue.
fn issue_ref_json<'a>(ctx: &'a Ctx, b: &'a IssueBrief) -> RefJson<'a, &'a String> {
    RefJson {
        href: Href(ctx, "/issues/", &b.key),
        id: IdStr(b.id),
        key: Some(&b.key),
        display: &b.summary,
    }
}

/// A status, issue type or resolution reference: `{self, id, key, display}`; an unknown key renders as its key.
#[derive(serde::Serialize)]
struct NamedJson<'a> {
    #[serde(rename = "self")]
    href: Href<'a, NamedId<'a>>,
    id: NamedId<'a>,
    key: &'a str,
    display: &'a str,
}

/// The id of a known status or type (a number, written as a string), or the key of an unknown one.
#[derive(Clone, Copy)]
enum NamedId<'a> {
    Num(i64),
    Key(&'a str),
}

impl fmt::Display for NamedId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamedId::Num(n) => write!(f, "{n}"),
            NamedId::Key(k) => f.write_str(k),
        }
    }
}

impl Serialize for NamedId<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'a> NamedJson<'a> {
    fn of(ctx: &'a Ctx, prefix: &'static str, known: Option<&'a Named>, key: &'a str) -> NamedJson<'a> {
        match known {
            Some(n) => {
                let id = NamedId::Num(n.id);
                NamedJson {
                    href: Href(ctx, prefix, id),
                    id,
                    key: n.key,
                    display: n.display,
                }
            }
            None => NamedJson::plain(ctx, prefix, key),
        }
    }

    fn plain(ctx: &'a Ctx, prefix: &'static str, key: &'a str) -> NamedJson<'a> {
        let id = NamedId::Key(key);
        NamedJson {
            href: Href(ctx, prefix, id),
            id,
            key,
            display: key,
        }
    }

    fn of_status(ctx: &'a Ctx, key: &'a str) -> NamedJson<'a> {
        NamedJson::of(ctx, "/statuses/", crate::domain::status(key), key)
    }

    fn of_type(ctx: &'a Ctx, key: &'a str) -> NamedJson<'a> {
        NamedJson::of(ctx, "/issuetypes/", crate::domain::issue_type(key), key)
    }
}

/// A link type: `{self, id, inward, outward}`.
struct LinkTypeJson<'a>(&'a Ctx, LinkType);

impl Serialize for LinkTypeJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (ctx, t) = (self.0, self.1);
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("self", &Href(ctx, "/linktypes/", t.id()))?;
        m.serialize_entry("id", t.id())?;
        m.serialize_entry("inward", t.inward())?;
        m.serialize_entry("outward", t.outward())?;
        m.end()
    }
}

/// A transition of an issue.
pub fn transition(ctx: &Ctx, issue_key: &str, t: &Transition) -> Value {
    json!({
        "self": ctx.url(&format!("/issues/{issue_key}/transitions/{}", t.id)),
        "id": t.id,
        "display": t.display,
        "to": status_ref(ctx, t.to),
    })
}

/// A system field.
pub fn system_field(ctx: &Ctx, id: &str, name: &str, ty: &str) -> Value {
    json!({"self": ctx.url(&format!("/fields/{id}")), "id": id, "key": id, "name": name, "schema": {"type": ty, "required": false}})
}

/// A custom field.
pub fn custom_field(ctx: &Ctx, f: &CustomField) -> Value {
    let mut schema = json!({"type": f.ty.schema_type(), "required": false});
    if let Some(items) = f.ty.schema_items() {
        schema["items"] = json!(items);
    }
    json!({"self": ctx.url(&format!("/fields/{}", f.id)), "id": f.id, "key": f.id, "name": f.name, "schema": schema})
}
