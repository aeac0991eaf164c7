//! The embedded default: SQLite in WAL mode. Writes go through one connection, so every read-then-write rule
//! runs serially without retries; reads use a small pool of read-only connections.

use std::str::FromStr;
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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        drop(lock);
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(SqliteStore { reader, writer })
    }

    /// How a read-then-write locks the row it reads (SQLite's writes are already serial).
    const FOR_UPDATE: &'static str = "";

    /// How the outbox claim locks the rows it picks.
    const SKIP_LOCKED: &'static str = "";

    /// Whether a batch of link imports needs a savepoint per record (see `import_links`).
    const SAVEPOINT_PER_RECORD: bool = false;

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
