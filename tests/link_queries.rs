//! `GET /v2/issues/K/links` runs a constant number of SQL statements, however many links the issue has (no N+1).
//!
//! sqlx emits one `tracing` event with target `sqlx::query` per statement; a counting layer installed as the global
//! subscriber counts those that happen inside the server's `http.request` span (not the outbox worker's polling).
//! The subscriber is process-wide, so this file holds only this test (nextest gives it its own process) and, under
//! plain `cargo test`, the SQLite and PostgreSQL variants take turns through a static mutex.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Backend, TestApp};
use serde_json::json;
use tether::domain::OrgId;
use tether::domain::dates::now_ms;
use tether::domain::links::Relationship;
use tether::store::{Locator, NewIssue, NewLink};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

static STATEMENTS: AtomicUsize = AtomicUsize::new(0);
/// The statements' summaries, for the failure messages.
static LOG: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static INSTALLED: OnceLock<()> = OnceLock::new();

/// Counts sqlx's per-statement events that happen while an HTTP request is served (inside the server's
/// `http.request` span), so the outbox worker's background polling is not counted.
struct CountingLayer;

impl<S> tracing_subscriber::Layer<S> for CountingLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let in_request = ctx
            .event_scope(event)
            .is_some_and(|mut scope| scope.any(|span| span.name() == "http.request"));
        if in_request {
            let mut summary = Summary(String::new());
            event.record(&mut summary);
            LOG.lock().unwrap().push(summary.0);
            STATEMENTS.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Picks the `summary` field (the statement's first words) out of sqlx's event.
struct Summary(String);

impl tracing::field::Visit for Summary {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "summary" {
            value.clone_into(&mut self.0);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" {
            self.0 = format!("{value:?}");
        }
    }
}

fn install_counter() {
    INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(CountingLayer))
            .expect("no other global subscriber in this test binary");
    });
}

/// An issue `hub` linked to `n` fresh issues, written through the store (quicker than HTTP for 1,000 links);
/// every other linked issue is assigned, and the relationships vary so both directions and all joins are used.
async fn hub_with_links(app: &TestApp, summary: &str, n: usize) -> String {
    let org = OrgId::parse(&app.org).unwrap();
    let queue = app
        .store
        .get_queue(&org, &Locator::Key("K".into()))
        .await
        .unwrap()
        .expect("queue K");
    let admin = app
        .store
        .find_user(&Locator::Key("admin".into()))
        .await
        .unwrap()
        .expect("admin")
        .uid;
    let new_issue = |summary: String, assignee: Option<i64>| NewIssue {
        org: org.clone(),
        queue_id: queue.id,
        summary,
        description: None,
        ty: "task".into(),
        assignee,
        parent: None,
        unique: None,
        custom: BTreeMap::new(),
        by: admin,
        at: now_ms(),
    };
    let hub = app.store.create_issue(&new_issue(summary.into(), None)).await.unwrap();
    let names = [
        "relates",
        "depends on",
        "is dependent by",
        "is parent task for",
        "duplicates",
        "is duplicated by",
    ];
    for i in 0..n {
        let other = app
            .store
            .create_issue(&new_issue(format!("{summary} #{i}"), (i % 2 == 0).then_some(admin)))
            .await
            .unwrap();
        let at = now_ms();
        let link = NewLink {
            org: org.clone(),
            this: hub.id,
            other: other.id,
            relationship: Relationship::parse(names[i % names.len()]).unwrap(),
            created: (admin, at),
            updated: (admin, at),
            import: false,
        };
        app.store.create_link(&link).await.unwrap();
    }
    hub.key
}

/// The statements one `GET /v2/issues/{key}/links` runs: the fewest over five runs after a warm-up, because a run
/// that happens to open a pool connection also counts that connection's setup (SQLite's `PRAGMA …`). Returns the
/// count and every run's statements (for the failure message).
async fn statements_for_list(app: &TestApp, key: &str, expected_len: usize) -> (usize, Vec<(usize, Vec<String>)>) {
    for _ in 0..3 {
        let a = app.get(&format!("/v2/issues/{key}/links")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body.as_array().map(Vec::len), Some(expected_len));
    }
    let mut runs = Vec::new();
    for run in 0..5 {
        // A write first, so that the list is computed, not served from the read cache (SQLite).
        let w = app
            .patch(
                &format!("/v2/issues/{key}"),
                json!({"description": format!("run {run}")}),
            )
            .await;
        assert_eq!(w.status, 200, "{}", w.body);
        LOG.lock().unwrap().clear();
        let before = STATEMENTS.load(Ordering::SeqCst);
        let a = app.get(&format!("/v2/issues/{key}/links")).await;
        let after = STATEMENTS.load(Ordering::SeqCst);
        assert_eq!(a.status, 200);
        assert_eq!(a.body.as_array().map(Vec::len), Some(expected_len));
        runs.push((after - before, LOG.lock().unwrap().clone()));
    }
    (runs.iter().map(|r| r.0).min().unwrap(), runs)
}

async fn listing_links_runs_a_constant_number_of_statements(backend: Backend) {
    let _turn = SERIAL.lock().await;
    install_counter();
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    app.queue("K").await;
    let small = hub_with_links(&app, "small hub", 10).await;
    let big = hub_with_links(&app, "big hub", 1000).await;

    // The counter sees the statements at all (a subscriber that saw nothing would make the test vacuous).
    // (An issue, not `/myself`: the token's principal may come from the API's cache without a statement.)
    let before = STATEMENTS.load(Ordering::SeqCst);
    assert_eq!(app.get(&format!("/v2/issues/{small}")).await.status, 200);
    assert!(
        STATEMENTS.load(Ordering::SeqCst) > before,
        "no sqlx::query events were counted"
    );

    let (for_small, small_runs) = statements_for_list(&app, &small, 10).await;
    let (for_big, big_runs) = statements_for_list(&app, &big, 1000).await;
    assert_eq!(
        for_small, for_big,
        "statements for 10 links vs 1,000 links:\n{small_runs:#?}\n{big_runs:#?}"
    );
    assert!(
        (1..=4).contains(&for_big),
        "listing links should take a few statements (token unless cached, issue, links), took {for_big}:\n{big_runs:#?}"
    );

    // With no write in between, SQLite serves the list again from the read cache without a statement;
    // PostgreSQL (no read cache) runs the statements each time.
    let mut again = usize::MAX;
    for _ in 0..3 {
        let before = STATEMENTS.load(Ordering::SeqCst);
        assert_eq!(app.get(&format!("/v2/issues/{big}/links")).await.status, 200);
        again = again.min(STATEMENTS.load(Ordering::SeqCst) - before);
    }
    match backend {
        Backend::Sqlite => assert_eq!(again, 0, "a repeated list with no write in between"),
        Backend::Postgres => assert!(again > 0, "PostgreSQL answers are not kept"),
    }

    // The entries are complete: the linked issue's status, and its assignee for half of them.
    let list = app.get(&format!("/v2/issues/{big}/links")).await.body;
    let list = list.as_array().unwrap();
    assert!(list.iter().all(|l| l["status"]["key"] == json!("open")));
    assert_eq!(list.iter().filter(|l| l.get("assignee").is_some()).count(), 500);
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_links_runs_a_constant_number_of_statements_on_sqlite() {
    listing_links_runs_a_constant_number_of_statements(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_links_runs_a_constant_number_of_statements_on_postgres() {
    listing_links_runs_a_constant_number_of_statements(Backend::Postgres).await;
}
