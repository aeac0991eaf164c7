//! JSON shapes of the Tracker API. Every entity and nested reference carries `self` (absolute, in the request's
//! version), `id`, and `key`/`display` where it has them; absent optional fields are omitted, never `null`.

use serde_json::{Map, Value, json};

use super::ctx::Ctx;
use crate::domain::dates::format_ms;
use crate::domain::links::LinkType;
use crate::domain::{Named, Transition};
use crate::store::{CustomField, Issue, IssueBrief, LinkView, Queue, User, UserRef};

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

/// `{self, id, key, display}` of an issue.
pub fn issue_ref(ctx: &Ctx, b: &IssueBrief) -> Value {
    json!({"self": ctx.url(&format!("/issues/{}", b.key)), "id": b.id.to_string(), "key": b.key, "display": b.summary})
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
pub fn issue(ctx: &Ctx, i: &Issue) -> Value {
    let mut m = Map::new();
    m.insert("self".into(), json!(ctx.url(&format!("/issues/{}", i.key))));
    m.insert("id".into(), json!(i.id.to_string()));
    m.insert("key".into(), json!(i.key));
    m.insert("version".into(), json!(i.version));
    m.insert("summary".into(), json!(i.summary));
    if let Some(d) = &i.description {
        m.insert("description".into(), json!(d));
    }
    m.insert("type".into(), type_ref(ctx, &i.ty));
    m.insert("status".into(), status_ref(ctx, &i.status));
    if let Some(r) = &i.resolution {
        m.insert(
            "resolution".into(),
            json!({"self": ctx.url(&format!("/resolutions/{r}")), "id": r, "key": r, "display": r}),
        );
    }
    m.insert("queue".into(), queue_ref(ctx, i.queue.0, &i.queue.1, &i.queue.2));
    if let Some(a) = &i.assignee {
        m.insert("assignee".into(), user_ref(ctx, a));
    }
    if let Some(p) = &i.parent {
        m.insert("parent".into(), issue_ref(ctx, p));
    }
    m.insert("createdBy".into(), user_ref(ctx, &i.created_by));
    m.insert("updatedBy".into(), user_ref(ctx, &i.updated_by));
    m.insert("createdAt".into(), json!(format_ms(i.created_at)));
    m.insert("updatedAt".into(), json!(format_ms(i.updated_at)));
    if let Some(u) = &i.unique {
        m.insert("unique".into(), json!(u));
    }
    for (k, v) in &i.custom {
        let mut v = v.clone();
        // A user-typed field is stored as `{id, display}`; give it its `self` like every other reference.
        if let Value::Object(o) = &mut v
            && o.len() == 2
            && let (Some(Value::String(id)), true) = (o.get("id").cloned(), o.contains_key("display"))
        {
            o.insert("self".into(), json!(ctx.url(&format!("/users/{id}"))));
        }
        m.entry(k.clone()).or_insert(v);
    }
    Value::Object(m)
}

/// A link type.
pub fn link_type(ctx: &Ctx, t: LinkType) -> Value {
    json!({"self": ctx.url(&format!("/linktypes/{}", t.id())), "id": t.id(), "inward": t.inward(), "outward": t.outward()})
}

/// A link as seen from `view.this_key`; `with_object_state` adds the linked issue's `status` and `assignee`.
pub fn link(ctx: &Ctx, l: &LinkView, with_object_state: bool) -> Value {
    let mut v = json!({
        "self": ctx.url(&format!("/issues/{}/links/{}", l.this_key, l.id)),
        "id": l.id,
        "type": link_type(ctx, l.ty),
        "direction": l.direction.as_str(),
        "object": issue_ref(ctx, &l.object),
        "createdBy": user_ref(ctx, &l.created_by),
        "updatedBy": user_ref(ctx, &l.updated_by),
        "createdAt": format_ms(l.created_at),
        "updatedAt": format_ms(l.updated_at),
    });
    if with_object_state {
        v["status"] = status_ref(ctx, &l.object_status);
        if let Some(a) = &l.object_assignee {
            v["assignee"] = user_ref(ctx, a);
        }
    }
    v
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
