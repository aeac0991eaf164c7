//! SQLite's link writer: new links (created and imported) are written by a rusqlite connection, several requests'
//! links per transaction (group commit), each whole batch in one hand-off to a blocking thread.
//!
//! Why a second driver: sqlx runs every statement of a SQLite connection as a round trip to that connection's worker
//! thread, so a link create — `BEGIN`, the pair read, the cycle walk, the `INSERT`, two `UPDATE`s, `COMMIT` and the
//! pool's ping on release — was nine thread hand-offs inside the one serial writer, and the kernel's scheduler took
//! 27 % of the server's time (`docs/benchmarks.md`). rusqlite is synchronous: the batch runs start to end on one
//! thread. The rules are the same code as on PostgreSQL ([`insert_link`] over [`LinkTx`]).
//!
//! Writes stay serial with every other write of the process: a batch holds the sqlx writer connection (the pool of
//! one) while it runs, so the read cache's epoch (`ReadEpoch`) sees it like any other write, and the two connections
//! never wait on SQLite's file lock for each other.

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, ToSql};
use sqlx::SqlitePool;
use tokio::sync::mpsc;

use super::link_batch::{Job, LinkWriter, Outcome, gather};
use super::link_rules::{
    CURRENT_EPIC_SQL, CURRENT_PARENT_SQL, INSERT_LINK_SQL, LinkInsert, LinkTx, PAIR_SQL, PairRow, TOUCH_ISSUE_SQL,
    insert_link,
};
use super::sql::CycleRule;
use super::sql::{LINK_SELECT, LinkRow};
use super::sqlite::Synchronous;
use super::{LinkView, NewLink};
use crate::domain::dates::Millis;
use crate::error::{Error, Result};

/// The most batches one hold of the write lock runs back to back while requests keep coming, before other writes
/// get their turn.
const MAX_BATCHES_PER_HOLD: usize = 8;

/// Opens the connection (the database exists and is migrated) and starts the batching task.
pub(super) fn start(path: &Path, sync: Synchronous, lock: SqlitePool) -> anyhow::Result<LinkWriter> {
    let conn = open(path, sync)?;
    conn.set_prepared_statement_cache_capacity(32);
    // Checkpoints run beside the writer, not in its commits (see `Checkpointer`).
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    let checkpointer = Checkpointer {
        conn: Arc::new(Mutex::new(open(path, sync)?)),
        running: Arc::new(AtomicBool::new(false)),
        finished: Arc::new(AtomicBool::new(false)),
        last: None,
        dirty: false,
    };
    let (writer, rx) = LinkWriter::channel();
    tokio::spawn(batches(rx, Arc::new(Mutex::new(conn)), lock, checkpointer));
    Ok(writer)
}

/// A read-write connection with the store's settings.
fn open(path: &Path, sync: Synchronous) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        },
    )?;
    Ok(conn)
}

/// How often, at most, a checkpoint starts while links keep being written.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Copies the WAL's pages into the database file on a connection and a blocking thread of its own, so that the
/// copy and its `fsync` do not stall a batch. SQLite's automatic checkpoint would run them inside the commit that
/// crosses 1 000 pages: the link writer's p99 at c=16 was 19–24 ms with it, 8–9 ms with this (`docs/benchmarks.md`).
/// A `PASSIVE` checkpoint takes no lock a writer or reader waits for. But the WAL starts over from its beginning
/// only when a write finds it wholly copied, which a checkpoint running beside a busy writer never leaves it: so
/// after each background checkpoint, the writer copies the few frames appended since, itself, between two batches
/// (`finish`), and the next write restarts the WAL. The sqlx writer connection (all other writes, rarer) keeps the
/// automatic checkpoint.
struct Checkpointer {
    conn: Arc<Mutex<Connection>>,
    running: Arc<AtomicBool>,
    /// A background checkpoint finished; the writer has not copied the frames appended since.
    finished: Arc<AtomicBool>,
    /// When the last one started.
    last: Option<Instant>,
    /// Links were written since the last one started.
    dirty: bool,
}

impl Checkpointer {
    /// After a hold of the write lock: starts a checkpoint if none started in the last [`CHECKPOINT_EVERY`].
    fn written(&mut self) {
        self.dirty = true;
        if self.last.is_none_or(|t| t.elapsed() >= CHECKPOINT_EVERY) {
            self.kick();
        }
    }

