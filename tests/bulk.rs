//! Bulk link import (contract §6): `POST /v2/_bulk/links/_import` and `tether import links FILE`, on both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::{Value, json};
use tether::domain::dates::{format_ms, now_ms};

fn record(from: &str, rel: &str, to: &str, at: &str) -> String {
    json!({"from": from, "relationship": rel, "issue": to, "createdAt": at, "createdBy": "admin"}).to_string()
}

async fn post_ndjson(app: &common::TestApp, body: String) -> (u16, Vec<Value>) {
    let resp = app
        .http
        .post(format!("{}/v2/_bulk/links/_import", app.base))
        .header("Authorization", format!("OAuth {}", app.token))
        .header("X-Org-ID", &app.org)
        .header("Content-Type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let lines = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (status, lines)
}

/// Waits a millisecond past the issues' creation, so "now" is a valid `createdAt` for records about them.
async fn after_creation() -> String {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    format_ms(now_ms())
}

both_backends! {
    async fn each_record_gets_one_result_line_validated_like_the_single_import(app) {
        app.queue("B").await;
        for s in ["a", "b", "c", "d"] {
            app.issue("B", s).await;
        }
        let at = after_creation().await;
        let body = [
            record("B-1", "depends on", "B-2", &at),
            record("B-2", "depends on", "B-1", &at),            // the same pair again: refused, as by the single import
            String::new(),                                      // blank lines are skipped
            "not json".to_owned(),
            record("B-9", "relates", "B-1", &at),               // unknown source
            record("B-3", "relates", "B-1", "2001-01-01T00:00:00.000+0000"), // before the issues existed
            record("B-3", "original", "B-4", &at),
            record("B-4", "relates", "B-3", &at),               // the pair is linked already (same batch)
            record("B-1", "blocks", "B-3", &at),
        ]
        .join("\n");
        let (status, lines) = post_ndjson(&app, body).await;
        assert_eq!(status, 200);
        let got: Vec<(u64, u64)> = lines.iter().map(|l| (l["line"].as_u64().unwrap(), l["status"].as_u64().unwrap())).collect();
        assert_eq!(got, [(1, 200), (2, 422), (4, 400), (5, 404), (6, 422), (7, 200), (8, 422), (9, 422)]);
        assert!(lines[0]["id"].is_number());
        assert!(lines[1]["error"].as_str().unwrap().contains("already linked"), "{}", lines[1]);
        assert!(lines[6]["error"].as_str().unwrap().contains("already linked"), "{}", lines[6]);
        assert!(lines[7]["error"].as_str().unwrap().contains("blocks"), "{}", lines[7]);
        // What was accepted is there, with the imported author; nothing else was written.
        let links = app.get("/v2/issues/B-1/links").await;
        assert_eq!(links.body.as_array().unwrap().len(), 1);
        assert_eq!(app.count("links").await, 2);
        let clone = app.get("/v2/issues/B-3/links").await;
        assert_eq!(clone.body[0]["type"]["id"], "clone");
        assert_eq!(clone.body[0]["direction"], "outward");
    }

    async fn bulk_import_needs_a_member_and_streams_past_the_body_limit(app) {
        app.queue("S").await;
        let n = 60;
        for i in 0..n {
            app.issue("S", &format!("issue {i}")).await;
        }
        let at = after_creation().await;
        // Over 1 MiB in all (padding lines are blank), which a normal request body may not be.
        let pad = " ".repeat(20_000);
        let mut body = String::new();
        for i in 2..=n {
            body.push_str(&record("S-1", "relates", &format!("S-{i}"), &at));
            body.push('\n');
            body.push_str(&pad);
            body.push('\n');
        }
        assert!(body.len() > 1024 * 1024);
        let (status, lines) = post_ndjson(&app, body).await;
        assert_eq!(status, 200);
        assert_eq!(lines.len(), n - 1);
        assert!(lines.iter().all(|l| l["status"] == 200), "{lines:?}");
        let reader = app.as_user(&app.user_token("acme", "rita", tether::domain::Role::Reader).await, "acme");
        let (status, _) = post_ndjson(&reader, record("S-2", "relates", "S-3", &at)).await;
        assert_eq!(status, 403);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_imports_a_file_and_reports_refused_lines() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = tether::store::open(&url, tether::store::Synchronous::Normal)
        .await
        .unwrap();
    let org = tether::domain::OrgId::parse("acme").unwrap();
    store
        .bootstrap(&org, &tether::http::ctx::hash_token("t"), now_ms())
        .await
        .unwrap();
    let admin = store
        .find_user(&tether::store::Locator::Key("admin".into()))
        .await
        .unwrap()
        .unwrap();
    let q = tether::store::NewQueue {
        key: "C".into(),
        name: "C".into(),
        lead: None,
        default_type: "task".into(),
    };
    let queue = store.create_queue(&org, &q, now_ms()).await.unwrap();
    for s in ["a", "b", "c"] {
        let new = tether::store::NewIssue {
            org: org.clone(),
            queue_id: queue.id,
            summary: s.into(),
            description: None,
            ty: "task".into(),
            assignee: None,
            parent: None,
            unique: None,
            custom: Default::default(),
            by: admin.uid,
            at: now_ms() - 10_000,
        };
        store.create_issue(&new).await.unwrap();
    }
    drop(store);
    let at = format_ms(now_ms());
    let file = dir.path().join("links.ndjson");
    std::fs::write(
        &file,
        [
            record("C-1", "is subtask for", "C-2", &at),
            record("C-3", "is subtask for", "C-2", &at),
            record("C-1", "is subtask for", "C-3", &at),
        ]
        .join("\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "import",
            "links",
            file.to_str().unwrap(),
            "--org",
            "acme",
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a refused line makes the exit code non-zero");
    assert!(stderr.contains("2 links imported, 1 refused"), "{stderr}");
    let refused: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(refused["line"], 3);
    assert_eq!(refused["status"], 422);
    assert!(refused["error"].as_str().unwrap().contains("parent"), "{refused}");
}
