//! PostgreSQL, for several stateless replicas. Row-level rules rely on unique indexes (one link per pair, one parent,
//! one epic); the rules that span many rows (no cycle through `depends`, no cycle in the subtask tree) take an
//! advisory lock per organization and rule — transaction-scoped, or held by a link writer's session across its
//! batches (`pg_links.rs`) — so racing writers, in one process or several, check them one after another.
//! `relates`, `duplicates` and `epic` links take no such lock (an issue's type, which the epic rules read, never
//! changes).

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// How long a pooled connection may sit idle before it is pinged on its way out of the pool.
pub(super) const IDLE_PING_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// A pool of at most `max` connections.
fn pool_options(max: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(std::time::Duration::from_secs(10))
        // sqlx pings every connection it hands out: a round trip to the server before each statement of a
        // request. Only one that has been idle a while (the server may have closed it) is pinged here; a
        // connection that broke since its last use fails that one request, and sqlx drops it.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_PING_AFTER {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// The PostgreSQL store.
pub struct PgStore {
    pool: PgPool,
    /// Writes new links, batched (see `pg_links.rs`).
    links: super::link_batch::LinkWriter,
    /// Issue heads found or written (see [`super::HeadCache`]).
    heads: super::HeadCache,
}

impl PgStore {
    /// Connects and runs the migrations (sqlx serialises concurrent migrators with an advisory lock).
    pub async fn connect(url: &str) -> anyhow::Result<PgStore> {
        let opts = PgConnectOptions::from_str(url)?;
        let pool = pool_options(16).connect_with(opts.clone()).await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        // The link writer's own connections plan its statements once per connection (`force_generic_plan`):
        // they take arrays whose values do not change the best plan, and PostgreSQL would otherwise plan the
        // batch's reads afresh on every execution — 1.7 to 1.9 ms of the server's time per batch for the facts
        // statement alone, against 0.07 ms (`docs/benchmarks.md`).
        let generic = opts.options([("plan_cache_mode", "force_generic_plan")]);
        // Named, so that `pg_stat_activity` tells the writer's and the views' connections from the requests'.
        let writer = pool_options(super::pg_links::WRITER_CONNECTIONS)
            .connect_with(generic.clone().application_name(super::pg_links::WRITER_NAME))
            .await?;
        // And so do the connections that read the views of the links just written (one statement, once per
        // batch): left to choose, PostgreSQL planned it afresh on every execution, 0.8 ms of the server's time
        // per batch for 0.1 ms of reading (`docs/benchmarks.md`).
        let views = pool_options(super::pg_links::VIEW_READERS)
            .connect_with(generic.application_name("tether link views"))
            .await?;
        let links = super::pg_links::start(writer, views);
        Ok(PgStore {
            pool,
            links,
            heads: super::HeadCache::new(),
        })
    }

    /// How a read-then-write locks the row it reads (SQLite's writes are already serial).
    const FOR_UPDATE: &'static str = " FOR UPDATE";

    /// How the outbox claim locks the rows it picks.
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    /// Other replicas write to the same database, so this process cannot know when an answer goes stale.
    fn epoch(&self) -> Option<crate::store::ReadEpoch> {
        None
    }

    fn link_writer(&self) -> &super::link_batch::LinkWriter {
        &self.links
    }

    fn heads(&self) -> &super::HeadCache {
        &self.heads
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
        super::pg_links::lock_graph(tx, org, rule).await
    }
}

super::sql::impl_store!(PgStore, sqlx::Postgres, "postgres");
