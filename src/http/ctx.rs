//! Request context: who is calling, in which organization, with which role; plus the boundary parsers every
//! handler uses (body, query, references in the forms clients send).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{ApiVersion, AppState};
use crate::domain::{Access, IssueLocator, OrgId, Role};
use crate::error::{Error, Result};
use crate::store::{Locator, Page, Principal, User};

/// The authenticated caller of an API route.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The user.
    pub user: User,
    /// The token used.
    pub token_id: i64,
    /// The organization in scope.
    pub org: OrgId,
    /// The user's role there.
    pub role: Role,
    /// What the route requires.
    pub access: Access,
    base: Arc<str>,
    version: &'static str,
}

/// SHA-256 of a token, hex: what the database keeps. Tokens are 256-bit random values, so a fast hash is enough
/// and a lookup by hash leaks nothing useful through timing.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The API's principals by token hash, kept for a short time: it saves every API request one database read (the
/// profile in `docs/benchmarks.md` measured 13.5 % of a `GET` of an issue). Only tokens that were found are kept, so a
/// new token works at once; revoking a token through this process's API clears the cache, so it stops working at
/// once here; a revocation or a membership change made elsewhere (the CLI, another replica) takes effect within
/// the time to live. A time to live of zero turns the cache off.
#[derive(Clone)]
pub struct PrincipalCache(Option<Arc<moka::future::Cache<String, Arc<Principal>>>>);

impl PrincipalCache {
    /// The default time to live.
    pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(2);

    /// A cache whose entries live `ttl` (none when `ttl` is zero), at most 10 000 of them.
    pub fn new(ttl: std::time::Duration) -> PrincipalCache {
        // Behind an `Arc`: the state is cloned for every request, and a moka handle's clone is not cheap.
        PrincipalCache((!ttl.is_zero()).then(|| {
            Arc::new(
                moka::future::Cache::builder()
                    .max_capacity(10_000)
                    .time_to_live(ttl)
                    .build(),
            )
        }))
    }

    /// The principal of a token hash, from the cache or the store.
    pub async fn authenticate(&self, store: &crate::store::DynStore, hash: &str) -> Result<Option<Arc<Principal>>> {
        let Some(cache) = &self.0 else {
            return Ok(store.authenticate(hash).await?.map(Arc::new));
        };
        if let Some(p) = cache.get(hash).await {
            return Ok(Some(p));
        }
        let found = store.authenticate(hash).await?.map(Arc::new);
        if let Some(p) = &found {
            cache.insert(hash.to_owned(), p.clone()).await;
        }
        Ok(found)
    }

    /// Forgets every entry (after a token was revoked).
    pub fn clear(&self) {
        if let Some(cache) = &self.0 {
            cache.invalidate_all();
        }
    }
}

/// The token from `Authorization: OAuth x` or `Bearer x`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    let ok_scheme = scheme.eq_ignore_ascii_case("oauth") || scheme.eq_ignore_ascii_case("bearer");
    (ok_scheme && !token.is_empty() && token != "not provided").then_some(token)
}

/// The organization headers: `None` when absent (or the client's literal `not provided`); 400 when they disagree.
pub fn org_header(headers: &HeaderMap) -> Result<Option<String>> {
    let mut found: Option<String> = None;
    for name in ["x-org-id", "x-cloud-org-id"] {
        for v in headers.get_all(name) {
            let v = v
                .to_str()
                .map_err(|_| Error::BadRequest(format!("Header {name} is not valid text")))?
                .trim();
            if v.is_empty() || v == "not provided" {
                continue;
            }
            match &found {
                Some(f) if f != v => {
                    return Err(Error::BadRequest(
                        "X-Org-ID and X-Cloud-Org-ID name different organizations".into(),
                    ));
                }
                _ => found = Some(v.to_owned()),
            }
        }
    }
    Ok(found)
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Ctx> {
        let access = parts.extensions.get::<Access>().copied().unwrap_or(Access::Admin);
        let version = parts.extensions.get::<ApiVersion>().map_or("v2", |v| v.0);
        let token =
            bearer(&parts.headers).ok_or_else(|| Error::Unauthorized("Authorization token is missing".into()))?;
        let principal = state
            .principals
            .authenticate(&state.store, &hash_token(token))
            .await?
            .ok_or_else(|| Error::Unauthorized("Authorization token is invalid or revoked".into()))?;
        let (org, role) = match org_header(&parts.headers)? {
            Some(requested) => principal
                .memberships
                .iter()
                .find(|(o, _)| *o == requested)
                .cloned()
                .ok_or_else(|| Error::Forbidden("Organization is not available, not ready or not found".into()))?,
            None => match principal.memberships.as_slice() {
                [only] => only.clone(),
                [] => return Err(Error::Forbidden("The user belongs to no organization".into())),
                _ => {
                    return Err(Error::Forbidden(
                        "The user belongs to several organizations: send X-Org-ID or X-Cloud-Org-ID".into(),
                    ));
                }
            },
        };
        let org =
            OrgId::parse(&org).ok_or_else(|| Error::Internal(anyhow::anyhow!("stored organization id is invalid")))?;
        Ok(Ctx {
            user: principal.user.clone(),
            token_id: principal.token_id,
            org,
            role,
            access,
            base: state.base.clone(),
            version,
        })
    }
}

