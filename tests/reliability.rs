//! The tenancy matrix (issue 8), generated from `GET /openapi.json` so that a new route cannot be missed: for every
//! operation whose `x-tether-access` is reader, member or admin, on `/v2` and `/v3`,
//! - no token (or an unknown one) gets 401;
//! - a token of organization B gets 404 for organization A's objects named in the path — by key, by id, and with
//!   B's own issue in front of A's nested object — and 403 when it names organization A in `X-Org-ID`;
//! - a reader of A gets 403 on every member and admin operation, on A's existing objects;
//! - A's own admin (and, for reader operations, A's reader) gets 200 on every GET, which shows the objects exist.
//!
//! Afterwards A's objects are all still there: none of the refused writes changed anything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{Answer, TestApp};
use reqwest::Method;
use serde_json::{Value, json};
use tether::domain::Role;

/// Organization B (A is the harness's `acme`).
const ORG_B: &str = "bravo";

/// A's objects, named the ways a path can name them.
struct Objects {
    issue_key: String,
    issue_id: String,
    queue_key: String,
    queue_id: String,
    link_id: String,
    remote_link_id: String,
    app: String,
    object_key: String,
    reader_uid: String,
    reader_login: String,
    field: String,
    event_id: String,
    token_id: String,
    /// B's own issue, to put in front of A's nested objects.
    b_issue: String,
}

/// How a path's objects are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Naming {
    /// Issue and queue keys, user login.
    Keys,
    /// Issue id, queue id, user uid.
    Ids,
    /// B's own issue, then A's nested object.
    Mixed,
}

/// The value of one path parameter, and whether it names an object of an organization (global vocabularies such as
/// issue types, statuses, link types and transitions do not).
fn param(o: &Objects, path: &str, name: &str, naming: Naming) -> Option<(String, bool)> {
    let v = |s: &String| Some((s.clone(), true));
    match name {
        "issue" => match naming {
            Naming::Keys => v(&o.issue_key),
            Naming::Ids => v(&o.issue_id),
            Naming::Mixed => Some((o.b_issue.clone(), false)),
        },
        "queue" if naming == Naming::Ids => v(&o.queue_id),
        "queue" => v(&o.queue_key),
        "user" if naming == Naming::Ids => v(&o.reader_uid),
        "user" => v(&o.reader_login),
        "link" if path.contains("/remotelinks/") => v(&o.remote_link_id),
        "link" => v(&o.link_id),
        "app" => v(&o.app),
        "key" => Some((o.object_key.clone(), false)),
        "transition" => Some(("close".into(), false)),
        "id" if path.starts_with("/issuetypes/") => Some(("bug".into(), false)),
        "id" if path.starts_with("/statuses/") => Some(("open".into(), false)),
        "id" if path.starts_with("/linktypes/") => Some(("depends".into(), false)),
        "id" if path.starts_with("/fields/") => v(&o.field),
        "id" if path.starts_with("/_outbox/") => v(&o.event_id),
        "id" if path.starts_with("/_tokens/") => v(&o.token_id),
        _ => None,
    }
}

/// The path with its parameters filled, and whether it names an object of A; `None` when this naming does not apply.
fn fill(o: &Objects, unversioned: &str, naming: Naming) -> Option<(String, bool)> {
    let mut out = String::new();
    let mut names_a = false;
    for seg in unversioned.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => {
                let (value, org_object) = param(o, unversioned, name, naming)
                    .unwrap_or_else(|| panic!("no value for {{{name}}} in {unversioned}: add it to the matrix"));
                names_a |= org_object;
                out.push_str(&value);
            }
            None => out.push_str(seg),
        }
    }
    // The mixed naming only makes sense when an object of A follows B's issue.
    if naming == Naming::Mixed && (!unversioned.starts_with("/issues/{issue}") || !names_a) {
        return None;
    }
    Some((out, names_a))
}

