//! First start: two server processes opening one empty database together migrate it once and bootstrap once.
//! Each "process" here is its own store with its own connection pool, opened concurrently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use tether::domain::OrgId;
use tether::domain::dates::now_ms;
use tether::http::ctx::hash_token;
use tether::store::Synchronous;

async fn race(url: &str) {
    // Both open (and migrate) at the same time, then both try to bootstrap with different orgs and tokens.
    let (a, b) = tokio::join!(
        tether::store::open(url, Synchronous::Normal),
        tether::store::open(url, Synchronous::Normal)
    );
    let (a, b) = (a.expect("first opens"), b.expect("second opens"));
    let org_a = OrgId::parse("first").unwrap();
    let org_b = OrgId::parse("second").unwrap();
    let (hash_a, hash_b) = (hash_token("token-a"), hash_token("token-b"));
    let (ra, rb) = tokio::join!(
        a.bootstrap(&org_a, &hash_a, now_ms()),
        b.bootstrap(&org_b, &hash_b, now_ms())
    );
    let (ra, rb) = (ra.expect("bootstrap a"), rb.expect("bootstrap b"));
    assert!(ra ^ rb, "exactly one bootstrap must win (a: {ra}, b: {rb})");
    let orgs = a.list_orgs().await.unwrap();
    assert_eq!(orgs.len(), 1, "one organization: {orgs:?}");
    let winner_token = if ra { "token-a" } else { "token-b" };
    let loser_token = if ra { "token-b" } else { "token-a" };
    assert!(b.authenticate(&hash_token(winner_token)).await.unwrap().is_some());
    assert!(
        a.authenticate(&hash_token(loser_token)).await.unwrap().is_none(),
        "the losing token must not exist"
    );
    // A later start finds the database bootstrapped.
    assert!(!a.bootstrap(&org_a, &hash_token("token-c"), now_ms()).await.unwrap());
    assert_eq!(a.list_tokens(None).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_on_one_empty_sqlite_file_bootstrap_once() {
    let dir = tempfile::tempdir().unwrap();
    race(&format!("sqlite://{}", dir.path().join("t.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_on_one_empty_postgres_database_bootstrap_once() {
    let Some(admin) = common::postgres_url() else { return };
    let (url, name) = common::fresh_pg_database(&admin).await;
    race(&url).await;
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut c)
    .await;
}
