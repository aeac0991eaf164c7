//! PostgreSQL, for several stateless replicas. Row-level rules rely on unique indexes (one link per pair, one parent,
//! one epic); the rules that span many rows (no cycle through `depends`, no cycle in the subtask tree) take a
//! transaction-scoped advisory lock per organization and rule, so racing transactions — in one process or several
//! — check them one after another. `relates`, `duplicates` and `epic` links take no such lock (an issue's type,
//! which the epic rules read, never changes).

use sqlx::postgres::{PgPool, PgPoolOptions};

/// The PostgreSQL store.
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects and runs the migrations (sqlx serialises concurrent migrators with an advisory lock).
    pub async fn connect(url: &str) -> anyhow::Result<PgStore> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(PgStore { pool })
    }

    /// How a read-then-write locks the row it reads (SQLite's writes are already serial).
    const FOR_UPDATE: &'static str = " FOR UPDATE";

    /// How the outbox claim locks the rows it picks.
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    /// Other replicas write to the same database, so this process cannot know when an answer goes stale.
    fn epoch(&self) -> Option<crate::store::ReadEpoch> {
        None
    }

    /// Links are written in the request's own transaction (replicas share the graph locks).
    fn link_writer(&self) -> Option<&super::sqlite_links::LinkWriter> {
        None
    }

    fn read(&self) -> &PgPool {
        &self.pool
    }

    fn write_pool(&self) -> &PgPool {
        &self.pool
    }

    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    async fn lock_graph(
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        org: &OrgId,
        rule: CycleRule,
    ) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("tether.links.{org}.{}", rule.name()))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

super::sql::impl_store!(PgStore, sqlx::Postgres, "postgres");
