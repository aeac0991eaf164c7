//! The web UI's rules over HTTP (sessions, CSRF, roles, escaping), on SQLite and PostgreSQL. The browser flows are
//! in `compat/test_web.py` (headless Chromium).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ORG, TOKEN, TestApp};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::json;
use tether::domain::Role;

/// A page as a browser gets it: status, headers, HTML. Redirects are not followed.
struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers.get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }
}

/// How a request authenticates.
enum Auth<'a> {
    /// No credentials at all.
    Anonymous,
    /// The session cookie holding this token.
    Cookie(&'a str),
    /// The API's headers.
    Headers(&'a str, &'a str),
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    auth: Auth<'_>,
    form: Option<&[(&str, &str)]>,
) -> Page {
    let mut req = browser().request(method, format!("{}{}", app.base, path));
    match auth {
        Auth::Anonymous => {}
        Auth::Cookie(token) => req = req.header("Cookie", format!("tether_session={token}")),
        Auth::Headers(token, org) => {
            req = req
                .header("Authorization", format!("OAuth {token}"))
                .header("X-Org-ID", org);
        }
    }
    if let Some(fields) = form {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields.iter())
            .finish();
        req = req
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body);
    }
    let resp = req.send().await.unwrap();
    Page {
        status: resp.status(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

async fn get(app: &TestApp, path: &str, auth: Auth<'_>) -> Page {
    send(app, reqwest::Method::GET, path, auth, None).await
}

async fn post(app: &TestApp, path: &str, auth: Auth<'_>, form: &[(&str, &str)]) -> Page {
    send(app, reqwest::Method::POST, path, auth, Some(form)).await
}

/// A queue `WEB` with issues of these summaries; returns their keys.
async fn issues(app: &TestApp, summaries: &[&str]) -> Vec<String> {
    app.queue("WEB").await;
    let mut keys = Vec::new();
    for s in summaries {
        keys.push(app.issue("WEB", s).await["key"].as_str().unwrap().to_owned());
    }
    keys
}

both_backends! {
    async fn a_page_without_a_session_redirects_to_the_login_page(app) {
        let keys = issues(&app, &["one"]).await;
        for path in ["/", "/queues/WEB", &format!("/{}", keys[0]), &format!("/{}/graph", keys[0]), "/new"] {
            let p = get(&app, path, Auth::Anonymous).await;
            assert_eq!(p.status, StatusCode::SEE_OTHER, "{path}");
            assert!(p.location().starts_with("/login?next="), "{path} → {}", p.location());
        }
        let p = get(&app, &format!("/{}", keys[0]), Auth::Anonymous).await;
        assert_eq!(p.location(), format!("/login?next=%2F{}", keys[0]));
        let login = get(&app, "/login", Auth::Anonymous).await;
        assert_eq!(login.status, StatusCode::OK);
        assert!(login.body.contains("name=\"token\""));
    }

    async fn the_apis_headers_open_the_issue_page_as_html(app) {
        let keys = issues(&app, &["Checkout fails on Safari"]).await;
        let p = get(&app, &format!("/{}", keys[0]), Auth::Headers(TOKEN, ORG)).await;
        assert_eq!(p.status, StatusCode::OK, "{}", p.body);
        let ct = p.headers.get("content-type").unwrap().to_str().unwrap();
        assert!(ct.starts_with("text/html"), "{ct}");
        assert!(p.body.contains(&keys[0]) && p.body.contains("Checkout fails on Safari"));
        assert!(p.headers.get("content-security-policy").is_some());
        // Another organization's issue does not exist for this user.
        let other = app.user_token("other", "olga", Role::Admin).await;
        let p = get(&app, &format!("/{}", keys[0]), Auth::Headers(&other, "other")).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND);
        // A bad token in the header is a 401, not a redirect.
        let p = get(&app, &format!("/{}", keys[0]), Auth::Headers("nope", ORG)).await;
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    }

    async fn logging_in_with_a_bad_token_shows_the_error(app) {
        let p = post(&app, "/login", Auth::Anonymous, &[("token", "not-a-token"), ("next", "/")]).await;
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
        assert!(p.body.contains("Authorization token is invalid or revoked"), "{}", p.body);
        assert!(p.cookies().iter().all(|c| !c.starts_with("tether_session=not")));
    }

    async fn logging_in_sets_an_http_only_same_site_cookie_and_goes_back(app) {
        let keys = issues(&app, &["one"]).await;
        let next = format!("/{}", keys[0]);
        let p = post(&app, "/login", Auth::Anonymous, &[("token", TOKEN), ("next", &next)]).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert_eq!(p.location(), next);
        let cookies = p.cookies();
        let session = cookies.iter().find(|c| c.starts_with("tether_session=")).expect("session cookie");
        assert!(session.contains("HttpOnly") && session.contains("SameSite=Lax") && session.contains("Path=/"));
        assert!(cookies.iter().any(|c| c.starts_with(&format!("tether_org={ORG};"))), "{cookies:?}");
        // Never back to another site.
        let p = post(&app, "/login", Auth::Anonymous, &[("token", TOKEN), ("next", "//evil.example/")]).await;
        assert_eq!(p.location(), "/");
        // A login posted from another site is refused.
        let cross = browser()
            .post(format!("{}/login", app.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Sec-Fetch-Site", "cross-site")
            .body(format!("token={TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(cross.status(), StatusCode::FORBIDDEN);
        // Logging out clears both cookies.
        let csrf = tether::web::csrf_token(TOKEN);
        let p = post(&app, "/logout", Auth::Cookie(TOKEN), &[("csrf", &csrf)]).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert_eq!(p.location(), "/login");
        let cleared: Vec<_> = p.cookies().into_iter().filter(|c| c.contains("Max-Age=0")).collect();
        assert_eq!(cleared.len(), 2, "{cleared:?}");
    }

    async fn a_form_without_the_csrf_field_is_refused(app) {
        let keys = issues(&app, &["one", "two"]).await;
        let path = format!("/{}/links", keys[0]);
        let fields = [("relationship", "relates"), ("issue", keys[1].as_str())];
        let p = post(&app, &path, Auth::Cookie(TOKEN), &fields).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
        let forged = [("relationship", "relates"), ("issue", keys[1].as_str()), ("csrf", "0000")];
        assert_eq!(post(&app, &path, Auth::Cookie(TOKEN), &forged).await.status, StatusCode::FORBIDDEN);
        assert_eq!(app.count("links").await, 0);

        let csrf = tether::web::csrf_token(TOKEN);
        let good = [("relationship", "relates"), ("issue", keys[1].as_str()), ("csrf", csrf.as_str())];
        let p = post(&app, &path, Auth::Cookie(TOKEN), &good).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
        assert_eq!(p.location(), format!("/{}", keys[0]));
        assert_eq!(app.count("links").await, 1);
        // The new issue form checks it too.
        let p = post(&app, "/new", Auth::Cookie(TOKEN), &[("queue", "WEB"), ("summary", "x")]).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        // A script sending the token in a header cannot be forged by a browser: no CSRF field needed.
        let p = post(&app, "/new", Auth::Headers(TOKEN, ORG), &[("queue", "WEB"), ("summary", "by script")]).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
        assert_eq!(p.location(), "/WEB-3");
    }

    async fn summaries_and_descriptions_are_html_escaped(app) {
        app.queue("WEB").await;
        let issue = app
            .issue_with(json!({"queue": "WEB", "summary": "<script>alert(1)</script>", "description": "a \"quoted\" <b>tag</b> & more"}))
            .await;
        let key = issue["key"].as_str().unwrap();
        for path in [format!("/{key}"), "/queues/WEB".to_owned(), format!("/{key}/graph")] {
            let p = get(&app, &path, Auth::Headers(TOKEN, ORG)).await;
            assert_eq!(p.status, StatusCode::OK, "{path}");
            assert!(!p.body.contains("<script>alert(1)"), "{path} carries the raw summary");
            // askama writes numeric character references.
            assert!(p.body.contains("&#60;script&#62;alert(1)&#60;/script&#62;"), "{path}");
        }
        let p = get(&app, &format!("/{key}"), Auth::Headers(TOKEN, ORG)).await;
        assert!(!p.body.contains("<b>tag</b>"));
    }

    async fn readers_see_no_forms_and_their_posts_are_refused(app) {
        let keys = issues(&app, &["one", "two"]).await;
        let reader = app.user_token(ORG, "rita", Role::Reader).await;
        let p = get(&app, &format!("/{}", keys[0]), Auth::Cookie(&reader)).await;
        assert_eq!(p.status, StatusCode::OK);
        assert!(!p.body.contains("id=\"link-form\""), "a reader sees the link form");
        assert!(!p.body.contains("/links/"), "a reader sees delete buttons");
        let member_page = get(&app, &format!("/{}", keys[0]), Auth::Cookie(TOKEN)).await;
        assert!(member_page.body.contains("id=\"link-form\""));

        let csrf = tether::web::csrf_token(&reader);
        let fields = [("relationship", "relates"), ("issue", keys[1].as_str()), ("csrf", csrf.as_str())];
        let p = post(&app, &format!("/{}/links", keys[0]), Auth::Cookie(&reader), &fields).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        assert!(p.body.contains("member role"), "{}", p.body);
        let p = post(&app, "/new", Auth::Cookie(&reader), &[("queue", "WEB"), ("summary", "x"), ("csrf", &csrf)]).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        assert_eq!(app.count("links").await, 0);
        assert_eq!(app.count("issues").await, 2);
    }

    async fn link_errors_show_the_apis_message_next_to_the_form(app) {
        let keys = issues(&app, &["one", "two"]).await;
        let csrf = tether::web::csrf_token(TOKEN);
        let path = format!("/{}/links", keys[0]);
        let cases = [
            ("relates", keys[0].as_str(), 422, format!("An issue cannot be linked to itself ({})", keys[0])),
            ("relates", "WEB-99", 404, "Issue WEB-99 does not exist".to_owned()),
            ("clone", keys[1].as_str(), 422, "can only be imported".to_owned()),
            ("blocks", keys[1].as_str(), 422, "Unknown relationship &#39;blocks&#39;".to_owned()),
        ];
        for (rel, target, status, message) in cases {
            let p = post(&app, &path, Auth::Cookie(TOKEN), &[("relationship", rel), ("issue", target), ("csrf", &csrf)]).await;
            assert_eq!(p.status.as_u16(), status, "{rel} {target}");
            assert!(p.body.contains("id=\"link-error\""), "{rel} {target}");
            assert!(p.body.contains(&message), "{rel} {target}: no {message:?}");
        }
        assert_eq!(app.count("links").await, 0);
        // The same pair twice: the store's rule, in its words.
        app.link(&keys[0], "depends on", &keys[1]).await;
        let p = post(&app, &path, Auth::Cookie(TOKEN), &[("relationship", "relates"), ("issue", &keys[1]), ("csrf", &csrf)]).await;
        assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(p.body.contains("already linked"), "{}", p.body);
    }

    async fn links_are_grouped_by_the_role_the_linked_issue_plays(app) {
        let keys = issues(&app, &["parent", "child", "blocker"]).await;
        app.link(&keys[1], "is subtask for", &keys[0]).await;
        app.link(&keys[1], "depends on", &keys[2]).await;
        let child = get(&app, &format!("/{}", keys[1]), Auth::Headers(TOKEN, ORG)).await.body;
        assert!(child.contains("data-group=\"Parent issue\""), "{child}");
        assert!(child.contains("data-group=\"Blocks\""));
        let parent = get(&app, &format!("/{}", keys[0]), Auth::Headers(TOKEN, ORG)).await.body;
        assert!(parent.contains("data-group=\"Sub-issues\"") && !parent.contains("data-group=\"Parent issue\""));
        let blocker = get(&app, &format!("/{}", keys[2]), Auth::Headers(TOKEN, ORG)).await.body;
        assert!(blocker.contains("data-group=\"Depends on\""));

        // Deleting from the other side removes the link for both.
        let link = app.get(&format!("/v2/issues/{}/links", keys[0])).await.body[0]["id"].as_i64().unwrap();
        let csrf = tether::web::csrf_token(TOKEN);
        let p = post(&app, &format!("/{}/links/{link}/delete", keys[0]), Auth::Cookie(TOKEN), &[("csrf", &csrf)]).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
        let child = get(&app, &format!("/{}", keys[1]), Auth::Headers(TOKEN, ORG)).await.body;
        assert!(!child.contains("data-group=\"Parent issue\""));
        let p = post(&app, &format!("/{}/links/{link}/delete", keys[0]), Auth::Cookie(TOKEN), &[("csrf", &csrf)]).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND);
    }

    async fn remote_links_show_the_application_icon_and_page(app) {
        let keys = issues(&app, &["one"]).await;
        let a = app
            .post("/v2/applications", json!({
                "id": "ru.example.git", "name": "Git", "canLinkFromFront": true,
                "defaultIconUrl": "https://git.example/icon.png",
                "frontUrl": "https://git.example/r/{{remoteKey}}",
            }))
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        let csrf = tether::web::csrf_token(TOKEN);
        let path = format!("/{}/remotelinks", keys[0]);
        let p = post(&app, &path, Auth::Cookie(TOKEN), &[("origin", "ru.example.git"), ("key", "pr 1/2"), ("csrf", &csrf)]).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
        let page = get(&app, &format!("/{}", keys[0]), Auth::Headers(TOKEN, ORG)).await.body;
        assert!(page.contains("https://git.example/r/pr%201%2F2"), "{page}");
        assert!(page.contains("src=\"https://git.example/icon.png\""));
        // The same object twice is the API's 409, shown by the form.
        let p = post(&app, &path, Auth::Cookie(TOKEN), &[("origin", "ru.example.git"), ("key", "pr 1/2"), ("csrf", &csrf)]).await;
        assert_eq!(p.status, StatusCode::CONFLICT);
        assert!(p.body.contains("id=\"remote-error\""));
    }

    async fn paths_that_are_not_issue_keys_keep_the_apis_404(app) {
        for path in ["/favicon.ico", "/nothing/graph", "/v4"] {
            let p = get(&app, path, Auth::Anonymous).await;
            assert_eq!(p.status, StatusCode::NOT_FOUND, "{path}");
            assert!(p.body.contains("\"statusCode\":404"), "{path}: {}", p.body);
        }
        let p = post(&app, "/nothing/links", Auth::Anonymous, &[]).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND);
        // The API document lists no web route.
        let doc = app.get("/openapi.json").await.body.to_string();
        for web in ["/login", "/logout", "/orgs", "/graph", "/new"] {
            assert!(!doc.contains(&format!("\"{web}")), "openapi.json lists {web}");
        }
    }

    async fn the_graph_page_draws_blockers_and_sub_issues_as_svg(app) {
        let keys = issues(&app, &["root", "blocker", "sub", "dependent"]).await;
        app.link(&keys[0], "depends on", &keys[1]).await;
        app.link(&keys[0], "is parent task for", &keys[2]).await;
        app.link(&keys[3], "depends on", &keys[0]).await;
        let p = get(&app, &format!("/{}/graph", keys[0]), Auth::Headers(TOKEN, ORG)).await;
        assert_eq!(p.status, StatusCode::OK, "{}", p.body);
        assert!(p.body.contains("<svg"));
        for k in &keys {
            assert!(p.body.contains(&format!("data-key=\"{k}\"")), "{k} missing");
        }
        assert_eq!(p.body.matches("<line class=\"edge").count(), 3);
        let bad = get(&app, &format!("/{}/graph?depth=99", keys[0]), Auth::Headers(TOKEN, ORG)).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    }

    async fn a_user_of_several_organizations_chooses_one(app) {
        let keys = issues(&app, &["in acme"]).await;
        let token = app.user_token(ORG, "multi", Role::Member).await;
        let _ = app.user_token("second", "multi", Role::Reader).await;
        let p = post(&app, "/login", Auth::Anonymous, &[("token", &token), ("next", &format!("/{}", keys[0]))]).await;
        assert!(p.location().starts_with("/orgs?next="), "{}", p.location());
        // With a session but no organization, pages send the user to the chooser.
        let p = get(&app, "/", Auth::Cookie(&token)).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert!(p.location().starts_with("/orgs"));
        let chooser = get(&app, "/orgs?next=%2FWEB-1", Auth::Cookie(&token)).await;
        assert!(chooser.body.contains("/WEB-1?org=acme") && chooser.body.contains("/WEB-1?org=second"), "{}", chooser.body);
        // ?org= selects one and is remembered.
        let p = get(&app, &format!("/{}?org={ORG}", keys[0]), Auth::Cookie(&token)).await;
        assert_eq!(p.status, StatusCode::OK);
        assert!(p.cookies().iter().any(|c| c.starts_with(&format!("tether_org={ORG};"))));
        let p = get(&app, &format!("/{}?org=second", keys[0]), Auth::Cookie(&token)).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND);
        let p = get(&app, "/?org=nowhere", Auth::Cookie(&token)).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
    }
}