/// A request with an explicit token (or none) and organization header (or none).
async fn send(app: &TestApp, method: &Method, path: &str, token: Option<&str>, org: Option<&str>) -> Answer {
    let mut req = app.http.request(method.clone(), format!("{}{}", app.base, path));
    if let Some(t) = token {
        req = req.header("Authorization", format!("OAuth {t}"));
    }
    if let Some(o) = org {
        req = req.header("X-Org-ID", o);
    }
    if matches!(*method, Method::POST | Method::PATCH) {
        req = req.header("Content-Type", "application/json").body("{}");
    }
    app.raw(req).await
}

/// Asserts the status and the error envelope, with the request in the message.
fn expect(a: &Answer, status: u16, what: &str) {
    assert_eq!(a.status.as_u16(), status, "{what}: body {}", a.body);
    assert_eq!(a.body["statusCode"], json!(status), "{what}: envelope {}", a.body);
}

async fn objects(app: &TestApp, b: &TestApp) -> Objects {
    app.queue("TEN").await;
    let one = app.issue("TEN", "A's first").await;
    let two = app.issue("TEN", "A's second").await;
    let link = app
        .link(one["key"].as_str().unwrap(), "depends on", two["key"].as_str().unwrap())
        .await;
    let reg = app
        .post(
            "/v2/applications",
            json!({"id": "ru.tenancy.app", "name": "A's app", "oauthToken": "a-app-secret",
                   "frontUrl": "http://127.0.0.1:9/{{remoteKey}}", "createLinkUrl": "http://127.0.0.1:9/links"}),
        )
        .await;
    assert_eq!(reg.status, 201, "{}", reg.body);
    let remote = app
        .post(
            "/v2/issues/TEN-1/remotelinks?backlink=true",
            json!({"relationship": "relates", "key": "OBJ-1", "origin": "ru.tenancy.app"}),
        )
        .await;
    assert_eq!(remote.status, 201, "{}", remote.body);
    let field = app
        .post(
            "/v2/fields",
            json!({"id": "tenField", "name": "A's field", "schema": {"type": "string"}}),
        )
        .await;
    assert_eq!(field.status, 201, "{}", field.body);
    let events = app.get("/v2/_outbox").await.body;
    let event_id = events[0]["id"].to_string();
    let tokens = app.get("/v2/_tokens").await.body;
    let token_id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["current"] == json!(true))
        .unwrap()["id"]
        .to_string();
    let queue_id = app.get("/v2/queues/TEN").await.body["id"].to_string();
    let reader_uid = app.get("/v2/users/a-reader").await.body["uid"].to_string();
    b.queue("BQ").await;
    let b_issue = b.issue("BQ", "B's own").await["key"].as_str().unwrap().to_owned();
    Objects {
        issue_key: one["key"].as_str().unwrap().to_owned(),
        issue_id: one["id"].as_str().unwrap().to_owned(),
        queue_key: "TEN".into(),
        queue_id: queue_id.trim_matches('"').to_owned(),
        link_id: link["id"].to_string(),
        remote_link_id: remote.body["id"].to_string(),
        app: "ru.tenancy.app".into(),
        object_key: "OBJ-1".into(),
        reader_uid: reader_uid.trim_matches('"').to_owned(),
        reader_login: "a-reader".into(),
        field: "tenField".into(),
        event_id,
        token_id,
        b_issue,
    }
}