impl Ctx {
    /// 403 unless the caller's role allows the route. Handlers call it after resolving the objects in the path,
    /// so that a missing object answers 404 first (contract §2).
    pub fn authorize(&self) -> Result<()> {
        if self.access.allows(self.role) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "This action needs the {} role; you are {} in this organization",
                self.access.as_str(),
                self.role
            )))
        }
    }

    /// An absolute API URL for `path` (which starts with `/`), in the request's version.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}{}", self.base, self.version, path)
    }

    /// The request's API version.
    pub fn version(&self) -> &'static str {
        self.version
    }

    /// The public base URL.
    pub fn base(&self) -> &str {
        &self.base
    }
}

/// A path parameter; a rejection (bad percent-encoding) answers 400 in the envelope instead of axum's text.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Path<T>> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(t)) => Ok(Path(t)),
            Err(e) => Err(Error::BadRequest(e.body_text())),
        }
    }
}

/// The raw request body, read up to the configured limit (413 past it).
pub struct Body(pub Bytes);

impl FromRequest<AppState> for Body {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Body> {
        let limit = state.body_limit;
        // A deadline for the whole body: a per-read timeout would let a client trickle one byte at a time forever.
        let read = axum::body::to_bytes(req.into_body(), limit);
        let read = tokio::time::timeout(super::BODY_READ_TIMEOUT, read)
            .await
            .map_err(|_| Error::SlowBody(super::BODY_READ_TIMEOUT.as_secs()))?;
        let bytes = read.map_err(|e| {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                Error::TooLarge(limit)
            } else {
                Error::BadRequest("Could not read the request body".into())
            }
        })?;
        Ok(Body(bytes))
    }
}

impl Body {
    /// Parses the body as JSON into `T` (an empty body reads as `{}`). Malformed JSON or wrong types: 400.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        let bytes: &[u8] = if self.0.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &self.0
        };
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| Error::BadRequest(format!("Invalid JSON body: {e}")))?;
        if has_nul(&v) {
            // PostgreSQL cannot store U+0000 in text; refuse it everywhere so both backends behave alike.
            return Err(Error::BadRequest(
                "Text must not contain the NUL character (\\u0000)".into(),
            ));
        }
        T::deserialize(v).map_err(|e| Error::BadRequest(format!("Invalid JSON body: {e}")))
    }
}

/// Whether any string (or key) in `v` contains U+0000.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Query parameters, parsed leniently (the first value of each name wins).
pub struct Query(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> std::result::Result<Query, Response> {
        let mut map = HashMap::new();
        if let Some(q) = parts.uri.query() {
            for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
                map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
            }
        }
        Ok(Query(map))
    }
}

impl Query {
    /// A parameter's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `perPage` (default 50, 1..=1000) and `page` (default 1, ≥ 1): 400 when out of range or not a number.
    pub fn page(&self) -> Result<Page> {
        let num = |name: &str, default: i64, max: i64| -> Result<i64> {
            match self.get(name) {
                None => Ok(default),
                Some(s) => s
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        Error::BadRequest(format!("Query parameter {name} must be a number from 1 to {max}"))
                    }),
            }
        };
        Ok(Page {
            per_page: num("perPage", 50, 1000)?,
            page: num("page", 1, 1_000_000)?,
        })
    }

    /// A boolean flag (`true`/`false`/`1`/`0`); absent is false.
    pub fn flag(&self, name: &str) -> Result<bool> {
        match self.get(name).map(str::trim) {
            None | Some("" | "false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(_) => Err(Error::BadRequest(format!(
                "Query parameter {name} must be true or false"
            ))),
        }
    }
}