    /// Starts a checkpoint unless one is running.
    fn kick(&mut self) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last = Some(Instant::now());
        self.dirty = false;
        let (conn, running, finished) = (self.conn.clone(), self.running.clone(), self.finished.clone());
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            match checkpoint(&conn) {
                Ok(()) => finished.store(true, Ordering::Release),
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
            }
            running.store(false, Ordering::Release);
        });
    }
}

/// On the writer's connection, between batches (no write in progress): after a background checkpoint, copies what
/// was appended since, so that the next write can restart the WAL.
fn finish(conn: &Connection, finished: &AtomicBool) {
    if finished.swap(false, Ordering::AcqRel)
        && let Err(e) = checkpoint(conn)
    {
        tracing::warn!(error = %e, "WAL checkpoint failed");
    }
}

fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

/// Takes the jobs waiting, holds the write lock, runs them as one transaction on a blocking thread; while more have
/// arrived meanwhile, runs them too under the same hold (up to [`MAX_BATCHES_PER_HOLD`]), then lets go and waits.
async fn batches(
    mut rx: mpsc::UnboundedReceiver<Job>,
    conn: Arc<Mutex<Connection>>,
    lock: SqlitePool,
    mut checkpointer: Checkpointer,
) {
    // A job taken from the queue after the last batch of a hold: first in the next one.
    let mut pending = None;
    loop {
        let first = match pending.take() {
            Some(job) => job,
            // When writes stop, the last of them are checkpointed after a quiet [`CHECKPOINT_EVERY`].
            None if checkpointer.dirty => match tokio::time::timeout(CHECKPOINT_EVERY, rx.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) => break,
                Err(_) => {
                    checkpointer.kick();
                    continue;
                }
            },
            None => match rx.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        let held = match lock.acquire().await {
            Ok(c) => c,
            Err(e) => {
                let e = anyhow::Error::new(e).context("taking the SQLite write lock");
                let _ = first.reply.send(Err(Error::Internal(e)));
                continue;
            }
        };
        let mut next = Some(first);
        for _ in 0..MAX_BATCHES_PER_HOLD {
            let Some(first) = next.take() else { break };
            // What arrived while the previous batch ran or the lock was taken joins this one.
            let jobs = gather(first, &mut rx);
            let (conn, finished) = (conn.clone(), checkpointer.finished.clone());
            // A panic cannot happen here (no unwrap on this path); were it to, the jobs' reply senders are dropped
            // and their callers get an internal error.
            let _ = tokio::task::spawn_blocking(move || {
                let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
                run_batch(&mut conn, jobs);
                finish(&conn, &finished);
            })
            .await;
            next = rx.try_recv().ok();
        }
        drop(held);
        checkpointer.written();
        pending = next;
    }
}

/// One transaction for all `jobs`, each job in a savepoint, so that a fault (an internal error) undoes that job
/// alone, as if it had had its own transaction. Replies after the commit.
fn run_batch(conn: &mut Connection, jobs: Vec<Job>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let e = anyhow::Error::new(e).context("starting a batch of links");
        for job in jobs {
            let _ = job.reply.send(Err(Error::Internal(anyhow::anyhow!("{e:#}"))));
        }
        return;
    }
    let mut done = Vec::with_capacity(jobs.len());
    for job in jobs {
        let outcome = one_job(conn, &job.links, job.views);
        done.push((job.reply, outcome));
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            for (reply, outcome) in done {
                let _ = reply.send(outcome);
            }
        }
        Err(e) => {
            // Leaves the connection out of any transaction for the next batch.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            let e = anyhow::Error::new(e).context("committing a batch of links");
            for (reply, _) in done {
                let _ = reply.send(Err(Error::Internal(anyhow::anyhow!("{e:#}"))));
            }
        }
    }
}

