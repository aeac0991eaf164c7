//! Integration tests of the core API (contract §1–§4): authentication and tenancy, the error envelope, the
//! conventions every answer follows, users, queues, issue types, statuses, fields, issues, search, transitions,
//! issue import, and the public routes. Every test runs on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Answer, TestApp};
use reqwest::Method;
use serde_json::{Value, json};
use tether::domain::Role;

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

/// A request to `path` on the app with no headers at all (no token, no organization).
fn bare(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.http.request(method, format!("{}{}", app.base, path))
}

/// A request with only `Authorization: OAuth <token>` (no organization header).
fn with_token(app: &TestApp, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
    bare(app, method, path).header("Authorization", format!("OAuth {token}"))
}

/// The `key`s of a list of issues, in order.
fn keys(body: &Value) -> Vec<String> {
    body.as_array()
        .unwrap_or_else(|| panic!("expected a list: {body}"))
        .iter()
        .map(|i| i["key"].as_str().unwrap_or_else(|| panic!("no key in {i}")).to_owned())
        .collect()
}

/// The `id`s of a list (transitions), in order.
fn ids(body: &Value) -> Vec<String> {
    body.as_array()
        .unwrap_or_else(|| panic!("expected a list: {body}"))
        .iter()
        .map(|i| {
            i["id"]
                .as_str()
                .unwrap_or_else(|| panic!("no string id in {i}"))
                .to_owned()
        })
        .collect()
}

/// Whether `s` is `YYYY-MM-DDThh:mm:ss.sss+0000` (`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$`).
fn is_tracker_date(s: &str) -> bool {
    const PATTERN: &str = "dddd-dd-ddTdd:dd:dd.ddd+0000";
    s.len() == PATTERN.len()
        && s.bytes()
            .zip(PATTERN.bytes())
            .all(|(c, p)| if p == b'd' { c.is_ascii_digit() } else { c == p })
}

/// Calls `f(path, key, value)` on every value of a JSON document (`key` is the object key holding it, if any).
fn walk(v: &Value, path: &str, key: Option<&str>, f: &mut dyn FnMut(&str, Option<&str>, &Value)) {
    f(path, key, v);
    match v {
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                walk(x, &format!("{path}[{i}]"), None, f);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                walk(x, &format!("{path}.{k}"), Some(k), f);
            }
        }
        _ => {}
    }
}

/// Asserts the conventions of contract §1 on an answer body: no `null` anywhere, every `self` an absolute URL of
/// this server in `version`, every `…At` a Tracker date.
fn assert_conventions(app: &TestApp, version: &str, body: &Value) {
    let prefix = format!("{}/{version}/", app.base);
    let mut selves = 0;
    walk(body, "$", None, &mut |path, key, v| {
        assert!(!v.is_null(), "null at {path} in {body}");
        match key {
            Some("self") => {
                selves += 1;
                let s = v.as_str().unwrap_or_else(|| panic!("self at {path} is not a string"));
                assert!(
                    s.starts_with(&prefix),
                    "self at {path} is {s}, expected it under {prefix}"
                );
            }
            Some(k) if k.ends_with("At") => {
                let s = v.as_str().unwrap_or_else(|| panic!("{path} is not a string"));
                assert!(is_tracker_date(s), "{path} = {s} is not a Tracker date");
            }
            _ => {}
        }
    });
    assert!(
        selves > 0 || body.as_array().is_some_and(Vec::is_empty),
        "no self in {body}"
    );
}

/// The URL inside `Link: <…>; rel="next"`, if any.
fn next_link(a: &Answer) -> Option<String> {
    let link = a.header("link")?;
    assert!(link.ends_with("rel=\"next\""), "Link is {link}");
    let start = link.find('<')? + 1;
    let end = link.find('>')?;
    Some(link[start..end].to_owned())
}

/// An admin creates a second organization `other` with admin `bob`, a queue `OTHER` and issue `OTHER-1` there.
async fn other_org(app: &TestApp) -> TestApp {
    let token = app.user_token("other", "bob", Role::Admin).await;
    let bob = app.as_user(&token, "other");
    bob.queue("OTHER").await;
    bob.issue("OTHER", "Elsewhere").await;
    bob
}