/// A paginated JSON answer: the page plus `X-Total-Count`, `X-Total-Pages` and `Link: <…>; rel="next"`.
pub fn paginated<T: serde::Serialize>(
    ctx: &Ctx,
    path: &str,
    query: &Query,
    page: Page,
    total: i64,
    items: Vec<T>,
) -> Response {
    let pages = if total == 0 {
        1
    } else {
        (total + page.per_page - 1) / page.per_page
    };
    let mut resp = axum::Json(items).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = total.to_string().parse() {
        h.insert("x-total-count", v);
    }
    if let Ok(v) = pages.to_string().parse() {
        h.insert("x-total-pages", v);
    }
    if page.page < pages {
        let mut params: Vec<(String, String)> = query
            .0
            .iter()
            .filter(|(k, _)| *k != "page" && *k != "perPage")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort();
        params.push(("perPage".into(), page.per_page.to_string()));
        params.push(("page".into(), (page.page + 1).to_string()));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        if let Ok(v) = format!("<{}?{qs}>; rel=\"next\"", ctx.url(path)).parse() {
            h.insert(axum::http::header::LINK, v);
        }
    }
    resp
}

/// An issue named in a path: key or id (anything else cannot exist: 404).
pub fn issue_locator(s: &str) -> Result<IssueLocator> {
    IssueLocator::parse(s).ok_or_else(|| Error::not_found("issue", format!("Issue {s} does not exist")))
}

/// An issue reference from a body: a key or id string, a number, or `{"key"|"id": …}`. `None` for null.
pub fn issue_ref(field: &str, v: &Value) -> Result<Option<IssueLocator>> {
    let text = match v {
        Value::Null => return Ok(None),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => match o.get("key").or_else(|| o.get("id")) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(Error::BadRequest(format!(
                    "Field {field} must be an issue key, an id or {{\"key\": …}}"
                )));
            }
        },
        _ => {
            return Err(Error::BadRequest(format!(
                "Field {field} must be an issue key, an id or {{\"key\": …}}"
            )));
        }
    };
    IssueLocator::parse(&text)
        .map(Some)
        .ok_or_else(|| Error::not_found("issue", format!("Issue {text} does not exist")))
}

/// A user reference from a body: login, uid (number or string), or `{"uid"|"id"|"login"|"display"}`.
pub fn user_ref(field: &str, v: &Value) -> Result<Option<Locator>> {
    let bad = || {
        Error::BadRequest(format!(
            "Field {field} must be a login, a uid or {{\"uid\"|\"login\": …}}"
        ))
    };
    let from_scalar = |v: &Value| -> Option<Locator> {
        match v {
            Value::Number(n) => n.as_i64().map(Locator::Id),
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().ok().map(Locator::Id)
            }
            Value::String(s) => Some(Locator::Key(s.clone())),
            _ => None,
        }
    };
    match v {
        Value::Null => Ok(None),
        Value::Object(o) => {
            if let Some(x) = o.get("uid").or_else(|| o.get("id")) {
                return from_scalar(x).map(Some).ok_or_else(bad);
            }
            if let Some(Value::String(l)) = o.get("login") {
                return Ok(Some(Locator::Key(l.clone())));
            }
            if let Some(Value::String(d)) = o.get("display").or_else(|| o.get("name")) {
                return Ok(Some(Locator::Name(d.clone())));
            }
            Err(bad())
        }
        other => from_scalar(other).map(Some).ok_or_else(bad),
    }
}

