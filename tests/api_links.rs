//! Links between issues (contract §5) and link import (§6), over HTTP, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Answer, TestApp};
use serde_json::{Value, json};
use tether::domain::Role;

/// One row of the table in contract §5: (name sent from A about B, type id, A sees, outward label, inward label).
const CREATE_TABLE: [(&str, &str, &str, &str, &str); 9] = [
    ("relates", "relates", "inward", "relates", "relates"),
    ("depends on", "depends", "outward", "Depends on", "Blocks"),
    ("is dependent by", "depends", "inward", "Depends on", "Blocks"),
    ("is subtask for", "subtask", "inward", "Parent issue", "Sub-issue"),
    ("is parent task for", "subtask", "outward", "Parent issue", "Sub-issue"),
    ("duplicates", "duplicates", "outward", "Duplicates", "Duplicated by"),
    (
        "is duplicated by",
        "duplicates",
        "inward",
        "Duplicates",
        "Duplicated by",
    ),
    ("has epic", "epic", "outward", "Issue in epic", "Epic"),
    ("is epic of", "epic", "inward", "Issue in epic", "Epic"),
];

/// The two import-only rows of the table.
const IMPORT_ONLY: [(&str, &str, &str, &str, &str); 2] = [
    ("original", "clone", "outward", "Clone of", "Cloned to"),
    ("clone", "clone", "inward", "Clone of", "Cloned to"),
];

/// Which of A (the issue in the URL) and B must be epics for a relationship to be allowed.
fn epic_sides(rel: &str) -> (bool, bool) {
    match rel {
        "has epic" => (false, true),
        "is epic of" => (true, false),
        _ => (false, false),
    }
}

fn opposite(direction: &str) -> &'static str {
    match direction {
        "inward" => "outward",
        "outward" => "inward",
        other => panic!("not a direction: {other}"),
    }
}

fn key(issue: &Value) -> String {
    issue["key"].as_str().expect("issue key").to_owned()
}

fn id(issue: &Value) -> String {
    issue["id"].as_str().expect("issue id is a string").to_owned()
}