fn import_body(extra: Value) -> Value {
    let mut b = json!({
        "queue": "TEST",
        "summary": "Imported",
        "createdAt": "2020-01-02T03:04:05.678+0000",
        "createdBy": "admin",
    });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// Executes transition `id` on `issue` with an empty body.
async fn execute(app: &TestApp, issue: &str, id: &str) -> Answer {
    app.post(&format!("/v2/issues/{issue}/transitions/{id}/_execute"), json!({}))
        .await
}

/// How `send_raw` frames a body.
#[derive(Clone, Copy)]
enum Framing {
    /// `Content-Length: <len>`.
    Declared,
    /// `Transfer-Encoding: chunked` (no declared length).
    Chunked,
}

/// Sends `POST path` with `body` over a raw connection and returns the answer's status code. Unlike reqwest it keeps
/// going when the server answers (and closes) before the whole body is sent, and then reads that early answer.
async fn send_raw(app: &TestApp, path: &str, extra_headers: &str, body: &[u8], framing: Framing) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let length = match framing {
        Framing::Declared => format!("Content-Length: {}\r\n", body.len()),
        Framing::Chunked => "Transfer-Encoding: chunked\r\n".to_owned(),
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{length}{extra_headers}\
         Connection: close\r\n\r\n"
    );
    let mut frames = vec![head.into_bytes()];
    for chunk in body.chunks(64 * 1024) {
        frames.push(match framing {
            Framing::Declared => chunk.to_vec(),
            Framing::Chunked => [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat(),
        });
    }
    if let Framing::Chunked = framing {
        frames.push(b"0\r\n\r\n".to_vec());
    }
    for frame in frames {
        if conn.write_all(&frame).await.is_err() {
            break; // the server answered and closed before reading everything
        }
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer within 10 s");
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or_default();
    status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// `Authorization` and `X-Org-ID` header lines for `send_raw`.
fn auth_lines(token: &str, org: &str) -> String {
    format!("Authorization: OAuth {token}\r\nX-Org-ID: {org}\r\n")
}

/// Runs `n` copies of a request concurrently, each on its own handle, and returns the answers.
async fn concurrently<F, Fut>(app: &TestApp, n: usize, make: F) -> Vec<Answer>
where
    F: Fn(TestApp, usize) -> Fut,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(make(app.as_user(&app.token, &app.org), i)))
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    answers
}

async fn pause() {
    // Timestamps have millisecond resolution: make the next write visibly later.
    tokio::time::sleep(std::time::Duration::from_millis(15)).await;
}

both_backends! {

    // ---------------------------------------------------------------------------------------------------------------
    // §2 Authentication and tenancy
    // ---------------------------------------------------------------------------------------------------------------

    async fn a_request_without_a_token_or_with_an_unknown_token_is_401(app) {
        let none = app
            .raw(bare(&app, Method::GET, "/v2/myself").header("X-Org-ID", "acme"))
            .await;
        let unknown = app
            .raw(with_token(&app, Method::GET, "/v2/myself", "tth_nope").header("X-Org-ID", "acme"))
            .await;
        let basic = app
            .raw(bare(&app, Method::GET, "/v2/myself").header("Authorization", format!("Basic {}", common::TOKEN)))
            .await;
        let empty = app
            .raw(bare(&app, Method::GET, "/v2/myself").header("Authorization", "OAuth "))
            .await;

        none.expect_error(401);
        unknown.expect_error(401);
        basic.expect_error(401);
        empty.expect_error(401);
        assert!(
            none.header("www-authenticate").is_some(),
            "401 should carry WWW-Authenticate"
        );
    }

    async fn a_revoked_token_is_401_from_then_on_and_only_its_owner_can_revoke_it(app) {
        let ivan_token = app.user_token("acme", "ivan", Role::Member).await;
        let ivan = app.as_user(&ivan_token, "acme");
        let listed = ivan.get("/v2/_tokens").await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        let tokens = listed.body.as_array().unwrap().clone();
        assert_eq!(tokens.len(), 1, "ivan sees only his own token: {}", listed.body);
        assert_eq!(tokens[0]["current"], json!(true));
        assert!(
            tokens[0].get("hash").is_none() && tokens[0].get("token").is_none(),
            "secrets leak: {}",
            tokens[0]
        );
        assert_conventions(&app, "v2", &listed.body);
        let id = tokens[0]["id"].as_i64().unwrap();

        let by_admin = app.delete(&format!("/v2/_tokens/{id}")).await;
        by_admin.expect_error(404);
        assert_eq!(
            ivan.get("/v2/myself").await.status,
            200,
            "someone else's DELETE must not revoke it"
        );

        let revoked = ivan.delete(&format!("/v2/_tokens/{id}")).await;
        assert_eq!(revoked.status, 204);
        assert_eq!(revoked.body, Value::Null, "204 has an empty body");
        ivan.get("/v2/myself").await.expect_error(401);
        ivan.get("/v2/_tokens").await.expect_error(401);
        assert_eq!(app.get("/v2/myself").await.status, 200, "other tokens keep working");
        app.delete("/v2/_tokens/999999").await.expect_error(404);
        app.delete("/v2/_tokens/abc").await.expect_error(404);
    }

    async fn a_token_revoked_outside_the_api_stops_working_within_the_auth_cache_ttl(app) {
        // The CLI (another process) revokes in the database only; the API's principal cache may serve the token
        // until its time to live (2 s by default) is over, and never after.
        let token = app.user_token("acme", "olga", Role::Member).await;
        let olga = app.as_user(&token, "acme");
        assert_eq!(olga.get("/v2/myself").await.status, 200, "cached now");
        let id = olga.get("/v2/_tokens").await.body[0]["id"].as_i64().unwrap();
        assert!(app.store.revoke_token(id, None, tether::domain::dates::now_ms()).await.unwrap());
        tokio::time::sleep(tether::http::ctx::PrincipalCache::DEFAULT_TTL + std::time::Duration::from_millis(300))
            .await;
        olga.get("/v2/myself").await.expect_error(401);
    }

    async fn bearer_works_like_oauth_and_x_cloud_org_id_like_x_org_id(app) {
        let bearer = app
            .raw(
                bare(&app, Method::GET, "/v2/myself")
                    .header("Authorization", format!("Bearer {}", common::TOKEN))
                    .header("X-Org-ID", "acme"),
            )
            .await;
        let cloud = app
            .raw(with_token(&app, Method::GET, "/v2/myself", common::TOKEN).header("X-Cloud-Org-ID", "acme"))
            .await;
        let lower_scheme = app
            .raw(
                bare(&app, Method::GET, "/v2/myself")
                    .header("Authorization", format!("oauth {}", common::TOKEN))
                    .header("x-org-id", "acme"),
            )
            .await;
        let both_same = app
            .raw(
                with_token(&app, Method::GET, "/v2/myself", common::TOKEN)
                    .header("X-Org-ID", "acme")
                    .header("X-Cloud-Org-ID", "acme"),
            )
            .await;

        for a in [&bearer, &cloud, &lower_scheme, &both_same] {
            assert_eq!(a.status, 200, "{}", a.body);
            assert_eq!(a.body["login"], "admin");
        }
    }

    async fn without_an_organization_header_a_user_of_one_organization_works_in_it(app) {
        app.queue("TEST").await;

        let not_provided = app
            .raw(with_token(&app, Method::GET, "/v2/queues", common::TOKEN).header("X-Org-ID", "not provided"))
            .await;
        let both_not_provided = app
            .raw(
                with_token(&app, Method::GET, "/v2/queues", common::TOKEN)
                    .header("X-Org-ID", "not provided")
                    .header("X-Cloud-Org-ID", "not provided"),
            )
            .await;
        let absent = app
            .raw(
                with_token(&app, Method::POST, "/v2/issues", common::TOKEN)
                    .header("Content-Type", "application/json")
                    .body(json!({"queue": "TEST", "summary": "No header"}).to_string()),
            )
            .await;

        assert_eq!(not_provided.status, 200, "{}", not_provided.body);
        assert_eq!(keys(&not_provided.body), ["TEST"]);
        assert_eq!(both_not_provided.status, 200, "{}", both_not_provided.body);
        assert_eq!(absent.status, 201, "{}", absent.body);
        assert_eq!(absent.body["key"], "TEST-1");
    }

    async fn a_user_of_two_organizations_must_name_one_and_holds_a_role_in_each(app) {
        app.queue("TEST").await;
        other_org(&app).await;
        let _ = app.user_token("acme", "carol", Role::Member).await;
        let token = app.user_token("other", "carol", Role::Reader).await;

        let no_header = app.raw(with_token(&app, Method::GET, "/v2/myself", &token)).await;
        let not_provided = app
            .raw(with_token(&app, Method::GET, "/v2/myself", &token).header("X-Org-ID", "not provided"))
            .await;
        let in_acme = app
            .as_user(&token, "acme")
            .post("/v2/issues", json!({"queue": "TEST", "summary": "ok"}))
            .await;
        let in_other = app
            .as_user(&token, "other")
            .post("/v2/issues", json!({"queue": "OTHER", "summary": "no"}))
            .await;
        let reads_other = app.as_user(&token, "other").get("/v2/issues/OTHER-1").await;

        no_header.expect_error(403);
        not_provided.expect_error(403);
        assert_eq!(in_acme.status, 201, "carol is a member of acme: {}", in_acme.body);
        in_other.expect_error(403);
        assert_eq!(reads_other.status, 200, "carol reads in other: {}", reads_other.body);
    }

    async fn conflicting_organization_headers_are_400_and_a_foreign_organization_is_403(app) {
        other_org(&app).await;

        let differ = app
            .raw(
                with_token(&app, Method::GET, "/v2/myself", common::TOKEN)
                    .header("X-Org-ID", "acme")
                    .header("X-Cloud-Org-ID", "other"),
            )
            .await;
        let not_member = app.as_user(common::TOKEN, "other").get("/v2/queues").await;
        let nonexistent = app.as_user(common::TOKEN, "nowhere").get("/v2/queues").await;
        let invalid = app.as_user(common::TOKEN, "bad id!").get("/v2/queues").await;

        differ.expect_error(400);
        not_member.expect_error(403);
        nonexistent.expect_error(403);
        invalid.expect_error(403);
    }

    async fn another_organizations_issues_and_queues_are_404_and_keys_are_per_organization(app) {
        let bob = other_org(&app).await;
        app.queue("TEST").await;
        let mine = app.issue("TEST", "Mine").await;
        let theirs = bob.get("/v2/issues/OTHER-1").await.body;
        let their_id = theirs["id"].as_str().unwrap().to_owned();

        app.get("/v2/issues/OTHER-1").await.expect_error(404);
        app.get(&format!("/v2/issues/{their_id}")).await.expect_error(404);
        app.patch("/v2/issues/OTHER-1", json!({"summary": "hijack"}))
            .await
            .expect_error(404);
        app.get("/v2/issues/OTHER-1/transitions").await.expect_error(404);
        app.post("/v2/issues/OTHER-1/transitions/close/_execute", json!({}))
            .await
            .expect_error(404);
        app.get("/v2/queues/OTHER").await.expect_error(404);
        let queue_id = bob.get("/v2/queues/OTHER").await.body["id"]
            .as_str()
            .unwrap()
            .to_owned();
        app.get(&format!("/v2/queues/{queue_id}")).await.expect_error(404);
        app.post("/v2/issues", json!({"queue": "OTHER", "summary": "x"}))
            .await
            .expect_error(404);
        app.get("/v2/users/bob").await.expect_error(404);
        bob.get(&format!("/v2/issues/{}", mine["id"].as_str().unwrap()))
            .await
            .expect_error(404);
        let search = app.post("/v2/issues/_search", json!({})).await;
        assert_eq!(keys(&search.body), ["TEST-1"], "search stays in the organization");
        let queues = app.get("/v2/queues").await;
        assert_eq!(keys(&queues.body), ["TEST"]);
        assert_eq!(
            bob.get("/v2/issues/OTHER-1").await.body["summary"],
            "Elsewhere",
            "unchanged"
        );

        bob.queue("TEST").await;
        let same_key = bob.issue("TEST", "Theirs").await;
        assert_eq!(same_key["key"], "TEST-1", "queue and issue keys are per organization");
        assert_ne!(same_key["id"], mine["id"], "issue ids are server-wide");
        assert_eq!(app.get("/v2/issues/TEST-1").await.body["summary"], "Mine");

        let secret = bob
            .post("/v2/fields", json!({"id": "secret", "schema": {"type": "string"}}))
            .await;
        assert_eq!(secret.status, 201, "{}", secret.body);
        app.get("/v2/fields/secret").await.expect_error(404);
        let fields = app.get("/v2/fields").await;
        assert!(
            !fields.body.as_array().unwrap().iter().any(|f| f["id"] == "secret"),
            "{}",
            fields.body
        );
        let same_id = app
            .post("/v2/fields", json!({"id": "secret", "schema": {"type": "number"}}))
            .await;
        assert_eq!(
            same_id.status, 201,
            "custom fields are per organization: {}",
            same_id.body
        );
    }

    async fn a_reader_gets_403_on_every_write_route_and_200_on_every_read(app) {
        app.queue("TEST").await;
        app.issue_with(json!({"queue": "TEST", "summary": "Readable", "unique": "u-1"}))
            .await;
        let reader = app.as_user(&app.user_token("acme", "rita", Role::Reader).await, "acme");

        let writes = [
            reader.post("/v2/queues", json!({"key": "NEW", "name": "New"})).await,
            reader
                .post(
                    "/v2/fields",
                    json!({"id": "tags", "name": "Tags", "schema": {"type": "array", "items": "string"}}),
                )
                .await,
            reader
                .post("/v2/issues", json!({"queue": "TEST", "summary": "x"}))
                .await,
            reader.patch("/v2/issues/TEST-1", json!({"summary": "changed"})).await,
            reader
                .post("/v2/issues/TEST-1/transitions/close/_execute", json!({}))
                .await,
            reader.post("/v2/issues/_import", import_body(json!({}))).await,
        ];
        let reads = [
            reader.get("/v2/myself").await,
            reader.get("/v2/users").await,
            reader.get("/v2/users/admin").await,
            reader.get("/v2/queues").await,
            reader.get("/v2/queues/TEST").await,
            reader.get("/v2/issuetypes").await,
            reader.get("/v2/statuses").await,
            reader.get("/v2/fields").await,
            reader.get("/v2/fields/summary").await,
            reader.get("/v2/issues/TEST-1").await,
            reader.get("/v2/issues/TEST-1/transitions").await,
            reader.get("/v2/issues/TEST-1/transitions/close").await,
            reader.post("/v2/issues/_search", json!({"queue": "TEST"})).await,
            reader.post("/v2/issues/_findByUnique?unique=u-1", json!({})).await,
            reader.get("/v2/_tokens").await,
        ];

        for a in &writes {
            let msg = a.expect_error(403);
            assert!(msg.contains("reader"), "the message names the role: {msg}");
        }
        for a in &reads {
            assert_eq!(a.status, 200, "{}", a.body);
        }
        let issue = app.get("/v2/issues/TEST-1").await.body;
        assert_eq!(
            (issue["summary"].as_str(), issue["version"].as_i64()),
            (Some("Readable"), Some(1))
        );
        assert_eq!(issue["status"]["key"], "open");
        assert_eq!(app.count("issues").await, 1);
        assert_eq!(keys(&app.get("/v2/queues").await.body), ["TEST"]);
        assert_eq!(app.get("/v2/fields/tags").await.status, 404);
    }

    async fn a_member_gets_403_on_admin_routes_but_edits_issues(app) {
        app.queue("TEST").await;
        let member = app.as_user(&app.user_token("acme", "mike", Role::Member).await, "acme");

        let queue = member.post("/v2/queues", json!({"key": "NEW", "name": "New"})).await;
        let field = member
            .post(
                "/v2/fields",
                json!({"id": "tags", "schema": {"type": "array", "items": "string"}}),
            )
            .await;
        let import = member.post("/v2/issues/_import", import_body(json!({}))).await;
        let create = member
            .post("/v2/issues", json!({"queue": "TEST", "summary": "By a member"}))
            .await;
        let edit = member
            .patch("/v2/issues/TEST-1", json!({"summary": "Edited by a member"}))
            .await;
        let close = member
            .post("/v2/issues/TEST-1/transitions/close/_execute", json!({}))
            .await;

        for a in [&queue, &field, &import] {
            let msg = a.expect_error(403);
            assert!(msg.contains("admin"), "the message names the needed role: {msg}");
        }
        assert_eq!(create.status, 201, "{}", create.body);
        assert_eq!(edit.status, 200, "{}", edit.body);
        assert_eq!(close.status, 200, "{}", close.body);
        assert_eq!(keys(&app.get("/v2/queues").await.body), ["TEST"]);
        assert_eq!(app.get("/v2/fields/tags").await.status, 404);
        assert_eq!(app.count("issues").await, 1);
        assert_eq!(create.body["createdBy"]["display"], "mike");
    }

    async fn checks_run_in_the_contract_order(app) {
        app.queue("TEST").await;
        app.issue("TEST", "One").await;
        let reader = app.as_user(&app.user_token("acme", "rita", Role::Reader).await, "acme");
        let huge = json!({"queue": "TEST", "summary": "x".repeat(1024 * 1024)})
            .to_string()
            .into_bytes();

        // 413 before 401, before the organization header, before the role
        let too_large_anonymous = send_raw(&app, "/v2/issues", "", &huge, Framing::Declared).await;
        let too_large_bad_org = send_raw(
            &app,
            "/v2/issues",
            &auth_lines(common::TOKEN, "nowhere"),
            &huge,
            Framing::Declared,
        )
        .await;
        let too_large_reader = send_raw(
            &app,
            "/v2/issues",
            &auth_lines(&reader.token, "acme"),
            &huge,
            Framing::Declared,
        )
        .await;
        // 401 before the organization header and before a malformed body
        let anonymous_bad_org = app
            .raw(
                bare(&app, Method::POST, "/v2/issues")
                    .header("X-Org-ID", "nowhere")
                    .body("{"),
            )
            .await;
        // 403 organization before 404 object
        let foreign_org_unknown_issue = app.as_user(common::TOKEN, "nowhere").get("/v2/issues/TEST-99").await;
        // 404 object before 403 role
        let reader_patch_unknown = reader.patch("/v2/issues/TEST-99", json!({"summary": "x"})).await;
        let reader_execute_unknown = reader
            .post("/v2/issues/TEST-99/transitions/close/_execute", json!({}))
            .await;
        let reader_execute_unavailable = reader
            .post("/v2/issues/TEST-1/transitions/reopen/_execute", json!({}))
            .await;
        // 403 role before 400 malformed
        let reader_malformed = app
            .raw(
                with_token(&app, Method::PATCH, "/v2/issues/TEST-1", &reader.token)
                    .header("X-Org-ID", "acme")
                    .body("{"),
            )
            .await;
        // 400 malformed before 422 rule / 404 unknown issue
        let member = app.as_user(&app.user_token("acme", "mike", Role::Member).await, "acme");
        let member_malformed_unknown = app
            .raw(
                with_token(&app, Method::PATCH, "/v2/issues/TEST-99", &member.token)
                    .header("X-Org-ID", "acme")
                    .body("{"),
            )
            .await;

        assert_eq!(
            (too_large_anonymous, too_large_bad_org, too_large_reader),
            (413, 413, 413)
        );
        anonymous_bad_org.expect_error(401);
        foreign_org_unknown_issue.expect_error(403);
        reader_patch_unknown.expect_error(404);
        reader_execute_unknown.expect_error(404);
        reader_execute_unavailable.expect_error(404);
        reader_malformed.expect_error(403);
        member_malformed_unknown.expect_error(404);
        assert_eq!(app.count("issues").await, 1);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // §3 Errors
    // ---------------------------------------------------------------------------------------------------------------

    async fn malformed_json_and_wrong_types_are_400_in_the_envelope(app) {
        app.queue("TEST").await;
        let post_raw = |body: &'static str| {
            app.raw(
                with_token(&app, Method::POST, "/v2/issues", common::TOKEN)
                    .header("X-Org-ID", "acme")
                    .header("Content-Type", "application/json")
                    .body(body),
            )
        };

        let truncated = post_raw("{\"queue\": \"TEST\",").await;
        let not_json = post_raw("summary=x").await;
        let an_array = post_raw("[1, 2]").await;
        let number_summary = app.post("/v2/issues", json!({"queue": "TEST", "summary": 5})).await;
        let list_description = app
            .post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "s", "description": ["a"]}),
            )
            .await;
        let bool_queue = app.post("/v2/issues", json!({"queue": true, "summary": "s"})).await;
        let bad_search = app.post("/v2/issues/_search", json!({"filter": "queue"})).await;

        for a in [
            &truncated,
            &not_json,
            &an_array,
            &number_summary,
            &list_description,
            &bool_queue,
            &bad_search,
        ] {
            a.expect_error(400);
        }
        assert_eq!(app.count("issues").await, 0, "no failure writes anything");
    }

    async fn a_missing_required_field_is_422_naming_it(app) {
        app.queue("TEST").await;

        let no_summary = app.post("/v2/issues", json!({"queue": "TEST"})).await;
        let blank_summary = app.post("/v2/issues", json!({"queue": "TEST", "summary": "  "})).await;
        let null_summary = app.post("/v2/issues", json!({"queue": "TEST", "summary": null})).await;
        let no_queue = app.post("/v2/issues", json!({"summary": "s"})).await;
        let empty_body = app
            .raw(with_token(&app, Method::POST, "/v2/issues", common::TOKEN).header("X-Org-ID", "acme"))
            .await;

        for a in [&no_summary, &blank_summary, &null_summary] {
            a.expect_error(422);
            assert!(a.body["errors"]["summary"].is_string(), "errors.summary: {}", a.body);
        }
        no_queue.expect_error(422);
        assert!(no_queue.body["errors"]["queue"].is_string(), "{}", no_queue.body);
        empty_body.expect_error(422);
        assert_eq!(app.count("issues").await, 0);
    }

    async fn failed_issue_creates_write_nothing_and_leave_no_gap_in_the_numbering(app) {
        app.queue("TEST").await;
        app.queue("EPICS").await;
        let first = app
            .issue_with(json!({"queue": "TEST", "summary": "First", "unique": "once"}))
            .await;
        assert_eq!(first["key"], "TEST-1");

        let unknown_queue = app.post("/v2/issues", json!({"queue": "NOPE", "summary": "s"})).await;
        let unknown_type = app
            .post("/v2/issues", json!({"queue": "TEST", "summary": "s", "type": "story"}))
            .await;
        let unknown_assignee = app
            .post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "s", "assignee": "ghost"}),
            )
            .await;
        let unknown_parent = app
            .post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "s", "parent": "TEST-99"}),
            )
            .await;
        let garbage_parent = app
            .post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "s", "parent": "nonsense"}),
            )
            .await;
        let duplicate_unique = app
            .post("/v2/issues", json!({"queue": "TEST", "summary": "s", "unique": "once"}))
            .await;
        let epic_as_subtask = app
            .post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "s", "type": "epic", "parent": "TEST-1"}),
            )
            .await;
        let second = app.issue("TEST", "Second").await;

        unknown_queue.expect_error(404);
        assert!(
            unknown_queue.body["errors"]["queue"].is_string(),
            "{}",
            unknown_queue.body
        );
        unknown_type.expect_error(422);
        assert!(unknown_type.body["errors"]["type"].is_string(), "{}", unknown_type.body);
        unknown_assignee.expect_error(422);
        assert!(
            unknown_assignee.body["errors"]["assignee"].is_string(),
            "{}",
            unknown_assignee.body
        );
        unknown_parent.expect_error(404);
        garbage_parent.expect_error(404);
        duplicate_unique.expect_error(409);
        epic_as_subtask.expect_error(422);
        assert_eq!(second["key"], "TEST-2", "failed creates must not consume numbers");
        assert_eq!(app.count("issues").await, 2);
        assert_eq!(app.count("links").await, 0, "the refused sub-issue left no link");
        assert_eq!(app.get("/v2/issues/TEST-1").await.body["version"], 1);
    }

    async fn a_body_over_one_mebibyte_is_413_and_one_under_is_accepted(app) {
        app.queue("TEST").await;
        let over = json!({"queue": "TEST", "summary": "x".repeat(1024 * 1024)})
            .to_string()
            .into_bytes();
        let under = json!({"queue": "TEST", "summary": "y".repeat(1000 * 1000)});
        let auth = auth_lines(common::TOKEN, "acme");

        let too_large = send_raw(&app, "/v2/issues", &auth, &over, Framing::Declared).await;
        let too_large_chunked = send_raw(&app, "/v2/issues", &auth, &over, Framing::Chunked).await;
        let too_large_search = send_raw(&app, "/v2/issues/_search", &auth, &over, Framing::Declared).await;
        let small_chunked = send_raw(
            &app,
            "/v2/issues",
            &auth,
            br#"{"queue": "TEST", "summary": "s"}"#,
            Framing::Chunked,
        )
        .await;
        let fits = app.post("/v2/issues", under).await;

        assert_eq!(too_large, 413);
        assert_eq!(too_large_chunked, 413, "the limit holds without a Content-Length too");
        assert_eq!(too_large_search, 413);
        assert_eq!(small_chunked, 201, "a small chunked body is fine");
        assert_eq!(fits.status, 201, "a body under 1 MiB is accepted");
        assert_eq!(fits.body["summary"].as_str().map(str::len), Some(1000 * 1000));
        assert_eq!(app.count("issues").await, 2);
    }

    async fn unknown_routes_and_methods_answer_in_the_envelope(app) {
        let unknown_v2 = app.get("/v2/nothing-here").await;
        let unknown_version = app.get("/v4/issues/TEST-1").await;
        let unknown_anonymous = app.raw(bare(&app, Method::GET, "/v2/nothing/here")).await;
        let wrong_method = app.delete("/v2/queues").await;

        unknown_v2.expect_error(404);
        unknown_version.expect_error(404);
        unknown_anonymous.expect_error(404);
        wrong_method.expect_error(405);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // §1 Conventions
    // ---------------------------------------------------------------------------------------------------------------

    async fn a_trailing_slash_names_the_same_route(app) {
        app.queue("TEST").await;

        let created = app
            .post("/v2/issues/", json!({"queue": "TEST", "summary": "Slash"}))
            .await;
        let with_slash = app.get("/v2/issues/TEST-1/").await;
        let without = app.get("/v2/issues/TEST-1").await;
        let fields = app.get("/v2/fields/").await;
        let queues = app.get("/v2/queues/").await;
        let transitions = app.get("/v3/issues/TEST-1/transitions/").await;

        assert_eq!(created.status, 201, "{}", created.body);
        assert_eq!(with_slash.status, 200);
        assert_eq!(with_slash.body, without.body);
        assert_eq!(fields.body, app.get("/v2/fields").await.body);
        assert_eq!(keys(&queues.body), ["TEST"]);
        assert_eq!(transitions.status, 200);
    }

    async fn v3_serves_the_same_shapes_with_v3_self_urls(app) {
        app.queue("TEST").await;
        let parent = app.issue("TEST", "Parent").await;
        let created = app
            .post(
                "/v3/issues",
                json!({"queue": "TEST", "summary": "Child", "parent": parent["key"]}),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.body);
        assert_eq!(created.body["self"], format!("{}/v3/issues/TEST-2", app.base));

        for path in [
            "/issues/TEST-2",
            "/issues/TEST-2/transitions",
            "/issues/TEST-2/transitions/close",
            "/queues",
            "/queues/TEST",
            "/myself",
            "/users",
            "/issuetypes",
            "/statuses/1",
            "/fields",
            "/fields/summary",
        ] {
            let v2 = app.get(&format!("/v2{path}")).await;
            let v3 = app.get(&format!("/v3{path}")).await;
            assert_eq!(
                (v2.status.as_u16(), v3.status.as_u16()),
                (200, 200),
                "{path}: {} / {}",
                v2.body,
                v3.body
            );
            assert_conventions(&app, "v2", &v2.body);
            assert_conventions(&app, "v3", &v3.body);
            let as_v2: Value = serde_json::from_str(&v3.body.to_string().replace("/v3/", "/v2/")).unwrap();
            assert_eq!(as_v2, v2.body, "{path} differs between /v2 and /v3 beyond self");
        }
        let search = app.post("/v3/issues/_search?perPage=1", json!({"queue": "TEST"})).await;
        assert_conventions(&app, "v3", &search.body);
        let next = next_link(&search).expect("a next page");
        assert!(next.starts_with(&format!("{}/v3/issues/_search?", app.base)), "{next}");
    }

    async fn answers_use_tracker_dates_absolute_self_urls_and_never_null(app) {
        app.queue("TEST").await;
        let ivan_token = app.user_token("acme", "ivan", Role::Member).await;
        let field = app
            .post(
                "/v2/fields",
                json!({"id": "tags", "name": "Tags", "schema": {"type": "array", "items": "string"}}),
            )
            .await;
        app.issue("TEST", "Bare").await;
        let full = app
            .post(
                "/v2/issues",
                json!({
                    "queue": "TEST", "summary": "Full", "description": null, "assignee": null, "unique": null,
                    "tags": null, "parent": "TEST-1", "type": null,
                }),
            )
            .await;
        assert_eq!(full.status, 201, "null means absent: {}", full.body);
        assert!(
            full.body.get("description").is_none() && full.body.get("assignee").is_none(),
            "{}",
            full.body
        );
        assert!(
            full.body.get("tags").is_none() && full.body.get("unique").is_none(),
            "{}",
            full.body
        );

        let mut answers = vec![field, full];
        for path in [
            "/v2/myself",
            "/v2/users",
            "/v2/queues",
            "/v2/queues/TEST",
            "/v2/issuetypes",
            "/v2/statuses",
            "/v2/fields",
            "/v2/issues/TEST-1",
            "/v2/issues/TEST-2",
            "/v2/issues/TEST-2/transitions",
            "/v2/issues/TEST-2/links",
            "/v2/_tokens",
        ] {
            answers.push(app.get(path).await);
        }
        answers.push(
            app.patch(
                "/v2/issues/TEST-1",
                json!({"description": "now set", "assignee": "ivan"}),
            )
            .await,
        );
        answers.push(
            app.patch("/v2/issues/TEST-1", json!({"description": null, "assignee": null}))
                .await,
        );
        answers.push(app.post("/v2/issues/_search", json!({})).await);
        answers.push(
            app.post("/v2/issues/TEST-1/transitions/close/_execute", json!({}))
                .await,
        );
        answers.push(
            app.post(
                "/v2/issues/_import",
                import_body(json!({"updatedAt": "2021-05-06T07:08:09.010+0000", "updatedBy": "ivan"})),
            )
            .await,
        );
        answers.push(app.as_user(&ivan_token, "acme").get("/v2/myself").await);

        for a in &answers {
            assert!(a.status.is_success(), "{}", a.body);
            assert_conventions(&app, "v2", &a.body);
        }
        let cleared = &answers[answers.len() - 5].body;
        assert!(
            cleared.get("description").is_none() && cleared.get("assignee").is_none(),
            "cleared fields vanish: {cleared}"
        );
    }

    async fn content_type_json_is_accepted_on_get_and_on_a_bodiless_delete(app) {
        let ivan_token = app.user_token("acme", "ivan", Role::Member).await;
        let ivan = app.as_user(&ivan_token, "acme");
        let id = ivan.get("/v2/_tokens").await.body[0]["id"].as_i64().unwrap();

        let get = app
            .raw(
                with_token(&app, Method::GET, "/v2/myself", common::TOKEN)
                    .header("X-Org-ID", "acme")
                    .header("Content-Type", "application/json"),
            )
            .await;
        let search = app
            .raw(
                with_token(&app, Method::POST, "/v2/issues/_search", common::TOKEN)
                    .header("X-Org-ID", "acme")
                    .header("Content-Type", "application/json"),
            )
            .await;
        let delete = app
            .raw(
                with_token(&app, Method::DELETE, &format!("/v2/_tokens/{id}"), &ivan_token)
                    .header("X-Org-ID", "acme")
                    .header("Content-Type", "application/json"),
            )
            .await;

        assert_eq!(get.status, 200, "{}", get.body);
        assert_eq!(get.header("content-type"), Some("application/json"));
        assert_eq!(search.status, 200, "an empty body reads as {{}}: {}", search.body);
        assert_eq!(search.body, json!([]));
        assert_eq!(search.header("x-total-count"), Some("0"));
        assert_eq!(search.header("x-total-pages"), Some("1"));
        assert_eq!(delete.status, 204, "{}", delete.body);
        ivan.get("/v2/myself").await.expect_error(401);
    }

    async fn non_ascii_sent_as_u_escapes_round_trips(app) {
        app.queue("TEST").await;
        let raw_body = concat!(
            r#"{"queue": "TEST", "summary": "Caf\u00e9 \u2014 na\u00efve", "#,
            r#""description": "\u041f\u0440\u0438\u0432\u0435\u0442"}"#,
        );

        let created = app
            .raw(
                with_token(&app, Method::POST, "/v2/issues", common::TOKEN)
                    .header("X-Org-ID", "acme")
                    .header("Content-Type", "application/json")
                    .body(raw_body),
            )
            .await;
        let patched = app
            .patch("/v2/issues/TEST-1", json!({"description": "\u{e9}t\u{e9} \u{1F600}"}))
            .await;
        let read = app.get("/v2/issues/TEST-1").await;

        assert_eq!(created.status, 201, "{}", created.body);
        assert_eq!(created.body["summary"], "Café — naïve");
        assert_eq!(created.body["description"], "Привет");
        assert_eq!(patched.status, 200, "{}", patched.body);
        assert_eq!(read.body["summary"], "Café — naïve");
        assert_eq!(read.body["description"], "été 😀");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // §4 Users, queues, issue types, statuses
    // ---------------------------------------------------------------------------------------------------------------

    async fn myself_and_users_describe_the_caller_and_the_members_of_the_organization(app) {
        let _ = app.user_token("acme", "ivan", Role::Member).await;
        let _ = app.user_token("acme", "rita", Role::Reader).await;
        other_org(&app).await;

        let me = app.get("/v2/myself").await;
        let page1 = app.get("/v2/users?perPage=2").await;
        let page2 = app.get("/v2/users?perPage=2&page=2").await;
        let ivan = page1.body[1].clone();
        let by_uid = app.get(&format!("/v2/users/{}", ivan["uid"])).await;
        let by_login = app.get("/v2/users/ivan").await;

        assert_eq!(me.status, 200);
        assert_eq!(me.body["login"], "admin");
        assert!(me.body["uid"].is_i64(), "uid is a number: {}", me.body);
        assert_eq!(me.body["self"], format!("{}/v2/users/{}", app.base, me.body["uid"]));
        assert!(me.body["display"].is_string());
        assert_eq!(
            page1.header("x-total-count"),
            Some("3"),
            "bob of the other organization is not listed"
        );
        assert_eq!(page1.header("x-total-pages"), Some("2"));
        let next = next_link(&page1).expect("a next page");
        assert!(next.starts_with(&format!("{}/v2/users?", app.base)), "{next}");
        assert!(next.contains("perPage=2") && next.contains("page=2"), "{next}");
        let logins: Vec<_> = page1
            .body
            .as_array()
            .unwrap()
            .iter()
            .chain(page2.body.as_array().unwrap())
            .map(|u| u["login"].clone())
            .collect();
        assert_eq!(logins, [json!("admin"), json!("ivan"), json!("rita")]);
        assert!(next_link(&page2).is_none(), "no Link on the last page");
        assert_eq!(by_uid.status, 200);
        assert_eq!(by_uid.body, ivan);
        assert_eq!(by_login.body, ivan);
        app.get("/v2/users/ghost").await.expect_error(404);
        app.get("/v2/users/999999").await.expect_error(404);
        app.get("/v2/users?perPage=0").await.expect_error(400);
    }

    async fn queue_keys_are_one_to_fifteen_uppercase_letters_and_unique(app) {
        let create = |key: Value| app.post("/v2/queues", json!({"key": key, "name": "Q"}));

        let one = create(json!("A")).await;
        let fifteen = create(json!("ABCDEFGHIJKLMNO")).await;
        let sixteen = create(json!("ABCDEFGHIJKLMNOP")).await;
        let lower = create(json!("test")).await;
        let digit = create(json!("TE1")).await;
        let cyrillic = create(json!("ТЕСТ")).await;
        let empty = create(json!("")).await;
        let dash = create(json!("A-B")).await;
        let missing = app.post("/v2/queues", json!({"name": "No key"})).await;
        let number = create(json!(5)).await;
        let duplicate = create(json!("A")).await;

        assert_eq!(one.status, 201, "{}", one.body);
        assert_eq!(one.body["key"], "A");
        assert_eq!(fifteen.status, 201, "{}", fifteen.body);
        for a in [&sixteen, &lower, &digit, &cyrillic, &empty, &dash] {
            a.expect_error(422);
            assert!(a.body["errors"]["key"].is_string(), "{}", a.body);
        }
        missing.expect_error(422);
        assert!(missing.body["errors"]["key"].is_string(), "{}", missing.body);
        number.expect_error(400);
        duplicate.expect_error(409);
        let listed = app.get("/v2/queues").await;
        assert_eq!(keys(&listed.body), ["A", "ABCDEFGHIJKLMNO"]);
        assert_eq!(listed.header("x-total-count"), Some("2"));
    }

    async fn a_queue_is_created_with_its_lead_and_default_type_and_found_by_key_or_id(app) {
        let _ = app.user_token("acme", "ivan", Role::Member).await;

        let created = app
            .post(
                "/v2/queues",
                json!({"key": "BUGS", "name": "Bugs", "lead": "ivan", "defaultType": "bug"}),
            )
            .await;
        let plain = app.post("/v2/queues", json!({"key": "PLAIN"})).await;
        let bad_lead = app.post("/v2/queues", json!({"key": "NOLEAD", "lead": "ghost"})).await;
        let bad_type = app
            .post("/v2/queues", json!({"key": "NOTYPE", "defaultType": "story"}))
            .await;
        let id = created.body["id"].as_str().unwrap().to_owned();
        let by_key = app.get("/v2/queues/BUGS").await;
        let by_id = app.get(&format!("/v2/queues/{id}")).await;

        assert_eq!(created.status, 201, "{}", created.body);
        assert_eq!(created.body["self"], format!("{}/v2/queues/BUGS", app.base));
        assert_eq!(created.body["name"], "Bugs");
        assert_eq!(created.body["lead"]["display"], "ivan");
        assert_eq!(created.body["defaultType"]["key"], "bug");
        assert_eq!(plain.status, 201, "{}", plain.body);
        assert_eq!(plain.body["defaultType"]["key"], "task");
        assert_eq!(plain.body["name"], "PLAIN");
        bad_lead.expect_error(422);
        bad_type.expect_error(422);
        assert_eq!(by_key.status, 200);
        assert_eq!(by_key.body, created.body);
        assert_eq!(by_id.body, created.body);
        app.get("/v2/queues/NOPE").await.expect_error(404);
        app.get("/v2/queues/999999").await.expect_error(404);
        assert_eq!(keys(&app.get("/v2/queues").await.body), ["BUGS", "PLAIN"]);
    }

    async fn the_queue_list_is_paginated_with_total_headers_and_next_links(app) {
        for key in ["QA", "QB", "QC", "QD", "QE"] {
            app.queue(key).await;
        }

        let first = app.get("/v2/queues?perPage=2").await;
        let second = app
            .get(next_link(&first).unwrap().strip_prefix(&app.base).unwrap())
            .await;
        let third = app
            .get(next_link(&second).unwrap().strip_prefix(&app.base).unwrap())
            .await;
        let beyond = app.get("/v2/queues?perPage=2&page=9").await;
        let default = app.get("/v2/queues").await;

        assert_eq!(first.header("x-total-count"), Some("5"));
        assert_eq!(first.header("x-total-pages"), Some("3"));
        let link = first.header("link").unwrap();
        assert!(
            link.contains("perPage=2") && link.contains("page=2") && link.ends_with("rel=\"next\""),
            "{link}"
        );
        let all: Vec<String> = [&first, &second, &third].iter().flat_map(|a| keys(&a.body)).collect();
        assert_eq!(all, ["QA", "QB", "QC", "QD", "QE"]);
        assert!(next_link(&third).is_none(), "no Link on the last page");
        assert_eq!(beyond.status, 200);
        assert_eq!(beyond.body, json!([]));
        assert_eq!(keys(&default.body).len(), 5);
        assert_eq!(default.header("x-total-pages"), Some("1"));
        assert!(default.header("link").is_none());
        for bad in ["perPage=0", "perPage=1001", "perPage=x", "page=0", "page=-1", "page=y"] {
            app.get(&format!("/v2/queues?{bad}")).await.expect_error(400);
        }
        assert_eq!(app.get("/v2/queues?perPage=1000").await.status, 200);
    }

    async fn issue_types_and_statuses_are_listed_and_found_by_id_or_key(app) {
        let types = app.get("/v2/issuetypes").await;
        let statuses = app.get("/v2/statuses").await;

        assert_eq!(types.status, 200);
        let type_keys: Vec<_> = types
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].clone())
            .collect();
        for k in ["bug", "task", "epic"] {
            assert!(type_keys.contains(&json!(k)), "{k} in {}", types.body);
        }
        let status_keys: Vec<_> = statuses
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].clone())
            .collect();
        for k in ["open", "inProgress", "closed"] {
            assert!(status_keys.contains(&json!(k)), "{k} in {}", statuses.body);
        }
        for (kind, list) in [("issuetypes", &types.body), ("statuses", &statuses.body)] {
            for item in list.as_array().unwrap() {
                assert!(item["id"].is_string() && item["display"].is_string(), "{item}");
                let id = item["id"].as_str().unwrap();
                assert_eq!(item["self"], format!("{}/v2/{kind}/{id}", app.base));
                let by_id = app.get(&format!("/v2/{kind}/{id}")).await;
                let by_key = app.get(&format!("/v2/{kind}/{}", item["key"].as_str().unwrap())).await;
                assert_eq!(&by_id.body, item);
                assert_eq!(&by_key.body, item);
            }
        }
        app.get("/v2/issuetypes/story").await.expect_error(404);
        app.get("/v2/statuses/999").await.expect_error(404);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // §4 Fields
    // ---------------------------------------------------------------------------------------------------------------

    async fn fields_list_system_fields_and_custom_fields_are_created_idempotently(app) {
        let tags = json!({"id": "tags", "name": "Tags", "schema": {"type": "array", "items": "string"}});

        let system = app.get("/v2/fields").await;
        let created = app.post("/v2/fields", tags.clone()).await;
        let again = app.post("/v2/fields", tags).await;
        let retyped = app
            .post("/v2/fields", json!({"id": "tags", "schema": {"type": "number"}}))
            .await;
        let system_id = app
            .post("/v2/fields", json!({"id": "summary", "schema": {"type": "string"}}))
            .await;
        let system_id_other_case = app
            .post("/v2/fields", json!({"id": "Assignee", "schema": {"type": "string"}}))
            .await;
        let bad_type = app
            .post(
                "/v2/fields",
                json!({"id": "nums", "schema": {"type": "array", "items": "number"}}),
            )
            .await;
        let bad_id = app
            .post("/v2/fields", json!({"id": "9lives", "schema": {"type": "string"}}))
            .await;
        let no_schema = app.post("/v2/fields", json!({"id": "nothing"})).await;
        let after = app.get("/v2/fields").await;

        let summary = system
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == "summary")
            .cloned()
            .expect("summary field");
        assert_eq!(summary["schema"]["type"], "string");
        assert_eq!(summary["self"], format!("{}/v2/fields/summary", app.base));
        assert!(summary["name"].is_string());
        assert_eq!(created.status, 201, "{}", created.body);
        assert_eq!(created.body["schema"]["type"], "array");
        assert_eq!(created.body["schema"]["items"], "string");
        assert_eq!(created.body["self"], format!("{}/v2/fields/tags", app.base));
        assert_eq!(
            again.status, 200,
            "the same field again is not an error: {}",
            again.body
        );
        assert_eq!(again.body, created.body);
        retyped.expect_error(409);
        for a in [&system_id, &system_id_other_case, &bad_type, &bad_id, &no_schema] {
            a.expect_error(422);
        }
        assert_eq!(
            after.body.as_array().unwrap().len(),
            system.body.as_array().unwrap().len() + 1
        );
        assert_eq!(app.get("/v2/fields/tags").await.body, created.body);
        app.get("/v2/fields/nothing").await.expect_error(404);
    }

    async fn an_array_field_is_set_added_to_removed_from_and_cleared_by_patch(app) {
        app.queue("TEST").await;
        app.post(
            "/v2/fields",
            json!({"id": "tags", "name": "Tags", "schema": {"type": "array", "items": "string"}}),
        )
        .await;
        app.post(
            "/v2/fields",
            json!({"id": "points", "name": "Points", "schema": {"type": "number"}}),
        )
        .await;
        let created = app
            .issue_with(json!({"queue": "TEST", "summary": "Tagged", "tags": ["x"], "points": 3}))
            .await;
        assert_eq!(created["tags"], json!(["x"]));
        assert_eq!(created["points"], json!(3));

        let set = app.patch("/v2/issues/TEST-1", json!({"tags": ["a", "b"]})).await;
        let add = app
            .patch("/v2/issues/TEST-1", json!({"tags": {"add": ["c", "a"]}}))
            .await;
        let remove = app.patch("/v2/issues/TEST-1", json!({"tags": {"remove": ["a"]}})).await;
        let add_one = app.patch("/v2/issues/TEST-1", json!({"tags": {"add": "d"}})).await;
        let add_to_number = app.patch("/v2/issues/TEST-1", json!({"points": {"add": 1}})).await;
        let wrong_item = app.patch("/v2/issues/TEST-1", json!({"tags": [1, 2]})).await;
        let cleared = app
            .patch("/v2/issues/TEST-1", json!({"tags": {"set": null}, "points": null}))
            .await;
        let read = app.get("/v2/issues/TEST-1").await;

        assert_eq!(set.body["tags"], json!(["a", "b"]), "{}", set.body);
        assert_eq!(add.body["tags"], json!(["a", "b", "c"]), "{}", add.body);
        assert_eq!(remove.body["tags"], json!(["b", "c"]), "{}", remove.body);
        assert_eq!(add_one.body["tags"], json!(["b", "c", "d"]), "{}", add_one.body);
        add_to_number.expect_error(422);
        wrong_item.expect_error(422);
        assert_eq!(cleared.status, 200, "{}", cleared.body);
        assert!(
            cleared.body.get("tags").is_none() && cleared.body.get("points").is_none(),
            "{}",
            cleared.body
        );
        assert!(read.body.get("tags").is_none(), "{}", read.body);
        assert_eq!(read.body["version"], 6, "five successful edits");
    }

    async fn an_unknown_field_in_a_patch_is_422_and_changes_nothing(app) {
        app.queue("TEST").await;
        app.post(
            "/v2/fields",
            json!({"id": "tags", "name": "Tags", "schema": {"type": "array", "items": "string"}}),
        )
        .await;
        let before = app
            .issue_with(json!({"queue": "TEST", "summary": "Original", "tags": ["a"]}))
            .await;

        let misspelt = app
            .patch(
                "/v2/issues/TEST-1",
                json!({"summary": "Changed", "tagz": ["b"], "tags": ["c"]}),
            )
            .await;
        let after = app.get("/v2/issues/TEST-1").await;

        misspelt.expect_error(422);
        assert!(misspelt.body["errors"]["tagz"].is_string(), "{}", misspelt.body);
        assert_eq!(after.body, before, "nothing changed");
    }

    async fn references_in_bodies_come_in_every_form_the_client_sends(app) {
        app.queue("TEST").await;
        let ivan = app.as_user(&app.user_token("acme", "ivan", Role::Member).await, "acme");
        let uid = ivan.get("/v2/myself").await.body["uid"].as_i64().unwrap();
        let queue_id = app.get("/v2/queues/TEST").await.body["id"].as_str().unwrap().to_owned();
        let users = [
            json!("ivan"),
            json!(uid),
            json!(uid.to_string()),
            json!({"uid": uid}),
            json!({"id": uid.to_string()}),
            json!({"login": "ivan"}),
        ];
        let queues = [
            json!("TEST"),
            json!(queue_id),
            json!({"key": "TEST"}),
            json!({"id": queue_id}),
            json!({"name": "queue test"}),
        ];
        let types = [
            json!("bug"),
            json!(1),
            json!("1"),
            json!({"key": "bug"}),
            json!({"id": "1"}),
            json!({"name": "BUG"}),
        ];

        let mut created = Vec::new();
        for u in &users {
            created.push(
                app.post(
                    "/v2/issues",
                    json!({"queue": "TEST", "summary": "by user ref", "assignee": u}),
                )
                .await,
            );
        }
        for q in &queues {
            created.push(
                app.post(
                    "/v2/issues",
                    json!({"queue": q, "summary": "by queue ref", "type": "bug"}),
                )
                .await,
            );
        }
        for t in &types {
            created.push(
                app.post(
                    "/v2/issues",
                    json!({"queue": "TEST", "summary": "by type ref", "type": t}),
                )
                .await,
            );
        }
        let by_queue_and_user_refs = app
            .post(
                "/v2/issues/_search",
                json!({"filter": {"queue": {"key": "TEST"}, "assignee": {"uid": uid}}}),
            )
            .await;
        let by_type_ref = app
            .post("/v2/issues/_search", json!({"filter": {"type": {"id": "1"}}}))
            .await;

        for (i, a) in created.iter().enumerate() {
            assert_eq!(a.status, 201, "reference #{i}: {}", a.body);
        }
        for a in &created[..users.len()] {
            assert_eq!(a.body["assignee"]["id"], uid.to_string(), "{}", a.body);
        }
        for a in &created[users.len()..] {
            assert_eq!(
                (a.body["queue"]["key"].as_str(), a.body["type"]["key"].as_str()),
                (Some("TEST"), Some("bug"))
            );
        }
        assert_eq!(
            keys(&by_queue_and_user_refs.body),
            ["TEST-1", "TEST-2", "TEST-3", "TEST-4", "TEST-5", "TEST-6"]
        );
        let bugs = (queues.len() + types.len()).to_string();
        assert_eq!(
            by_type_ref.header("x-total-count"),
            Some(bugs.as_str()),
            "{}",
            by_type_ref.body
        );
    }

    async fn custom_fields_of_every_type_validate_and_normalise_their_values(app) {
        app.queue("TEST").await;
        for (id, ty) in [
            ("note", "string"),
            ("points", "number"),
            ("due", "date"),
            ("seen", "datetime"),
            ("owner", "user"),
        ] {
            let f = app
                .post("/v2/fields", json!({"id": id, "name": id, "schema": {"type": ty}}))
                .await;
            assert_eq!(
                (f.status.as_u16(), f.body["schema"]["type"].as_str()),
                (201, Some(ty)),
                "{}",
                f.body
            );
            assert!(f.body["schema"].get("items").is_none(), "{}", f.body);
        }

        let good = app
            .post(
                "/v2/issues",
                json!({
                    "queue": "TEST", "summary": "Typed", "note": "text", "points": 2.5, "due": "2024-02-29",
                    "seen": "2024-03-01T12:00:00+0300", "owner": "admin",
                }),
            )
            .await;
        let bad = [
            app.post("/v2/issues", json!({"queue": "TEST", "summary": "s", "note": 5}))
                .await,
            app.post("/v2/issues", json!({"queue": "TEST", "summary": "s", "points": "5"}))
                .await,
            app.post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "s", "due": "2023-02-29"}),
            )
            .await,
            app.post("/v2/issues", json!({"queue": "TEST", "summary": "s", "seen": "soon"}))
                .await,
            app.post("/v2/issues", json!({"queue": "TEST", "summary": "s", "owner": "ghost"}))
                .await,
            app.patch("/v2/issues/TEST-1", json!({"due": "tomorrow"})).await,
        ];
        let cleared = app
            .patch("/v2/issues/TEST-1", json!({"note": null, "points": {"set": null}}))
            .await;

        assert_eq!(good.status, 201, "{}", good.body);
        assert_eq!(good.body["note"], "text");
        assert_eq!(good.body["points"], 2.5);
        assert_eq!(good.body["due"], "2024-02-29");
        assert_eq!(
            good.body["seen"], "2024-03-01T09:00:00.000+0000",
            "datetimes are stored in the API's format, UTC"
        );
        assert!(good.body.get("owner").is_some(), "{}", good.body);
        for (i, a) in bad.iter().enumerate() {
            a.expect_error(422);
            assert_eq!(
                a.body["errors"].as_object().map(|e| e.len()),
                Some(1),
                "bad value #{i}: {}",
                a.body
            );
        }
        assert!(
            cleared.body.get("note").is_none() && cleared.body.get("points").is_none(),
            "{}",
            cleared.body
        );
        assert_eq!(cleared.body["due"], "2024-02-29", "other fields stay");
        assert_eq!(app.count("issues").await, 1);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // §4 Issues
    // ---------------------------------------------------------------------------------------------------------------

    async fn an_issue_is_created_with_every_field_and_read_by_key_or_id(app) {
        app.queue("TEST").await;
        let _ = app.user_token("acme", "ivan", Role::Member).await;

        let created = app
            .post(
                "/v2/issues",
                json!({
                    "queue": {"key": "TEST"}, "summary": "Everything", "description": "Long text",
                    "type": {"key": "bug"}, "assignee": {"login": "ivan"}, "unknownInput": "ignored",
                }),
            )
            .await;
        let id = created.body["id"].as_str().unwrap().to_owned();
        let by_key = app.get("/v2/issues/TEST-1").await;
        let by_id = app.get(&format!("/v2/issues/{id}")).await;

        assert_eq!(created.status, 201, "{}", created.body);
        let i = &created.body;
        assert_eq!(i["self"], format!("{}/v2/issues/TEST-1", app.base));
        assert_eq!(i["key"], "TEST-1");
        assert!(
            id.parse::<i64>().is_ok(),
            "an issue id is a number rendered as a string: {id}"
        );
        assert_eq!(i["version"], 1);
        assert_eq!(i["summary"], "Everything");
        assert_eq!(i["description"], "Long text");
        assert_eq!(i["type"]["key"], "bug");
        assert_eq!(i["status"]["key"], "open");
        assert_eq!(i["queue"]["key"], "TEST");
        assert_eq!(i["assignee"]["display"], "ivan");
        assert_eq!(i["createdBy"]["display"], "Administrator");
        assert_eq!(i["updatedBy"], i["createdBy"]);
        assert_eq!(i["createdAt"], i["updatedAt"]);
        assert!(i.get("unknownInput").is_none());
        assert_eq!(by_key.body, created.body);
        assert_eq!(by_id.body, created.body);
        app.get("/v2/issues/TEST-2").await.expect_error(404);
        app.get("/v2/issues/not-a-key").await.expect_error(404);
        app.get("/v2/issues/999999").await.expect_error(404);
    }

    async fn unique_makes_a_create_idempotent_and_findable(app) {
        app.queue("TEST").await;

        let created = app
            .post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "Once", "unique": "ext-42"}),
            )
            .await;
        let again = app
            .post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "Twice", "unique": "ext-42"}),
            )
            .await;
        let found = app.post("/v2/issues/_findByUnique?unique=ext-42", json!({})).await;
        let missing = app.post("/v2/issues/_findByUnique?unique=ext-43", json!({})).await;
        let no_param = app.post("/v2/issues/_findByUnique", json!({})).await;

        assert_eq!(created.status, 201, "{}", created.body);
        again.expect_error(409);
        assert_eq!(found.status, 200, "{}", found.body);
        assert_eq!(found.body["key"], "TEST-1");
        assert_eq!(found.body, created.body);
        missing.expect_error(404);
        no_param.expect_error(400);
        assert_eq!(app.count("issues").await, 1);
        assert_eq!(app.issue("TEST", "Next").await["key"], "TEST-2");
    }

    async fn patch_bumps_the_version_and_honours_if_match(app) {
        app.queue("TEST").await;
        let _ = app.user_token("acme", "ivan", Role::Member).await;
        let created = app.issue("TEST", "Before").await;
        pause().await;
        let patch_with = |if_match: &'static str, body: Value| {
            app.raw(
                with_token(&app, Method::PATCH, "/v2/issues/TEST-1", common::TOKEN)
                    .header("X-Org-ID", "acme")
                    .header("Content-Type", "application/json")
                    .header("If-Match", if_match)
                    .body(body.to_string()),
            )
        };

        let first = app
            .patch("/v2/issues/TEST-1", json!({"summary": "After", "assignee": "ivan"}))
            .await;
        let stale = patch_with("\"1\"", json!({"summary": "Stale"})).await;
        let bare_ok = patch_with("2", json!({"summary": "Bare"})).await;
        let quoted_ok = patch_with("\"3\"", json!({"description": "Quoted"})).await;
        let garbage = patch_with("abc", json!({"summary": "Garbage"})).await;
        let read = app.get("/v2/issues/TEST-1").await;

        assert_eq!(first.status, 200, "{}", first.body);
        assert_eq!(first.body["version"], 2);
        assert_eq!(first.body["summary"], "After");
        assert_eq!(first.body["assignee"]["display"], "ivan");
        assert_eq!(first.body["createdAt"], created["createdAt"]);
        assert!(
            first.body["updatedAt"].as_str() > created["updatedAt"].as_str(),
            "updatedAt moves: {}",
            first.body
        );
        stale.expect_error(409);
        assert_eq!(bare_ok.status, 200, "{}", bare_ok.body);
        assert_eq!(bare_ok.body["version"], 3);
        assert_eq!(quoted_ok.status, 200, "{}", quoted_ok.body);
        assert_eq!(quoted_ok.body["version"], 4);
        garbage.expect_error(400);
        assert_eq!(read.body["version"], 4);
        assert_eq!(read.body["summary"], "Bare");
        assert_eq!(read.body["description"], "Quoted");
    }

    async fn system_fields_other_than_summary_description_and_assignee_cannot_be_patched(app) {
        app.queue("TEST").await;
        let before = app.issue("TEST", "Fixed type").await;

        let ty = app.patch("/v2/issues/TEST-1", json!({"type": "bug"})).await;
        let status = app.patch("/v2/issues/TEST-1", json!({"status": "closed"})).await;
        let queue = app.patch("/v2/issues/TEST-1", json!({"queue": "OTHER"})).await;
        let empty_summary = app.patch("/v2/issues/TEST-1", json!({"summary": ""})).await;
        let unknown_assignee = app.patch("/v2/issues/TEST-1", json!({"assignee": "ghost"})).await;
        let add_to_summary = app.patch("/v2/issues/TEST-1", json!({"summary": {"add": "x"}})).await;
        let set_summary = app
            .patch("/v2/issues/TEST-1", json!({"summary": {"set": "Via set"}}))
            .await;

        ty.expect_error(422);
        assert!(ty.body["errors"]["type"].is_string(), "{}", ty.body);
        status.expect_error(422);
        queue.expect_error(422);
        empty_summary.expect_error(422);
        unknown_assignee.expect_error(422);
        add_to_summary.expect_error(422);
        assert_eq!(set_summary.status, 200, "{}", set_summary.body);
        let after = app.get("/v2/issues/TEST-1").await.body;
        assert_eq!(after["type"], before["type"]);
        assert_eq!(after["status"]["key"], "open");
        assert_eq!(after["version"], 2, "only the set succeeded");
    }

    async fn a_parent_on_create_makes_a_subtask_link_and_touches_the_parent_but_not_its_version(app) {
        app.queue("TEST").await;
        let parent = app.issue("TEST", "Parent").await;
        pause().await;

        let child = app
            .post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "Child", "parent": "TEST-1"}),
            )
            .await;
        let by_id = app
            .post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "Child by id", "parent": parent["id"]}),
            )
            .await;
        let by_object = app
            .post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "Child by object", "parent": {"key": "TEST-1"}}),
            )
            .await;
        let child_links = app.get("/v2/issues/TEST-2/links").await;
        let parent_links = app.get("/v2/issues/TEST-1/links").await;
        let parent_after = app.get("/v2/issues/TEST-1").await.body;

        assert_eq!(child.status, 201, "{}", child.body);
        let p = &child.body["parent"];
        assert_eq!(p["key"], "TEST-1");
        assert_eq!(p["id"], parent["id"]);
        assert_eq!(p["self"], format!("{}/v2/issues/TEST-1", app.base));
        assert_eq!(p["display"], "Parent");
        assert_eq!(by_id.body["parent"]["key"], "TEST-1", "{}", by_id.body);
        assert_eq!(by_object.body["parent"]["key"], "TEST-1", "{}", by_object.body);
        assert_eq!(app.get("/v2/issues/TEST-2").await.body["parent"]["key"], "TEST-1");
        let links = child_links.body.as_array().unwrap();
        assert_eq!(links.len(), 1, "{}", child_links.body);
        assert_eq!(links[0]["type"]["id"], "subtask");
        assert_eq!(links[0]["direction"], "inward");
        assert_eq!(links[0]["object"]["key"], "TEST-1");
        let outward: Vec<_> = parent_links
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["direction"].clone(), l["object"]["key"].clone()))
            .collect();
        assert_eq!(outward.len(), 3);
        assert!(outward.iter().all(|(d, _)| d == "outward"), "{}", parent_links.body);
        assert!(parent.get("parent").is_none());
        assert_eq!(parent_after["version"], 1, "link changes do not bump the version");
        assert!(
            parent_after["updatedAt"].as_str() > parent["updatedAt"].as_str(),
            "but they bump updatedAt: {parent_after}"
        );
    }

    async fn an_issue_takes_its_queues_default_type_unless_it_names_one(app) {
        app.post(
            "/v2/queues",
            json!({"key": "BUGS", "name": "Bugs", "defaultType": "bug"}),
        )
        .await;
        app.post(
            "/v2/queues",
            json!({"key": "EPICS", "name": "Epics", "defaultType": {"key": "epic"}}),
        )
        .await;
        app.queue("TEST").await;

        let defaulted = app.issue("BUGS", "Defaulted").await;
        let explicit = app
            .issue_with(json!({"queue": "BUGS", "summary": "Explicit", "type": "task"}))
            .await;
        let by_id = app
            .issue_with(json!({"queue": "BUGS", "summary": "By id", "type": 3}))
            .await;
        let by_name = app
            .issue_with(json!({"queue": "BUGS", "summary": "By name", "type": {"name": "EPIC"}}))
            .await;
        let epic = app.issue("EPICS", "Epic queue").await;
        let plain = app.issue("TEST", "Plain").await;

        assert_eq!(defaulted["type"]["key"], "bug");
        assert_eq!(explicit["type"]["key"], "task");
        assert_eq!(by_id["type"]["key"], "epic");
        assert_eq!(by_name["type"]["key"], "epic");
        assert_eq!(epic["type"]["key"], "epic");
        assert_eq!(plain["type"]["key"], "task");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // §4 Search
    // ---------------------------------------------------------------------------------------------------------------

    async fn search_filters_by_queue_status_type_and_assignee(app) {
        app.queue("TEST").await;
        app.queue("OTHER").await;
        let _ = app.user_token("acme", "ivan", Role::Member).await;
        app.issue_with(json!({"queue": "TEST", "summary": "Bug", "type": "bug", "assignee": "ivan"}))
            .await;
        app.issue("TEST", "Task").await;
        app.issue("TEST", "Closed").await;
        app.post("/v2/issues/TEST-3/transitions/close/_execute", json!({}))
            .await;
        app.issue_with(json!({"queue": "OTHER", "summary": "Epic", "type": "epic", "assignee": "ivan"}))
            .await;
        let search = |body: Value| app.post("/v2/issues/_search", body);

        let by_queue = search(json!({"filter": {"queue": "TEST"}})).await;
        let by_status = search(json!({"filter": {"status": "closed"}})).await;
        let by_statuses = search(json!({"filter": {"queue": "TEST", "status": ["open", "inProgress"]}})).await;
        let by_type = search(json!({"filter": {"type": "bug"}})).await;
        let by_assignee = search(json!({"filter": {"assignee": "ivan"}})).await;
        let unassigned = search(json!({"filter": {"assignee": "empty()"}})).await;
        let combined = search(json!({"filter": {"queue": "OTHER", "type": "epic", "assignee": "ivan"}})).await;
        let nothing = search(json!({"filter": {"queue": "OTHER", "type": "bug"}})).await;
        let everything = search(json!({})).await;
        let unknown_queue = search(json!({"filter": {"queue": "NOPE"}})).await;
        let unknown_status = search(json!({"filter": {"status": "limbo"}})).await;

        assert_eq!(keys(&by_queue.body), ["TEST-1", "TEST-2", "TEST-3"]);
        assert_eq!(by_queue.header("x-total-count"), Some("3"));
        assert_eq!(keys(&by_status.body), ["TEST-3"]);
        assert_eq!(keys(&by_statuses.body), ["TEST-1", "TEST-2"]);
        assert_eq!(keys(&by_type.body), ["TEST-1"]);
        assert_eq!(keys(&by_assignee.body), ["OTHER-1", "TEST-1"]);
        assert_eq!(keys(&unassigned.body), ["TEST-2", "TEST-3"]);
        assert_eq!(keys(&combined.body), ["OTHER-1"]);
        assert_eq!(nothing.body, json!([]));
        assert_eq!(nothing.header("x-total-count"), Some("0"));
        assert_eq!(keys(&everything.body), ["OTHER-1", "TEST-1", "TEST-2", "TEST-3"]);
        unknown_queue.expect_error(422);
        unknown_status.expect_error(422);
        assert_conventions(&app, "v2", &everything.body);
    }

    async fn search_takes_a_queue_or_a_list_of_keys(app) {
        app.queue("TEST").await;
        app.queue("OTHER").await;
        for _ in 0..3 {
            app.issue("TEST", "t").await;
        }
        app.issue("OTHER", "o").await;

        let queue = app.post("/v2/issues/_search", json!({"queue": "OTHER"})).await;
        let keys_only = app
            .post("/v2/issues/_search", json!({"keys": ["TEST-3", "OTHER-1", "TEST-99"]}))
            .await;
        let one_key = app.post("/v2/issues/_search", json!({"keys": "TEST-2"})).await;

        assert_eq!(queue.status, 200, "{}", queue.body);
        assert_eq!(keys(&queue.body), ["OTHER-1"]);
        assert_eq!(keys(&keys_only.body), ["OTHER-1", "TEST-3"]);
        assert_eq!(keys(&one_key.body), ["TEST-2"]);
    }

    async fn search_orders_by_key_numerically_and_by_updated_at(app) {
        app.queue("TEST").await;
        for summary in ["one", "two", "three"] {
            app.issue("TEST", summary).await;
            pause().await;
        }
        let imported = app
            .post("/v2/issues/_import", import_body(json!({"key": "TEST-10"})))
            .await;
        assert_eq!(imported.status, 200, "{}", imported.body);
        app.patch("/v2/issues/TEST-2", json!({"summary": "two, edited"})).await;
        let order = |o: Value| app.post("/v2/issues/_search", json!({"queue": "TEST", "order": o}));

        let plus_key = order(json!("+key")).await;
        let minus_key = order(json!("-key")).await;
        let default = app.post("/v2/issues/_search", json!({"queue": "TEST"})).await;
        let minus_updated = order(json!(["-updatedAt"])).await;
        let plus_updated = order(json!("+updatedAt")).await;
        let bad_column = order(json!("+colour")).await;
        let two_columns = order(json!(["+key", "-updatedAt"])).await;

        assert_eq!(keys(&plus_key.body), ["TEST-1", "TEST-2", "TEST-3", "TEST-10"]);
        assert_eq!(keys(&minus_key.body), ["TEST-10", "TEST-3", "TEST-2", "TEST-1"]);
        assert_eq!(keys(&default.body), keys(&plus_key.body));
        assert_eq!(keys(&minus_updated.body), ["TEST-2", "TEST-3", "TEST-1", "TEST-10"]);
        assert_eq!(keys(&plus_updated.body), ["TEST-10", "TEST-1", "TEST-3", "TEST-2"]);
        bad_column.expect_error(400);
        two_columns.expect_error(400);
    }

    async fn a_search_with_a_query_is_400_and_a_null_query_is_ignored(app) {
        app.queue("TEST").await;
        app.issue("TEST", "One").await;

        let query = app.post("/v2/issues/_search", json!({"query": "Queue: TEST"})).await;
        let null_query = app
            .post("/v2/issues/_search", json!({"query": null, "queue": "TEST"}))
            .await;
        let bad_page = app.post("/v2/issues/_search?perPage=1001", json!({})).await;

        query.expect_error(400);
        assert_eq!(keys(&null_query.body), ["TEST-1"]);
        bad_page.expect_error(400);
    }

    async fn search_pages_return_every_issue_exactly_once(app) {
        app.queue("TEST").await;
        for n in 1..=7 {
            app.issue("TEST", &format!("Issue {n}")).await;
        }
        let body = json!({"filter": {"queue": "TEST"}, "order": "-key"});

        let mut seen = Vec::new();
        let mut pages = 0;
        let mut path = "/v2/issues/_search?perPage=3".to_owned();
        loop {
            let a = app.post(&path, body.clone()).await;
            assert_eq!(a.status, 200, "{}", a.body);
            assert_eq!(a.header("x-total-count"), Some("7"));
            assert_eq!(a.header("x-total-pages"), Some("3"));
            seen.extend(keys(&a.body));
            pages += 1;
            match next_link(&a) {
                Some(next) => path = next.strip_prefix(&app.base).unwrap().to_owned(),
                None => break,
            }
            assert!(pages < 10, "pagination does not end");
        }

        assert_eq!(pages, 3);
        let expected: Vec<String> = (1..=7).rev().map(|n| format!("TEST-{n}")).collect();
        assert_eq!(seen, expected);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // §4 Transitions
    // ---------------------------------------------------------------------------------------------------------------

    async fn the_transitions_of_an_open_issue_are_start_progress_and_close(app) {
        app.queue("TEST").await;
        app.issue("TEST", "Open").await;

        let list = app.get("/v2/issues/TEST-1/transitions").await;
        let one = app.get("/v2/issues/TEST-1/transitions/close").await;
        let unavailable = app.get("/v2/issues/TEST-1/transitions/reopen").await;
        let unknown = app.get("/v2/issues/TEST-1/transitions/fly").await;

        assert_eq!(list.status, 200);
        assert_eq!(ids(&list.body), ["start_progress", "close"]);
        let close = &list.body[1];
        assert_eq!(
            close["self"],
            format!("{}/v2/issues/TEST-1/transitions/close", app.base)
        );
        assert_eq!(close["to"]["key"], "closed");
        assert!(close["display"].is_string());
        assert_eq!(list.body[0]["to"]["key"], "inProgress");
        assert_eq!(&one.body, close);
        unavailable.expect_error(404);
        unknown.expect_error(404);
    }

    async fn executing_transitions_moves_the_issue_through_the_workflow(app) {
        app.queue("TEST").await;
        app.issue("TEST", "Workflow").await;

        let close = app
            .post(
                "/v2/issues/TEST-1/transitions/close/_execute",
                json!({"comment": "done", "resolution": "fixed"}),
            )
            .await;
        let closed = app.get("/v2/issues/TEST-1").await.body;
        let close_again = execute(&app, "TEST-1", "close").await;
        let start_from_closed = execute(&app, "TEST-1", "start_progress").await;
        let reopen = execute(&app, "TEST-1", "reopen").await;
        let start = execute(&app, "TEST-1", "start_progress").await;
        let in_progress = app.get("/v2/issues/TEST-1").await.body;
        let by_id = app
            .post(
                &format!(
                    "/v2/issues/{}/transitions/close/_execute",
                    closed["id"].as_str().unwrap()
                ),
                json!({}),
            )
            .await;

        assert_eq!(close.status, 200, "{}", close.body);
        assert_eq!(ids(&close.body), ["reopen"]);
        assert_eq!(
            close.body[0]["self"],
            format!("{}/v2/issues/TEST-1/transitions/reopen", app.base)
        );
        assert_eq!(closed["status"]["key"], "closed");
        assert_eq!(closed["version"], 2);
        assert_eq!(closed["resolution"]["key"], "fixed");
        close_again.expect_error(404);
        start_from_closed.expect_error(404);
        assert_eq!(ids(&reopen.body), ["start_progress", "close"]);
        assert_eq!(ids(&start.body), ["close"]);
        assert_eq!(in_progress["status"]["key"], "inProgress");
        assert_eq!(in_progress["version"], 4);
        assert!(
            in_progress.get("resolution").is_none(),
            "reopening clears the resolution: {in_progress}"
        );
        assert_eq!(ids(&by_id.body), ["reopen"]);
    }

    async fn a_reader_cannot_execute_a_transition_and_nothing_changes(app) {
        app.queue("TEST").await;
        app.issue("TEST", "Guarded").await;
        let reader = app.as_user(&app.user_token("acme", "rita", Role::Reader).await, "acme");

        let denied = reader
            .post("/v2/issues/TEST-1/transitions/close/_execute", json!({}))
            .await;
        let listed = reader.get("/v2/issues/TEST-1/transitions").await;

        denied.expect_error(403);
        assert_eq!(ids(&listed.body), ["start_progress", "close"]);
        let issue = app.get("/v2/issues/TEST-1").await.body;
        assert_eq!(
            (issue["status"]["key"].as_str(), issue["version"].as_i64()),
            (Some("open"), Some(1))
        );
    }

    // ---------------------------------------------------------------------------------------------------------------
    // §4 Issue import
    // ---------------------------------------------------------------------------------------------------------------

    async fn an_import_keeps_the_historical_author_dates_and_status(app) {
        app.queue("TEST").await;
        let ivan = app.as_user(&app.user_token("acme", "ivan", Role::Member).await, "acme");
        let ivan_uid = ivan.get("/v2/myself").await.body["uid"].clone();

        let imported = app
            .post(
                "/v2/issues/_import",
                json!({
                    "queue": "TEST", "summary": "From the old tracker", "description": "History",
                    "createdAt": "2019-03-04T05:06:07.089+0000", "createdBy": "ivan",
                    "updatedAt": "2020-03-04T08:06:07.089+0300", "updatedBy": {"login": "admin"},
                    "status": "closed", "type": "bug", "assignee": ivan_uid,
                }),
            )
            .await;
        let rfc3339 = app
            .post(
                "/v2/issues/_import",
                import_body(json!({"createdAt": "2018-01-01T00:00:00Z"})),
            )
            .await;
        let read = app.get("/v2/issues/TEST-1").await;

        assert_eq!(imported.status, 200, "imports answer 200: {}", imported.body);
        let i = &imported.body;
        assert_eq!(i["key"], "TEST-1");
        assert_eq!(i["createdAt"], "2019-03-04T05:06:07.089+0000");
        assert_eq!(
            i["updatedAt"], "2020-03-04T05:06:07.089+0000",
            "dates are rendered in UTC"
        );
        assert_eq!(i["createdBy"]["id"], ivan_uid.to_string());
        assert_eq!(i["createdBy"]["display"], "ivan");
        assert_eq!(i["updatedBy"]["display"], "Administrator");
        assert_eq!(i["status"]["key"], "closed");
        assert_eq!(i["type"]["key"], "bug");
        assert_eq!(i["assignee"]["display"], "ivan");
        assert_eq!(i["version"], 1);
        assert_eq!(read.body, imported.body);
        assert_eq!(rfc3339.status, 200, "{}", rfc3339.body);
        assert_eq!(rfc3339.body["createdAt"], "2018-01-01T00:00:00.000+0000");
        assert_eq!(
            rfc3339.body["updatedAt"], rfc3339.body["createdAt"],
            "without updatedAt it is createdAt"
        );
        assert_eq!(rfc3339.body["updatedBy"], rfc3339.body["createdBy"]);
        assert_eq!(rfc3339.body["key"], "TEST-2");
    }

    async fn an_imported_key_moves_the_queue_counter_past_it(app) {
        app.queue("TEST").await;
        app.issue("TEST", "One").await;

        let ten = app
            .post("/v2/issues/_import", import_body(json!({"key": "TEST-10"})))
            .await;
        let eleven = app.issue("TEST", "After the import").await;
        let five = app
            .post("/v2/issues/_import", import_body(json!({"key": "TEST-5"})))
            .await;
        let twelve = app.issue("TEST", "After the lower import").await;
        let unkeyed = app.post("/v2/issues/_import", import_body(json!({}))).await;

        assert_eq!(ten.status, 200, "{}", ten.body);
        assert_eq!(ten.body["key"], "TEST-10");
        assert_eq!(eleven["key"], "TEST-11");
        assert_eq!(five.status, 200, "a free lower key may be imported: {}", five.body);
        assert_eq!(five.body["key"], "TEST-5");
        assert_eq!(twelve["key"], "TEST-12", "a lower key does not move the counter back");
        assert_eq!(unkeyed.body["key"], "TEST-13");
    }

    async fn an_import_that_breaks_a_rule_is_422_and_writes_nothing(app) {
        app.queue("TEST").await;
        app.queue("OTHER").await;
        app.issue("TEST", "One").await;
        other_org(&app).await;
        let import = |extra: Value| app.post("/v2/issues/_import", import_body(extra));

        let foreign_key = import(json!({"key": "OTHER-3"})).await;
        let taken_key = import(json!({"key": "TEST-1"})).await;
        let not_a_key = import(json!({"key": "banana"})).await;
        let future = import(json!({"createdAt": "2999-01-01T00:00:00.000+0000"})).await;
        let updated_at_alone = import(json!({"updatedAt": "2021-01-01T00:00:00.000+0000"})).await;
        let updated_by_alone = import(json!({"updatedBy": "admin"})).await;
        let updated_before_created =
            import(json!({"updatedAt": "2019-01-01T00:00:00.000+0000", "updatedBy": "admin"})).await;
        let updated_in_future =
            import(json!({"updatedAt": "2999-01-01T00:00:00.000+0000", "updatedBy": "admin"})).await;
        let unknown_author = import(json!({"createdBy": "ghost"})).await;
        let foreign_author = import(json!({"createdBy": "bob"})).await;
        let bad_date = import(json!({"createdAt": "yesterday"})).await;
        let no_date = app
            .post(
                "/v2/issues/_import",
                json!({"queue": "TEST", "summary": "s", "createdBy": "admin"}),
            )
            .await;
        let no_author = app
            .post(
                "/v2/issues/_import",
                json!({"queue": "TEST", "summary": "s", "createdAt": "2020-01-01T00:00:00Z"}),
            )
            .await;
        let unknown_status = import(json!({"status": "limbo"})).await;
        let unknown_queue = import(json!({"queue": "NOPE"})).await;

        for (a, field) in [
            (&foreign_key, "key"),
            (&taken_key, "key"),
            (&not_a_key, "key"),
            (&future, "createdAt"),
            (&updated_at_alone, "updatedBy"),
            (&updated_by_alone, "updatedAt"),
            (&updated_before_created, "updatedAt"),
            (&updated_in_future, "updatedAt"),
            (&unknown_author, "createdBy"),
            (&foreign_author, "createdBy"),
            (&bad_date, "createdAt"),
            (&no_date, "createdAt"),
            (&no_author, "createdBy"),
            (&unknown_status, "status"),
        ] {
            a.expect_error(422);
            assert!(a.body["errors"][field].is_string(), "errors.{field}: {}", a.body);
        }
        unknown_queue.expect_error(404);
        assert_eq!(app.count("issues").await, 1);
        assert_eq!(
            app.issue("TEST", "Next").await["key"],
            "TEST-2",
            "failed imports leave no gap"
        );
    }

    async fn concurrent_creates_get_consecutive_keys_and_one_unique_wins(app) {
        app.queue("TEST").await;

        let creates = concurrently(&app, 20, |h, i| async move {
            h.post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": format!("Concurrent {i}")}),
            )
            .await
        })
        .await;
        let uniques = concurrently(&app, 8, |h, _| async move {
            h.post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "Once", "unique": "race"}),
            )
            .await
        })
        .await;
        let edits = concurrently(&app, 8, |h, i| async move {
            let req = h
                .http
                .patch(format!("{}/v2/issues/TEST-1", h.base))
                .header("Authorization", format!("OAuth {}", h.token))
                .header("X-Org-ID", &h.org)
                .header("If-Match", "\"1\"")
                .header("Content-Type", "application/json")
                .body(json!({"summary": format!("Edit {i}")}).to_string());
            h.raw(req).await
        })
        .await;

        let mut created: Vec<String> = creates
            .iter()
            .map(|a| {
                assert_eq!(a.status, 201, "{}", a.body);
                a.body["key"].as_str().unwrap().to_owned()
            })
            .collect();
        created.sort_by_key(|k| k.trim_start_matches("TEST-").parse::<i64>().unwrap());
        let expected: Vec<String> = (1..=20).map(|n| format!("TEST-{n}")).collect();
        assert_eq!(created, expected, "N per queue, no duplicates, no gaps");
        let mut unique_statuses: Vec<u16> = uniques.iter().map(|a| a.status.as_u16()).collect();
        unique_statuses.sort_unstable();
        assert_eq!(unique_statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
        let mut edit_statuses: Vec<u16> = edits.iter().map(|a| a.status.as_u16()).collect();
        edit_statuses.sort_unstable();
        assert_eq!(
            edit_statuses,
            [200, 409, 409, 409, 409, 409, 409, 409],
            "If-Match lets one editor win"
        );
        assert_eq!(app.get("/v2/issues/TEST-1").await.body["version"], 2);
        assert_eq!(app.issue("TEST", "After").await["key"], "TEST-22");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Server bugs found while writing these tests (each test states the expected behaviour; see the ignore reason)
    // ---------------------------------------------------------------------------------------------------------------

    async fn a_nul_character_in_client_text_is_never_a_server_error(app) {
        app.queue("TEST").await;

        let summary = app
            .post("/v2/issues", json!({"queue": "TEST", "summary": "a\u{0}b"}))
            .await;
        let description = app
            .post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "s", "description": "\u{0}"}),
            )
            .await;
        let unique = app.post("/v2/issues/_findByUnique?unique=a%00b", json!({})).await;
        let login = app.get("/v2/users/a%00b").await;
        let keys_search = app.post("/v2/issues/_search", json!({"keys": ["TEST-1\u{0}"]})).await;

        for a in [&summary, &description, &unique, &login, &keys_search] {
            assert!(
                a.status.as_u16() < 500,
                "a client's text caused a server error: {}",
                a.body
            );
        }
    }

    async fn a_long_unique_value_is_never_a_server_error(app) {
        app.queue("TEST").await;
        let long: String = (0..3000u32).map(|i| format!("{:x}", (i * 7919 + 13) % 65521)).collect();

        let created = app
            .post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "Long unique", "unique": long}),
            )
            .await;

        assert!(
            created.status.as_u16() < 500,
            "a client's unique caused a server error: {}",
            created.body
        );
    }

    async fn every_issue_key_the_server_hands_out_can_be_read_back(app) {
        app.queue("TEST").await;

        let imported = app
            .post(
                "/v2/issues/_import",
                import_body(json!({"key": "TEST-999999999999999"})),
            )
            .await;
        let created = app
            .post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "After the largest key"}),
            )
            .await;

        assert_eq!(imported.status, 200, "{}", imported.body);
        assert_eq!(app.get("/v2/issues/TEST-999999999999999").await.status, 200);
        if created.status == 201 {
            let key = created.body["key"].as_str().unwrap().to_owned();
            let read = app.get(&format!("/v2/issues/{key}")).await;
            assert_eq!(
                read.status, 200,
                "issue {key} was created but cannot be read: {}",
                read.body
            );
        } else {
            created.expect_error(422);
        }
    }

    async fn a_user_field_renders_as_a_user_reference(app) {
        app.queue("TEST").await;
        let field = app
            .post(
                "/v2/fields",
                json!({"id": "owner", "name": "Owner", "schema": {"type": "user"}}),
            )
            .await;
        assert_eq!(field.status, 201, "{}", field.body);
        let uid = app.get("/v2/myself").await.body["uid"].clone();

        let created = app
            .post(
                "/v2/issues",
                json!({"queue": "TEST", "summary": "Owned", "owner": "admin"}),
            )
            .await;

        assert_eq!(created.status, 201, "{}", created.body);
        let owner = &created.body["owner"];
        assert_eq!(
            owner["self"],
            format!("{}/v2/users/{uid}", app.base),
            "owner is {owner}"
        );
        assert_eq!(owner["id"], uid.to_string());
        assert_eq!(owner["display"], "Administrator");
    }

    async fn creating_an_existing_field_again_answers_the_stored_field(app) {
        let first = app
            .post(
                "/v2/fields",
                json!({"id": "tags", "name": "Tags", "schema": {"type": "array", "items": "string"}}),
            )
            .await;

        let again = app
            .post(
                "/v2/fields",
                json!({"id": "tags", "name": "Labels", "schema": {"type": "array", "items": "string"}}),
            )
            .await;
        let stored = app.get("/v2/fields/tags").await;

        assert_eq!(first.status, 201);
        assert_eq!(again.status, 200, "{}", again.body);
        assert_eq!(
            again.body, stored.body,
            "the answer must describe the field that exists"
        );
    }

    async fn a_transition_that_lost_a_race_answers_like_an_unavailable_one(app) {
        app.queue("TEST").await;
        app.issue("TEST", "Raced").await;

        let closes = concurrently(&app, 8, |h, _| async move {
            h.post("/v2/issues/TEST-1/transitions/close/_execute", json!({})).await
        })
        .await;
        let sequential = app
            .post("/v2/issues/TEST-1/transitions/close/_execute", json!({}))
            .await;

        sequential.expect_error(404);
        let mut statuses: Vec<u16> = closes.iter().map(|a| a.status.as_u16()).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 404, 404, 404, 404, 404, 404, 404], "{closes:?}");
        assert_eq!(app.get("/v2/issues/TEST-1").await.body["version"], 2);
    }

    async fn search_filters_accept_name_references_like_issue_create(app) {
        app.queue("TEST").await;
        app.issue("TEST", "Open").await;

        let by_status_name = app
            .post("/v2/issues/_search", json!({"filter": {"status": {"name": "Open"}}}))
            .await;
        let by_queue_name = app
            .post(
                "/v2/issues/_search",
                json!({"filter": {"queue": {"name": "Queue TEST"}}}),
            )
            .await;
        let by_type_name = app
            .post("/v2/issues/_search", json!({"filter": {"type": {"name": "Task"}}}))
            .await;

        for a in [&by_status_name, &by_queue_name, &by_type_name] {
            assert_eq!(a.status, 200, "{}", a.body);
            assert_eq!(keys(&a.body), ["TEST-1"]);
        }
    }

    async fn a_custom_field_cannot_take_a_key_that_issue_json_already_uses(app) {
        app.queue("TEST").await;

        let self_field = app
            .post("/v2/fields", json!({"id": "self", "schema": {"type": "string"}}))
            .await;
        let resolution_field = app
            .post("/v2/fields", json!({"id": "resolution", "schema": {"type": "string"}}))
            .await;
        let issue = app
            .post("/v2/issues", json!({"queue": "TEST", "summary": "s", "self": "mine"}))
            .await;

        assert_eq!(issue.body["self"], format!("{}/v2/issues/TEST-1", app.base));
        self_field.expect_error(422);
        resolution_field.expect_error(422);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Public routes and the OpenAPI document
    // ---------------------------------------------------------------------------------------------------------------

    async fn health_and_readiness_answer_without_a_token(app) {
        let health = app.raw(bare(&app, Method::GET, "/healthz")).await;
        let ready = app.raw(bare(&app, Method::GET, "/readyz")).await;

        assert_eq!(health.status, 200);
        assert_eq!(health.body["status"], "ok");
        assert_eq!(ready.status, 200);
        assert_eq!(ready.body["status"], "ok");
        let expected = match app.backend {
            common::Backend::Sqlite => "sqlite",
            common::Backend::Postgres => "postgres",
        };
        assert_eq!(ready.body["database"], expected);
    }

    async fn the_openapi_document_lists_every_route_under_v2_and_v3_with_its_access(app) {
        let doc = app.raw(bare(&app, Method::GET, "/openapi.json")).await;

        assert_eq!(doc.status, 200);
        let paths = doc.body["paths"].as_object().expect("paths");
        let mut operations = 0;
        for r in tether::http::ROUTES {
            for version in ["v2", "v3"] {
                let path = format!("/{version}{}", r.path);
                let op = &paths.get(&path).unwrap_or_else(|| panic!("{path} is not documented"))[r.method];
                assert_eq!(op["x-tether-access"], r.access.as_str(), "{} {path}", r.method);
                assert!(
                    op["responses"][r.status.to_string()].is_object(),
                    "{} {path}: {op}",
                    r.method
                );
                operations += 1;
                // What the document lists is served: without a token it answers 401, not 404 or 405.
                let concrete = path
                    .split('/')
                    .map(|s| if s.starts_with('{') { "X-1" } else { s })
                    .collect::<Vec<_>>()
                    .join("/");
                let method = Method::from_bytes(r.method.to_uppercase().as_bytes()).unwrap();
                let served = app.raw(bare(&app, method, &concrete)).await;
                assert_eq!(served.status, 401, "{} {concrete}: {}", r.method, served.body);
            }
        }
        let versioned: usize = paths
            .iter()
            .filter(|(path, _)| path.starts_with("/v2/") || path.starts_with("/v3/"))
            .map(|(_, p)| p.as_object().unwrap().len())
            .sum();
        assert_eq!(
            versioned, operations,
            "under /v2 and /v3 the document lists exactly the route table"
        );
        for (method, path, _) in tether::http::PUBLIC_ROUTES {
            assert_eq!(paths[*path][*method]["x-tether-access"], "public", "{path}");
        }
        for item in paths.values() {
            for op in item.as_object().unwrap().values() {
                let access = op["x-tether-access"].as_str().unwrap_or_default();
                assert!(
                    ["public", "reader", "member", "admin", "sentry-signature"].contains(&access),
                    "{op}"
                );
            }
        }
        if app.backend == common::Backend::Sqlite {
            insta::assert_json_snapshot!("openapi", doc.body);
        }
    }
}