/// A `type`/`status`/`queue` reference: key, id, or `{"key"|"id"|"name"}`.
pub fn named_ref(field: &str, v: &Value) -> Result<Option<Locator>> {
    let bad = || {
        Error::BadRequest(format!(
            "Field {field} must be a key, an id or {{\"key\"|\"id\"|\"name\": …}}"
        ))
    };
    match v {
        Value::Null => Ok(None),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map(|n| Some(Locator::Id(n))).map_err(|_| bad())
        }
        Value::String(s) => Ok(Some(Locator::Key(s.clone()))),
        Value::Number(n) => n.as_i64().map(|n| Some(Locator::Id(n))).ok_or_else(bad),
        Value::Object(o) => {
            if let Some(k) = o.get("key").filter(|v| !v.is_null()) {
                return named_ref(field, k);
            }
            if let Some(i) = o.get("id").filter(|v| !v.is_null()) {
                return match i {
                    Value::String(s) => Ok(Some(
                        s.parse().map(Locator::Id).unwrap_or_else(|_| Locator::Key(s.clone())),
                    )),
                    Value::Number(n) => n.as_i64().map(|n| Some(Locator::Id(n))).ok_or_else(bad),
                    _ => Err(bad()),
                };
            }
            match o.get("name").or_else(|| o.get("display")) {
                Some(Value::String(n)) => Ok(Some(Locator::Name(n.clone()))),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// A string field: absent/null is `None`, a string is itself, anything else is 400.
pub fn opt_string(field: &str, v: Option<&Value>) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::BadRequest(format!("Field {field} must be a string"))),
    }
}

/// A JSON object body, as a map (400 for anything else).
pub fn object(v: Value) -> Result<serde_json::Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(Error::BadRequest("The request body must be a JSON object".into())),
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
    fn the_python_clients_not_provided_org_counts_as_absent() {
        let h = headers(&[("X-Org-Id", "not provided"), ("X-Cloud-Org-Id", "abc")]);
        assert_eq!(org_header(&h).ok().flatten().as_deref(), Some("abc"));
        assert_eq!(
            org_header(&headers(&[("X-Org-Id", "not provided")])).ok().flatten(),
            None
        );
    }

    #[test]
    fn two_org_headers_that_disagree_are_a_bad_request() {
        let h = headers(&[("x-org-id", "a"), ("x-cloud-org-id", "b")]);
        assert!(matches!(org_header(&h), Err(Error::BadRequest(_))));
        let same = headers(&[("x-org-id", "a"), ("x-cloud-org-id", "a")]);
        assert_eq!(org_header(&same).ok().flatten().as_deref(), Some("a"));
    }

    #[test]
    fn oauth_and_bearer_schemes_both_carry_a_token() {
        assert_eq!(bearer(&headers(&[("authorization", "OAuth abc")])), Some("abc"));
        assert_eq!(bearer(&headers(&[("authorization", "Bearer abc")])), Some("abc"));
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "OAuth not provided")])), None);
    }

    #[test]
    fn user_references_come_in_every_form_the_client_sends() {
        assert_eq!(
            user_ref("u", &serde_json::json!(5)).ok().flatten(),
            Some(Locator::Id(5))
        );
        assert_eq!(
            user_ref("u", &serde_json::json!("5")).ok().flatten(),
            Some(Locator::Id(5))
        );
        assert_eq!(
            user_ref("u", &serde_json::json!("ivan")).ok().flatten(),
            Some(Locator::Key("ivan".into()))
        );
        assert_eq!(
            user_ref("u", &serde_json::json!({"uid": 7})).ok().flatten(),
            Some(Locator::Id(7))
        );
        assert_eq!(
            user_ref("u", &serde_json::json!({"login": "x"})).ok().flatten(),
            Some(Locator::Key("x".into()))
        );
        assert!(user_ref("u", &serde_json::json!([1])).is_err());
    }

    #[test]
    fn issue_references_accept_keys_ids_and_objects() {
        assert!(matches!(
            issue_ref("i", &serde_json::json!("Q-1")),
            Ok(Some(IssueLocator::Key(_)))
        ));
        assert_eq!(
            issue_ref("i", &serde_json::json!(12)).ok().flatten(),
            Some(IssueLocator::Id(12))
        );
        assert!(matches!(
            issue_ref("i", &serde_json::json!({"key": "Q-2"})),
            Ok(Some(IssueLocator::Key(_)))
        ));
        assert!(matches!(
            issue_ref("i", &serde_json::json!("nonsense")),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            issue_ref("i", &serde_json::json!(true)),
            Err(Error::BadRequest(_))
        ));
    }
}