fn link_id(link: &Value) -> i64 {
    link["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("link id must be a number: {link}"))
}

/// An issue of the given type in queue `q`.
async fn typed(app: &TestApp, q: &str, summary: &str, ty: &str) -> Value {
    app.issue_with(json!({"queue": q, "summary": summary, "type": ty}))
        .await
}

/// The links of an issue (asserting 200 and a JSON array).
async fn links_of(app: &TestApp, issue: &str) -> Vec<Value> {
    let a = app.get(&format!("/v2/issues/{issue}/links")).await;
    assert_eq!(a.status, 200, "list links of {issue}: {}", a.body);
    a.body
        .as_array()
        .unwrap_or_else(|| panic!("links must be an array: {}", a.body))
        .clone()
}

async fn get_issue(app: &TestApp, issue: &str) -> Value {
    let a = app.get(&format!("/v2/issues/{issue}")).await;
    assert_eq!(a.status, 200, "get {issue}: {}", a.body);
    a.body
}

async fn post_link(app: &TestApp, from: &str, body: Value) -> Answer {
    app.post(&format!("/v2/issues/{from}/links"), body).await
}

/// Sends a link request that must be refused with 422 and write nothing; returns the error message.
async fn refused(app: &TestApp, from: &str, rel: &str, to: &Value) -> String {
    let before = app.count("links").await;
    let a = post_link(app, from, json!({"relationship": rel, "issue": to})).await;
    let msg = a.expect_error(422);
    assert_eq!(
        app.count("links").await,
        before,
        "a refused link ({from} {rel} {to}) must write nothing"
    );
    msg
}

/// Same as [`refused`] for an import.
async fn import_refused(app: &TestApp, from: &str, body: Value) -> String {
    let before = app.count("links").await;
    let a = app
        .post(&format!("/v2/issues/{from}/links/_import"), body.clone())
        .await;
    let msg = a.expect_error(422);
    assert_eq!(
        app.count("links").await,
        before,
        "a refused import ({from} {body}) must write nothing"
    );
    msg
}

/// Asserts the shape of one link as seen from `this` about `object`.
fn assert_link(
    app: &TestApp,
    version: &str,
    link: &Value,
    this: &str,
    object: &Value,
    row: (&str, &str, &str, &str, &str),
    direction: &str,
) {
    let (rel, ty, _, outward, inward) = row;
    assert_no_nulls(link, rel);
    let base = &app.base;
    let lid = link_id(link);
    assert_eq!(
        link["self"],
        json!(format!("{base}/{version}/issues/{this}/links/{lid}")),
        "{rel}: {link}"
    );
    assert_eq!(link["type"]["id"], json!(ty), "{rel}: {link}");
    assert_eq!(link["type"]["outward"], json!(outward), "{rel}: {link}");
    assert_eq!(link["type"]["inward"], json!(inward), "{rel}: {link}");
    assert_eq!(
        link["type"]["self"],
        json!(format!("{base}/{version}/linktypes/{ty}")),
        "{rel}: {link}"
    );
    assert_eq!(link["direction"], json!(direction), "{rel}, seen from {this}: {link}");
    assert_eq!(link["object"]["key"], object["key"], "{rel}: {link}");
    assert_eq!(link["object"]["id"], object["id"], "{rel}: {link}");
    assert_eq!(
        link["object"]["self"],
        json!(format!("{base}/{version}/issues/{}", key(object))),
        "{rel}: {link}"
    );
    assert_eq!(link["object"]["display"], object["summary"], "{rel}: {link}");
    for f in ["createdBy", "updatedBy"] {
        assert!(
            link[f]["self"].is_string() && link[f]["id"].is_string(),
            "{rel}: {f}: {link}"
        );
    }
    for f in ["createdAt", "updatedAt"] {
        let s = link[f].as_str().unwrap_or_else(|| panic!("{rel}: {f} missing: {link}"));
        assert!(
            tether::domain::dates::parse(s).is_some() && s.ends_with("+0000"),
            "{rel}: {f} = {s}"
        );
    }
}

/// Responses omit absent optional fields, never `null` (contract §1).
fn assert_no_nulls(v: &Value, what: &str) {
    match v {
        Value::Null => panic!("{what}: a null in a response"),
        Value::Array(a) => a.iter().for_each(|x| assert_no_nulls(x, what)),
        Value::Object(o) => o.iter().for_each(|(k, x)| assert_no_nulls(x, &format!("{what}.{k}"))),
        _ => {}
    }
}

/// The uid of a login, as the string the API renders in `id`.
async fn uid_of(app: &TestApp, login: &str) -> String {
    let a = app.get(&format!("/v2/users/{login}")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["uid"].to_string().trim_matches('"').to_owned()
}

/// An issue imported with a historical creation date (admin only).
async fn old_issue(app: &TestApp, q: &str, summary: &str, ty: &str, created_at: &str) -> Value {
    let a = app
        .post(
            "/v2/issues/_import",
            json!({"queue": q, "summary": summary, "type": ty, "createdAt": created_at, "createdBy": "admin"}),
        )
        .await;
    assert_eq!(a.status, 200, "import issue: {}", a.body);
    a.body
}

/// A link request that anyone with the right role can send concurrently.
#[derive(Clone)]
struct Poster {
    http: reqwest::Client,
    base: String,
    token: String,
    org: String,
}

impl Poster {
    fn of(app: &TestApp) -> Poster {
        Poster {
            http: app.http.clone(),
            base: app.base.clone(),
            token: app.token.clone(),
            org: app.org.clone(),
        }
    }

    /// Sends a JSON request; returns the status and the body.
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", format!("OAuth {}", self.token))
            .header("X-Org-ID", &self.org);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Posts a link and returns the status code.
    async fn link(&self, from: &str, rel: &str, to: &str) -> u16 {
        let resp = self
            .http
            .post(format!("{}/v2/issues/{from}/links", self.base))
            .header("Authorization", format!("OAuth {}", self.token))
            .header("X-Org-ID", &self.org)
            .json(&json!({"relationship": rel, "issue": to}))
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert!(
            status == 201 || status == 422,
            "a racing link must be 201 or 422, got {status}: {body}"
        );
        status
    }
}

/// Runs the given link requests at the same time; returns their status codes in order.
async fn race(app: &TestApp, requests: &[(&str, &str, &str)]) -> Vec<u16> {
    let poster = Poster::of(app);
    race_on(requests.iter().map(|r| (poster.clone(), *r)).collect()).await
}

/// Runs link requests, each through its own server handle, at the same time; returns their status codes in order.
async fn race_on(requests: Vec<(Poster, (&str, &str, &str))>) -> Vec<u16> {
    let barrier = Arc::new(tokio::sync::Barrier::new(requests.len()));
    let mut handles = Vec::new();
    for (p, (from, rel, to)) in requests {
        let b = barrier.clone();
        let (from, rel, to) = (from.to_owned(), rel.to_owned(), to.to_owned());
        handles.push(tokio::spawn(async move {
            b.wait().await;
            p.link(&from, &rel, &to).await
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

fn created(statuses: &[u16]) -> usize {
    statuses.iter().filter(|s| **s == 201).count()
}

const T0: &str = "2017-06-01T00:00:00.000+0000";
const T_CREATED: &str = "2017-08-29T12:34:41.740+0000";
const T_UPDATED: &str = "2017-09-07T11:24:31.140+0000";

both_backends! {
    // ------------------------------------------------------------------------------------------------------------
    // the relationship table

    async fn every_create_relationship_is_seen_as_the_table_says_from_both_sides(app) {
        app.queue("K").await;
        for row in CREATE_TABLE {
            let (rel, _, a_sees, _, _) = row;
            let (a_epic, b_epic) = epic_sides(rel);
            let a = typed(&app, "K", &format!("A {rel}"), if a_epic { "epic" } else { "task" }).await;
            let b = typed(&app, "K", &format!("B {rel}"), if b_epic { "epic" } else { "bug" }).await;
            let (ak, bk) = (key(&a), key(&b));

            let made = post_link(&app, &ak, json!({"relationship": rel, "issue": bk})).await;
            assert_eq!(made.status, 201, "{rel}: {}", made.body);
            assert_link(&app, "v2", &made.body, &ak, &b, row, a_sees);
            let lid = link_id(&made.body);

            let from_a = links_of(&app, &ak).await;
            assert_eq!(from_a.len(), 1, "{rel}: {from_a:?}");
            assert_eq!(link_id(&from_a[0]), lid);
            assert_link(&app, "v2", &from_a[0], &ak, &b, row, a_sees);

            let from_b = links_of(&app, &bk).await;
            assert_eq!(from_b.len(), 1, "{rel}: {from_b:?}");
            assert_eq!(link_id(&from_b[0]), lid, "one stored edge, one id from both sides");
            assert_eq!(from_b[0]["type"], from_a[0]["type"], "{rel}: the type is the same from both sides");
            assert_link(&app, "v2", &from_b[0], &bk, &a, row, opposite(a_sees));
        }
        assert_eq!(app.count("links").await, 9);
    }

    async fn relationship_names_match_case_insensitively(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        let b = app.issue("K", "b").await;
        let c = app.issue("K", "c").await;
        let l = app.link(&key(&a), "Depends On", &key(&b)).await;
        assert_eq!(l["type"]["id"], "depends");
        assert_eq!(l["direction"], "outward");
        let l = app.link(&key(&a), "IS PARENT TASK FOR", &key(&c)).await;
        assert_eq!(l["type"]["id"], "subtask");
        assert_eq!(l["direction"], "outward");
        assert_eq!(get_issue(&app, &key(&c)).await["parent"]["key"], json!(key(&a)));
    }

    async fn the_linked_issue_may_be_named_by_key_id_number_or_object(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        let ak = key(&a);
        let mut targets = Vec::new();
        for i in 0..6 {
            targets.push(app.issue("K", &format!("target {i}")).await);
        }
        let num: i64 = id(&targets[2]).parse().unwrap();
        let forms = [
            json!(key(&targets[0])),
            json!(id(&targets[1])),
            json!(num),
            json!({"key": key(&targets[3])}),
            json!({"id": id(&targets[4])}),
            json!({"id": id(&targets[5]).parse::<i64>().unwrap()}),
        ];
        for (target, form) in targets.iter().zip(forms) {
            let made = post_link(&app, &ak, json!({"relationship": "relates", "issue": form})).await;
            assert_eq!(made.status, 201, "issue as {form}: {}", made.body);
            assert_eq!(made.body["object"]["key"], target["key"], "issue as {form}");
        }
        // The issue in the path may be an id too.
        let t = app.issue("K", "by path id").await;
        let made = post_link(&app, &id(&t), json!({"relationship": "relates", "issue": {"key": "K-1"}})).await;
        assert_eq!(made.status, 201, "{}", made.body);
        assert_eq!(made.body["self"], json!(format!("{}/v2/issues/{}/links/{}", app.base, key(&t), link_id(&made.body))));
        assert_eq!(links_of(&app, &ak).await.len(), 7);
    }

    async fn links_are_served_under_v3_with_v3_self_urls(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        let b = app.issue("K", "b").await;
        let (ak, bk) = (key(&a), key(&b));
        let made = app.post(&format!("/v3/issues/{ak}/links"), json!({"relationship": "duplicates", "issue": bk})).await;
        assert_eq!(made.status, 201, "{}", made.body);
        let row = CREATE_TABLE[5];
        assert_link(&app, "v3", &made.body, &ak, &b, row, "outward");
        let lid = link_id(&made.body);
        let list = app.get(&format!("/v3/issues/{bk}/links")).await;
        assert_eq!(list.status, 200, "{}", list.body);
        assert_link(&app, "v3", &list.body[0], &bk, &a, row, "inward");
        assert!(list.body[0]["status"]["self"].as_str().unwrap().starts_with(&format!("{}/v3/", app.base)));
        let one = app.get(&format!("/v3/issues/{ak}/links/{lid}")).await;
        assert_eq!(one.status, 200, "{}", one.body);
        assert_link(&app, "v3", &one.body, &ak, &b, row, "outward");
        // The trailing-slash form the Python client uses.
        let slash = app.get(&format!("/v2/issues/{ak}/links/")).await;
        assert_eq!(slash.status, 200, "{}", slash.body);
        assert_eq!(slash.body.as_array().map(Vec::len), Some(1));
        let del = app.delete(&format!("/v3/issues/{bk}/links/{lid}")).await;
        assert_eq!(del.status, 204, "{}", del.body);
        assert!(links_of(&app, &ak).await.is_empty());
    }

    async fn list_entries_carry_the_linked_issues_status_and_assignee(app) {
        app.queue("K").await;
        let admin_uid = uid_of(&app, "admin").await;
        let a = app.issue("K", "a").await;
        let assigned = app.issue_with(json!({"queue": "K", "summary": "assigned", "assignee": "admin"})).await;
        let free = app.issue("K", "unassigned").await;
        let ak = key(&a);
        // The created link's answer carries them too (read back after the write: on PostgreSQL by the link
        // writer's own statement, not the list's).
        let created = app.link(&ak, "relates", &key(&assigned)).await;
        assert_eq!(created["assignee"]["id"], json!(admin_uid), "{created}");
        assert!(created["assignee"]["display"].is_string(), "{created}");
        assert_eq!(created["status"]["key"], "open", "{created}");
        assert_eq!(created["object"]["key"], assigned["key"], "{created}");
        let created = app.link(&ak, "depends on", &key(&free)).await;
        assert!(created.get("assignee").is_none(), "{created}");
        assert_eq!(created["object"]["key"], free["key"], "{created}");
        let closed = app.post(&format!("/v2/issues/{}/transitions/close/_execute", key(&free)), json!({})).await;
        assert_eq!(closed.status, 200, "{}", closed.body);

        let list = links_of(&app, &ak).await;
        assert_eq!(list.len(), 2);
        let to_assigned = list.iter().find(|l| l["object"]["key"] == assigned["key"]).expect("link to the assigned issue");
        let to_free = list.iter().find(|l| l["object"]["key"] == free["key"]).expect("link to the unassigned issue");
        assert_eq!(to_assigned["status"]["key"], "open", "{to_assigned}");
        assert!(to_assigned["status"]["self"].is_string() && to_assigned["status"]["id"].is_string(), "{to_assigned}");
        assert_eq!(to_assigned["assignee"]["id"], json!(admin_uid), "{to_assigned}");
        assert_eq!(to_assigned["assignee"]["self"], json!(format!("{}/v2/users/{admin_uid}", app.base)));
        assert!(to_assigned["assignee"]["display"].is_string(), "{to_assigned}");
        assert_eq!(to_free["status"]["key"], "closed", "the linked issue's current status: {to_free}");
        assert!(to_free.get("assignee").is_none(), "assignee is omitted when unassigned, never null: {to_free}");

        // From the other side, the object is A: its status, and no assignee.
        let back = links_of(&app, &key(&assigned)).await;
        assert_eq!(back[0]["status"]["key"], "open");
        assert!(back[0].get("assignee").is_none(), "{}", back[0]);
        // GET one link carries them as well.
        let one = app.get(&format!("/v2/issues/{ak}/links/{}", link_id(to_assigned))).await;
        assert_eq!(one.body["assignee"]["id"], json!(admin_uid), "{}", one.body);
        assert_eq!(one.body["status"]["key"], "open", "{}", one.body);
    }

    async fn the_create_answer_carries_the_linked_issues_status_and_assignee(app) {
        app.queue("K").await;
        let admin_uid = uid_of(&app, "admin").await;
        let a = app.issue("K", "a").await;
        let b = app.issue_with(json!({"queue": "K", "summary": "assigned", "assignee": "admin"})).await;
        let made = app.link(&key(&a), "relates", &key(&b)).await;
        assert_eq!(made["status"]["key"], "open", "{made}");
        assert_eq!(made["assignee"]["id"], json!(admin_uid), "{made}");
        let listed = links_of(&app, &key(&a)).await;
        assert_eq!(made, listed[0], "the create answer and the list entry are the same JSON");
    }

    async fn the_links_of_an_issue_are_paginated_when_the_request_gives_per_page(app) {
        app.queue("K").await;
        let a = key(&app.issue("K", "a").await);
        let mut ids = Vec::new();
        for i in 0..5 {
            let b = key(&app.issue("K", &format!("b{i}")).await);
            ids.push(link_id(&app.link(&a, "relates", &b).await));
        }
        // Without perPage: whole, however many.
        assert_eq!(links_of(&app, &a).await.len(), 5);
        let first = app.get(&format!("/v2/issues/{a}/links?perPage=2")).await;
        assert_eq!(first.status, 200, "{}", first.body);
        assert_eq!(first.body.as_array().map(Vec::len), Some(2), "{}", first.body);
        assert_eq!(first.header("X-Total-Count"), Some("5"));
        assert_eq!(first.header("X-Total-Pages"), Some("3"));
        assert!(first.header("Link").is_some_and(|l| l.contains("rel=\"next\"")), "{:?}", first.headers);
        let last = app.get(&format!("/v2/issues/{a}/links?perPage=2&page=3")).await;
        assert_eq!(last.body.as_array().map(Vec::len), Some(1), "{}", last.body);
        assert!(last.header("Link").is_none_or(|l| !l.contains("rel=\"next\"")));
        let mut seen: Vec<i64> = Vec::new();
        for page in 1..=3 {
            let a = app.get(&format!("/v2/issues/{a}/links?perPage=2&page={page}")).await;
            seen.extend(a.body.as_array().unwrap().iter().map(link_id));
        }
        assert_eq!(seen, ids, "pages cover every link once, in a stable order");
    }

    async fn an_unknown_target_is_reported_before_a_bad_relationship(app) {
        app.queue("K").await;
        let a = key(&app.issue("K", "a").await);
        post_link(&app, &a, json!({"relationship": "blocks", "issue": "K-99"})).await.expect_error(404);
        post_link(&app, &a, json!({"relationship": 5, "issue": "K-99"})).await.expect_error(404);
    }

    async fn one_link_can_be_read_from_either_side_and_not_from_a_third_issue(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        let b = app.issue("K", "b").await;
        let c = app.issue("K", "c").await;
        let (ak, bk) = (key(&a), key(&b));
        let lid = link_id(&app.link(&ak, "is subtask for", &bk).await);
        let from_a = app.get(&format!("/v2/issues/{ak}/links/{lid}")).await;
        assert_eq!(from_a.status, 200, "{}", from_a.body);
        assert_link(&app, "v2", &from_a.body, &ak, &b, CREATE_TABLE[3], "inward");
        let from_b = app.get(&format!("/v2/issues/{}/links/{lid}", id(&b))).await;
        assert_eq!(from_b.status, 200, "{}", from_b.body);
        assert_link(&app, "v2", &from_b.body, &bk, &a, CREATE_TABLE[3], "outward");
        app.get(&format!("/v2/issues/{}/links/{lid}", key(&c))).await.expect_error(404);
        app.get(&format!("/v2/issues/{ak}/links/{}", lid + 1000)).await.expect_error(404);
        app.get(&format!("/v2/issues/{ak}/links/abc")).await.expect_error(404);
        app.get(&format!("/v2/issues/K-99/links/{lid}")).await.expect_error(404);
        app.get("/v2/issues/K-99/links").await.expect_error(404);
    }

    async fn a_link_deleted_from_either_side_is_gone_from_both(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        let b = app.issue("K", "b").await;
        let c = app.issue("K", "c").await;
        let d = app.issue("K", "d").await;
        let ab = link_id(&app.link(&key(&a), "depends on", &key(&b)).await);
        let cd = link_id(&app.link(&key(&c), "is parent task for", &key(&d)).await);
        assert_eq!(app.count("links").await, 2);

        // Not from an unrelated issue.
        app.delete(&format!("/v2/issues/{}/links/{ab}", key(&c))).await.expect_error(404);
        assert_eq!(app.count("links").await, 2);

        let del = app.delete(&format!("/v2/issues/{}/links/{ab}", key(&a))).await;
        assert_eq!(del.status, 204, "{}", del.body);
        assert_eq!(del.body, Value::Null, "204 has an empty body");
        let del = app.delete(&format!("/v2/issues/{}/links/{cd}", key(&d))).await;
        assert_eq!(del.status, 204, "{}", del.body);
        for i in [&a, &b, &c, &d] {
            assert!(links_of(&app, &key(i)).await.is_empty(), "{} still has links", key(i));
        }
        assert_eq!(app.count("links").await, 0);
        assert!(get_issue(&app, &key(&d)).await.get("parent").is_none(), "the parent is gone with the link");
        app.get(&format!("/v2/issues/{}/links/{ab}", key(&b))).await.expect_error(404);
        // Again, from either side: 404.
        app.delete(&format!("/v2/issues/{}/links/{ab}", key(&a))).await.expect_error(404);
        app.delete(&format!("/v2/issues/{}/links/{ab}", key(&b))).await.expect_error(404);
        app.delete(&format!("/v2/issues/{}/links/{cd}", key(&c))).await.expect_error(404);
        // The pair may be linked again, now the other way.
        app.link(&key(&b), "depends on", &key(&a)).await;
    }

    async fn link_types_are_listed_and_readable_one_by_one(app) {
        let a = app.get("/v2/linktypes").await;
        assert_eq!(a.status, 200, "{}", a.body);
        let list = a.body.as_array().expect("array");
        let mut expected: Vec<(&str, &str, &str)> = CREATE_TABLE.iter().chain(IMPORT_ONLY.iter()).map(|r| (r.1, r.3, r.4)).collect();
        expected.dedup();
        assert_eq!(list.len(), 6, "{}", a.body);
        for (ty, outward, inward) in &expected {
            let t = list.iter().find(|t| t["id"] == json!(ty)).unwrap_or_else(|| panic!("link type {ty} missing: {}", a.body));
            assert_eq!(t["outward"], json!(outward), "{t}");
            assert_eq!(t["inward"], json!(inward), "{t}");
            assert_eq!(t["self"], json!(format!("{}/v2/linktypes/{ty}", app.base)), "{t}");
        }
        let one = app.get("/v2/linktypes/depends").await;
        assert_eq!(one.status, 200, "{}", one.body);
        assert_eq!(
            one.body,
            json!({"self": format!("{}/v2/linktypes/depends", app.base), "id": "depends", "inward": "Blocks", "outward": "Depends on"})
        );
        let v3 = app.get("/v3/linktypes/epic").await;
        assert_eq!(v3.body["self"], json!(format!("{}/v3/linktypes/epic", app.base)), "{}", v3.body);
        assert_eq!(v3.body["inward"], "Epic");
        app.get("/v2/linktypes/blocks").await.expect_error(404);
    }

    // ------------------------------------------------------------------------------------------------------------
    // rules: 422 with nothing written

    async fn a_second_link_between_the_same_pair_is_refused_whatever_its_direction_or_type(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        let b = app.issue("K", "b").await;
        let (ak, bk) = (key(&a), key(&b));
        app.link(&ak, "relates", &bk).await;
        for (from, rel, to) in [
            (&ak, "relates", &bk),
            (&bk, "relates", &ak),
            (&ak, "depends on", &bk),
            (&bk, "depends on", &ak),
            (&ak, "is dependent by", &bk),
            (&ak, "is subtask for", &bk),
            (&bk, "is parent task for", &ak),
            (&ak, "duplicates", &bk),
            (&bk, "is duplicated by", &ak),
        ] {
            let msg = refused(&app, from, rel, &json!(to)).await;
            assert_eq!(msg, format!("Issues {from} and {to} are already linked."), "{from} {rel} {to}");
        }
        // By id, too.
        refused(&app, &id(&b), "duplicates", &json!(id(&a))).await;
        assert_eq!(links_of(&app, &ak).await.len(), 1);
    }

    async fn an_issue_cannot_be_linked_to_itself(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        for rel in ["relates", "depends on", "is subtask for", "duplicates"] {
            let msg = refused(&app, &key(&a), rel, &json!(key(&a))).await;
            assert!(msg.contains(&key(&a)), "{msg}");
        }
        refused(&app, &key(&a), "relates", &json!(id(&a))).await;
        refused(&app, &id(&a), "relates", &json!({"key": key(&a)})).await;
    }

    async fn an_unknown_relationship_is_refused_with_the_valid_names(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        let b = app.issue("K", "b").await;
        for bad in ["blocks", "depends", "is epic", ""] {
            let before = app.count("links").await;
            let ans = post_link(&app, &key(&a), json!({"relationship": bad, "issue": key(&b)})).await;
            let msg = ans.expect_error(422);
            assert!(ans.body["errors"].get("relationship").is_some(), "{}", ans.body);
            if !bad.is_empty() {
                for (name, ..) in CREATE_TABLE {
                    assert!(msg.contains(name), "the message lists '{name}': {msg}");
                }
            }
            assert_eq!(app.count("links").await, before);
        }
    }

    async fn clone_and_original_can_only_be_imported(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        let b = app.issue("K", "b").await;
        for rel in ["clone", "original", "Clone"] {
            let ans = post_link(&app, &key(&a), json!({"relationship": rel, "issue": key(&b)})).await;
            ans.expect_error(422);
            assert!(ans.body["errors"].get("relationship").is_some(), "{}", ans.body);
        }
        assert_eq!(app.count("links").await, 0);
    }

    async fn the_epic_side_must_be_an_epic(app) {
        app.queue("K").await;
        let task = app.issue("K", "task").await;
        let other = app.issue("K", "another task").await;
        let epic = typed(&app, "K", "epic", "epic").await;
        // B must be the epic for "has epic", A for "is epic of".
        refused(&app, &key(&task), "has epic", &json!(key(&other))).await;
        refused(&app, &key(&task), "is epic of", &json!(key(&other))).await;
        refused(&app, &key(&task), "is epic of", &json!(key(&epic))).await;
        refused(&app, &key(&epic), "has epic", &json!(key(&task))).await;
        // The right way round works.
        let l = app.link(&key(&epic), "is epic of", &key(&task)).await;
        assert_eq!(l["direction"], "inward");
    }

    async fn an_epic_cannot_be_in_an_epic(app) {
        app.queue("K").await;
        let e1 = typed(&app, "K", "epic 1", "epic").await;
        let e2 = typed(&app, "K", "epic 2", "epic").await;
        refused(&app, &key(&e1), "has epic", &json!(key(&e2))).await;
        refused(&app, &key(&e2), "is epic of", &json!(key(&e1))).await;
    }

    async fn an_issue_has_at_most_one_epic(app) {
        app.queue("K").await;
        let t = app.issue("K", "task").await;
        let e1 = typed(&app, "K", "epic 1", "epic").await;
        let e2 = typed(&app, "K", "epic 2", "epic").await;
        app.link(&key(&t), "has epic", &key(&e1)).await;
        let msg = refused(&app, &key(&t), "has epic", &json!(key(&e2))).await;
        assert!(msg.contains(&key(&e1)), "the message names the current epic: {msg}");
        refused(&app, &key(&e2), "is epic of", &json!(key(&t))).await;
        // An epic holds many issues.
        let t2 = app.issue("K", "task 2").await;
        app.link(&key(&e1), "is epic of", &key(&t2)).await;
    }

    async fn an_epic_cannot_be_a_sub_issue(app) {
        app.queue("K").await;
        let p = app.issue("K", "parent").await;
        let e = typed(&app, "K", "epic", "epic").await;
        refused(&app, &key(&e), "is subtask for", &json!(key(&p))).await;
        refused(&app, &key(&p), "is parent task for", &json!(key(&e))).await;
        // Nor through `parent` on issue create: 422, and neither the issue nor a link is written.
        let issues = app.count("issues").await;
        let ans = app.post("/v2/issues", json!({"queue": "K", "summary": "epic child", "type": "epic", "parent": key(&p)})).await;
        ans.expect_error(422);
        assert_eq!(app.count("issues").await, issues);
        assert_eq!(app.count("links").await, 0);
        // The failed create used no number: the next issue gets the next key.
        let next = app.issue("K", "next").await;
        assert_eq!(key(&next), "K-3");
    }

    async fn an_issue_has_at_most_one_parent(app) {
        app.queue("K").await;
        let p1 = app.issue("K", "parent 1").await;
        let p2 = app.issue("K", "parent 2").await;
        let c = app.issue("K", "child").await;
        app.link(&key(&c), "is subtask for", &key(&p1)).await;
        let msg = refused(&app, &key(&c), "is subtask for", &json!(key(&p2))).await;
        assert!(msg.contains(&key(&p1)), "the message names the current parent: {msg}");
        refused(&app, &key(&p2), "is parent task for", &json!(key(&c))).await;
        // A child created with `parent` has its parent already.
        let c2 = app.issue_with(json!({"queue": "K", "summary": "child 2", "parent": key(&p1)})).await;
        assert_eq!(c2["parent"]["key"], json!(key(&p1)));
        refused(&app, &key(&c2), "is subtask for", &json!(key(&p2))).await;
        refused(&app, &key(&p2), "is parent task for", &json!(key(&c2))).await;
        // A parent has many children.
        app.link(&key(&p2), "is parent task for", &key(&app.issue("K", "child 3").await)).await;
        assert_eq!(get_issue(&app, &key(&c)).await["parent"]["key"], json!(key(&p1)));
    }

    async fn the_parent_chain_cannot_make_a_cycle(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        let b = app.issue("K", "b").await;
        let c = app.issue("K", "c").await;
        app.link(&key(&a), "is parent task for", &key(&b)).await;
        app.link(&key(&b), "is parent task for", &key(&c)).await;
        refused(&app, &key(&c), "is parent task for", &json!(key(&a))).await;
        refused(&app, &key(&a), "is subtask for", &json!(key(&c))).await;
        assert!(get_issue(&app, &key(&a)).await.get("parent").is_none());
        assert_eq!(app.count("links").await, 2);
    }

    async fn a_depends_cycle_is_refused_at_any_depth(app) {
        app.queue("K").await;
        let mut k = Vec::new();
        for i in 0..5 {
            k.push(key(&app.issue("K", &format!("n{i}")).await));
        }
        // Depth 1: the reverse of an existing edge.
        app.link(&k[0], "depends on", &k[1]).await;
        refused(&app, &k[1], "depends on", &json!(k[0])).await;
        refused(&app, &k[0], "is dependent by", &json!(k[1])).await;
        // Depth 3: 0 → 1 → 2 → 3, then 3 → 0 in both spellings.
        app.link(&k[1], "depends on", &k[2]).await;
        app.link(&k[3], "is dependent by", &k[2]).await; // 2 depends on 3
        let msg = refused(&app, &k[3], "depends on", &json!(k[0])).await;
        assert!(msg.to_lowercase().contains("cycle"), "{msg}");
        refused(&app, &k[0], "is dependent by", &json!(k[3])).await;
        refused(&app, &k[2], "depends on", &json!(k[0])).await;
        // Not a cycle: a shortcut in the same direction, and a new issue on either end.
        app.link(&k[0], "depends on", &k[3]).await;
        app.link(&k[4], "depends on", &k[0]).await;
        refused(&app, &k[3], "depends on", &json!(k[4])).await;
        // Other types do not count as dependencies.
        let x = key(&app.issue("K", "x").await);
        app.link(&k[3], "relates", &x).await;
        app.link(&x, "depends on", &k[1]).await;
    }

    async fn an_unknown_or_foreign_target_issue_is_not_found(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        let bob = app.user_token("other", "bob", Role::Admin).await;
        let other = app.as_user(&bob, "other");
        other.queue("OTH").await;
        let foreign = other.issue("OTH", "elsewhere").await;
        let ak = key(&a);
        for target in [json!("K-99"), json!("999999999"), json!(999_999_999), json!({"key": "NOPE-1"}), json!(key(&foreign)), json!(id(&foreign)), json!({"id": id(&foreign)})] {
            let ans = post_link(&app, &ak, json!({"relationship": "relates", "issue": target})).await;
            ans.expect_error(404);
        }
        // Import too.
        let ans = app.post(&format!("/v2/issues/{ak}/links/_import"), json!({"relationship": "relates", "issue": id(&foreign), "createdAt": T_CREATED, "createdBy": "admin"})).await;
        ans.expect_error(404);
        // And the foreign issue in the path.
        post_link(&app, &id(&foreign), json!({"relationship": "relates", "issue": ak})).await.expect_error(404);
        app.get(&format!("/v2/issues/{}/links", id(&foreign))).await.expect_error(404);
        assert_eq!(app.count("links").await, 0);
        assert!(links_of(&other, &key(&foreign)).await.is_empty());
    }

    async fn a_reader_can_list_links_but_not_create_import_or_delete_them(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        let b = app.issue("K", "b").await;
        let c = app.issue("K", "c").await;
        let lid = link_id(&app.link(&key(&a), "relates", &key(&b)).await);
        let token = app.user_token("acme", "rita", Role::Reader).await;
        let reader = app.as_user(&token, "acme");
        post_link(&reader, &key(&a), json!({"relationship": "relates", "issue": key(&c)})).await.expect_error(403);
        reader
            .post(&format!("/v2/issues/{}/links/_import", key(&a)), json!({"relationship": "relates", "issue": key(&c), "createdAt": T_CREATED, "createdBy": "admin"}))
            .await
            .expect_error(403);
        reader.delete(&format!("/v2/issues/{}/links/{lid}", key(&a))).await.expect_error(403);
        assert_eq!(app.count("links").await, 1);
        assert_eq!(links_of(&reader, &key(&b)).await.len(), 1);
        assert_eq!(reader.get(&format!("/v2/issues/{}/links/{lid}", key(&b))).await.status, 200);
        // A member may.
        let token = app.user_token("acme", "max", Role::Member).await;
        let member = app.as_user(&token, "acme");
        let made = member.link(&key(&a), "relates", &key(&c)).await;
        assert_eq!(made["createdBy"]["id"], json!(uid_of(&app, "max").await));
        let del = member.delete(&format!("/v2/issues/{}/links/{lid}", key(&b))).await;
        assert_eq!(del.status, 204);
    }

    async fn a_missing_relationship_or_issue_is_unprocessable(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        let b = app.issue("K", "b").await;
        for (body, field) in [
            (json!({"issue": key(&b)}), "relationship"),
            (json!({"relationship": null, "issue": key(&b)}), "relationship"),
            (json!({"relationship": "relates"}), "issue"),
            (json!({"relationship": "relates", "issue": null}), "issue"),
        ] {
            let ans = post_link(&app, &key(&a), body.clone()).await;
            ans.expect_error(422);
            assert!(ans.body["errors"].get(field).is_some(), "{body}: {}", ans.body);
        }
        post_link(&app, &key(&a), json!({})).await.expect_error(422);
        // Malformed JSON and wrong types are 400.
        post_link(&app, &key(&a), json!({"relationship": 5, "issue": key(&b)})).await.expect_error(400);
        post_link(&app, &key(&a), json!({"relationship": "relates", "issue": true})).await.expect_error(400);
        assert_eq!(app.count("links").await, 0);
    }

    async fn link_changes_bump_both_issues_updated_at_but_not_their_version(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        let b = app.issue("K", "b").await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let lid = link_id(&app.link(&key(&a), "depends on", &key(&b)).await);
        let (a1, b1) = (get_issue(&app, &key(&a)).await, get_issue(&app, &key(&b)).await);
        for (before, after) in [(&a, &a1), (&b, &b1)] {
            assert!(after["updatedAt"].as_str() > before["updatedAt"].as_str(), "create bumps updatedAt: {before} → {after}");
            assert_eq!(after["version"], before["version"], "a link is not an edit of the issue");
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(app.delete(&format!("/v2/issues/{}/links/{lid}", key(&b))).await.status, 204);
        let (a2, b2) = (get_issue(&app, &key(&a)).await, get_issue(&app, &key(&b)).await);
        for (before, after) in [(&a1, &a2), (&b1, &b2)] {
            assert!(after["updatedAt"].as_str() > before["updatedAt"].as_str(), "delete bumps updatedAt: {before} → {after}");
            assert_eq!(after["version"], before["version"]);
        }
        // A refused link touches nothing.
        tokio::time::sleep(Duration::from_millis(30)).await;
        refused(&app, &key(&a), "relates", &json!(key(&a))).await;
        assert_eq!(get_issue(&app, &key(&a)).await["updatedAt"], a2["updatedAt"]);
    }

    // ------------------------------------------------------------------------------------------------------------
    // concurrency

    async fn thirty_two_identical_concurrent_creates_store_one_link(app) {
        app.queue("K").await;
        for rel in ["relates", "depends on"] {
            let a = key(&app.issue("K", "a").await);
            let b = key(&app.issue("K", "b").await);
            let reqs: Vec<(&str, &str, &str)> = (0..32).map(|_| (a.as_str(), rel, b.as_str())).collect();
            let statuses = race(&app, &reqs).await;
            assert_eq!(created(&statuses), 1, "{rel}: exactly one of 32 wins: {statuses:?}");
            assert_eq!(statuses.iter().filter(|s| **s == 422).count(), 31, "{statuses:?}");
            assert_eq!(links_of(&app, &a).await.len(), 1);
            assert_eq!(links_of(&app, &b).await.len(), 1);
        }
        assert_eq!(app.count("links").await, 2);
    }

    async fn racing_links_between_one_pair_in_opposite_directions_leave_one(app) {
        app.queue("K").await;
        for round in 0..20 {
            let a = key(&app.issue("K", &format!("a{round}")).await);
            let b = key(&app.issue("K", &format!("b{round}")).await);
            let statuses = race(&app, &[(a.as_str(), "depends on", b.as_str()), (b.as_str(), "depends on", a.as_str())]).await;
            assert_eq!(created(&statuses), 1, "round {round}: {statuses:?}");
            assert_eq!(links_of(&app, &a).await.len(), 1, "round {round}");
        }
        // Different types on one pair, the same way.
        for round in 0..10 {
            let a = key(&app.issue("K", &format!("c{round}")).await);
            let b = key(&app.issue("K", &format!("d{round}")).await);
            let statuses = race(&app, &[(a.as_str(), "relates", b.as_str()), (b.as_str(), "is subtask for", a.as_str()), (a.as_str(), "duplicates", b.as_str())]).await;
            assert_eq!(created(&statuses), 1, "round {round}: {statuses:?}");
        }
        assert_eq!(app.count("links").await, 30);
    }

    async fn racing_links_cannot_close_a_depends_cycle_through_four_issues(app) {
        app.queue("K").await;
        for round in 0..12 {
            let mut k = Vec::new();
            for n in ["a", "b", "c", "d"] {
                k.push(key(&app.issue("K", &format!("{n}{round}")).await));
            }
            app.link(&k[0], "depends on", &k[1]).await;
            app.link(&k[2], "depends on", &k[3]).await;
            // b → c and d → a together would make a → b → c → d → a.
            let statuses = race(&app, &[(k[1].as_str(), "depends on", k[2].as_str()), (k[3].as_str(), "depends on", k[0].as_str())]).await;
            assert_eq!(created(&statuses), 1, "round {round}: exactly one of the two closing links: {statuses:?}");
        }
        assert_eq!(app.count("links").await, 36);
    }

    async fn racing_links_cannot_close_a_parent_cycle(app) {
        app.queue("K").await;
        for round in 0..12 {
            let mut k = Vec::new();
            for n in ["a", "b", "c"] {
                k.push(key(&app.issue("K", &format!("{n}{round}")).await));
            }
            app.link(&k[0], "is parent task for", &k[1]).await;
            // b parent of c and c parent of a together would make a → b → c → a.
            let statuses = race(&app, &[(k[1].as_str(), "is parent task for", k[2].as_str()), (k[0].as_str(), "is subtask for", k[2].as_str())]).await;
            assert_eq!(created(&statuses), 1, "round {round}: {statuses:?}");
        }
        assert_eq!(app.count("links").await, 24);
    }

    async fn racing_parents_leave_a_child_with_one_parent(app) {
        app.queue("K").await;
        for round in 0..12 {
            let c = key(&app.issue("K", &format!("child {round}")).await);
            let p1 = key(&app.issue("K", &format!("p1 {round}")).await);
            let p2 = key(&app.issue("K", &format!("p2 {round}")).await);
            let statuses = race(&app, &[(c.as_str(), "is subtask for", p1.as_str()), (p2.as_str(), "is parent task for", c.as_str()), (c.as_str(), "is subtask for", p2.as_str())]).await;
            assert_eq!(created(&statuses), 1, "round {round}: {statuses:?}");
            let parent = get_issue(&app, &c).await["parent"]["key"].clone();
            assert!(parent == json!(p1) || parent == json!(p2), "round {round}: parent {parent}");
            assert_eq!(links_of(&app, &c).await.len(), 1);
        }
        // One epic per issue, the same way.
        for round in 0..6 {
            let t = key(&app.issue("K", &format!("task {round}")).await);
            let e1 = key(&typed(&app, "K", "e1", "epic").await);
            let e2 = key(&typed(&app, "K", "e2", "epic").await);
            let statuses = race(&app, &[(t.as_str(), "has epic", e1.as_str()), (e2.as_str(), "is epic of", t.as_str())]).await;
            assert_eq!(created(&statuses), 1, "round {round}: {statuses:?}");
        }
    }

    // ------------------------------------------------------------------------------------------------------------
    // import

    async fn every_relationship_can_be_imported_with_its_history(app) {
        app.queue("K").await;
        let admin = uid_of(&app, "admin").await;
        let token = app.user_token("acme", "historian", Role::Member).await;
        let historian = uid_of(&app, "historian").await;
        let hist: i64 = historian.parse().unwrap();
        for (n, row) in CREATE_TABLE.iter().chain(IMPORT_ONLY.iter()).enumerate() {
            let (rel, _, a_sees, _, _) = *row;
            let (a_epic, b_epic) = epic_sides(rel);
            let a = old_issue(&app, "K", &format!("A {rel}"), if a_epic { "epic" } else { "task" }, T0).await;
            let b = old_issue(&app, "K", &format!("B {rel}"), if b_epic { "epic" } else { "task" }, T0).await;
            let (ak, bk) = (key(&a), key(&b));
            // createdBy as a login, then as a uid; updatedBy the other way round.
            let (created_by, updated_by) = if n % 2 == 0 { (json!("historian"), json!(admin.clone())) } else { (json!(hist), json!("admin")) };
            let version = if n % 3 == 0 { "v3" } else { "v2" };
            let ans = app
                .post(
                    &format!("/{version}/issues/{ak}/links/_import"),
                    json!({"relationship": rel, "issue": bk, "createdAt": T_CREATED, "createdBy": created_by, "updatedAt": T_UPDATED, "updatedBy": updated_by}),
                )
                .await;
            assert_eq!(ans.status, 200, "import {rel}: {}", ans.body);
            let l = &ans.body;
            assert_link(&app, version, l, &ak, &b, *row, a_sees);
            assert_eq!(l["createdAt"], T_CREATED, "{l}");
            assert_eq!(l["updatedAt"], T_UPDATED, "{l}");
            assert_eq!(l["createdBy"]["id"], json!(historian), "{l}");
            assert_eq!(l["updatedBy"]["id"], json!(admin), "{l}");
            assert_eq!(l["status"]["key"], "open", "the import answer carries the linked issue's status: {l}");
            let back = links_of(&app, &bk).await;
            assert_eq!(back.len(), 1);
            assert_eq!(link_id(&back[0]), link_id(l));
            assert_link(&app, "v2", &back[0], &bk, &a, *row, opposite(a_sees));
            assert_eq!(back[0]["createdAt"], T_CREATED);
            assert_eq!(back[0]["updatedAt"], T_UPDATED);
            assert_eq!(back[0]["createdBy"]["id"], json!(historian));
        }
        // Without updatedAt/updatedBy, they equal createdAt/createdBy; and a member may import.
        let member = app.as_user(&token, "acme");
        let a = old_issue(&app, "K", "a", "task", T0).await;
        let b = old_issue(&app, "K", "b", "task", T0).await;
        let ans = member.post(&format!("/v2/issues/{}/links/_import", key(&a)), json!({"relationship": "Relates", "issue": key(&b), "createdAt": T_CREATED, "createdBy": "admin"})).await;
        assert_eq!(ans.status, 200, "{}", ans.body);
        assert_eq!(ans.body["updatedAt"], T_CREATED);
        assert_eq!(ans.body["updatedBy"]["id"], json!(admin));
        assert_eq!(app.count("links").await, 12);
    }

    async fn import_takes_updated_at_and_updated_by_only_together(app) {
        app.queue("K").await;
        let a = key(&old_issue(&app, "K", "a", "task", T0).await);
        let b = key(&old_issue(&app, "K", "b", "task", T0).await);
        import_refused(&app, &a, json!({"relationship": "relates", "issue": b, "createdAt": T_CREATED, "createdBy": "admin", "updatedAt": T_UPDATED})).await;
        import_refused(&app, &a, json!({"relationship": "relates", "issue": b, "createdAt": T_CREATED, "createdBy": "admin", "updatedBy": "admin"})).await;
        import_refused(&app, &a, json!({"relationship": "relates", "issue": b, "createdBy": "admin"})).await;
        import_refused(&app, &a, json!({"relationship": "relates", "issue": b, "createdAt": T_CREATED})).await;
        import_refused(&app, &a, json!({"relationship": "relates", "issue": b, "createdAt": "yesterday", "createdBy": "admin"})).await;
        import_refused(&app, &a, json!({"issue": b, "createdAt": T_CREATED, "createdBy": "admin"})).await;
        import_refused(&app, &a, json!({"relationship": "blocks", "issue": b, "createdAt": T_CREATED, "createdBy": "admin"})).await;
    }

    async fn import_dates_must_lie_between_the_issues_creation_and_now(app) {
        app.queue("K").await;
        let a = key(&old_issue(&app, "K", "a", "task", T0).await);
        let later = "2017-09-01T00:00:00.000+0000";
        let b = key(&old_issue(&app, "K", "b", "task", later).await);
        let body = |created: &str, updated: Option<&str>| {
            let mut v = json!({"relationship": "depends on", "issue": b, "createdAt": created, "createdBy": "admin"});
            if let Some(u) = updated {
                v["updatedAt"] = json!(u);
                v["updatedBy"] = json!("admin");
            }
            v
        };
        // Before the later creation of the two (B's), from either side.
        let msg = import_refused(&app, &a, body(T_CREATED, None)).await;
        assert!(msg.contains("createdAt"), "{msg}");
        let mut from_b = body(T_CREATED, None);
        from_b["issue"] = json!(a);
        import_refused(&app, &b, from_b).await;
        import_refused(&app, &a, body("2017-08-31T23:59:59.999+0000", None)).await;
        // In the future.
        let tomorrow = tether::domain::dates::format_ms(tether::domain::dates::now_ms() + 86_400_000);
        import_refused(&app, &a, body(&tomorrow, None)).await;
        // updatedAt before createdAt, or in the future.
        import_refused(&app, &a, body("2017-10-01T00:00:00.000+0000", Some("2017-09-30T00:00:00.000+0000"))).await;
        import_refused(&app, &a, body("2017-10-01T00:00:00.000+0000", Some(&tomorrow))).await;
        // The bounds themselves are allowed, and RFC 3339 is parsed too.
        let ans = app.post(&format!("/v2/issues/{a}/links/_import"), body(later, Some("2017-10-01T02:00:00+02:00"))).await;
        assert_eq!(ans.status, 200, "{}", ans.body);
        assert_eq!(ans.body["createdAt"], later);
        assert_eq!(ans.body["updatedAt"], "2017-10-01T00:00:00.000+0000");
    }

    async fn import_refuses_unknown_users(app) {
        app.queue("K").await;
        let a = key(&old_issue(&app, "K", "a", "task", T0).await);
        let b = key(&old_issue(&app, "K", "b", "task", T0).await);
        // A user of another organization is unknown here.
        let _ = app.user_token("other", "stranger", Role::Admin).await;
        let stranger = app.store.find_user(&tether::store::Locator::Key("stranger".into())).await.unwrap().expect("stranger").uid;
        for who in [json!("ghost"), json!(999_999_999), json!("999999999"), json!({"login": "ghost"}), json!("stranger"), json!(stranger)] {
            import_refused(&app, &a, json!({"relationship": "relates", "issue": b, "createdAt": T_CREATED, "createdBy": who})).await;
            import_refused(&app, &a, json!({"relationship": "relates", "issue": b, "createdAt": T_CREATED, "createdBy": "admin", "updatedAt": T_UPDATED, "updatedBy": who})).await;
        }
        // {"uid": …} and {"login": …} of a real member work.
        let admin: i64 = uid_of(&app, "admin").await.parse().unwrap();
        let ans = app.post(&format!("/v2/issues/{a}/links/_import"), json!({"relationship": "relates", "issue": b, "createdAt": T_CREATED, "createdBy": {"uid": admin}, "updatedAt": T_UPDATED, "updatedBy": {"login": "admin"}})).await;
        assert_eq!(ans.status, 200, "{}", ans.body);
    }

    async fn a_depends_cycle_is_accepted_on_import_and_later_checks_still_finish(app) {
        app.queue("K").await;
        let mut k = Vec::new();
        for i in 0..4 {
            k.push(key(&old_issue(&app, "K", &format!("n{i}"), "task", T0).await));
        }
        app.link(&k[0], "depends on", &k[1]).await;
        app.link(&k[1], "depends on", &k[2]).await;
        // 2 → 0 closes 0 → 1 → 2 → 0: refused on create, accepted on import.
        refused(&app, &k[2], "depends on", &json!(k[0])).await;
        let ans = app.post(&format!("/v2/issues/{}/links/_import", k[2]), json!({"relationship": "depends on", "issue": k[0], "createdAt": T_CREATED, "createdBy": "admin"})).await;
        assert_eq!(ans.status, 200, "{}", ans.body);
        assert_eq!(app.count("links").await, 3);
        // The cycle check walks a graph that now has a cycle, and must still answer.
        app.link(&k[3], "depends on", &k[0]).await;
        let msg = refused(&app, &k[1], "depends on", &json!(k[3])).await;
        assert!(msg.to_lowercase().contains("cycle"), "{msg}");
        // The inverse spelling on import as well: 3 blocks 2 … is 2 depends on 3, which closes 3 → 0 → 1 → 2 → 3.
        let ans = app.post(&format!("/v2/issues/{}/links/_import", k[3]), json!({"relationship": "is dependent by", "issue": k[2], "createdAt": T_CREATED, "createdBy": "admin"})).await;
        assert_eq!(ans.status, 200, "{}", ans.body);
    }

    async fn other_rules_still_apply_on_import(app) {
        app.queue("K").await;
        let a = key(&old_issue(&app, "K", "a", "task", T0).await);
        let b = key(&old_issue(&app, "K", "b", "task", T0).await);
        let p1 = key(&old_issue(&app, "K", "p1", "task", T0).await);
        let p2 = key(&old_issue(&app, "K", "p2", "task", T0).await);
        let e = key(&old_issue(&app, "K", "e", "epic", T0).await);
        let e2 = key(&old_issue(&app, "K", "e2", "epic", T0).await);
        let rec = |rel: &str, to: &str| json!({"relationship": rel, "issue": to, "createdAt": T_CREATED, "createdBy": "admin"});
        app.link(&a, "relates", &b).await;
        app.link(&a, "is subtask for", &p1).await;
        app.link(&p1, "is subtask for", &p2).await;
        // Duplicate pair, in either direction or another type.
        let msg = import_refused(&app, &a, rec("depends on", &b)).await;
        assert_eq!(msg, format!("Issues {a} and {b} are already linked."));
        import_refused(&app, &b, rec("clone", &a)).await;
        // Second parent, parent cycle, self-link.
        import_refused(&app, &a, rec("is subtask for", &p2)).await;
        import_refused(&app, &p2, rec("is subtask for", &a)).await;
        import_refused(&app, &a, rec("original", &a)).await;
        // Epic rules.
        import_refused(&app, &b, rec("has epic", &p2)).await;
        import_refused(&app, &e, rec("has epic", &e2)).await;
        import_refused(&app, &e, rec("is subtask for", &b)).await;
        app.link(&b, "has epic", &e).await;
        import_refused(&app, &b, rec("has epic", &e2)).await;
        // Unknown relationship.
        import_refused(&app, &a, rec("blocks", &e2)).await;
        assert_eq!(app.count("links").await, 4);
    }

    async fn importing_a_link_changes_neither_issues_updated_at(app) {
        app.queue("K").await;
        let a = app.issue("K", "a").await;
        let b = app.issue("K", "b").await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let created_at = b["createdAt"].as_str().unwrap();
        let ans = app.post(&format!("/v2/issues/{}/links/_import", key(&a)), json!({"relationship": "is parent task for", "issue": key(&b), "createdAt": created_at, "createdBy": "admin"})).await;
        assert_eq!(ans.status, 200, "{}", ans.body);
        assert_eq!(ans.body["createdAt"], json!(created_at));
        for before in [&a, &b] {
            let after = get_issue(&app, &key(before)).await;
            assert_eq!(after["updatedAt"], before["updatedAt"], "{} → {after}", before);
            assert_eq!(after["version"], before["version"]);
        }
        assert_eq!(get_issue(&app, &key(&b)).await["parent"]["key"], json!(key(&a)));
    }
}

/// The concurrency rules hold with several server processes on one database (contract §5 rule 8): two servers,
/// each with its own store (its own pool, as a second process would have), racing on the same issues.
mod several_servers {
    use super::*;
    use common::{Backend, ORG, TOKEN};
    use tether::domain::OrgId;
    use tether::domain::dates::now_ms;
    use tether::http::ctx::hash_token;
    use tether::store::Synchronous;
    use tokio::sync::oneshot;

    struct Twins {
        servers: Vec<Poster>,
        shutdown: Vec<oneshot::Sender<()>>,
        _dir: Option<tempfile::TempDir>,
        pg: Option<(String, String)>,
    }

    impl Twins {
        async fn spawn(backend: Backend) -> Option<Twins> {
            let (url, dir, pg) = match backend {
                Backend::Sqlite => {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let url = format!("sqlite://{}", dir.path().join("tether.db").display());
                    (url, Some(dir), None)
                }
                Backend::Postgres => {
                    let admin = common::postgres_url()?;
                    let (url, name) = common::fresh_pg_database(&admin).await;
                    (url, None, Some((admin, name)))
                }
            };
            let mut twins = Twins {
                servers: Vec::new(),
                shutdown: Vec::new(),
                _dir: dir,
                pg,
            };
            for n in 0..2 {
                let store = tether::store::open(&url, Synchronous::Normal)
                    .await
                    .expect("open store");
                if n == 0 {
                    store
                        .bootstrap(&OrgId::parse(ORG).unwrap(), &hash_token(TOKEN), now_ms())
                        .await
                        .expect("bootstrap");
                }
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let base = format!("http://{}", listener.local_addr().unwrap());
                let state = tether::AppState::new(store, &base);
                let (tx, rx) = oneshot::channel::<()>();
                tokio::spawn(async move {
                    let _ = tether::serve(listener, state, async {
                        let _ = rx.await;
                    })
                    .await;
                });
                twins.shutdown.push(tx);
                twins.servers.push(Poster {
                    http: reqwest::Client::new(),
                    base,
                    token: TOKEN.into(),
                    org: ORG.into(),
                });
            }
            Some(twins)
        }

        /// Creates an issue through server `n`; returns its key.
        async fn issue(&self, n: usize, summary: &str) -> String {
            let (status, body) = self.servers[n]
                .send(
                    reqwest::Method::POST,
                    "/v2/issues",
                    Some(json!({"queue": "K", "summary": summary})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            key(&body)
        }

        async fn links(&self, n: usize, issue: &str) -> Vec<Value> {
            let (status, body) = self.servers[n]
                .send(reqwest::Method::GET, &format!("/v2/issues/{issue}/links"), None)
                .await;
            assert_eq!(status, 200, "{body}");
            body.as_array().expect("array").clone()
        }

        async fn run(&self) {
            let (s0, s1) = (&self.servers[0], &self.servers[1]);
            let (status, body) = s0
                .send(
                    reqwest::Method::POST,
                    "/v2/queues",
                    Some(json!({"key": "K", "name": "Queue K"})),
                )
                .await;
            assert_eq!(status, 201, "{body}");

            // The same pair, sixteen times through each server.
            let (a, b) = (self.issue(0, "a").await, self.issue(1, "b").await);
            let reqs = (0..32)
                .map(|i| (self.servers[i % 2].clone(), (a.as_str(), "relates", b.as_str())))
                .collect();
            let statuses = race_on(reqs).await;
            assert_eq!(created(&statuses), 1, "{statuses:?}");
            assert_eq!(self.links(1, &a).await.len(), 1);

            for round in 0..10 {
                // A depends on B through one server, B depends on A through the other.
                let (a, b) = (self.issue(0, "a").await, self.issue(1, "b").await);
                let statuses = race_on(vec![
                    (s0.clone(), (a.as_str(), "depends on", b.as_str())),
                    (s1.clone(), (b.as_str(), "depends on", a.as_str())),
                ])
                .await;
                assert_eq!(created(&statuses), 1, "round {round}, opposite depends: {statuses:?}");

                // A cycle through four issues, closed from both servers at once.
                let mut k = Vec::new();
                for n in 0..4 {
                    k.push(self.issue(n % 2, &format!("n{n}")).await);
                }
                assert_eq!(s0.link(&k[0], "depends on", &k[1]).await, 201);
                assert_eq!(s1.link(&k[2], "depends on", &k[3]).await, 201);
                let statuses = race_on(vec![
                    (s0.clone(), (k[1].as_str(), "depends on", k[2].as_str())),
                    (s1.clone(), (k[3].as_str(), "depends on", k[0].as_str())),
                ])
                .await;
                assert_eq!(created(&statuses), 1, "round {round}, four-issue cycle: {statuses:?}");

                // Two parents for one child.
                let (c, p1, p2) = (
                    self.issue(0, "c").await,
                    self.issue(0, "p1").await,
                    self.issue(1, "p2").await,
                );
                let statuses = race_on(vec![
                    (s0.clone(), (c.as_str(), "is subtask for", p1.as_str())),
                    (s1.clone(), (c.as_str(), "is subtask for", p2.as_str())),
                ])
                .await;
                assert_eq!(created(&statuses), 1, "round {round}, two parents: {statuses:?}");
                assert_eq!(self.links(1, &c).await.len(), 1);
            }

            // An issue server 0 was asked for before server 1 created it: each process keeps the issues it found
            // (`HeadCache`), but not what it did not find, so the new issue is found at once.
            let a = self.issue(0, "asked early").await;
            let n: u64 = a.trim_start_matches("K-").parse().expect("a K-N key");
            let next = format!("K-{}", n + 1);
            for path in [format!("/v2/issues/{next}/links"), format!("/v2/issues/{next}")] {
                let (status, body) = s0.send(reqwest::Method::GET, &path, None).await;
                assert_eq!(status, 404, "{path}: {body}");
            }
            let (status, body) = s0
                .send(
                    reqwest::Method::POST,
                    &format!("/v2/issues/{a}/links"),
                    Some(json!({"relationship": "relates", "issue": next})),
                )
                .await;
            assert_eq!(status, 404, "{body}");
            let b = self.issue(1, "created late").await;
            assert_eq!(b, next);
            assert_eq!(s0.link(&a, "relates", &b).await, 201);
            assert_eq!(s0.link(&b, "depends on", &a).await, 422);
            assert_eq!(self.links(0, &b).await.len(), 1);
        }
    }

    impl Drop for Twins {
        fn drop(&mut self) {
            for tx in self.shutdown.drain(..) {
                let _ = tx.send(());
            }
            if let Some((admin, name)) = self.pg.take() {
                let _ = std::thread::spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                        return;
                    };
                    rt.block_on(async {
                        use sqlx::Connection;
                        // Give the servers' pools a moment to close, then force the drop.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                            let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut c).await;
                        }
                    });
                })
                .join();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_links_through_two_servers_on_one_sqlite_file_keep_the_rules() {
        let Some(twins) = Twins::spawn(Backend::Sqlite).await else {
            return;
        };
        twins.run().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_links_through_two_servers_on_one_postgres_database_keep_the_rules() {
        let Some(twins) = Twins::spawn(Backend::Postgres).await else {
            return;
        };
        twins.run().await;
    }
}
