//! The forms (POST): log in and out, create an issue, add and delete links, add a remote link. Each validates with
//! the API's rules and messages and calls the same store methods; a refused form is shown again with the message
//! next to it, a successful one redirects (303) to the page it changed.

use axum::extract::State;
use axum::response::Response;
use serde_json::json;

use super::pages::{IssueForms, LoginPage, NewIssuePage, load_issue, render_issue, respond};
use super::session::{
    Account, Form, ORG_COOKIE, SESSION_COOKIE, Session, clear_cookie, local_path, secure, set_cookie,
};
use super::{WebError, append_cookie, html, issue_key, redirect};
use crate::domain::dates::now_ms;
use crate::error::{Error, Result};
use crate::http::AppState;
use crate::http::ctx::{Path, hash_token};
use crate::store::{Issue, NewIssue};

/// A 303 to `location`, remembering an organization chosen with `?org=`.
fn back_to(s: &Session, location: &str) -> Response {
    let mut r = redirect(location);
    if let Some(c) = &s.remember_org {
        append_cookie(&mut r, c);
    }
    r
}

/// A refused form's message: the API's message for the client's mistakes; server faults stay an error page.
fn refused(e: Error) -> Result<(u16, String), WebError> {
    match e {
        Error::Internal(_) => Err(WebError::from(e)),
        other => Ok((other.status(), other.to_string())),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Session

/// `POST /login` (`token`, `next`): checks the token, keeps it in the session cookie, then goes to `next` — or to
/// the organization chooser when the user has several.
pub async fn log_in(State(st): State<AppState>, form: Form) -> Result<Response, WebError> {
    // `Form` has refused a cross-site post already: the login form cannot carry a CSRF token yet.
    let next = local_path(form.get("next"));
    let token = form.text("token");
    let again = |status: u16, message: &str| {
        let t = LoginPage {
            nav: None,
            next: next.clone(),
            error: Some(message.to_owned()),
        };
        html(status, &t)
    };
    if token.is_empty() {
        return Ok(again(422, "Enter an API token"));
    }
    let Some(principal) = st.store.authenticate(&hash_token(&token)).await? else {
        return Ok(again(401, "Authorization token is invalid or revoked"));
    };
    let secure = secure(&st);
    let mut r = match principal.memberships.as_slice() {
        [] => return Ok(again(403, "The user belongs to no organization")),
        [(only, _)] => {
            let mut r = redirect(&next);
            append_cookie(&mut r, &set_cookie(ORG_COOKIE, only, secure));
            r
        }
        _ => {
            let target = format!(
                "/orgs?{}",
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", &next)
                    .finish()
            );
            let mut r = redirect(&target);
            append_cookie(&mut r, &clear_cookie(ORG_COOKIE, secure));
            r
        }
    };
    append_cookie(&mut r, &set_cookie(SESSION_COOKIE, &token, secure));
    Ok(r)
}

/// `POST /logout`: forgets the session's cookies.
pub async fn log_out(State(st): State<AppState>, account: Account, form: Form) -> Result<Response, WebError> {
    if account.by_cookie() {
        let sent = form.get("csrf").unwrap_or_default();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), account.csrf.as_bytes())) {
            return Err(WebError::page(
                403,
                "The form's security token is missing or stale: reload the page and try again",
            ));
        }
    }
    let mut r = redirect("/login");
    for name in [SESSION_COOKIE, ORG_COOKIE] {
        append_cookie(&mut r, &clear_cookie(name, secure(&st)));
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------------------------
// Issues

/// The form as the JSON object the API takes: its non-empty fields, by name.
fn body(form: &Form, fields: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    fields
        .iter()
        .filter_map(|f| {
            form.get(f)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| ((*f).to_owned(), json!(v)))
        })
        .collect()
}

/// Validates the issue form with the code of `POST /v2/issues` (same order, same messages).
async fn new_issue(st: &AppState, s: &Session, form: &Form) -> Result<NewIssue> {
    let b = body(form, &["queue", "summary", "description", "type"]);
    Ok(crate::http::issues::issue_input(st, &s.org, &b, s.user.uid, now_ms())
        .await?
        .new)
}

