//! The read cache: whole answers of the issue reads (`GET` of an issue, its links, one link, its graph) kept in
//! memory and served again until the store's next write.
//!
//! The store says where it stands in the sequence of its writes ([`crate::store::ReadEpoch`]); an answer is kept
//! under the generation read before it was computed, only when no write was under way and none started while it was
//! computed, and served only while the generation is the same. So a write is seen by every read that starts after
//! it was acknowledged, by any client. What the store cannot see — another process writing to the same SQLite file
//! (a `tether` CLI command) — shows within the time to live. On PostgreSQL, where replicas write to one database,
//! the store gives no epoch and nothing is cached.

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;

use super::AppState;
use super::ctx::Ctx;
use crate::error::{Error, Result};

/// The largest answer kept: a list of links is about 700 bytes a link.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// What a kept answer is found by: the organization and the request's path and query (which hold the API
/// version). The answers of these routes depend on nothing else of the caller once it may read the organization.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    org: Arc<str>,
    target: Arc<str>,
}

struct Answer {
    generation: u64,
    headers: HeaderMap,
    body: Bytes,
}

/// The cache, or nothing when turned off.
#[derive(Clone)]
pub struct ReadCache(Option<Arc<moka::sync::Cache<Key, Arc<Answer>>>>);

impl ReadCache {
    /// The default time to live.
    pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(2);
    /// The default bound on the bodies kept, in bytes.
    pub const DEFAULT_SIZE: u64 = 32 * 1024 * 1024;

    /// A cache whose answers live `ttl` (none when `ttl` is zero), at most `max_bytes` of bodies in all.
    pub fn new(ttl: std::time::Duration, max_bytes: u64) -> ReadCache {
        // Behind an `Arc`: the state is cloned for every request, and a moka handle's clone is not cheap.
        ReadCache((!ttl.is_zero() && max_bytes > 0).then(|| {
            Arc::new(
                moka::sync::Cache::builder()
                    .max_capacity(max_bytes)
                    .weigher(|k: &Key, a: &Arc<Answer>| {
                        let size = k.org.len() + k.target.len() + a.body.len() + 256;
                        u32::try_from(size).unwrap_or(u32::MAX)
                    })
                    .time_to_live(ttl)
                    .build(),
            )
        }))
    }

    /// The answer to `read` from the cache, or from `render`, keeping it when it may be kept. `render` resolves the
    /// objects and authorizes as the handler always does; a kept answer was a 200, which only a caller allowed to read
    /// could get, so the cache is consulted only for such a caller.
    async fn answer<F>(&self, st: &AppState, ctx: &Ctx, read: &Read, render: F) -> Result<Response>
    where
        F: Future<Output = Result<Response>>,
    {
        let Some(cache) = &self.0 else {
            return render.await;
        };
        let Some(before) = st.store.read_epoch() else {
            return render.await;
        };
        if read.method != Method::GET || !ctx.access.allows(ctx.role) {
            return render.await;
        }
        let key = Key {
            org: Arc::from(ctx.org.as_str()),
            target: read.target.clone(),
        };
        if let Some(found) = cache.get(&key)
            && found.generation == before.generation
        {
            return Ok(response(&found.headers, found.body.clone()));
        }
        let fresh = render.await?;
        let size = axum::body::HttpBody::size_hint(fresh.body()).exact();
        if fresh.status() != StatusCode::OK || !before.quiet || size.is_none_or(|n| n > MAX_ANSWER as u64) {
            return Ok(fresh);
        }
        let (parts, body) = fresh.into_parts();
        let body = axum::body::to_bytes(body, MAX_ANSWER)
            .await
            .map_err(|e| Error::Internal(anyhow::anyhow!("reading an answer to cache it: {e}")))?;
        if st.store.read_epoch().map(|e| e.generation) == Some(before.generation) {
            let kept = Answer {
                generation: before.generation,
                headers: parts.headers.clone(),
                body: body.clone(),
            };
            cache.insert(key, Arc::new(kept));
        }
        Ok(Response::from_parts(parts, Body::from(body)))
    }
}

/// What the read cache needs of a request to one of the cached routes: its method and its path and query as sent
/// (with the `/v2` or `/v3` prefix, which the nested router's `Uri` would have lost).
pub struct Read {
    method: Method,
    target: Arc<str>,
}

impl Read {
    /// The answer from the cache, or from `render` (see [`ReadCache`]).
    pub async fn answer<F>(&self, st: &AppState, ctx: &Ctx, render: F) -> Result<Response>
    where
        F: Future<Output = Result<Response>>,
    {
        st.answers.answer(st, ctx, self, render).await
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Read {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Read> {
        let uri = parts.extensions.get::<OriginalUri>().map_or(&parts.uri, |o| &o.0);
        Ok(Read {
            method: parts.method.clone(),
            target: Arc::from(uri.path_and_query().map_or(uri.path(), |p| p.as_str())),
        })
    }
}

fn response(headers: &HeaderMap, body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.headers_mut() = headers.clone();
    r
}
