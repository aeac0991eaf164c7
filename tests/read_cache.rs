//! The read cache (`--read-cache-ttl`): kept answers of the issue reads never hide a write this server
//! acknowledged, even while other clients read the same issue; a write of another process to the same database
//! shows within the time to live. Every test runs on SQLite (where answers are kept) and on PostgreSQL (where
//! they are not).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Backend;
use serde_json::{Value, json};
use tether::domain::OrgId;
use tether::domain::dates::now_ms;
use tether::http::answers::ReadCache;
use tether::store::IssuePatch;

/// The number in a summary `v<N>`.
fn version(issue: &Value) -> u64 {
    let s = issue["summary"]
        .as_str()
        .unwrap_or_else(|| panic!("no summary: {issue}"));
    s.trim_start_matches('v')
        .parse()
        .unwrap_or_else(|_| panic!("summary {s}"))
}

both_backends! {
    async fn every_read_that_starts_after_a_write_was_acknowledged_sees_it(app) {
        app.queue("RC").await;
        let issue = app.issue("RC", "v0").await;
        let key = issue["key"].as_str().unwrap().to_owned();
        let app = Arc::new(app);
        let stop = Arc::new(AtomicBool::new(false));
        // Readers keep the answers of the issue, its links and its graph warm and check that what they see never
        // goes back.
        let mut readers = Vec::new();
        for _ in 0..4 {
            let (app, stop, key) = (app.clone(), stop.clone(), key.clone());
            readers.push(tokio::spawn(async move {
                let (mut seen, mut reads) = (0, 0u32);
                while !stop.load(Ordering::Relaxed) {
                    let a = app.get(&format!("/v2/issues/{key}")).await;
                    assert_eq!(a.status, 200, "{}", a.body);
                    let v = version(&a.body);
                    assert!(v >= seen, "a reader saw v{v} after v{seen}");
                    seen = v;
                    assert_eq!(app.get(&format!("/v2/issues/{key}/links")).await.status, 200);
                    assert_eq!(app.get(&format!("/v2/issues/{key}/_graph")).await.status, 200);
                    reads += 1;
                }
                reads
            }));
        }
        for v in 1..=40u64 {
            let a = app.patch(&format!("/v2/issues/{key}"), json!({"summary": format!("v{v}")})).await;
            assert_eq!(a.status, 200, "{}", a.body);
            let read = app.get(&format!("/v2/issues/{key}")).await;
            assert_eq!(version(&read.body), v, "the read after the acknowledged write {v}");
            // A new link shows in the list, in the link's own read and in the graph at once.
            let other = app.issue("RC", &format!("target {v}")).await;
            let other_key = other["key"].as_str().unwrap();
            let link = app.link(&key, "depends on", other_key).await;
            let links = app.get(&format!("/v2/issues/{key}/links")).await;
            assert_eq!(links.body.as_array().unwrap().len() as u64, v, "{}", links.body);
            let one = app.get(&format!("/v2/issues/{key}/links/{}", link["id"])).await;
            assert_eq!(one.status, 200, "{}", one.body);
            let graph = app.get(&format!("/v2/issues/{key}/_graph?depth=1")).await;
            let edges = graph.body["edges"].as_array().unwrap_or_else(|| panic!("{}", graph.body));
            assert_eq!(edges.len() as u64, v, "{}", graph.body);
        }
        // And a deleted link is gone from every read at once.
        let links = app.get(&format!("/v2/issues/{key}/links")).await;
        let first = links.body[0]["id"].clone();
        assert_eq!(app.delete(&format!("/v2/issues/{key}/links/{first}")).await.status, 204);
        app.get(&format!("/v2/issues/{key}/links/{first}")).await.expect_error(404);
        assert_eq!(app.get(&format!("/v2/issues/{key}/links")).await.body.as_array().unwrap().len(), 39);
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.await.unwrap() > 0, "every reader read");
        }
    }

    async fn a_write_of_another_process_shows_within_the_time_to_live(app) {
        app.queue("RC").await;
        let issue = app.issue("RC", "v1").await;
        let key = issue["key"].as_str().unwrap().to_owned();
        let id: i64 = issue["id"].as_str().unwrap().parse().unwrap();
        // The create's writer connection goes back to the pool just after its answer; an answer is kept only
        // once it is back.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(version(&app.get(&format!("/v2/issues/{key}")).await.body), 1);
        assert_eq!(version(&app.get(&format!("/v2/issues/{key}")).await.body), 1);
        // What a `tether` command run beside the server does: its own connections to the same database.
        let other = tether::store::open(&app.url, tether::store::Synchronous::Normal).await.unwrap();
        let patch = IssuePatch { summary: Some("v2".into()), ..IssuePatch::default() };
        other.update_issue(&OrgId::parse("acme").unwrap(), id, &patch, None, 1, now_ms()).await.unwrap();
        let written = Instant::now();
        let first = version(&app.get(&format!("/v2/issues/{key}")).await.body);
        match app.backend {
            // The kept answer may be served until its time to live is over...
            Backend::Sqlite => assert_eq!(first, 1, "SQLite answers are kept"),
            // ...while PostgreSQL answers are never kept (replicas write to one database).
            Backend::Postgres => assert_eq!(first, 2, "PostgreSQL answers are not kept"),
        }
        loop {
            if version(&app.get(&format!("/v2/issues/{key}")).await.body) == 2 {
                break;
            }
            assert!(
                written.elapsed() < ReadCache::DEFAULT_TTL + Duration::from_millis(500),
                "still the old answer {:?} after the write",
                written.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A write of this server makes it stale at once, whatever the time to live.
        let a = app.patch(&format!("/v2/issues/{key}"), json!({"summary": "v3"})).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(version(&app.get(&format!("/v2/issues/{key}")).await.body), 3);
    }

    async fn answers_depend_on_the_organization_and_the_api_version(app) {
        // Two organizations each with an issue RC-1: the same path answers each with its own.
        app.queue("RC").await;
        app.issue("RC", "v1").await;
        let token = app.user_token("other", "olga", tether::domain::Role::Admin).await;
        let olga = app.as_user(&token, "other");
        olga.queue("RC").await;
        olga.issue("RC", "v2").await;
        for _ in 0..2 {
            assert_eq!(version(&app.get("/v2/issues/RC-1").await.body), 1);
            assert_eq!(version(&olga.get("/v2/issues/RC-1").await.body), 2);
        }
        let v2 = app.get("/v2/issues/RC-1").await;
        let v3 = app.get("/v3/issues/RC-1").await;
        assert!(v2.body["self"].as_str().unwrap().contains("/v2/"), "{}", v2.body);
        assert!(v3.body["self"].as_str().unwrap().contains("/v3/"), "{}", v3.body);
        // A caller of no organization gets no kept answer.
        let stranger = app.user_token("third", "ivan", tether::domain::Role::Admin).await;
        app.as_user(&stranger, "acme").get("/v2/issues/RC-1").await.expect_error(403);
    }
}