/// `POST /new` (`queue`, `summary`, `description`, `type`): creates an issue, then shows it.
pub async fn create_issue(State(st): State<AppState>, s: Session, form: Form) -> Result<Response, WebError> {
    s.check_form(&form)?;
    s.check_writer()?;
    let created = match new_issue(&st, &s, &form).await {
        Ok(new) => st.store.create_issue(&new).await,
        Err(e) => Err(e),
    };
    match created {
        Ok(issue) => Ok(back_to(&s, &format!("/{}", issue.key))),
        Err(e) => {
            let (status, message) = refused(e)?;
            let t = NewIssuePage::build(
                &st,
                &s,
                &form.text("queue"),
                &form.text("type"),
                form.get("summary").unwrap_or_default().to_owned(),
                form.get("description").unwrap_or_default().to_owned(),
                Some(message),
            )
            .await?;
            Ok(respond(&s, status, &t))
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Links

/// Validates the link form with the code of `POST /v2/issues/{key}/links`, then creates the link.
async fn link(st: &AppState, s: &Session, this: &Issue, form: &Form) -> Result<()> {
    let b = body(form, &["relationship", "issue"]);
    let new = crate::http::links::link_request(st, &s.org, &this.into(), &b, s.user.uid).await?;
    st.store.create_link(&new).await.map(|_| ())
}

/// `POST /{KEY}/links` (`relationship`, `issue`): links two issues.
pub async fn create_link(
    State(st): State<AppState>,
    Path(key): Path<String>,
    s: Result<Session, WebError>,
    form: Form,
) -> Result<Response, WebError> {
    let key = issue_key(&key)?;
    let s = s?;
    s.check_form(&form)?;
    let this = load_issue(&st, &s, &key).await?;
    s.check_writer()?;
    let (rel, target) = (form.text("relationship"), form.text("issue"));
    match link(&st, &s, &this, &form).await {
        Ok(()) => Ok(back_to(&s, &format!("/{key}"))),
        Err(e) => {
            let (status, message) = refused(e)?;
            let forms = IssueForms {
                link_rel: rel,
                link_issue: target,
                link_error: Some(message),
                ..IssueForms::default()
            };
            render_issue(&st, &s, this, forms, status).await
        }
    }
}

/// `POST /{KEY}/links/{id}/delete`: deletes a link, from either of its issues.
pub async fn delete_link(
    State(st): State<AppState>,
    Path((key, id)): Path<(String, String)>,
    s: Result<Session, WebError>,
    form: Form,
) -> Result<Response, WebError> {
    let key = issue_key(&key)?;
    let s = s?;
    s.check_form(&form)?;
    let this = load_issue(&st, &s, &key).await?;
    let missing = || WebError::from(Error::not_found("link", format!("Link {id} does not exist on {key}")));
    let link_id: i64 = id.parse().map_err(|_| missing())?;
    if st.store.get_link(&s.org, this.id, link_id).await?.is_none() {
        return Err(missing());
    }
    s.check_writer()?;
    if !st.store.delete_link(&s.org, this.id, link_id, now_ms()).await? {
        return Err(missing());
    }
    Ok(back_to(&s, &format!("/{key}")))
}

// ---------------------------------------------------------------------------------------------------------------
// Remote links

/// Validates the remote-link form with the code of `POST /v2/issues/{key}/remotelinks`, and only for applications
/// that allow linking from the web UI (`canLinkFromFront`), then creates the link (and its backlink event).
async fn remote_link(st: &AppState, s: &Session, issue: &Issue, form: &Form) -> Result<bool> {
    let mut b = body(form, &["key", "origin"]);
    b.insert("relationship".into(), json!("relates"));
    let backlink = form.get("backlink").is_some();
    let (new, app) = crate::http::remote::remote_link_request(st, &s.org, issue, &b, backlink, s.user.uid).await?;
    if !app.can_link_from_front {
        return Err(Error::rule(
            "origin",
            format!("Application {} cannot be linked from the web UI", app.name),
        ));
    }
    st.store.create_remote_link(&new).await?;
    Ok(new.backlink.is_some())
}

/// `POST /{KEY}/remotelinks` (`origin`, `key`, `backlink`): links the issue to an object of an application.
pub async fn create_remote_link(
    State(st): State<AppState>,
    Path(key): Path<String>,
    s: Result<Session, WebError>,
    form: Form,
) -> Result<Response, WebError> {
    let key = issue_key(&key)?;
    let s = s?;
    s.check_form(&form)?;
    let issue = load_issue(&st, &s, &key).await?;
    s.check_writer()?;
    match remote_link(&st, &s, &issue, &form).await {
        Ok(queued) => {
            if queued {
                st.wakeup.wake();
            }
            Ok(back_to(&s, &format!("/{key}")))
        }
        Err(e) => {
            let (status, message) = refused(e)?;
            let forms = IssueForms {
                remote_origin: form.text("origin"),
                remote_key: form.text("key"),
                remote_backlink: form.get("backlink").is_some(),
                remote_error: Some(message),
                ..IssueForms::default()
            };
            render_issue(&st, &s, issue, forms, status).await
        }
    }
}
