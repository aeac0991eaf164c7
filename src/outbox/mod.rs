//! The outbox: every call Tether makes to another system is an event stored in the same transaction as the change
//! that causes it, and delivered here by a background worker — with a timeout, exponential backoff with jitter and a
//! maximum number of attempts, then `failed` with the last error. Each event is claimed by one worker at a time
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so several server processes can share one database. Delivery is at
//! least once; every attempt of an event carries the same `Idempotency-Key`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain::dates::now_ms;
use crate::store::{DynStore, OutboxEvent};

/// Outbox settings (`--outbox-*`).
#[derive(Debug, Clone, Copy)]
pub struct OutboxConfig {
    /// Timeout of one delivery attempt.
    pub timeout: Duration,
    /// Delay before the second attempt; it doubles after each failure.
    pub backoff: Duration,
    /// The longest delay between attempts.
    pub backoff_max: Duration,
    /// Attempts before an event is `failed`.
    pub max_attempts: u32,
    /// How often to look for due events when nothing wakes the worker.
    pub poll: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            timeout: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            max_attempts: 12,
            poll: Duration::from_secs(1),
        }
    }
}

impl OutboxConfig {
    /// The delay after the `attempt`-th failed attempt (1-based): `backoff · 2^(attempt-1)`, capped, with "equal
    /// jitter" (half fixed, half random) so that retries of many events spread out but still grow visibly.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(30)));
        let d = exp.min(self.backoff_max);
        let half = d / 2;
        let jitter_ms = rand::random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// Wakes the worker when a change has queued events.
#[derive(Debug, Clone, Default)]
pub struct Wakeup(Arc<Notify>);

impl Wakeup {
    /// Signals that new events are due.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// The delivery worker.
pub struct Worker {
    store: DynStore,
    http: reqwest::Client,
    cfg: OutboxConfig,
    wakeup: Wakeup,
    sentry: Option<Arc<crate::integrations::sentry::Sentry>>,
}

impl Worker {
    /// A worker on `store`, woken by `wakeup`.
    pub fn new(store: DynStore, http: reqwest::Client, cfg: OutboxConfig, wakeup: Wakeup) -> Worker {
        Worker {
            store,
            http,
            cfg,
            wakeup,
            sentry: None,
        }
    }

    /// Hands `sentry.*` events to the Sentry integration.
    pub fn with_sentry(mut self, sentry: Option<Arc<crate::integrations::sentry::Sentry>>) -> Worker {
        self.sentry = sentry;
        self
    }

    /// Delivers due events until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let lease = (self.cfg.timeout + Duration::from_secs(5)).as_millis() as i64;
        loop {
            let claimed = match self.store.claim_events(now_ms(), lease, 16).await {
                Ok(evs) => evs,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox: cannot claim events");
                    Vec::new()
                }
            };
            let busy = !claimed.is_empty();
            // Deliver the claimed batch concurrently; each event's attempts stay sequential.
            let deliveries = claimed.into_iter().map(|ev| self.deliver(ev));
            futures_util::future::join_all(deliveries).await;
            if busy {
                continue;
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = self.wakeup.0.notified() => {}
                () = tokio::time::sleep(self.cfg.poll) => {}
            }
        }
    }

    async fn deliver(&self, ev: OutboxEvent) {
        let result = self.attempt(&ev).await;
        let now = now_ms();
        let recorded = match result {
            Ok(()) => {
                tracing::info!(outbox.id = ev.id, outbox.kind = %ev.kind, attempts = ev.attempts, "outbox: delivered");
                self.store.event_delivered(ev.id, now).await
            }
            Err(error) => {
                let attempts = u32::try_from(ev.attempts).unwrap_or(u32::MAX);
                let retry_at =
                    (attempts < self.cfg.max_attempts).then(|| now + self.cfg.delay(attempts).as_millis() as i64);
                tracing::warn!(outbox.id = ev.id, outbox.kind = %ev.kind, attempts, %error, final = retry_at.is_none(), "outbox: attempt failed");
                self.store.event_failed(ev.id, &error, retry_at, now).await
            }
        };
        if let Err(e) = recorded {
            // The lease runs out and the event is tried again: at least once, never lost.
            tracing::error!(outbox.id = ev.id, error = %e, "outbox: cannot record the attempt");
        }
    }

    async fn attempt(&self, ev: &OutboxEvent) -> Result<(), String> {
        if ev.kind.starts_with("sentry.") {
            return match &self.sentry {
                Some(s) => s.handle(ev).await,
                None => Err("the Sentry integration is not configured".into()),
            };
        }
        let method =
            reqwest::Method::from_bytes(ev.method.as_bytes()).map_err(|_| format!("bad method {}", ev.method))?;
        let mut req = self
            .http
            .request(method, &ev.url)
            .timeout(self.cfg.timeout)
            .header("Idempotency-Key", &ev.idempotency_key);
        if let Some(app) = &ev.app_id {
            let token = self
                .store
                .app_token(&ev.org_id, app)
                .await
                .map_err(|e| format!("store: {e}"))?;
            if let Some(t) = token {
                req = req.header(reqwest::header::AUTHORIZATION, format!("OAuth {}", t.0));
            }
        }
        if let Some(body) = &ev.body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let resp = req.send().await.map_err(describe)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let snippet: String = text.chars().take(200).collect();
        Err(format!("HTTP {}: {}", status.as_u16(), snippet.trim()))
    }
}

/// A transport error without the URL's query or anything secret.
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        format!("request failed: {}", e.without_url())
    }
}

/// The shared outbound HTTP client (rustls with the `ring` provider; no system proxy).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("Tether/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_cap() {
        let cfg = OutboxConfig {
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..Default::default()
        };
        for _ in 0..50 {
            let d1 = cfg.delay(1);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d3 = cfg.delay(3);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            let d20 = cfg.delay(20);
            assert!(
                d20 >= Duration::from_millis(500) && d20 <= Duration::from_millis(1000),
                "{d20:?}"
            );
        }
    }
}
