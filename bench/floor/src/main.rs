//! Floors for Tether's benchmarks: the same stack (axum 0.8 on tokio's multi-threaded runtime, sqlx 0.9 SQLite in
//! WAL mode) doing the least work a request or an import can do. Every Tether figure in docs/benchmarks.md is shown
//! as a ratio of one of these, measured in the same run on the same machine.
//!
//! ```text
//! floor json   LISTEN BODY_FILE [STATUS]           any request → BODY_FILE's bytes (floor 1)
//! floor insert LISTEN DB_PATH SYNC BODY_FILE        POST → one INSERT into a copy of Tether's links table (floor 2)
//! floor raw-insert DB_PATH SYNC NDJSON_FILE BATCH [CACHE_KIB]
//!                                                    the rows of a seed-001 NDJSON file, BATCH per transaction
//! ```
//!
//! CACHE_KIB sets SQLite's page cache (`PRAGMA cache_size = -CACHE_KIB`); without it SQLite's default (2 MiB)
//! applies, as on Tether's connections.
//!
//! SYNC is `normal` or `full`, as Tether's `--sqlite-synchronous`. The servers print `floor: listening on ADDR`
//! and stop on SIGTERM or Ctrl-C.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::io::AsyncBufReadExt;

/// Tether's `links` table and its indexes (migrations/sqlite/0001_core.sql), without the foreign keys: the tables
/// they point at are not here.
const LINKS_DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS links (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        org_id     TEXT NOT NULL,
        type       TEXT NOT NULL,
        outward_id INTEGER NOT NULL,
        inward_id  INTEGER NOT NULL,
        lo         INTEGER NOT NULL,
        hi         INTEGER NOT NULL,
        created_by INTEGER NOT NULL,
        updated_by INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        CHECK (lo < hi)
    )",
    "CREATE UNIQUE INDEX IF NOT EXISTS links_pair ON links (lo, hi)",
    "CREATE INDEX IF NOT EXISTS links_outward ON links (outward_id, type)",
    "CREATE INDEX IF NOT EXISTS links_inward ON links (inward_id, type)",
    "CREATE UNIQUE INDEX IF NOT EXISTS links_one_parent ON links (inward_id) WHERE type = 'subtask'",
    "CREATE UNIQUE INDEX IF NOT EXISTS links_one_epic ON links (outward_id) WHERE type = 'epic'",
];

const INSERT: &str = "INSERT INTO links (org_id, type, outward_id, inward_id, lo, hi, created_by, updated_by, \
     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id";

fn usage() -> ! {
    eprintln!(
        "usage: floor json LISTEN BODY_FILE [STATUS]\n       floor insert LISTEN DB_PATH normal|full BODY_FILE\n       \
         floor raw-insert DB_PATH normal|full NDJSON_FILE BATCH [CACHE_KIB]"
    );
    std::process::exit(2)
}

fn arg(args: &[String], i: usize) -> &str {
    args.get(i).map_or_else(|| usage(), String::as_str)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match arg(&args, 1) {
        "json" => {
            let status = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(200);
            serve_json(arg(&args, 2), arg(&args, 3), status).await
        }
        "insert" => serve_insert(arg(&args, 2), arg(&args, 3), arg(&args, 4), arg(&args, 5)).await,
        "raw-insert" => {
            let batch = arg(&args, 5).parse().unwrap_or_else(|_| usage());
            let cache_kib: Option<u64> = args.get(6).map(|s| s.parse().unwrap_or_else(|_| usage()));
            raw_insert(arg(&args, 2), arg(&args, 3), arg(&args, 4), batch, cache_kib).await
        }
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("floor: {e}");
        std::process::exit(1);
    }
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn json_response(status: StatusCode, body: &Bytes) -> Response {
    let mut r = (status, body.clone()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn listen(addr: &str, app: Router) -> AnyResult<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("floor: listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .unwrap_or_else(|e| panic!("no SIGTERM handler: {e}"));
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        })
        .await?;
    Ok(())
}

/// Floor 1: a fixed JSON body, the same size as the Tether answer it is compared with.
async fn serve_json(addr: &str, body_file: &str, status: u16) -> AnyResult<()> {
    let body = Bytes::from(std::fs::read(body_file)?);
    let status = StatusCode::from_u16(status)?;
    let app = Router::new().fallback(move |_req: Bytes| {
        let body = body.clone();
        async move { json_response(status, &body) }
    });
    listen(addr, app).await
}

fn sync_of(s: &str) -> AnyResult<SqliteSynchronous> {
    match s {
        "normal" => Ok(SqliteSynchronous::Normal),
        "full" => Ok(SqliteSynchronous::Full),
        _ => Err(format!("synchronous is normal or full, not {s}").into()),
    }
}

/// One writer connection in WAL mode, as Tether's SQLite store opens its writer.
async fn open(path: &str, sync: &str) -> AnyResult<SqlitePool> {
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sync_of(sync)?)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?;
    for ddl in LINKS_DDL {
        sqlx::query(*ddl).execute(&pool).await?;
    }
    Ok(pool)
}

