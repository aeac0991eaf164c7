//! `GET /v2/issues/{key}/_graph` (contract §9) on both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::{Value, json};

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["key"].as_str().unwrap().to_owned())
        .collect();
    k.sort();
    k
}

fn edges(v: &Value) -> Vec<(String, String, String)> {
    let mut e: Vec<_> = v["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_owned(),
                e["to"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    e.sort();
    e
}

/// A → B → C (A depends on B, B on C), D is a sub-issue of A, E is unrelated but `relates` to A.
async fn arrange(app: &common::TestApp) {
    app.queue("G").await;
    for s in ["a", "b", "c", "d", "e"] {
        app.issue("G", s).await;
    }
    app.link("G-1", "depends on", "G-2").await;
    app.link("G-2", "depends on", "G-3").await;
    app.link("G-4", "is subtask for", "G-1").await;
    app.link("G-5", "relates", "G-1").await;
}

both_backends! {
    async fn the_graph_follows_dependencies_and_sub_issues_transitively_with_from_on_the_outward_side(app) {
        arrange(&app).await;
        let a = app.get("/v2/issues/G-1/_graph").await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(keys(&a.body), ["G-1", "G-2", "G-3", "G-4"]);
        assert_eq!(edges(&a.body), [
            ("G-1".into(), "G-2".into(), "depends".into()),
            ("G-1".into(), "G-4".into(), "subtask".into()),
            ("G-2".into(), "G-3".into(), "depends".into()),
        ]);
        assert_eq!(a.body["nodes"][0]["key"], "G-1", "the root comes first");
        assert_eq!(a.body["nodes"][0]["status"]["key"], "open");
        assert!(a.body["nodes"][0]["self"].as_str().unwrap().ends_with("/v2/issues/G-1"));
        assert_eq!(a.body["cycles"], json!([]));
    }

    async fn depth_direction_and_types_narrow_the_walk(app) {
        arrange(&app).await;
        let one = app.get("/v2/issues/G-1/_graph?depth=1&types=depends").await;
        assert_eq!(keys(&one.body), ["G-1", "G-2"]);
        let blockers_of_c = app.get("/v2/issues/G-3/_graph?direction=in&types=depends").await;
        assert_eq!(keys(&blockers_of_c.body), ["G-1", "G-2", "G-3"]);
        let out_of_c = app.get("/v2/issues/G-3/_graph?direction=out").await;
        assert_eq!(keys(&out_of_c.body), ["G-3"]);
        let relates = app.get("/v3/issues/G-1/_graph?types=relates").await;
        assert_eq!(keys(&relates.body), ["G-1", "G-5"]);
        assert!(relates.body["nodes"][0]["self"].as_str().unwrap().contains("/v3/"));
    }

    async fn an_imported_dependency_cycle_is_reported_not_looped_on(app) {
        arrange(&app).await;
        // A live create refuses the cycle; the import keeps history as it was.
        let refused = app.post("/v2/issues/G-3/links", json!({"relationship": "depends on", "issue": "G-1"})).await;
        refused.expect_error(422);
        let at = tether::domain::dates::format_ms(tether::domain::dates::now_ms());
        let imported = app
            .post("/v2/issues/G-3/links/_import", json!({"relationship": "depends on", "issue": "G-1", "createdAt": at, "createdBy": "admin"}))
            .await;
        assert_eq!(imported.status, 200, "{}", imported.body);
        let g = app.get("/v2/issues/G-1/_graph?depth=10&types=depends").await;
        assert_eq!(g.status, 200);
        assert_eq!(keys(&g.body), ["G-1", "G-2", "G-3"]);
        assert_eq!(g.body["cycles"], json!([["G-1", "G-2", "G-3"]]));
    }

    async fn bad_graph_parameters_are_rejected_and_unknown_issues_are_not_found(app) {
        arrange(&app).await;
        app.get("/v2/issues/G-1/_graph?depth=11").await.expect_error(400);
        app.get("/v2/issues/G-1/_graph?depth=0").await.expect_error(400);
        app.get("/v2/issues/G-1/_graph?direction=sideways").await.expect_error(400);
        app.get("/v2/issues/G-1/_graph?types=blocks").await.expect_error(400);
        app.get("/v2/issues/G-99/_graph").await.expect_error(404);
    }
}
