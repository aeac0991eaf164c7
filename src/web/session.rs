//! Who is looking at a page: a browser session (cookies) or a script (the API's headers), the organization in
//! scope, and the CSRF token every form carries.
//!
//! The session cookie holds the API token itself (`HttpOnly`, `SameSite=Lax`), so no server-side session table is
//! needed and revoking the token ends the session. The CSRF token is derived from the token
//! (`hex(SHA-256("csrf:" + token))`): a page from another site can neither read the cookie nor compute it.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::WebError;
use crate::domain::{OrgId, Role};
use crate::http::AppState;
use crate::http::ctx::{hash_token, org_header};
use crate::store::{Principal, User};

/// The cookie that holds the API token.
pub const SESSION_COOKIE: &str = "tether_session";
/// The cookie that holds the chosen organization.
pub const ORG_COOKIE: &str = "tether_org";

/// Characters kept as they are in a cookie value (everything else is percent-encoded).
const COOKIE_VALUE: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The CSRF token of a session: `hex(SHA-256("csrf:" + token))`.
pub fn csrf_token(token: &str) -> String {
    hex::encode(Sha256::digest(format!("csrf:{token}").as_bytes()))
}

/// A cookie's value from the request (the first one of that name).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode_str(v.trim_matches('"')).decode_utf8_lossy().into_owned())
        .filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Lax`, `Path=/`, and `Secure` when the public URL is https.
pub fn set_cookie(name: &str, value: &str, secure: bool) -> String {
    let value = utf8_percent_encode(value, COOKIE_VALUE);
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; HttpOnly; SameSite=Lax; Path=/{secure}")
}

/// A `Set-Cookie` value that deletes the cookie.
pub fn clear_cookie(name: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}=; Max-Age=0; HttpOnly; SameSite=Lax; Path=/{secure}")
}

/// Whether cookies must carry `Secure` (the server is published over https).
pub fn secure(st: &AppState) -> bool {
    st.base.starts_with("https://")
}

/// The token of `Authorization: OAuth x` or `Bearer x`; `Err` when the header is there but unusable.
fn bearer(headers: &HeaderMap) -> Option<Result<&str, ()>> {
    let v = headers.get(header::AUTHORIZATION)?;
    let parsed = v.to_str().ok().and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        let token = token.trim();
        let ok = scheme.eq_ignore_ascii_case("oauth") || scheme.eq_ignore_ascii_case("bearer");
        (ok && !token.is_empty() && token != "not provided").then_some(token)
    });
    Some(parsed.ok_or(()))
}

/// A path inside this site to go back to after logging in; anything else (`//evil`, `https://…`) becomes `/`.
pub fn local_path(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && !n.contains("://") => {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// The path and query of a request (where the login page sends the user back to).
fn here(parts: &Parts) -> String {
    parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned()
}

/// `?org=` of a request.
fn org_param(parts: &Parts) -> Option<String> {
    let q = parts.uri.query()?;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "org")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// Refuses a form posted from another site (`Sec-Fetch-Site`), a second line of defence behind the CSRF field
/// and the only one the login form has.
pub fn refuse_cross_site(headers: &HeaderMap) -> Result<(), WebError> {
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("cross-site" | "same-site") => Err(WebError::page(403, "Forms cannot be posted from another site")),
        _ => Ok(()),
    }
}

/// A signed-in user, before an organization is chosen (the organization chooser needs only this).
pub struct Account {
    /// Who it is.
    pub principal: Principal,
    /// The token, when it came from the session cookie (forms then need the CSRF field).
    cookie_token: Option<String>,
    /// The CSRF token of this session.
    pub csrf: String,
}

impl Account {
    async fn from_parts(parts: &Parts, st: &AppState) -> Result<Account, WebError> {
        let (token, from_cookie) = match bearer(&parts.headers) {
            Some(Ok(t)) => (t.to_owned(), false),
            Some(Err(())) => return Err(WebError::page(401, "Authorization token is missing")),
            None => match cookie(&parts.headers, SESSION_COOKIE) {
                Some(t) => (t, true),
                None => {
                    return Err(WebError::Login {
                        next: here(parts),
                        clear: None,
                    });
                }
            },
        };
        let principal = st.store.authenticate(&hash_token(&token)).await?;
        let Some(principal) = principal else {
            return Err(if from_cookie {
                // A revoked token: forget it and ask again.
                WebError::Login {
                    next: here(parts),
                    clear: Some(secure(st)),
                }
            } else {
                WebError::page(401, "Authorization token is invalid or revoked")
            });
        };
        Ok(Account {
            principal,
            csrf: csrf_token(&token),
            cookie_token: from_cookie.then_some(token),
        })
    }

    /// Whether the request came with the session cookie (not the API's headers).
    pub fn by_cookie(&self) -> bool {
        self.cookie_token.is_some()
    }
}

impl FromRequestParts<AppState> for Account {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Account, WebError> {
        Account::from_parts(parts, st).await
    }
}

/// The viewer of a page: a signed-in user acting in one organization.
pub struct Session {
    /// The user.
    pub user: User,
    /// The organization in scope.
    pub org: OrgId,
    /// The user's role there.
    pub role: Role,
    /// How many organizations the user may switch between.
    pub org_count: usize,
    /// The CSRF token forms carry.
    pub csrf: String,
    /// Whether the request came with the session cookie (forms must then carry the CSRF field).
    pub by_cookie: bool,
    /// A `Set-Cookie` to send back: `?org=` chose another organization.
    pub remember_org: Option<String>,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Session, WebError> {
        let account = Account::from_parts(parts, st).await?;
        let by_cookie = account.by_cookie();
        let param = org_param(parts);
        let requested = match (&param, by_cookie) {
            (Some(p), _) => Some(p.clone()),
            (None, false) => org_header(&parts.headers).map_err(WebError::from)?,
            (None, true) => cookie(&parts.headers, ORG_COOKIE),
        };
        let memberships = &account.principal.memberships;
        let chosen = match requested {
            Some(r) => match memberships.iter().find(|(o, _)| *o == r) {
                Some(m) => Some(m.clone()),
                // A stale cookie (membership revoked) falls through to the chooser; an explicit choice is refused.
                None if param.is_none() && by_cookie => None,
                None => {
                    return Err(WebError::page(
                        403,
                        "Organization is not available, not ready or not found",
                    ));
                }
            },
            None => None,
        };
        let (org, role) = match (chosen, memberships.as_slice()) {
            (Some(c), _) => c,
            (None, [only]) => only.clone(),
            (None, []) => return Err(WebError::page(403, "The user belongs to no organization")),
            (None, _) if by_cookie => return Err(WebError::ChooseOrg { next: here(parts) }),
            (None, _) => {
                return Err(WebError::page(
                    403,
                    "The user belongs to several organizations: send X-Org-ID or add ?org=<id>",
                ));
            }
        };
        let remember_org =
            (by_cookie && param.is_some() && cookie(&parts.headers, ORG_COOKIE).as_deref() != Some(&org))
                .then(|| set_cookie(ORG_COOKIE, &org, secure(st)));
        let org = OrgId::parse(&org).ok_or_else(|| {
            WebError::from(crate::error::Error::Internal(anyhow::anyhow!(
                "stored organization id is invalid"
            )))
        })?;
        Ok(Session {
            user: account.principal.user,
            org,
            role,
            org_count: memberships.len(),
            csrf: account.csrf,
            by_cookie,
            remember_org,
        })
    }
}

impl Session {
    /// Whether the user may change issues and links here.
    pub fn can_write(&self) -> bool {
        self.role >= Role::Member
    }

    /// The checks every form POST passes: the CSRF field (for cookie sessions; a script sending the token in a header
    /// cannot be forged by a browser) and then the role.
    pub fn check_form(&self, form: &Form) -> Result<(), WebError> {
        if self.by_cookie {
            let sent = form.get("csrf").unwrap_or_default();
            if !bool::from(sent.as_bytes().ct_eq(self.csrf.as_bytes())) {
                return Err(WebError::page(
                    403,
                    "The form's security token is missing or stale: reload the page and try again",
                ));
            }
        }
        Ok(())
    }

    /// 403 unless the user may write (readers see no forms, and their posts are refused).
    pub fn check_writer(&self) -> Result<(), WebError> {
        if self.can_write() {
            Ok(())
        } else {
            Err(WebError::page(
                403,
                format!(
                    "This action needs the member role; you are {} in this organization",
                    self.role
                ),
            ))
        }
    }
}

/// An `application/x-www-form-urlencoded` body, read up to the body limit (the first value of each name wins).
pub struct Form(HashMap<String, String>);

impl Form {
    /// A field's value, when present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A field's value, trimmed; empty when absent.
    pub fn text(&self, name: &str) -> String {
        self.get(name).map(str::trim).unwrap_or_default().to_owned()
    }

    /// Parses a form body.
    pub fn parse(body: &[u8]) -> Form {
        let mut map = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(body) {
            map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Form(map)
    }
}

impl FromRequest<AppState> for Form {
    type Rejection = WebError;

    async fn from_request(req: Request, st: &AppState) -> Result<Form, WebError> {
        refuse_cross_site(req.headers())?;
        let form_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form_type {
            return Err(WebError::page(
                415,
                "Forms are sent as application/x-www-form-urlencoded",
            ));
        }
        let limit = st.body_limit;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| WebError::page(413, format!("The form is larger than {limit} bytes")))?;
        Ok(Form::parse(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(name), Ok(value)) = (k.parse::<axum::http::HeaderName>(), v.parse()) {
                h.append(name, value);
            }
        }
        h
    }

    #[test]
    fn the_csrf_token_is_the_hex_sha256_of_the_prefixed_token() {
        // echo -n 'csrf:abc' | sha256sum
        assert_eq!(
            csrf_token("abc"),
            "8c1f95ae991baa4ca3097ba5a6052ccb4fdea88faf0599df4fafaa3c3252801a"
        );
        assert_eq!(csrf_token("abc").len(), 64);
        assert_ne!(csrf_token("abc"), csrf_token("abd"));
    }

    #[test]
    fn cookies_are_found_by_name_among_several_headers() {
        let h = headers(&[("cookie", "a=1; tether_session=tok%2Fx"), ("cookie", "tether_org=acme")]);
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("tok/x"));
        assert_eq!(cookie(&h, ORG_COOKIE).as_deref(), Some("acme"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn a_session_cookie_is_http_only_and_same_site_lax() {
        let c = set_cookie(SESSION_COOKIE, "tth_a-b_c", false);
        assert_eq!(c, "tether_session=tth_a-b_c; HttpOnly; SameSite=Lax; Path=/");
        assert!(set_cookie(SESSION_COOKIE, "a;b", true).starts_with("tether_session=a%3Bb;"));
        assert!(set_cookie(SESSION_COOKIE, "x", true).ends_with("; Secure"));
    }

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(local_path(Some("/TEST-1?org=a")), "/TEST-1?org=a");
        assert_eq!(local_path(Some("//evil.example/")), "/");
        assert_eq!(local_path(Some("https://evil.example/")), "/");
        assert_eq!(local_path(Some("/\\evil.example")), "/");
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn a_form_body_keeps_the_first_value_of_each_field() {
        let f = Form::parse(b"csrf=abc&issue=TEST-1&issue=TEST-2&summary=a+b%26c");
        assert_eq!(f.get("issue"), Some("TEST-1"));
        assert_eq!(f.text("summary"), "a b&c");
        assert_eq!(f.text("missing"), "");
    }
}