async fn tenancy_matrix(app: TestApp) {
    let reader = app.user_token(&app.org, "a-reader", Role::Reader).await;
    let b_token = app.user_token(ORG_B, "b-admin", Role::Admin).await;
    let b = app.as_user(&b_token, ORG_B);
    let o = objects(&app, &b).await;

    let doc = app.http.get(format!("{}/openapi.json", app.base)).send().await.unwrap();
    let doc: Value = doc.json().await.unwrap();
    let mut in_document = 0usize;
    let mut checked = 0usize;
    let mut requests = 0usize;
    let mut by_access: BTreeMap<String, usize> = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method_name, op) in item.as_object().unwrap() {
            let access = op["x-tether-access"].as_str().unwrap_or_default();
            if !matches!(access, "reader" | "member" | "admin") {
                continue;
            }
            in_document += 1;
            let method = Method::from_bytes(method_name.to_uppercase().as_bytes()).unwrap();
            let unversioned = path
                .strip_prefix("/v2")
                .or_else(|| path.strip_prefix("/v3"))
                .unwrap_or_else(|| panic!("{path} is tagged {access} but is not under /v2 or /v3"));
            let version = &path[..3];
            let (keyed, names_a) = fill(&o, unversioned, Naming::Keys).unwrap();
            let keyed = format!("{version}{keyed}");
            let label = |who: &str, p: &str| format!("{method} {p} as {who} ({access})");

            // No token, an unknown token: 401, whatever the path names.
            let a = send(&app, &method, &keyed, None, Some(&app.org)).await;
            expect(&a, 401, &label("no token", &keyed));
            let a = send(&app, &method, &keyed, Some("tth_unknown-token"), Some(&app.org)).await;
            expect(&a, 401, &label("an unknown token", &keyed));
            // B's token naming A's organization: 403.
            let a = send(&app, &method, &keyed, Some(&b_token), Some(&app.org)).await;
            expect(&a, 403, &label("B in A's organization", &keyed));
            requests += 3;
            // B's token in B: A's objects do not exist there, however they are named.
            if names_a {
                for naming in [Naming::Keys, Naming::Ids, Naming::Mixed] {
                    let Some((p, _)) = fill(&o, unversioned, naming) else {
                        continue;
                    };
                    let p = format!("{version}{p}");
                    let a = send(&app, &method, &p, Some(&b_token), Some(ORG_B)).await;
                    expect(&a, 404, &label("B", &p));
                    requests += 1;
                }
            }
            // A's reader: 403 on member and admin operations (the objects exist, so this is the role check).
            let a = send(&app, &method, &keyed, Some(&reader), Some(&app.org)).await;
            requests += 1;
            if access == "reader" {
                if method == Method::GET {
                    assert_eq!(a.status, 200, "{}: {}", label("A's reader", &keyed), a.body);
                }
            } else {
                expect(&a, 403, &label("A's reader", &keyed));
            }
            // A's admin reads every object named (so the 404s above are about tenancy, not typos).
            if method == Method::GET {
                let a = send(&app, &method, &keyed, Some(&app.token), Some(&app.org)).await;
                assert_eq!(a.status, 200, "{}: {}", label("A's admin", &keyed), a.body);
                requests += 1;
            }
            checked += 1;
            *by_access.entry(access.to_owned()).or_default() += 1;
        }
    }
    assert_eq!(
        checked, in_document,
        "every reader/member/admin operation of the document is checked"
    );
    assert_eq!(
        in_document,
        2 * tether::http::ROUTES.len(),
        "the document lists every route of the table on /v2 and /v3"
    );
    println!("tenancy matrix: {checked} operations ({by_access:?}), {requests} requests");

    // Nothing A owns was changed by the refused requests.
    assert_eq!(app.get("/v2/myself").await.status, 200, "A's admin token still works");
    let links = app.get(&format!("/v2/issues/{}/links", o.issue_key)).await;
    assert_eq!(links.body.as_array().unwrap().len(), 1, "{}", links.body);
    let remotes = app.get(&format!("/v2/issues/{}/remotelinks", o.issue_key)).await;
    assert_eq!(remotes.body.as_array().unwrap().len(), 1, "{}", remotes.body);
    assert_eq!(app.get("/v2/applications/ru.tenancy.app").await.status, 200);
    assert_eq!(app.get("/v2/fields/tenField").await.status, 200);
    let issue = app.get(&format!("/v2/issues/{}", o.issue_key)).await.body;
    assert_eq!(issue["status"]["key"], "open", "{issue}");
    assert_eq!(issue["version"], 1, "{issue}");
    assert_eq!(app.get("/v2/queues").await.body.as_array().unwrap().len(), 1);
    assert_eq!(b.get("/v2/queues").await.body.as_array().unwrap().len(), 1);
}

both_backends! {
    async fn tenancy_matrix_covers_every_operation_of_the_document(app) {
        tenancy_matrix(app).await;
    }
}
