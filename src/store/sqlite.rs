//! The embedded default: SQLite in WAL mode. Writes run one at a time — on the sqlx writer connection (a pool of
//! one), or, for new links, on the link writer's rusqlite connection while a batch holds that sqlx connection
//! (`sqlite_links.rs`) — so every read-then-write rule runs serially without retries; reads use a small pool of
//! read-only connections.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// `--sqlite-synchronous`: what an acknowledged write survives (contract §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Synchronous {
    /// Survives a crash of the Tether process; may be lost on power loss or an OS crash.
    Normal,
    /// Also survives power loss and OS crashes, at a cost per commit.
    Full,
}

/// The SQLite store.
pub struct SqliteStore {
    reader: SqlitePool,
    writer: SqlitePool,
    /// See [`crate::store::ReadEpoch`]: bumped when the writer connection is handed out or opened, and when it is
    /// back in the pool.
    generation: Arc<AtomicU64>,
    /// Writes new links, batched (see `sqlite_links.rs`).
    links: super::link_batch::LinkWriter,
    /// Issue heads found or written (see [`super::HeadCache`]).
    heads: super::HeadCache,
}

impl SqliteStore {
    /// Opens (creating if missing) the database a `sqlite://PATH` URL names and runs the migrations.
    pub async fn open(url: &str, sync: Synchronous) -> anyhow::Result<SqliteStore> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                Synchronous::Normal => SqliteSynchronous::Normal,
                Synchronous::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // sqlx's SQLite migrator takes no lock, so two processes starting on one new file would both apply the
        // migrations; an OS file lock beside the database serialises them.
        let lock_path = {
            let mut p = opts.get_filename().as_os_str().to_owned();
            p.push(".migrate-lock");
            std::path::PathBuf::from(p)
        };
        let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            f.lock()?;
            Ok(f)
        })
        .await??;
        let generation = Arc::new(AtomicU64::new(0));
        let (on_connect, on_acquire, on_release) = (generation.clone(), generation.clone(), generation.clone());
        // No ping before handing out a connection (sqlx's default): an embedded database cannot have hung up,
        // and each ping is a round trip to the connection's worker thread on every request.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .after_connect(move |_, _| {
                on_connect.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { Ok(()) })
            })
            .before_acquire(move |_, _| {
                on_acquire.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { Ok(true) })
            })
            // Runs before sqlx's release ping, while the connection is still out of the pool (not quiet).
            .after_release(move |_, _| {
                on_release.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { Ok(true) })
            })
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        drop(lock);
        let links = super::sqlite_links::start(opts.get_filename(), sync, writer.clone())?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(SqliteStore {
            reader,
            writer,
            generation,
            links,
            heads: super::HeadCache::new(),
        })
    }

    /// How a read-then-write locks the row it reads (SQLite's writes are already serial).
    const FOR_UPDATE: &'static str = "";

    /// How the outbox claim locks the rows it picks.
    const SKIP_LOCKED: &'static str = "";

    /// The generation first, then whether the writer connection is idle: a write that takes the connection in
    /// between has already made it not idle, or will bump the generation after this read.
    fn epoch(&self) -> Option<crate::store::ReadEpoch> {
        let generation = self.generation.load(Ordering::SeqCst);
        let quiet = self.writer.num_idle() > 0;
        Some(crate::store::ReadEpoch { generation, quiet })
    }

    fn link_writer(&self) -> &super::link_batch::LinkWriter {
        &self.links
    }

    fn heads(&self) -> &super::HeadCache {
        &self.heads
    }

    fn read(&self) -> &SqlitePool {
        &self.reader
    }

    fn write_pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front, so a transaction never fails half-way on a lock upgrade
    /// (a CLI command may write to the same file while the server runs).
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    async fn lock_graph(
        _tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        _org: &OrgId,
        _rule: CycleRule,
    ) -> Result<()> {
        Ok(())
    }
}

super::sql::impl_store!(SqliteStore, sqlx::Sqlite, "sqlite");

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The epoch once the writer connection is back in the pool (it must be within a second).
    async fn quiet_epoch(store: &SqliteStore) -> crate::store::ReadEpoch {
        for _ in 0..100 {
            let e = store.epoch().unwrap();
            if e.quiet {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the writer connection did not come back to the pool");
    }

    /// The epoch the read cache relies on: a write changes the generation as soon as it holds the writer
    /// connection and is not quiet until the connection is back, after its commit.
    #[tokio::test]
    async fn a_write_changes_the_generation_and_is_not_quiet_while_it_holds_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::open(&url, Synchronous::Normal).await.unwrap();
        // The migrations' connection goes back to the pool in a task of its own.
        let idle = quiet_epoch(&store).await;
        let mut tx = store.write().await.unwrap();
        let during = store.epoch().unwrap();
        assert!(!during.quiet, "a write holds the writer");
        assert_ne!(
            during.generation, idle.generation,
            "taking the writer changes the generation"
        );
        sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ('x', 'x', 0)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let after = quiet_epoch(&store).await;
        assert_ne!(
            after.generation, during.generation,
            "giving the writer back changes the generation"
        );
        // A read on the reader pool changes nothing.
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM organizations")
            .fetch_one(&store.reader)
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(store.epoch().unwrap(), after);
    }
}