struct InsertState {
    pool: SqlitePool,
    next: AtomicI64,
    body: Bytes,
}

/// Floor 2: parse the JSON body, one INSERT (its own transaction), answer 201 with a body of Tether's size.
async fn insert_handler(State(st): State<Arc<InsertState>>, body: Bytes) -> Response {
    let Ok(serde_json::Value::Object(_)) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return json_response(StatusCode::BAD_REQUEST, &Bytes::from_static(b"{}"));
    };
    let n = st.next.fetch_add(1, Ordering::Relaxed);
    let (a, b) = (2 * n + 1, 2 * n + 2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let r = sqlx::query_scalar::<_, i64>(INSERT)
        .bind("org")
        .bind("depends")
        .bind(a)
        .bind(b)
        .bind(a)
        .bind(b)
        .bind(1_i64)
        .bind(1_i64)
        .bind(now)
        .bind(now)
        .fetch_one(&st.pool)
        .await;
    match r {
        Ok(_) => json_response(StatusCode::CREATED, &st.body),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &Bytes::from(serde_json::json!({ "error": e.to_string() }).to_string()),
        ),
    }
}

async fn serve_insert(addr: &str, db: &str, sync: &str, body_file: &str) -> AnyResult<()> {
    let pool = open(db, sync).await?;
    let start: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(hi), 0) FROM links").fetch_one(&pool).await?;
    let st = Arc::new(InsertState {
        pool,
        next: AtomicI64::new(start / 2 + 1),
        body: Bytes::from(std::fs::read(body_file)?),
    });
    let app = Router::new().fallback(insert_handler).with_state(st);
    listen(addr, app).await
}

/// The stored orientation of a seed-001 relationship named from `from` about `issue`: (type, `from` is outward).
fn orient(rel: &str) -> Option<(&'static str, bool)> {
    Some(match rel.to_ascii_lowercase().as_str() {
        "relates" => ("relates", false),
        "depends on" => ("depends", true),
        "is dependent by" => ("depends", false),
        "is subtask for" => ("subtask", false),
        "is parent task for" => ("subtask", true),
        "duplicates" => ("duplicates", true),
        "is duplicated by" => ("duplicates", false),
        "has epic" => ("epic", true),
        "is epic of" => ("epic", false),
        "original" => ("clone", true),
        "clone" => ("clone", false),
        _ => return None,
    })
}

/// The number of a `QUEUE-N` key: the generator's issues are imported in order, so it is also their row id
/// up to a constant.
fn number(key: &str) -> Option<i64> {
    key.rsplit_once('-')?.1.parse().ok()
}

/// The raw floor of the bulk import: read the same NDJSON file, parse each line, and insert its row with a prepared
/// statement, `batch` rows per transaction, into a table with the indexes of Tether's `links` table.
async fn raw_insert(db: &str, sync: &str, input: &str, batch: usize, cache_kib: Option<u64>) -> AnyResult<()> {
    let pool = open(db, sync).await?;
    if let Some(kib) = cache_kib {
        sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA cache_size = -{kib}")))
            .execute(&pool)
            .await?;
    }
    let started = Instant::now();
    let file = tokio::fs::File::open(input).await?;
    let mut lines = tokio::io::BufReader::with_capacity(256 * 1024, file).lines();
    let mut conn = pool.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let (mut rows, mut in_tx, mut refused) = (0u64, 0usize, 0u64);
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)?;
        let parsed = (|| {
            let from = number(v.get("from")?.as_str()?)?;
            let other = number(v.get("issue")?.as_str()?)?;
            let (ty, from_out) = orient(v.get("relationship")?.as_str()?)?;
            let _ = v.get("createdAt")?.as_str()?;
            Some((ty, if from_out { (from, other) } else { (other, from) }))
        })();
        let Some((ty, (out, inw))) = parsed else {
            refused += 1;
            continue;
        };
        let r = sqlx::query_scalar::<_, i64>(INSERT)
            .bind("org")
            .bind(ty)
            .bind(out)
            .bind(inw)
            .bind(out.min(inw))
            .bind(out.max(inw))
            .bind(1_i64)
            .bind(1_i64)
            .bind(0_i64)
            .bind(0_i64)
            .fetch_one(&mut *tx)
            .await;
        match r {
            Ok(_) => rows += 1,
            Err(_) => refused += 1,
        }
        in_tx += 1;
        if in_tx >= batch {
            tx.commit().await?;
            tx = sqlx::Connection::begin(&mut *conn).await?;
            in_tx = 0;
        }
    }
    tx.commit().await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"rows": rows, "refused": refused, "seconds": secs, "rows_per_s": rows as f64 / secs})
    );
    Ok(())
}