/// One job's records, all or nothing on a fault.
fn one_job(conn: &Connection, links: &[NewLink], views: bool) -> Outcome {
    exec(conn, "SAVEPOINT link_job")?;
    let mut out = Vec::with_capacity(links.len());
    for new in links {
        // A record a rule refuses has written nothing: every rule is checked before the `INSERT`, and an `INSERT`
        // a unique index refuses is undone by SQLite alone.
        let written = ready(insert_link(&mut Rs(conn), new)).and_then(|id| {
            let view = if views { Some(view(conn, new, id)?) } else { None };
            Ok((id, view))
        });
        match written {
            Err(e @ Error::Internal(_)) => {
                exec(conn, "ROLLBACK TO SAVEPOINT link_job")?;
                exec(conn, "RELEASE SAVEPOINT link_job")?;
                return Err(e);
            }
            r => out.push(r),
        }
    }
    exec(conn, "RELEASE SAVEPOINT link_job")?;
    Ok(out)
}

/// [`LINK_SELECT`] for one link, seen from issue `$2`.
static LINK_BY_ID_SQL: LazyLock<String> = LazyLock::new(|| format!("{LINK_SELECT} AND l.id = $3"));

/// The link just written, as its `this` issue sees it (what the API answers).
fn view(conn: &Connection, new: &NewLink, id: i64) -> Result<LinkView> {
    let mut stmt = Rs(conn)
        .statement(&LINK_BY_ID_SQL, &[&new.org.as_str(), &new.this, &id])
        .map_err(internal)?;
    let mut rows = stmt.raw_query();
    let row = rows
        .next()
        .map_err(internal)?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("link {id} was not found in its own transaction")))?;
    LinkRow::from_rusqlite(row).map_err(internal)?.into_view()
}

fn exec(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map_err(internal)?;
    Ok(())
}

fn internal(e: rusqlite::Error) -> Error {
    Error::Internal(anyhow::Error::new(e))
}

/// The rules are `async` (for sqlx), but this implementation never waits: every call returns at its first poll.
/// A full executor would add nothing but a dependency.
fn ready<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => Err(Error::Internal(anyhow::anyhow!("a SQLite link write waited"))),
    }
}

/// The rules' reads and writes on the rusqlite connection, which is inside the batch's transaction.
struct Rs<'a>(&'a Connection);

/// The statements' parameters are `$1`, `$2`, … (the SQL is sqlx's); bound by name, as SQLite numbers parameters in
/// the order they first appear.
const NAMES: [&str; 10] = ["$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9", "$10"];

impl<'a> Rs<'a> {
    /// Prepares `sql` (cached) and binds `values` to `$1`, `$2`, ….
    fn statement(&self, sql: &str, values: &[&dyn ToSql]) -> rusqlite::Result<rusqlite::CachedStatement<'a>> {
        let mut stmt = self.0.prepare_cached(sql)?;
        for (name, value) in NAMES.iter().zip(values) {
            if let Some(i) = stmt.parameter_index(name)? {
                stmt.raw_bind_parameter(i, value)?;
            }
        }
        Ok(stmt)
    }

    /// The first column of the first row of `sql` (a key), which takes one parameter `$1`.
    fn key_of(&self, sql: &'static str, id: i64) -> Result<Option<String>> {
        let mut stmt = self.statement(sql, &[&id]).map_err(internal)?;
        let mut rows = stmt.raw_query();
        match rows.next().map_err(internal)? {
            Some(r) => Ok(Some(r.get(0).map_err(internal)?)),
            None => Ok(None),
        }
    }
}

impl LinkTx for Rs<'_> {
    async fn pair(&mut self, org: &str, this: i64, other: i64, lo: i64, hi: i64) -> Result<Vec<PairRow>> {
        let mut stmt = self
            .statement(PAIR_SQL, &[&org, &this, &other, &lo, &hi])
            .map_err(internal)?;
        let mut rows = stmt.raw_query();
        let mut out = Vec::with_capacity(2);
        while let Some(r) = rows.next().map_err(internal)? {
            out.push(PairRow {
                id: r.get(0).map_err(internal)?,
                key: r.get(1).map_err(internal)?,
                ty: r.get(2).map_err(internal)?,
                linked: r.get(3).map_err(internal)?,
            });
        }
        Ok(out)
    }

    async fn epic_of(&mut self, issue: i64) -> Result<Option<String>> {
        self.key_of(CURRENT_EPIC_SQL, issue)
    }

    async fn parent_of(&mut self, issue: i64) -> Result<Option<String>> {
        self.key_of(CURRENT_PARENT_SQL, issue)
    }

    async fn reaches(&mut self, from: i64, rule: CycleRule, to: i64) -> Result<bool> {
        let mut stmt = self.statement(rule.reaches_sql(), &[&from, &to]).map_err(internal)?;
        let n: Option<i64> = stmt
            .raw_query()
            .next()
            .map_err(internal)?
            .map(|r| r.get(0))
            .transpose()
            .map_err(internal)?;
        Ok(n.unwrap_or(0) > 0)
    }

    async fn insert(&mut self, row: &LinkInsert<'_>) -> Result<Option<i64>> {
        let values: [&dyn ToSql; 10] = [
            &row.org,
            &row.ty,
            &row.outward,
            &row.inward,
            &row.lo,
            &row.hi,
            &row.created_by,
            &row.updated_by,
            &row.created_at,
            &row.updated_at,
        ];
        let mut stmt = self.statement(INSERT_LINK_SQL, &values).map_err(internal)?;
        let mut rows = stmt.raw_query();
        match rows.next().map_err(internal)? {
            Some(r) => Ok(Some(r.get(0).map_err(internal)?)),
            None => Ok(None),
        }
    }

    async fn touch(&mut self, issue: i64, at: Millis) -> Result<()> {
        let mut stmt = self.statement(TOUCH_ISSUE_SQL, &[&issue, &at]).map_err(internal)?;
        stmt.raw_execute().map_err(internal)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::domain::OrgId;
    use crate::domain::links::Relationship;
    use crate::store::link_batch::test_support::seed;
    use crate::store::{SqliteStore, Store};
    use tokio::sync::oneshot;

    /// A store with five issues; their ids.
    async fn five_issues(dir: &tempfile::TempDir) -> (String, SqliteStore, OrgId, Vec<i64>) {
        issues(dir, 5).await
    }

    /// A store with `n` issues; their ids.
    async fn issues(dir: &tempfile::TempDir, n: usize) -> (String, SqliteStore, OrgId, Vec<i64>) {
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::open(&url, Synchronous::Normal).await.unwrap();
        let (org, ids) = seed(&store, &[], n).await;
        (url, store, org, ids)
    }

    fn link(org: &OrgId, this: i64, rel: &str, other: i64) -> NewLink {
        NewLink {
            org: org.clone(),
            this,
            other,
            relationship: Relationship::parse(rel).unwrap(),
            created: (1, 5),
            updated: (1, 5),
            import: false,
        }
    }

    /// Jobs written as one batch, as the batching task would, on a connection of its own.
    fn batch(url: &str, jobs: Vec<Vec<NewLink>>) -> Vec<Outcome> {
        let path = url.trim_start_matches("sqlite://");
        let mut conn = Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        let (jobs, answers): (Vec<Job>, Vec<_>) = jobs
            .into_iter()
            .map(|links| {
                let (reply, answer) = oneshot::channel();
                (
                    Job {
                        links,
                        views: false,
                        reply,
                    },
                    answer,
                )
            })
            .unzip();
        run_batch(&mut conn, jobs);
        answers.into_iter().map(|mut a| a.try_recv().unwrap()).collect()
    }

    fn pairs(url: &str) -> Vec<(i64, i64, String)> {
        let conn = Connection::open(url.trim_start_matches("sqlite://")).unwrap();
        let mut stmt = conn.prepare("SELECT lo, hi, type FROM links ORDER BY id").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Several requests' links in one transaction: each is checked against the ones before it in the batch, a
    /// refused record leaves the job's others in place, and a fault undoes its own job only.
    #[tokio::test]
    async fn a_batch_keeps_each_jobs_outcome_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _store, org, i) = five_issues(&dir).await;
        // A fault on one row: touching issue 4's `updatedAt` fails, after the job's first link is inserted.
        let conn = Connection::open(url.trim_start_matches("sqlite://")).unwrap();
        conn.execute_batch(&format!(
            "CREATE TRIGGER fault BEFORE UPDATE OF updated_at ON issues WHEN NEW.id = {} \
             BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
            i[4]
        ))
        .unwrap();
        let out = batch(
            &url,
            vec![
                vec![link(&org, i[0], "depends on", i[1])],
                // Closes a cycle with the link just before it in the same batch; the pair 0–2 is new.
                vec![link(&org, i[1], "depends on", i[0]), link(&org, i[0], "relates", i[2])],
                // The first record lands in the job, the second faults: the job is undone as a whole.
                vec![link(&org, i[2], "relates", i[3]), link(&org, i[3], "relates", i[4])],
                // The same pair as the first job, the other way round.
                vec![link(&org, i[1], "relates", i[0])],
                vec![link(&org, i[1], "depends on", i[2])],
            ],
        );
        assert!(matches!(out[0].as_deref(), Ok([Ok(_)])), "{:?}", out[0]);
        let second = out[1].as_ref().unwrap();
        assert!(matches!(second[0], Err(Error::Unprocessable { .. })), "{second:?}");
        assert!(second[1].is_ok(), "{second:?}");
        assert!(matches!(out[2], Err(Error::Internal(_))), "{:?}", out[2]);
        assert!(
            matches!(out[3].as_deref(), Ok([Err(Error::Unprocessable { .. })])),
            "{:?}",
            out[3]
        );
        assert!(matches!(out[4].as_deref(), Ok([Ok(_)])), "{:?}", out[4]);
        assert_eq!(
            pairs(&url),
            vec![
                (i[0], i[1], "depends".to_string()),
                (i[0], i[2], "relates".to_string()),
                (i[1], i[2], "depends".to_string()),
            ],
            "the faulting job left nothing, the others all landed"
        );
    }

    /// Links written by the server reach the database file itself once writes pause: the WAL is checkpointed in
    /// the background (the writer's automatic checkpoint is off).
    #[tokio::test]
    async fn written_links_are_checkpointed_into_the_database_file_when_writes_pause() {
        let dir = tempfile::tempdir().unwrap();
        let (url, store, org, i) = five_issues(&dir).await;
        for (a, b) in [(0, 1), (1, 2), (2, 3), (3, 4)] {
            store.create_link(&link(&org, i[a], "relates", i[b])).await.unwrap();
        }
        let mut links = 0;
        for n in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let copy = dir.path().join(format!("copy{n}.db"));
            // The database file alone, without its WAL: what a checkpoint has copied into it.
            std::fs::copy(url.trim_start_matches("sqlite://"), &copy).unwrap();
            let conn = Connection::open(&copy).unwrap();
            links = conn
                .query_row("SELECT count(*) FROM links", [], |r| r.get::<_, i64>(0))
                .unwrap_or(0);
            drop(conn);
            std::fs::remove_file(&copy).unwrap();
            if links == 4 {
                break;
            }
        }
        assert_eq!(links, 4, "the links reached the database file within 4 s");
    }

    /// The WAL header's first salt, which SQLite increments each time the WAL starts over from its beginning.
    fn wal_restarts(url: &str) -> u32 {
        let bytes = std::fs::read(format!("{}-wal", url.trim_start_matches("sqlite://"))).unwrap();
        u32::from_be_bytes(bytes[16..20].try_into().unwrap())
    }

    /// Under writes that never pause, the WAL still starts over (it would otherwise grow without bound: a
    /// checkpoint running beside a busy writer never leaves the WAL wholly copied by itself).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_while_links_keep_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let (url, store, org, ids) = issues(&dir, 150).await;
        let store = Arc::new(store);
        let before = wal_restarts(&url);
        let pairs: Vec<(i64, i64)> = ids
            .iter()
            .enumerate()
            .flat_map(|(n, a)| ids[n + 1..].iter().map(move |b| (*a, *b)))
            .collect();
        let pairs = Arc::new(Mutex::new(pairs));
        let until = Instant::now() + Duration::from_secs(3);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (store, org, pairs) = (store.clone(), org.clone(), pairs.clone());
            tasks.push(tokio::spawn(async move {
                let mut written = 0;
                while Instant::now() < until {
                    let Some((a, b)) = pairs.lock().unwrap().pop() else {
                        break;
                    };
                    store.create_link(&link(&org, a, "relates", b)).await.unwrap();
                    written += 1;
                }
                written
            }));
        }
        let mut written = 0;
        for t in tasks {
            written += t.await.unwrap();
        }
        assert!(written > 500, "only {written} links written");
        let after = wal_restarts(&url);
        assert!(
            after > before,
            "the WAL never started over during {written} link writes ({before} → {after})"
        );
    }
}
