//! PostgreSQL's link writer: the new links of this process's requests (created and imported) are written several
//! to a statement (group commit), under graph locks the writer keeps while batches keep coming.
//!
//! Why: a `depends` or subtask link is checked under a transaction-scoped advisory lock per organization and rule
//! (`postgres.rs`), held until the commit has reached the disk. One link per transaction made the lock's holder
//! wait for a WAL flush and five statements on every link, and every link of the organization wait for that
//! holder: 231 creates/s at c=16 against pgbench's 6 530 one-row transactions/s (`docs/benchmarks.md`). A batch
//! reads what the rules need for all its links in one statement, checks each link against the database and the
//! links before it ([`Plan`]), and writes them in one statement that commits them with one flush. The writer holds
//! the locks at session level from one batch to the next while jobs keep coming (about [`STREAK_MAX`]), so
//! that the next batch's facts are read while a batch is written ([`Writer`]). Replicas batch on their own and
//! take the same locks, so the rules hold across processes as before.
//!
//! A refused link writes nothing (every rule is checked before the `INSERT`), so a batch goes on past refusals. A
//! failed write (a row another writer got in first, an issue deleted meanwhile) writes nothing, and the batch's
//! jobs are written again one transaction each, a statement per read, so that a fault is the job's own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::link_batch::{Job, LinkWriter, Outcome, Written, gather, gather_more};
use super::link_rules::{
    CURRENT_EPIC_SQL, CURRENT_PARENT_SQL, INSERT_LINK_SQL, LinkInsert, LinkTx, PAIR_SQL, PairRow, insert_link,
};
use super::postgres::IDLE_PING_AFTER;
use super::sql::{CycleRule, LinkRow, link_columns};
use super::{LinkView, NewLink};
use crate::domain::OrgId;
use crate::domain::dates::Millis;
use crate::domain::links::LinkType;
use crate::error::{Error, Result};

/// Starts the batching task: it writes on `pool` (its own connections) and reads on `reads` (connections of their
/// own, [`VIEW_READERS`] at most) the created links' views that a batch's facts did not give (a batch written
/// step by step).
pub(super) fn start(pool: PgPool, reads: PgPool) -> LinkWriter {
    let (writer, rx) = LinkWriter::channel();
    tokio::spawn(batches(rx, pool, reads));
    writer
}

/// Takes a rule's advisory lock until the end of the transaction: racing writers of the organization's links of
/// that kind — in this process or another — check their rules one after another.
pub(super) async fn lock_graph(conn: &mut PgConnection, org: &OrgId, rule: CycleRule) -> Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(lock_sql(org, rule, false)))
        .execute(conn)
        .await?;
    Ok(())
}

/// The statement that takes the advisory lock of `org`'s links under `rule`, until the end of the transaction or
/// (`session`) until the session lets it go; the two kinds wait for each other. The lock's name is written into
/// the SQL (so that several can be sent in one round trip): an `OrgId` is `[A-Za-z0-9_-]{1,64}` (`OrgId::parse`,
/// its only constructor), so nothing in it needs quoting.
fn lock_sql(org: &OrgId, rule: CycleRule, session: bool) -> String {
    format!(
        "SELECT pg_advisory{}_lock(hashtextextended('tether.links.{}.{}', 0))",
        if session { "" } else { "_xact" },
        org.as_str(),
        rule.name()
    )
}

/// The writer's connections: one writes the batches and holds the graph locks, the other reads the next batch's
/// facts meanwhile ([`Writer::batch`]).
pub(super) const WRITER_CONNECTIONS: u32 = 2;

/// The `application_name` of the writer's connections.
pub(super) const WRITER_NAME: &str = "tether link writer";

/// How many connections read the views the facts did not give (a batch written step by step), by a task of
/// their own for a planned batch ([`answer`]).
pub(super) const VIEW_READERS: u32 = 4;

/// How long the writer keeps its statements' plans at most (see [`replan`]).
const REPLAN_EVERY: Duration = Duration::from_secs(1);

/// How long the writer keeps its graph locks while batches keep coming before it looks whether a session waits for
/// one of them ([`WAITING_SQL`], on the reading connection, while a batch is written): when none does, it keeps
/// them for another streak; when one does, the batch being written is the last one read ahead, and they go before
/// the batch after it, so that whoever waits for them has a turn — the writers of other replicas, and this
/// process's statements that take them one transaction at a time (a new issue with a parent, a batch written again
/// step by step). It lets them go at once whenever no job is waiting. Letting them go every streak whether or not
/// anyone waited took them again 311–371 times in 1 000 of one process's batches, each such batch planned after
/// the turn's round trips instead of read ahead (`docs/benchmarks.md`).
/// Why 4 ms: with two replicas writing one organization's `depends` links, each waits out the other's turn, and
/// 20 ms made their p99 26 ms; 4 ms made it 11.5–12.2 ms for the same rate, and one process's rate did not change
/// (`docs/benchmarks.md`, `bench/replicas.py`).
const STREAK_MAX: Duration = Duration::from_millis(4);

/// Whether a session waits for an advisory lock of this database (the graph locks are Tether's only ones).
const WAITING_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))";

/// The graph locks a batch needs: (rule, organization) → organization, in the order every writer takes them (all
/// `Depends` before any `Subtask`).
type Keys = BTreeMap<(CycleRule, String), OrgId>;

/// The links of `jobs`, in order, each with whether its job wants its view.
fn links_of(jobs: &[Job]) -> Vec<(&NewLink, bool)> {
    jobs.iter().flat_map(|j| j.links.iter().map(|l| (l, j.views))).collect()
}

fn keys_of(jobs: &[Job]) -> Keys {
    jobs.iter()
        .flat_map(|j| &j.links)
        .filter_map(|l| rule_of(l.relationship.ty).map(|rule| ((rule, l.org.as_str().to_owned()), l.org.clone())))
        .collect()
}

/// A connection the writer keeps: when it was last used and when its plans were last dropped.
struct Held {
    conn: PoolConnection<Postgres>,
    used: Instant,
    planned: Instant,
}

/// The link writer: its two connections, and the graph locks the first one's session holds.
///
/// Why session locks: a batch's facts can then be read while the batch before it is written — on the second
/// connection, outside any transaction — because no one else can add a `depends` or subtask link of those
/// organizations until the writer lets the locks go, and the batch before (which that read may not see yet) is
/// added from memory ([`Accepted`]). A batch then keeps the locks for one statement, which inserts its links
/// and commits them (in autocommit), instead of for four round trips (`BEGIN` and the locks, the facts, the
/// `INSERT`, `COMMIT`): `docs/benchmarks.md` has the figures. A session that may hold graph locks never goes
/// back to the pool: it is closed ([`Writer::lose`]).
struct Writer {
    pool: PgPool,
    reads: PgPool,
    main: Option<Held>,
    aux: Option<Held>,
    /// The graph locks `main`'s session holds, and since when.
    locks: Keys,
    since: Instant,
    /// How long it keeps them while batches keep coming: [`STREAK_MAX`] (longer in tests that need a read ahead
    /// whatever the machine's pace).
    streak: Duration,
    /// How many jobs the last batch answered: when none waits as a write begins, the next batch is read ahead once
    /// that many have come (their clients' next requests), if they come before it lands.
    answered: usize,
}

/// The next batch, gathered while one was written, and its facts when they were read meanwhile.
type Next = (Vec<Job>, Option<Plan>);

/// One batch at a time: what arrives while a batch is written is the next batch.
async fn batches(mut rx: mpsc::UnboundedReceiver<Job>, pool: PgPool, reads: PgPool) {
    let mut w = Writer::new(pool, reads);
    let mut next: Option<Next> = None;
    loop {
        let (jobs, read) = match next.take() {
            Some(next) => next,
            None => {
                let first = match rx.try_recv() {
                    Ok(job) => job,
                    Err(_) => {
                        w.release().await;
                        match rx.recv().await {
                            Some(job) => job,
                            None => break,
                        }
                    }
                };
                (gather(first, &mut rx), None)
            }
        };
        next = w.batch(jobs, read, &mut rx).await;
    }
    w.release().await;
}

impl Writer {
    /// A writer on `pool` that reads views on `reads`; no connection yet.
    fn new(pool: PgPool, reads: PgPool) -> Writer {
        Writer {
            pool,
            reads,
            main: None,
            aux: None,
            locks: Keys::new(),
            since: Instant::now(),
            streak: STREAK_MAX,
            answered: 0,
        }
    }

    /// Tests `slot`'s connection when it has been idle a while (as the pool would) and closes it when that fails:
    /// `true` when it did.
    async fn tested(slot: &mut Option<Held>) -> bool {
        let Some(held) = slot.as_mut() else { return false };
        if held.used.elapsed() < IDLE_PING_AFTER {
            return false;
        }
        if sqlx::Connection::ping(&mut *held.conn).await.is_ok() {
            held.used = Instant::now();
            return false;
        }
        if let Some(held) = slot.take() {
            close(held).await;
        }
        true
    }

    /// `slot`'s connection, ready for a statement: the one kept ([`Writer::tested`]) or the pool's next one.
    async fn ready<'s>(
        pool: &PgPool,
        slot: &'s mut Option<Held>,
    ) -> std::result::Result<&'s mut PoolConnection<Postgres>, sqlx::Error> {
        Writer::tested(slot).await;
        let held = match slot {
            Some(held) => held,
            None => {
                let conn = pool.acquire().await?;
                let now = Instant::now();
                slot.insert(Held {
                    conn,
                    used: now,
                    planned: now,
                })
            }
        };
        Ok(fresh(held).await)
    }

    /// `main`, ready ([`Writer::ready`]); when it failed its test, the graph locks its session held went with it.
    async fn ready_main(&mut self) -> std::result::Result<&mut PoolConnection<Postgres>, sqlx::Error> {
        if Writer::tested(&mut self.main).await {
            self.locks.clear();
        }
        Writer::ready(&self.pool, &mut self.main).await
    }

    /// Has `main`'s session hold the graph locks `keys`: kept from the batches before when it holds them all and
    /// has held them less than its streak ([`STREAK_MAX`]); else it lets go of those it holds and takes `keys`, in
    /// order.
    async fn lock(&mut self, keys: Keys) -> std::result::Result<(), Stop> {
        if keys.keys().all(|k| self.locks.contains_key(k)) && self.in_streak() {
            return Ok(());
        }
        self.release().await;
        if keys.is_empty() {
            return Ok(());
        }
        let sql: Vec<String> = keys.iter().map(|((rule, _), org)| lock_sql(org, *rule, true)).collect();
        let conn = self.ready_main().await.map_err(Stop::Unavailable)?;
        // Whatever happens to it from now on, this session does not go back to the pool.
        conn.close_on_drop();
        if sqlx::raw_sql(sqlx::AssertSqlSafe(sql.join("; ")))
            .execute(&mut **conn)
            .await
            .is_err()
        {
            self.lose().await;
            return Err(Stop::Fault);
        }
        self.locks = keys;
        self.since = Instant::now();
        Ok(())
    }

    /// Whether the graph locks held (if any) have been held less than the streak.
    fn in_streak(&self) -> bool {
        self.since.elapsed() < self.streak
    }

    /// Lets go of the graph locks `main`'s session holds.
    async fn release(&mut self) {
        if self.locks.is_empty() {
            return;
        }
        self.locks.clear();
        let Some(held) = self.main.as_mut() else { return };
        if sqlx::raw_sql("SELECT pg_advisory_unlock_all()")
            .execute(&mut *held.conn)
            .await
            .is_err()
        {
            self.lose().await;
        }
    }

    /// Closes `main` (with whatever graph locks its session holds): it does not go back to the pool.
    async fn lose(&mut self) {
        self.locks.clear();
        if let Some(held) = self.main.take() {
            close(held).await;
        }
    }

    /// Writes `jobs`: planned ([`Plan`]; `read`, its facts when they were read while the batch before was
    /// written), their links inserted and committed by one statement, while the next batch is gathered and its
    /// facts read on the other connection — read again with the jobs that came meanwhile while the statement
    /// lasts ([`read_ahead`]). When no job waits as the write begins, the next batch is read ahead once as many
    /// jobs have come as this writer's last batch answered (its clients' next requests), if they come before the
    /// write lands ([`Writer::answered`]). When the plan cannot be kept (a fault, or a row that a writer elsewhere
    /// got in first), each job is written again in a transaction of its own, statement by statement.
    /// A planned batch's views come with its facts, and its answers are sent as soon as it is committed (a view
    /// missing from the facts is read by a task of its own, so that the next batch begins at once). Returns the
    /// next batch when it was gathered.
    async fn batch(
        &mut self,
        jobs: Vec<Job>,
        read: Option<Plan>,
        rx: &mut mpsc::UnboundedReceiver<Job>,
    ) -> Option<Next> {
        let plan = match read {
            // Read under the locks held since before the batch before it.
            Some(plan) => Ok(plan),
            None => self.plan(&jobs).await,
        };
        let plan = match plan {
            Ok(plan) => plan,
            // No connection to be had: the batch's jobs are told, rather than each waiting for one in turn.
            Err(Stop::Unavailable(e)) => {
                self.lose().await;
                fail(jobs, &unavailable(e));
                return None;
            }
            Err(Stop::Fault) => {
                self.lose().await;
                self.one_by_one(jobs).await;
                return None;
            }
        };
        let checked = match check(&jobs, plan).await {
            Ok(checked) => checked,
            Err(_) => {
                self.release().await;
                self.one_by_one(jobs).await;
                return None;
            }
        };
        // The next batch: what waits now (and what comes while this one is written, [`read_ahead`]), read ahead
        // when the locks it needs are held and may be kept.
        let mut next = Vec::new();
        if let Ok(first) = rx.try_recv() {
            next = gather(first, rx);
        }
        let (before, rows, touched, all, wanted) = checked;
        let Some(main) = self.main.as_mut() else {
            self.one_by_one(jobs).await;
            return next_batch(next, None);
        };
        let (land, mut landed) = oneshot::channel::<()>();
        let written = async {
            let written = rows.write(&mut **fresh(main).await, &touched).await;
            let _ = land.send(());
            written
        };
        let answered = self.answered;
        let read = async {
            if next.is_empty() {
                // None waits: the clients the last batch answered are about to send their next requests. They
                // are read ahead as one batch once they have all come, if that is before the write lands.
                while next.len() < answered {
                    tokio::select! {
                        biased;
                        _ = &mut landed => return None,
                        job = rx.recv() => match job {
                            Some(job) => {
                                next.push(job);
                                gather_more(&mut next, rx);
                            }
                            None => return None,
                        },
                    }
                }
            }
            // Read ahead when the locks the batch needs are held.
            if next.is_empty() || !keys_of(&next).keys().all(|k| self.locks.contains_key(k)) {
                return None;
            }
            let conn = Writer::ready(&self.pool, &mut self.aux).await.ok()?;
            // Once the locks have been held their streak, they are kept for another only when no one waits for
            // them; else this batch is planned in its turn, after `lock` has let them go.
            if !self.locks.is_empty() && self.since.elapsed() >= self.streak {
                match sqlx::query_scalar::<_, bool>(WAITING_SQL).fetch_one(&mut **conn).await {
                    Ok(false) => self.since = Instant::now(),
                    Ok(true) => return None,
                    Err(_) => {
                        self.aux = None;
                        return None;
                    }
                }
            }
            match read_ahead(conn, &mut next, rx, &before, &mut landed, &self.locks).await {
                Ok(plan) => plan,
                Err(_) => {
                    self.aux = None;
                    None
                }
            }
        };
        let (written, read) = tokio::join!(written, read);
        match written {
            Ok(()) => {
                self.answered = jobs.len();
                let done = Done {
                    committed: true,
                    all: all.into_iter().map(Ok).collect(),
                    wanted,
                };
                if done.wanted.1.is_empty() {
                    // Every view was read with the facts: the answers go now.
                    answer(self.reads.clone(), jobs, done).await;
                } else {
                    tokio::spawn(answer(self.reads.clone(), jobs, done));
                }
                next_batch(next, read)
            }
            // The statement failed before its commit: nothing of it was written (a row another writer got in
            // first, an issue deleted meanwhile).
            Err(sqlx::Error::Database(e)) if refused(&*e) => {
                self.release().await;
                self.one_by_one(jobs).await;
                next_batch(next, None)
            }
            // The connection failed: the batch may or may not have been written. It is reported, not tried again.
            Err(e) => {
                self.lose().await;
                fail(jobs, &anyhow::Error::new(e).context("writing a batch of links"));
                next_batch(next, None)
            }
        }
    }

    /// The graph locks of `jobs` taken, and the facts of their links read, on `main`.
    async fn plan(&mut self, jobs: &[Job]) -> std::result::Result<Plan, Stop> {
        // Tested first: a session that fails its test takes its locks with it, and `lock` takes them again.
        self.ready_main().await.map_err(Stop::Unavailable)?;
        self.lock(keys_of(jobs)).await?;
        // Not tested again: the session that holds the locks is used as it is (a failed statement is a fault).
        if self.main.is_none() {
            self.ready_main().await.map_err(Stop::Unavailable)?;
        }
        let Some(main) = self.main.as_mut() else {
            return Err(Stop::Fault);
        };
        Plan::load(fresh(main).await, &links_of(jobs), &Accepted::default())
            .await
            .map_err(|_| Stop::Fault)
    }

    /// Each job in a transaction of its own, statement by statement (under transaction-scoped graph locks:
    /// `main`'s session holds none here), on `main` while it lasts, then on the pool's next connections.
    async fn one_by_one(&mut self, jobs: Vec<Job>) {
        let mut slot = self.main.take().map(|held| held.conn);
        let mut jobs = jobs.into_iter();
        while let Some(job) = jobs.next() {
            let mut conn = match slot.take() {
                Some(conn) => conn,
                None => match self.pool.acquire().await {
                    Ok(conn) => conn,
                    // The jobs after it are told too, rather than each waiting for a connection in turn.
                    Err(e) => {
                        fail(std::iter::once(job).chain(jobs.by_ref()), &unavailable(e));
                        break;
                    }
                },
            };
            match attempt(&mut conn, std::slice::from_ref(&job)).await {
                Ok(done) => {
                    if done.committed {
                        slot = Some(conn);
                    }
                    answer(self.reads.clone(), vec![job], done).await;
                }
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        let now = Instant::now();
        self.main = slot.map(|conn| Held {
            conn,
            used: now,
            planned: now,
        });
    }
}

/// The facts of `next` read with `before` (the batch being written) — and read again with the jobs that came
/// meanwhile while that batch has not `landed` (its sender says when): a bigger next batch for about the same
/// write. `None` when a job that came needs a graph lock not among `locks` (the batch is then planned in its turn);
/// an error when a read failed.
async fn read_ahead(
    conn: &mut PgConnection,
    next: &mut Vec<Job>,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    before: &Accepted,
    landed: &mut oneshot::Receiver<()>,
    locks: &Keys,
) -> Result<Option<Plan>> {
    loop {
        let plan = Plan::load(conn, &links_of(next), before).await?;
        let has_landed = !matches!(landed.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        if has_landed || !gather_more(next, rx) {
            return Ok(Some(plan));
        }
        if !keys_of(next).keys().all(|k| locks.contains_key(k)) {
            return Ok(None);
        }
    }
}

/// The next batch, when jobs were waiting.
fn next_batch(jobs: Vec<Job>, read: Option<Plan>) -> Option<Next> {
    (!jobs.is_empty()).then_some((jobs, read))
}

/// Why a batch could not be planned.
enum Stop {
    /// No connection could be had.
    Unavailable(sqlx::Error),
    /// A statement failed.
    Fault,
}

/// Whether a statement's failure came before its commit, so that nothing of it was written: a rule of the schema
/// (class 23: a unique index, a foreign key), a transaction rolled back (40: a deadlock), bad data or SQL (22, 42),
/// or a cancel (57014). Any other failure — the server shutting down, a connection closed — may have come after
/// the commit.
fn refused(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.code()
        .is_some_and(|c| ["22", "23", "40", "42"].iter().any(|class| c.starts_with(class)) || c == "57014")
}

/// Readies a kept connection for a statement: its plans dropped once per [`REPLAN_EVERY`] ([`replan`]), its use
/// noted.
async fn fresh(held: &mut Held) -> &mut PoolConnection<Postgres> {
    if held.planned.elapsed() >= REPLAN_EVERY {
        replan(&mut held.conn).await;
        held.planned = Instant::now();
    }
    held.used = Instant::now();
    &mut held.conn
}

/// Closes a connection the writer kept (5 s at most): it does not go back to the pool.
async fn close(held: Held) {
    let _ = tokio::time::timeout(Duration::from_secs(5), held.conn.close()).await;
}

/// Tells each of `jobs` that it failed with `e`.
fn fail(jobs: impl IntoIterator<Item = Job>, e: &anyhow::Error) {
    let e = format!("{e:#}");
    for job in jobs {
        let _ = job.reply.send(Err(Error::Internal(anyhow::anyhow!("{e}"))));
    }
}

/// The writer could not have a connection.
fn unavailable(e: sqlx::Error) -> anyhow::Error {
    anyhow::Error::new(e).context("connecting the link writer")
}

/// Drops the prepared statements of the writer's connection, so that their next use plans them again for the
/// tables as they are now. The writer's connections force generic plans (planning the facts statement on every
/// execution cost more than running it), and a generic plan is kept until the tables' statistics change: one made
/// while `links` was small reads it with sequential scans (its pair check hashed the whole table), and stays so
/// while the table grows faster than autovacuum analyzes it — on a new database under load the facts statement
/// went from 0.2 to 4 ms within 10 000 links (`docs/benchmarks.md`). Planning again at most once a second costs
/// one planning of each statement a second (under 2 ms for the facts statement). A failure is left to the next
/// batch.
async fn replan(conn: &mut PgConnection) {
    let _ = sqlx::Connection::clear_cached_statements(conn).await;
}

/// What checking a planned batch gives: what it accepted, the rows to write, the issues to touch, each job's
/// outcomes and the views wanted.
type Checked = (
    Accepted,
    Plan,
    BTreeMap<i64, Millis>,
    Vec<Vec<Result<Written>>>,
    (Vec<i64>, Vec<i64>),
);

/// Checks each link of `jobs` against `plan` (in memory): `Err` when the plan does not answer what the rules ask.
async fn check(jobs: &[Job], plan: Plan) -> Result<Checked> {
    let mut tx = Planned {
        plan,
        touched: BTreeMap::new(),
    };
    let (mut all, wanted) = insert_all(&mut tx, jobs, |tx, n| tx.plan.current = n).await?;
    // The views the facts gave; only the others are read after the commit.
    let mut views = std::mem::take(&mut tx.plan.views);
    let mut given = BTreeSet::new();
    for (job, out) in jobs.iter().zip(&mut all) {
        if job.views {
            for (id, view) in out.iter_mut().flatten() {
                *view = views.remove(id);
                if view.is_some() {
                    given.insert(*id);
                }
            }
        }
    }
    let wanted = wanted
        .0
        .into_iter()
        .zip(wanted.1)
        .filter(|(_, id)| !given.contains(id))
        .unzip();
    // The rows are all `Plan::write` needs of the plan.
    let accepted = std::mem::take(&mut tx.plan.accepted);
    Ok((accepted, tx.plan, tx.touched, all, wanted))
}

/// Each job's outcomes, and the links to read back — (this issue, link id) — the links of `jobs` checked and
/// inserted one after another on `tx` (`at(tx, n)` before the `n`-th). `Err` for a fault: on a transaction, it is
/// aborted, and nothing of it can be kept.
async fn insert_all<T: LinkTx>(
    tx: &mut T,
    jobs: &[Job],
    mut at: impl FnMut(&mut T, usize),
) -> Result<(Vec<Vec<Result<Written>>>, (Vec<i64>, Vec<i64>))> {
    let mut all = Vec::with_capacity(jobs.len());
    let mut wanted: (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
    let mut n = 0;
    for job in jobs {
        let mut out = Vec::with_capacity(job.links.len());
        for new in &job.links {
            at(tx, n);
            n += 1;
            match insert_link(tx, new).await {
                Err(e @ Error::Internal(_)) => return Err(e),
                Ok(id) => {
                    if job.views {
                        wanted.0.push(new.this);
                        wanted.1.push(id);
                    }
                    out.push(Ok((id, None)));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        all.push(out);
    }
    Ok((all, wanted))
}

/// A committed batch (or one whose commit failed): each job's outcome, and the links whose views its jobs
/// asked for and do not have yet — (the issue each is seen from, link id).
struct Done {
    /// Whether the commit answered (when it did not, `all` says so to every job).
    committed: bool,
    all: Vec<Outcome>,
    wanted: (Vec<i64>, Vec<i64>),
}

/// Reads the views `done` wants that its jobs do not have yet (after the commit: a batch written step by step
/// reads no more than its rules need while it holds the graph locks) and sends each job its outcome.
async fn answer(reads: PgPool, jobs: Vec<Job>, mut done: Done) {
    if !done.wanted.1.is_empty() {
        let mut views = match views(&reads, &done.wanted.0, &done.wanted.1).await {
            Ok(v) => Ok(v),
            Err(e) => Err(format!("{e:#}")),
        };
        for (job, out) in jobs.iter().zip(&mut done.all) {
            let Ok(out) = out else { continue };
            if !job.views {
                continue;
            }
            for written in out.iter_mut() {
                // Those whose views were read with the facts have them.
                let Ok((id, None)) = *written else { continue };
                *written = match &mut views {
                    Ok(found) => match found.remove(&id) {
                        Some(v) => Ok((id, Some(v))),
                        None => Err(Error::not_found(
                            "link",
                            "The link was deleted as soon as it was created",
                        )),
                    },
                    Err(e) => Err(Error::Internal(anyhow::anyhow!("reading the links just written: {e}"))),
                };
            }
        }
    }
    for (job, out) in jobs.into_iter().zip(done.all) {
        let _ = job.reply.send(out);
    }
}

/// The links of `jobs` in one transaction, a statement per read and write, under transaction-scoped graph
/// locks. `Err` for a fault before the commit (nothing was written); else each job's outcome — its records' ids
/// or refusals, or, when the commit failed, that failure.
async fn attempt(conn: &mut PgConnection, jobs: &[Job]) -> Result<Done> {
    // The locks the links need, taken by the statement that begins the transaction: one round trip.
    let mut begin = String::from("BEGIN");
    for ((rule, _), org) in keys_of(jobs) {
        begin.push_str("; ");
        begin.push_str(&lock_sql(&org, rule, false));
    }
    let mut tx = Batch {
        tx: sqlx::Connection::begin_with(conn, sqlx::AssertSqlSafe(begin)).await?,
        touched: BTreeMap::new(),
    };
    let (all, wanted) = insert_all(&mut tx, jobs, |_, _| ()).await?;
    tx.touch_all().await?;
    // A failed commit may or may not have written the links: it is reported, not tried again.
    if let Err(e) = tx.tx.commit().await {
        let e = anyhow::Error::new(e).context("committing a batch of links");
        return Ok(Done {
            committed: false,
            all: jobs
                .iter()
                .map(|_| Err(Error::Internal(anyhow::anyhow!("{e:#}"))))
                .collect(),
            wanted: (Vec::new(), Vec::new()),
        });
    }
    Ok(Done {
        committed: true,
        all: all.into_iter().map(Ok).collect(),
        wanted,
    })
}

/// The links `ids`, each seen from its issue in `this` (pairwise), by id.
async fn views(pool: &PgPool, this: &[i64], ids: &[i64]) -> Result<BTreeMap<i64, LinkView>> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows = sqlx::query(LINKS_BY_ID_SQL)
        .bind(this)
        .bind(ids)
        .fetch_all(pool)
        .await?;
    let mut out = BTreeMap::new();
    for row in rows {
        let link = <LinkRow as sqlx::FromRow<'_, sqlx::postgres::PgRow>>::from_row(&row)?.into_view()?;
        out.insert(link.id, link);
    }
    Ok(out)
}

/// The no-cycle rule a link type is checked under, if any.
fn rule_of(ty: LinkType) -> Option<CycleRule> {
    match ty {
        LinkType::Depends => Some(CycleRule::Depends),
        LinkType::Subtask => Some(CycleRule::Subtask),
        _ => None,
    }
}

/// Notes that a link sets `issue`'s `updatedAt` to `at` (the latest of a batch's wins).
fn note_touch(touched: &mut BTreeMap<i64, Millis>, issue: i64, at: Millis) {
    let latest = touched.entry(issue).or_insert(at);
    *latest = (*latest).max(at);
}

/// A transaction written statement by statement, and the issues whose `updatedAt` its links set.
struct Batch<'c> {
    tx: Transaction<'c, Postgres>,
    /// Issue id → the latest `updatedAt` a link of the batch gives it.
    touched: BTreeMap<i64, Millis>,
}

/// [`link_columns`] for the links `$2` seen from the issues `$1` (pairwise). Read on connections that keep one
/// generic plan (see `postgres.rs`), so each row it joins is a subquery the planner may not pull up (`OFFSET 0`):
/// a primary-key lookup whatever the plan's estimates — a generic plan made on a new database hashed the whole
/// tables as a join.
const LINKS_BY_ID_SQL: &str = concat!(
    link_columns!(),
    "unnest($1::bigint[], $2::bigint[]) AS v(this_id, link_id) \
     CROSS JOIN LATERAL (SELECT * FROM links l WHERE l.id = v.link_id OFFSET 0) l \
     CROSS JOIN LATERAL (SELECT key FROM issues t WHERE t.id = v.this_id OFFSET 0) t \
     CROSS JOIN LATERAL (SELECT id, key, summary, status, assignee_uid FROM issues o \
     WHERE o.id = CASE WHEN l.outward_id = v.this_id THEN l.inward_id ELSE l.outward_id END OFFSET 0) o \
     LEFT JOIN LATERAL (SELECT display FROM users u WHERE u.uid = o.assignee_uid OFFSET 0) au ON true \
     CROSS JOIN LATERAL (SELECT display FROM users u WHERE u.uid = l.created_by OFFSET 0) cu \
     CROSS JOIN LATERAL (SELECT display FROM users u WHERE u.uid = l.updated_by OFFSET 0) uu"
);

impl Batch<'_> {
    /// Sets the touched issues' `updatedAt`, locking their rows in id order first, so that two transactions
    /// touching the same issues never wait on each other in a circle.
    async fn touch_all(&mut self) -> Result<()> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let (ids, at): (Vec<i64>, Vec<Millis>) = self.touched.iter().map(|(i, a)| (*i, *a)).unzip();
        sqlx::query("SELECT 1 FROM issues WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&ids)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query(
            "UPDATE issues SET updated_at = v.at FROM unnest($1::bigint[], $2::bigint[]) AS v(id, at) \
             WHERE issues.id = v.id",
        )
        .bind(&ids)
        .bind(&at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// The first column of the first row of `sql` (a key), which takes one parameter `$1`.
    async fn key_of(&mut self, sql: &'static str, id: i64) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(sql).bind(id).fetch_optional(&mut *self.tx).await?)
    }
}

impl LinkTx for Batch<'_> {
    async fn pair(&mut self, org: &str, this: i64, other: i64, lo: i64, hi: i64) -> Result<Vec<PairRow>> {
        let rows = sqlx::query(PAIR_SQL)
            .bind(org)
            .bind(this)
            .bind(other)
            .bind(lo)
            .bind(hi)
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(PairRow {
                    id: r.try_get(0)?,
                    key: r.try_get(1)?,
                    ty: r.try_get(2)?,
                    linked: r.try_get(3)?,
                })
            })
            .collect()
    }

    async fn epic_of(&mut self, issue: i64) -> Result<Option<String>> {
        self.key_of(CURRENT_EPIC_SQL, issue).await
    }

    async fn parent_of(&mut self, issue: i64) -> Result<Option<String>> {
        self.key_of(CURRENT_PARENT_SQL, issue).await
    }

    async fn reaches(&mut self, from: i64, rule: CycleRule, to: i64) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(rule.reaches_sql())
            .bind(from)
            .bind(to)
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(n > 0)
    }

    async fn insert(&mut self, row: &LinkInsert<'_>) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar::<_, i64>(INSERT_LINK_SQL)
            .bind(row.org)
            .bind(row.ty)
            .bind(row.outward)
            .bind(row.inward)
            .bind(row.lo)
            .bind(row.hi)
            .bind(row.created_by)
            .bind(row.updated_by)
            .bind(row.created_at)
            .bind(row.updated_at)
            .fetch_optional(&mut *self.tx)
            .await?)
    }

    /// Kept for the end of the transaction ([`Batch::touch_all`]): one statement for all its issues.
    async fn touch(&mut self, issue: i64, at: Millis) -> Result<()> {
        note_touch(&mut self.touched, issue, at);
        Ok(())
    }
}

/// A planned batch being checked: the rules read its [`Plan`], and its touches are kept for [`Plan::write`].
struct Planned {
    plan: Plan,
    touched: BTreeMap<i64, Millis>,
}

impl LinkTx for Planned {
    async fn pair(&mut self, _org: &str, _this: i64, _other: i64, lo: i64, hi: i64) -> Result<Vec<PairRow>> {
        self.plan.pair(lo, hi)
    }

    async fn epic_of(&mut self, issue: i64) -> Result<Option<String>> {
        self.plan.epic_of(issue)
    }

    async fn parent_of(&mut self, issue: i64) -> Result<Option<String>> {
        self.plan.parent_of(issue)
    }

    async fn reaches(&mut self, from: i64, rule: CycleRule, to: i64) -> Result<bool> {
        self.plan.reaches(from, rule, to)
    }

    async fn insert(&mut self, row: &LinkInsert<'_>) -> Result<Option<i64>> {
        Ok(self.plan.insert(row))
    }

    async fn touch(&mut self, issue: i64, at: Millis) -> Result<()> {
        note_touch(&mut self.touched, issue, at);
        Ok(())
    }
}

/// A batch's reads done up front, under the graph locks, in one statement ([`FACTS_SQL`]), and its writes kept
/// for one statement at the end: each link's rules see the database as it was when the facts were read, plus the
/// links of the batch written meanwhile (`before`, which that read may not have seen), plus the links the batch
/// has accepted before it. Exact, because the writer holds the graph locks its links need from before the read to
/// the end of the write (no one else adds a `depends` or subtask link meanwhile); an `epic`, `relates` or
/// `duplicates` link another writer adds meanwhile makes the final `INSERT` fail on a unique index, and the batch
/// is then written again step by step.
///
/// Cycles: for each rule, one walk from every link's inward issue finds which of the batch's outward issues it
/// reaches in the database and `before`; a path through links of the batch alternates such stretches with the
/// batch's edges, so [`Plan::reaches`] follows them in memory.
struct Plan {
    /// Per link of the batch, in order.
    facts: Vec<Facts>,
    /// The link whose rules are being checked.
    current: usize,
    /// Per rule: a walk's start → the batch's outward issues it reaches in the database (itself included).
    reach: BTreeMap<CycleRule, BTreeMap<i64, Vec<i64>>>,
    /// What the batch written while the facts were read accepted.
    before: Accepted,
    /// What this batch has accepted.
    accepted: Accepted,
    /// The rows to insert.
    rows: Vec<PlannedRow>,
    /// The views of the accepted links whose jobs asked for them, by id.
    views: BTreeMap<i64, LinkView>,
}

/// The links a batch accepted, as its rules and the next batch's see them.
#[derive(Clone, Default)]
struct Accepted {
    /// Per rule: outward → inward issues.
    edges: BTreeMap<CycleRule, BTreeMap<i64, Vec<i64>>>,
    /// The pairs (lower, higher id).
    linked: BTreeSet<(i64, i64)>,
    /// Epic links: issue → the epic's key.
    epic: BTreeMap<i64, String>,
    /// Subtask links: sub-issue → the parent's key.
    parent: BTreeMap<i64, String>,
}

impl Accepted {
    /// Per rule, the edges as two columns (outward, inward issues), for [`FACTS_SQL`].
    fn columns(&self, rule: CycleRule) -> (Vec<i64>, Vec<i64>) {
        self.edges
            .get(&rule)
            .into_iter()
            .flatten()
            .flat_map(|(o, inward)| inward.iter().map(move |i| (*o, *i)))
            .unzip()
    }
}

/// What the database says about one link of the batch.
struct Facts {
    /// The id the link gets if it is written (drawn from the table's sequence).
    id: i64,
    ty: LinkType,
    /// Its outward and inward issues (what [`Plan::epic_of`] and [`Plan::parent_of`] are asked about).
    outward: i64,
    inward: i64,
    /// Its two issues as [`PAIR_SQL`] gives them (those that exist in the organization).
    issues: Vec<PairRow>,
    /// Read for an `epic` link only.
    epic: Option<String>,
    /// Read for a subtask link only.
    parent: Option<String>,
    /// The issue it is seen from, the other issue, and what its view needs of the database (when asked for).
    this: i64,
    other: i64,
    view: Option<ViewFacts>,
}

impl Facts {
    /// The view of the link, accepted as `row`, from its issue `this` — when its job asked for it and the facts
    /// have it all.
    fn view(&self, row: &LinkInsert<'_>) -> Option<LinkView> {
        let v = self.view.as_ref()?;
        let key_of = |id: i64| self.issues.iter().find(|r| r.id == id).map(|r| r.key.clone());
        LinkRow {
            id: self.id,
            ty: row.ty.to_owned(),
            outward_id: row.outward,
            this_key: key_of(self.this)?,
            object_id: self.other,
            object_key: key_of(self.other)?,
            object_summary: v.object_summary.clone(),
            object_status: v.object_status.clone(),
            assignee_uid: v.assignee_uid,
            assignee_display: v.assignee_display.clone(),
            created_by: row.created_by,
            created_by_display: v.created_by_display.clone(),
            updated_by: row.updated_by,
            updated_by_display: v.updated_by_display.clone(),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
        .into_view()
        .ok()
    }
}

/// What a link's view needs beyond the batch's data ([`link_columns`]), read with the facts.
struct ViewFacts {
    object_summary: String,
    object_status: String,
    assignee_uid: Option<i64>,
    assignee_display: Option<String>,
    created_by_display: String,
    updated_by_display: String,
}

struct PlannedRow {
    id: i64,
    org: String,
    ty: &'static str,
    outward: i64,
    inward: i64,
    lo: i64,
    hi: i64,
    created_by: i64,
    updated_by: i64,
    created_at: Millis,
    updated_at: Millis,
}

/// Each link's two issues, whether its pair is linked, the epic its outward issue is in (an `epic` link's only, type
/// `$16`) and the parent of its inward issue (a subtask link's only) ([`CURRENT_EPIC_SQL`], [`CURRENT_PARENT_SQL`]),
/// an id for it, the walks of the no-cycle rules: from each issue `$8` (`$10`), the issues `$9` (`$11`) reachable
/// along `depends` (subtask) links (as in `reaches_sql`) and the edges `$12` → `$13` (`$14` → `$15`: links being
/// written, which the statement may not see), given on the rows of the links whose inward issue it is; and what the
/// link's view needs ([`link_columns`]) beyond the batch's own data, where `$19` asks for it: the other issue's
/// summary, status and assignee, and the names of the assignee and of the link's authors `$17`, `$18`. One
/// statement, so that the batch's locks are held for one round trip less, and its views need no read after the
/// commit. Each step of a walk is a subquery the planner may not pull up
/// (`OFFSET 0`), so that it is always an index lookup per issue reached: as a join, the generic plan hashed every
/// `depends` link of the table for a walk of a few issues (3.4 of 3.75 ms on 13 000 links; 0.54 ms in all
/// this way). So is the pair check (`OFFSET 0` keeps the planner from turning the `EXISTS` into a hashed subplan):
/// planned while `links` was small — a new database, until [`replan`] finds a few thousand links — it read and
/// hashed the whole table on every batch (`docs/benchmarks.md`).
const FACTS_SQL: &str = "WITH RECURSIVE \
     rd(start, id) AS (SELECT s, s FROM unnest($8::bigint[]) AS s UNION \
     SELECT r.start, l.inward_id FROM rd r CROSS JOIN LATERAL \
     ((SELECT inward_id FROM links l WHERE l.outward_id = r.id AND l.type = 'depends' OFFSET 0) \
     UNION ALL SELECT e.i FROM unnest($12::bigint[], $13::bigint[]) AS e(o, i) WHERE e.o = r.id) l), \
     rs(start, id) AS (SELECT s, s FROM unnest($10::bigint[]) AS s UNION \
     SELECT r.start, l.inward_id FROM rs r CROSS JOIN LATERAL \
     ((SELECT inward_id FROM links l WHERE l.outward_id = r.id AND l.type = 'subtask' OFFSET 0) \
     UNION ALL SELECT e.i FROM unnest($14::bigint[], $15::bigint[]) AS e(o, i) WHERE e.o = r.id) l) \
     SELECT t.id, t.key, t.type, o.id, o.key, o.type, \
     EXISTS (SELECT 1 FROM links x WHERE x.lo = j.lo AND x.hi = j.hi OFFSET 0), \
     CASE WHEN j.ty = 'epic' THEN (SELECT e.key FROM links x JOIN issues e ON e.id = x.inward_id \
     WHERE x.outward_id = j.outward AND x.type = 'epic') END, \
     CASE WHEN j.ty = 'subtask' THEN (SELECT p.key FROM links x JOIN issues p ON p.id = x.outward_id \
     WHERE x.inward_id = j.inward AND x.type = 'subtask') END, \
     nextval('links_id_seq'), dr.ends, sr.ends, \
     CASE WHEN j.views THEN o.summary END, CASE WHEN j.views THEN o.status END, \
     CASE WHEN j.views THEN o.assignee_uid END, \
     CASE WHEN j.views THEN (SELECT u.display FROM users u WHERE u.uid = o.assignee_uid) END, \
     CASE WHEN j.views THEN (SELECT u.display FROM users u WHERE u.uid = j.created_by) END, \
     CASE WHEN j.views THEN (SELECT u.display FROM users u WHERE u.uid = j.updated_by) END \
     FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], \
     $16::text[], $17::bigint[], $18::bigint[], $19::boolean[]) \
     WITH ORDINALITY AS j(org, this, other, outward, inward, lo, hi, ty, created_by, updated_by, views, n) \
     LEFT JOIN issues t ON t.org_id = j.org AND t.id = j.this \
     LEFT JOIN issues o ON o.org_id = j.org AND o.id = j.other \
     LEFT JOIN (SELECT start, array_agg(id) AS ends FROM rd WHERE id = ANY($9) GROUP BY start) dr ON dr.start = j.inward \
     LEFT JOIN (SELECT start, array_agg(id) AS ends FROM rs WHERE id = ANY($11) GROUP BY start) sr ON sr.start = j.inward \
     ORDER BY j.n";

/// The batch's rows, with the ids drawn for them, and the `updatedAt` of the issues `$12` set to `$13` (pairwise),
/// their rows locked in id order first (as [`Batch::touch_all`] does): one statement, run outside a transaction,
/// so that it commits too. A row a unique index refuses (a writer elsewhere got there first) fails it whole.
const INSERT_ALL_SQL: &str = "WITH ins AS ( \
     INSERT INTO links (id, org_id, type, outward_id, inward_id, lo, hi, created_by, updated_by, created_at, updated_at) \
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], \
     $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[]) \
     RETURNING 1), \
     locked AS (SELECT id FROM issues WHERE id = ANY($12) ORDER BY id FOR UPDATE), \
     upd AS (UPDATE issues SET updated_at = v.at FROM unnest($12::bigint[], $13::bigint[]) AS v(id, at), locked \
     WHERE locked.id = v.id AND issues.id = v.id RETURNING 1) \
     SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM upd)";

/// A statement's failure to read what it returned.
fn internal(e: impl Into<anyhow::Error>) -> Error {
    Error::Internal(e.into())
}

impl Plan {
    /// Reads what the rules of `links` need, and their views where asked for, with `before` written meanwhile.
    async fn load(tx: &mut PgConnection, links: &[(&NewLink, bool)], before: &Accepted) -> Result<Plan> {
        let (links, views): (Vec<&NewLink>, Vec<bool>) = links.iter().copied().unzip();
        let types: Vec<&str> = links.iter().map(|l| l.relationship.ty.id()).collect();
        let created_by: Vec<i64> = links.iter().map(|l| l.created.0).collect();
        let updated_by: Vec<i64> = links.iter().map(|l| l.updated.0).collect();
        let oriented: Vec<(i64, i64)> = links.iter().map(|l| l.relationship.orient(l.this, l.other)).collect();
        let orgs: Vec<&str> = links.iter().map(|l| l.org.as_str()).collect();
        let this: Vec<i64> = links.iter().map(|l| l.this).collect();
        let other: Vec<i64> = links.iter().map(|l| l.other).collect();
        let outward: Vec<i64> = oriented.iter().map(|o| o.0).collect();
        let inward: Vec<i64> = oriented.iter().map(|o| o.1).collect();
        let lo: Vec<i64> = oriented.iter().map(|(a, b)| *a.min(b)).collect();
        let hi: Vec<i64> = oriented.iter().map(|(a, b)| *a.max(b)).collect();
        // The walks: from the inward issue of every link under a rule, to the outward issues of those links — when
        // one of them is checked (an imported `depends` link is not, but is a step of the paths later ones take).
        let mut walks: BTreeMap<CycleRule, (Vec<i64>, Vec<i64>)> = BTreeMap::new();
        for rule in [CycleRule::Depends, CycleRule::Subtask] {
            let under: Vec<usize> = (0..links.len())
                .filter(|&k| rule_of(links[k].relationship.ty) == Some(rule))
                .collect();
            if under.iter().any(|&k| rule == CycleRule::Subtask || !links[k].import) {
                let starts: BTreeSet<i64> = under.iter().map(|&k| inward[k]).collect();
                let ends: BTreeSet<i64> = under.iter().map(|&k| outward[k]).collect();
                walks.insert(rule, (starts.into_iter().collect(), ends.into_iter().collect()));
            }
        }
        let none = (Vec::new(), Vec::new());
        let depends = walks.get(&CycleRule::Depends).unwrap_or(&none);
        let subtask = walks.get(&CycleRule::Subtask).unwrap_or(&none);
        let (depends_before, subtask_before) = (before.columns(CycleRule::Depends), before.columns(CycleRule::Subtask));
        let rows = sqlx::query(FACTS_SQL)
            .bind(&orgs)
            .bind(&this)
            .bind(&other)
            .bind(&outward)
            .bind(&inward)
            .bind(&lo)
            .bind(&hi)
            .bind(&depends.0)
            .bind(&depends.1)
            .bind(&subtask.0)
            .bind(&subtask.1)
            .bind(&depends_before.0)
            .bind(&depends_before.1)
            .bind(&subtask_before.0)
            .bind(&subtask_before.1)
            .bind(&types)
            .bind(&created_by)
            .bind(&updated_by)
            .bind(&views)
            .fetch_all(&mut *tx)
            .await?;
        if rows.len() != links.len() {
            return Err(internal(anyhow::anyhow!(
                "{} facts for {} links",
                rows.len(),
                links.len()
            )));
        }
        let mut reach: BTreeMap<CycleRule, BTreeMap<i64, Vec<i64>>> =
            walks.keys().map(|rule| (*rule, BTreeMap::new())).collect();
        let mut facts = Vec::with_capacity(rows.len());
        for (r, link) in rows.iter().zip(links) {
            let linked: bool = r.try_get(6)?;
            let mut issues = Vec::with_capacity(2);
            for at in [0, 3] {
                if let Some(id) = r.try_get::<Option<i64>, _>(at)? {
                    issues.push(PairRow {
                        id,
                        key: r.try_get(at + 1)?,
                        ty: r.try_get(at + 2)?,
                        linked,
                    });
                }
            }
            let k = facts.len();
            if let Some(rule) = rule_of(link.relationship.ty)
                && let Some(from) = reach.get_mut(&rule)
            {
                let ends: Option<Vec<i64>> = r.try_get(if rule == CycleRule::Depends { 10 } else { 11 })?;
                from.insert(inward[k], ends.unwrap_or_default());
            }
            // Wanted, and the other issue and the authors there (else the link is refused, or its view read later).
            let view = match (r.try_get(12)?, r.try_get(13)?, r.try_get(16)?, r.try_get(17)?) {
                (Some(object_summary), Some(object_status), Some(created_by_display), Some(updated_by_display)) => {
                    Some(ViewFacts {
                        object_summary,
                        object_status,
                        assignee_uid: r.try_get(14)?,
                        assignee_display: r.try_get(15)?,
                        created_by_display,
                        updated_by_display,
                    })
                }
                _ => None,
            };
            facts.push(Facts {
                id: r.try_get(9)?,
                ty: link.relationship.ty,
                this: link.this,
                other: link.other,
                outward: outward[k],
                inward: inward[k],
                issues,
                epic: r.try_get(7)?,
                parent: r.try_get(8)?,
                view,
            });
        }
        Ok(Plan {
            facts,
            current: 0,
            reach,
            before: before.clone(),
            accepted: Accepted::default(),
            rows: Vec::new(),
            views: BTreeMap::new(),
        })
    }

    fn facts(&self) -> Result<&Facts> {
        self.facts
            .get(self.current)
            .ok_or_else(|| internal(anyhow::anyhow!("no facts for link {} of the batch", self.current)))
    }

    fn pair(&self, lo: i64, hi: i64) -> Result<Vec<PairRow>> {
        let linked = self.linked(lo, hi);
        Ok(self
            .facts()?
            .issues
            .iter()
            .map(|r| PairRow {
                id: r.id,
                key: r.key.clone(),
                ty: r.ty.clone(),
                linked: r.linked || linked,
            })
            .collect())
    }

    fn epic_of(&self, issue: i64) -> Result<Option<String>> {
        let facts = self.facts()?;
        if issue != facts.outward {
            return Err(internal(anyhow::anyhow!("the batch read the epic of another issue")));
        }
        let (now, before) = (&self.accepted.epic, &self.before.epic);
        Ok(now.get(&issue).or(before.get(&issue)).or(facts.epic.as_ref()).cloned())
    }

    fn parent_of(&self, issue: i64) -> Result<Option<String>> {
        let facts = self.facts()?;
        if issue != facts.inward {
            return Err(internal(anyhow::anyhow!("the batch read the parent of another issue")));
        }
        let (now, before) = (&self.accepted.parent, &self.before.parent);
        Ok(now
            .get(&issue)
            .or(before.get(&issue))
            .or(facts.parent.as_ref())
            .cloned())
    }

    /// Whether `to` is reachable from `from` along `rule`'s links, the database's and the batch's.
    fn reaches(&self, from: i64, rule: CycleRule, to: i64) -> Result<bool> {
        let not_read = || internal(anyhow::anyhow!("the batch's walk did not start at issue {from}"));
        let walks = self.reach.get(&rule).ok_or_else(not_read)?;
        let none = BTreeMap::new();
        let edges = self.accepted.edges.get(&rule).unwrap_or(&none);
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(at) = stack.pop() {
            if !seen.insert(at) {
                continue;
            }
            // Every issue a batch's link leads into is a start of the walks.
            for &end in walks.get(&at).ok_or_else(not_read)? {
                if end == to {
                    return Ok(true);
                }
                if let Some(next) = edges.get(&end) {
                    stack.extend(next);
                }
            }
        }
        Ok(false)
    }

    /// Accepts a link (its checks passed); `None` where a unique index would refuse it.
    fn insert(&mut self, row: &LinkInsert<'_>) -> Option<i64> {
        let facts = self.facts.get(self.current)?;
        let ty = facts.ty;
        let (now, before) = (&self.accepted, &self.before);
        if self.linked(row.lo, row.hi)
            || (ty == LinkType::Epic && (now.epic.contains_key(&row.outward) || before.epic.contains_key(&row.outward)))
            || (ty == LinkType::Subtask
                && (now.parent.contains_key(&row.inward) || before.parent.contains_key(&row.inward)))
        {
            return None;
        }
        let key_of = |id: i64| facts.issues.iter().find(|r| r.id == id).map(|r| r.key.clone());
        match ty {
            LinkType::Epic => {
                self.accepted.epic.insert(row.outward, key_of(row.inward)?);
            }
            LinkType::Subtask => {
                self.accepted.parent.insert(row.inward, key_of(row.outward)?);
            }
            _ => {}
        }
        let id = facts.id;
        if let Some(rule) = rule_of(ty) {
            self.accepted
                .edges
                .entry(rule)
                .or_default()
                .entry(row.outward)
                .or_default()
                .push(row.inward);
        }
        self.accepted.linked.insert((row.lo, row.hi));
        if let Some(view) = facts.view(row) {
            self.views.insert(id, view);
        }
        self.rows.push(PlannedRow {
            id,
            org: row.org.to_owned(),
            ty: row.ty,
            outward: row.outward,
            inward: row.inward,
            lo: row.lo,
            hi: row.hi,
            created_by: row.created_by,
            updated_by: row.updated_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
        });
        Some(id)
    }

    /// Whether the pair (lower, higher id) is linked by this batch or the one before.
    fn linked(&self, lo: i64, hi: i64) -> bool {
        self.accepted.linked.contains(&(lo, hi)) || self.before.linked.contains(&(lo, hi))
    }

    /// Inserts the accepted rows and sets the `updatedAt` of the issues in `touched`, in one statement outside
    /// a transaction ([`INSERT_ALL_SQL`]): when it fails, nothing of it was written — unless the connection failed.
    async fn write(
        self,
        conn: &mut PgConnection,
        touched: &BTreeMap<i64, Millis>,
    ) -> std::result::Result<(), sqlx::Error> {
        if self.rows.is_empty() && touched.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&PlannedRow) -> i64| self.rows.iter().map(f).collect::<Vec<i64>>();
        let orgs: Vec<&str> = self.rows.iter().map(|r| r.org.as_str()).collect();
        let types: Vec<&str> = self.rows.iter().map(|r| r.ty).collect();
        let (issues, at): (Vec<i64>, Vec<Millis>) = touched.iter().map(|(i, a)| (*i, *a)).unzip();
        sqlx::query(INSERT_ALL_SQL)
            .bind(col(|r| r.id))
            .bind(&orgs)
            .bind(&types)
            .bind(col(|r| r.outward))
            .bind(col(|r| r.inward))
            .bind(col(|r| r.lo))
            .bind(col(|r| r.hi))
            .bind(col(|r| r.created_by))
            .bind(col(|r| r.updated_by))
            .bind(col(|r| r.created_at))
            .bind(col(|r| r.updated_at))
            .bind(&issues)
            .bind(&at)
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use sqlx::Connection;
    use tokio::sync::oneshot;

    use super::*;
    use crate::domain::OrgId;
    use crate::domain::links::Relationship;
    use crate::store::link_batch::test_support::seed;
    use crate::store::{PgStore, Store};

    /// A store on a fresh database with `n` issues (`types[k]` or a task), its URL and the issues' ids; `None`
    /// when PostgreSQL tests are skipped on purpose (as in `tests/common`).
    async fn issues(types: &[&str], n: usize) -> Option<(String, PgStore, OrgId, Vec<i64>)> {
        let url = database().await?;
        let store = PgStore::connect(&url).await.unwrap();
        let (org, ids) = seed(&store, types, n).await;
        Some((url, store, org, ids))
    }

    /// The admin URL of `TETHER_TEST_DATABASE_URL`; `None` when PostgreSQL tests are skipped on purpose.
    fn admin() -> Option<String> {
        let Ok(admin) = std::env::var("TETHER_TEST_DATABASE_URL") else {
            assert!(
                std::env::var("TETHER_TEST_SKIP_POSTGRES").is_ok(),
                "TETHER_TEST_DATABASE_URL is not set: run `bash scripts/test.sh`, or set TETHER_TEST_SKIP_POSTGRES=1"
            );
            return None;
        };
        Some(admin)
    }

    /// A fresh database's URL.
    async fn database() -> Option<String> {
        let admin = admin()?;
        let name = format!("tether_u_{:016x}", rand::random::<u64>());
        let mut conn = PgConnection::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&name);
        Some(url.to_string())
    }

    /// Drops the database of `url` (its connections closed first).
    async fn drop_database(url: &str) {
        let (Some(admin), Ok(url)) = (admin(), url::Url::parse(url)) else {
            return;
        };
        let mut conn = PgConnection::connect(&admin).await.unwrap();
        let name = url.path().trim_start_matches('/');
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }

    fn link(org: &OrgId, this: i64, rel: &str, other: i64, import: bool) -> NewLink {
        NewLink {
            org: org.clone(),
            this,
            other,
            relationship: Relationship::parse(rel).unwrap(),
            created: (1, 5),
            updated: (1, 5),
            import,
        }
    }

    /// A job per element of `links`, and where each job's outcome arrives.
    fn jobs(links: Vec<Vec<NewLink>>) -> (Vec<Job>, Vec<oneshot::Receiver<Outcome>>) {
        links
            .into_iter()
            .map(|links| {
                let (reply, answer) = oneshot::channel();
                (
                    Job {
                        links,
                        views: true,
                        reply,
                    },
                    answer,
                )
            })
            .unzip()
    }

    /// A planned batch's views come with its facts: none is read after the commit (the pool for those reads is
    /// closed here), and each is the view the database gives of the link from its issue.
    #[tokio::test]
    async fn a_planned_batch_answers_with_the_views_read_with_its_facts() {
        let Some((url, store, org, i)) = issues(&[], 8).await else {
            return;
        };
        let pool = PgPool::connect(&url).await.unwrap();
        sqlx::query("UPDATE issues SET assignee_uid = 1 WHERE id = $1")
            .bind(i[1])
            .execute(&pool)
            .await
            .unwrap();
        let editor = store.create_user("v", "V", None, 1).await.unwrap();
        let reads = PgPool::connect(&url).await.unwrap();
        reads.close().await;
        let mut edited = link(&org, i[4], "relates", i[5], false);
        edited.updated = (editor.uid, 6);
        let (mut batch, answers) = jobs(vec![
            vec![link(&org, i[0], "depends on", i[1], false)],
            vec![link(&org, i[2], "is dependent by", i[3], false), edited],
            vec![link(&org, i[6], "relates", i[7], false)],
        ]);
        // The last job asks for no view.
        batch[2].views = false;
        let (_tx, mut rx) = mpsc::unbounded_channel();
        let mut writer = Writer::new(pool.clone(), reads);
        assert!(writer.batch(batch, None, &mut rx).await.is_none());
        let mut answers = answers.into_iter();
        let mut seen = 0;
        // The array first: `zip` then takes no third answer.
        for (from, answer) in [vec![i[0]], vec![i[2], i[4]]].into_iter().zip(answers.by_ref()) {
            let out = answer.await.unwrap().unwrap();
            assert_eq!(out.len(), from.len());
            for (written, this) in out.into_iter().zip(from) {
                let (id, view) = written.unwrap();
                let view = view.expect("the view of a link its job asked for");
                let stored = store.get_link(&org, this, id).await.unwrap().unwrap();
                assert_eq!(format!("{view:?}"), format!("{stored:?}"));
                seen += 1;
            }
        }
        let out = answers.next().unwrap().await.unwrap().unwrap();
        assert!(matches!(out[..], [Ok((_, None))]), "{out:?}");
        assert_eq!(seen, 3);
        writer.release().await;
        drop(writer);
        pool.close().await;
        drop_database(&url).await;
    }

    /// The facts statement reads `links` by index alone, however few links there are when it is planned: its
    /// generic plan (the writer's connections force one) is made on a new database while the table is empty, and
    /// a plan that scanned and hashed the table read every link on every batch until [`replan`] found enough
    /// links to choose otherwise (`OFFSET 0` in the pair check and in the walks' steps).
    #[tokio::test]
    async fn the_facts_statement_reads_links_by_index_on_a_new_database() {
        let Some((url, _store, _org, _i)) = issues(&[], 2).await else {
            return;
        };
        let mut conn = PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE facts AS {FACTS_SQL}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let nulls = vec!["NULL"; 19].join(", ");
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN EXECUTE facts({nulls})")))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let plan = plan.join("\n");
        // The pair check, and the walks' steps.
        for index in ["links_pair", "links_outward"] {
            assert!(plan.contains(&format!("using {index} on links")), "{plan}");
        }
        assert!(!plan.contains("Seq Scan on links"), "{plan}");
        conn.close().await.unwrap();
        drop_database(&url).await;
    }

    /// The write of a batch updates its issues' `updatedAt` heap-only (HOT: no index entry), which is what
    /// migration 0004 is for: no index on `updated_at`, and room on each page of `issues` for the new versions.
    /// The batch's statement runs in a transaction here, whose own counts `pg_stat_xact_user_tables` gives.
    #[tokio::test]
    async fn a_batch_updates_its_issues_heap_only() {
        // Several pages of issues: without the room left on each, the new versions would go to other pages.
        let Some((url, _store, org, i)) = issues(&[], 240).await else {
            return;
        };
        let pool = PgPool::connect(&url).await.unwrap();
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("ANALYZE issues").execute(&mut *conn).await.unwrap();
        let pages: i64 = sqlx::query_scalar("SELECT relpages::bigint FROM pg_class WHERE relname = 'issues'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert!(pages >= 3, "{pages} pages: too few to tell");
        // One issue in ten, in links of twenty apart: 24 issues touched, spread over every page.
        let (batch, _answers) = jobs(
            (0..12)
                .map(|k| vec![link(&org, i[20 * k], "relates", i[20 * k + 10], false)])
                .collect(),
        );
        sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
        let plan = Plan::load(&mut conn, &links_of(&batch), &Accepted::default())
            .await
            .unwrap();
        let (_, rows, touched, all, _) = check(&batch, plan).await.unwrap();
        assert_eq!(touched.len(), 24);
        assert!(all.iter().flatten().all(|w| w.is_ok()), "{all:?}");
        rows.write(&mut conn, &touched).await.unwrap();
        let (upd, hot): (i64, i64) =
            sqlx::query_as("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'issues'")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!((upd, hot), (24, 24), "issues updated, of which heap-only");
        sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
        drop(conn);
        pool.close().await;
        drop_database(&url).await;
    }

    /// A planned batch checks each link against the database as it was and the links the batch accepted before
    /// it: a cycle closed through two links of the database and one of the batch, a pair, an epic and a parent
    /// taken earlier in the batch are refused; an imported cycle is allowed; ids and views come back.
    #[tokio::test]
    async fn a_planned_batch_checks_each_link_against_the_database_and_the_batch() {
        let types = ["task", "task", "task", "task", "task", "task", "epic", "epic"];
        let Some((url, store, org, i)) = issues(&types, 8).await else {
            return;
        };
        // In the database: 1 → 2 and 3 → 0 (each "depends on").
        let mut before = Vec::new();
        for (a, b) in [(1, 2), (3, 0)] {
            before.push(
                store
                    .create_link(&link(&org, i[a], "depends on", i[b], false))
                    .await
                    .unwrap()
                    .id,
            );
        }
        let pool = PgPool::connect(&url).await.unwrap();
        let (batch, answers) = jobs(vec![
            // 0 → 1: with the database, 3 → 0 → 1 → 2.
            vec![link(&org, i[0], "depends on", i[1], false)],
            // 2 → 3 closes 0 → 1 → 2 → 3 → 0, through the link just before it: refused.
            vec![link(&org, i[2], "depends on", i[3], false)],
            // The same, imported: cycles are allowed on import.
            vec![link(&org, i[2], "depends on", i[3], true)],
            // The pair 0–1 is taken by the first job.
            vec![link(&org, i[1], "relates", i[0], false)],
            // Issue 4 in epic 6, then in epic 7: refused.
            vec![
                link(&org, i[6], "is epic of", i[4], false),
                link(&org, i[7], "is epic of", i[4], false),
            ],
            // 5 a sub-issue of 4, then of 0: refused.
            vec![link(&org, i[4], "is parent task for", i[5], false)],
            vec![link(&org, i[0], "is parent task for", i[5], false)],
        ]);
        let mut writer = Writer::new(pool.clone(), pool.clone());
        let (_tx, mut rx) = mpsc::unbounded_channel();
        assert!(writer.batch(batch, None, &mut rx).await.is_none());
        let mut out = Vec::new();
        for a in answers {
            out.push(a.await.unwrap());
        }
        let rule = |o: &Outcome, k: usize| matches!(&o.as_ref().unwrap()[k], Err(Error::Unprocessable { .. }));
        let ok = |o: &Outcome, k: usize| o.as_ref().unwrap()[k].as_ref().is_ok_and(|(_, v)| v.is_some());
        assert!(ok(&out[0], 0), "{:?}", out[0]);
        assert!(rule(&out[1], 0), "{:?}", out[1]);
        assert!(ok(&out[2], 0), "{:?}", out[2]);
        assert!(rule(&out[3], 0), "{:?}", out[3]);
        assert!(ok(&out[4], 0) && rule(&out[4], 1), "{:?}", out[4]);
        assert!(ok(&out[5], 0), "{:?}", out[5]);
        assert!(rule(&out[6], 0), "{:?}", out[6]);
        // What the batch wrote is what it answered.
        let written: Vec<(i64, String)> = sqlx::query_as("SELECT id, type FROM links WHERE id <> ALL($1) ORDER BY id")
            .bind(&before)
            .fetch_all(&pool)
            .await
            .unwrap();
        let answered: Vec<i64> = out
            .iter()
            .flat_map(|o| o.as_ref().unwrap())
            .filter_map(|r| r.as_ref().ok().map(|(id, _)| *id))
            .collect();
        assert_eq!(written.iter().map(|w| w.0).collect::<Vec<_>>(), answered);
        let types: Vec<&str> = written.iter().map(|w| w.1.as_str()).collect();
        assert_eq!(types, ["depends", "depends", "epic", "subtask"]);
        let view = out[0].as_ref().unwrap()[0].as_ref().unwrap().1.as_ref().unwrap();
        assert_eq!(view.id, answered[0]);
        writer.release().await;
        drop(writer);
        pool.close().await;
        drop_database(&url).await;
    }

    /// The writer keeps its connection between batches; when that connection dies (here: closed by the server),
    /// the batch that meets it is written on a new one.
    #[tokio::test]
    async fn the_writer_takes_a_new_connection_when_its_own_dies() {
        let Some((url, store, org, i)) = issues(&[], 6).await else {
            return;
        };
        for k in 0..3 {
            kill_connections(&url, Some(WRITER_NAME)).await;
            depends(&store, &org, &i, k)
                .await
                .expect("a link after the writer's connection died");
        }
        drop(store);
        drop_database(&url).await;
    }

    /// When every connection dies, a few links may fail (on the views' connections, which are not tested before
    /// use until they have been idle a while); then every one is written.
    #[tokio::test]
    async fn the_writer_recovers_when_every_connection_dies() {
        let Some((url, store, org, i)) = issues(&[], 12).await else {
            return;
        };
        depends(&store, &org, &i, 0)
            .await
            .expect("a link before the connections die");
        kill_connections(&url, None).await;
        // A few links may meet a dead connection (the writer's, the views reader's); then every one is written.
        let mut written = Vec::new();
        for k in 1..6 {
            written.push(depends(&store, &org, &i, k).await.is_ok());
        }
        let first = written
            .iter()
            .position(|w| *w)
            .expect("a link is written after the connections died");
        assert!(written[first..].iter().all(|w| *w), "{written:?}");
        assert!(first <= 3, "{written:?}");
        drop(store);
        drop_database(&url).await;
    }

    /// A connection that has been idle a while is tested before a batch, as the pool tests its own: when the
    /// server closed it meanwhile, the writer takes a new one, and the batch is written.
    #[tokio::test]
    async fn the_writer_tests_its_connection_after_an_idle_while() {
        let Some((url, store, org, i)) = issues(&[], 4).await else {
            return;
        };
        depends(&store, &org, &i, 0)
            .await
            .expect("a link before the connections die");
        kill_connections(&url, None).await;
        tokio::time::sleep(IDLE_PING_AFTER + Duration::from_millis(500)).await;
        depends(&store, &org, &i, 1)
            .await
            .expect("the first link after the idle while");
        drop(store);
        drop_database(&url).await;
    }

    /// Links the `k`-th pair of `i`: issue `2k` depends on issue `2k + 1`.
    async fn depends(store: &PgStore, org: &OrgId, i: &[i64], k: usize) -> Result<LinkView> {
        store
            .create_link(&link(org, i[2 * k], "depends on", i[2 * k + 1], false))
            .await
    }

    /// Has the server close the other connections to the database at `url` (those named `only`).
    async fn kill_connections(url: &str, only: Option<&str>) {
        let mut admin = PgConnection::connect(url).await.unwrap();
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND ($1::text IS NULL OR application_name = $1)",
        )
        .bind(only)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert!(!killed.is_empty() && killed.iter().all(|k| *k), "{killed:?}");
        admin.close().await.unwrap();
    }

    /// A planned batch whose pair another writer takes meanwhile (here: a transaction that commits the same pair
    /// while the batch's write waits on it) is not kept; the batch is written again step by step and the link
    /// refused, on the same connection.
    #[tokio::test]
    async fn a_planned_batch_that_meets_a_row_written_meanwhile_is_written_again_step_by_step() {
        let Some((url, _store, org, i)) = issues(&[], 3).await else {
            return;
        };
        let pool = PgPool::connect(&url).await.unwrap();
        let mut other = pool.begin().await.unwrap();
        let (lo, hi) = (i[0].min(i[1]), i[0].max(i[1]));
        sqlx::query(
            "INSERT INTO links (org_id, type, outward_id, inward_id, lo, hi, created_by, updated_by, created_at, updated_at) \
             VALUES ('o', 'relates', $1, $2, $1, $2, 1, 1, 9, 9)",
        )
        .bind(lo)
        .bind(hi)
        .execute(&mut *other)
        .await
        .unwrap();
        let (batch, mut answers) = jobs(vec![vec![
            link(&org, i[0], "relates", i[1], false),
            link(&org, i[1], "relates", i[2], false),
        ]]);
        let planned = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut writer = Writer::new(pool.clone(), pool);
                let (_tx, mut rx) = mpsc::unbounded_channel();
                writer.batch(batch, None, &mut rx).await;
                writer
            })
        };
        // The batch read the pair as free and waits at its `INSERT` for the other transaction.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!planned.is_finished());
        other.commit().await.unwrap();
        let writer = planned.await.unwrap();
        assert!(
            writer.main.is_some(),
            "a refusal is no fault: the writer keeps its connection"
        );
        let out = answers.pop().unwrap().await.unwrap().unwrap();
        assert!(matches!(out[0], Err(Error::Unprocessable { .. })), "{out:?}");
        assert!(out[1].as_ref().is_ok_and(|(_, v)| v.is_some()), "{out:?}");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 2, "the other writer's link and the batch's second one");
        drop(writer);
        pool.close().await;
        drop_database(&url).await;
    }

    /// The next batch's facts are read while a batch is written, and that read does not see the batch (here: its
    /// write waits for a row another transaction holds): the next batch's links are checked against it all the
    /// same. A cycle closed through it and the database is refused — the one rule no unique index backs: a pair,
    /// an epic or a parent the batch took would also be refused by its index, the next batch then written again
    /// step by step.
    #[tokio::test]
    async fn a_batch_read_while_the_one_before_is_written_is_checked_against_it() {
        let types = ["task", "task", "task", "task", "task", "task", "epic", "epic"];
        let Some((url, store, org, i)) = issues(&types, 8).await else {
            return;
        };
        // In the database: 1 → 2.
        depends(&store, &org, &[i[1], i[2]], 0).await.unwrap();
        let pool = PgPool::connect(&url).await.unwrap();
        let (first, first_answers) = jobs(vec![vec![
            link(&org, i[0], "depends on", i[1], false),
            link(&org, i[6], "is epic of", i[4], false),
            link(&org, i[4], "is parent task for", i[5], false),
        ]]);
        let (next, next_answers) = jobs(vec![
            // 2 → 0 closes 0 → 1 → 2 → 0, through the first batch's link: refused.
            vec![link(&org, i[2], "depends on", i[0], false)],
            // Free: written.
            vec![link(&org, i[3], "depends on", i[2], false)],
        ]);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for job in next {
            tx.send(job).unwrap();
        }
        // The first batch's write waits for issue 0's row.
        let mut holder = pool.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM issues WHERE id = $1 FOR UPDATE")
            .bind(i[0])
            .execute(&mut *holder)
            .await
            .unwrap();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            holder.commit().await.unwrap();
        });
        let mut writer = Writer::new(pool.clone(), pool.clone());
        // Planning the first batch may take longer than a streak on a busy machine: no read ahead then.
        writer.streak = Duration::from_secs(60);
        let (jobs_next, read) = writer.batch(first, None, &mut rx).await.unwrap();
        release.await.unwrap();
        assert_eq!(jobs_next.len(), 2);
        assert!(read.is_some(), "the next batch was read while the first was written");
        for a in first_answers {
            let out = a.await.unwrap().unwrap();
            assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
        }
        assert!(writer.batch(jobs_next, read, &mut rx).await.is_none());
        let mut out = Vec::new();
        for a in next_answers {
            out.push(a.await.unwrap().unwrap());
        }
        assert!(matches!(out[0][0], Err(Error::Unprocessable { .. })), "{out:?}");
        assert!(out[1][0].as_ref().is_ok_and(|(_, v)| v.is_some()), "{out:?}");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 5, "one link before, three of the first batch, one of the next");
        writer.release().await;
        drop(writer);
        pool.close().await;
        drop_database(&url).await;
    }

    /// While the batch before is being written, the jobs that come join the next batch, whose facts are read again
    /// with them; once it has landed, they wait for the batch after; a job that needs a graph lock not held leaves
    /// the next batch to be planned in its turn.
    #[tokio::test]
    async fn the_next_batch_takes_in_the_jobs_that_come_while_the_one_before_is_written() {
        let Some((url, _store, org, i)) = issues(&[], 8).await else {
            return;
        };
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let before = Accepted::default();
        let depends = |k: usize| link(&org, i[k], "depends on", i[k + 1], false);
        let relates = |k: usize| link(&org, i[k], "relates", i[k + 1], false);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let locks = keys_of(&jobs(vec![vec![depends(0)]]).0);
        assert_eq!(locks.len(), 1);

        // Not landed yet: the two jobs that came are read with the first.
        let (mut next, _a) = jobs(vec![vec![depends(0)]]);
        for job in jobs(vec![vec![depends(2)], vec![relates(4)]]).0 {
            tx.send(job).unwrap();
        }
        let (_land, mut landed) = oneshot::channel();
        let plan = read_ahead(&mut conn, &mut next, &mut rx, &before, &mut landed, &locks)
            .await
            .unwrap();
        assert_eq!(next.len(), 3);
        assert_eq!(plan.map(|p| p.facts.len()), Some(3), "the facts of all three links");
        assert!(rx.try_recv().is_err());

        // Landed: the job that came waits.
        let (mut next, _b) = jobs(vec![vec![depends(0)]]);
        for job in jobs(vec![vec![depends(2)]]).0 {
            tx.send(job).unwrap();
        }
        let (land, mut landed) = oneshot::channel();
        land.send(()).unwrap();
        let plan = read_ahead(&mut conn, &mut next, &mut rx, &before, &mut landed, &locks)
            .await
            .unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(plan.map(|p| p.facts.len()), Some(1));
        assert!(
            rx.try_recv().is_ok(),
            "the job that came after the write waits in the queue"
        );

        // A job that needs a lock not held: no plan, the job in the next batch all the same.
        let (mut next, _c) = jobs(vec![vec![relates(4)]]);
        for job in jobs(vec![vec![depends(6)]]).0 {
            tx.send(job).unwrap();
        }
        let (_land, mut landed) = oneshot::channel();
        let plan = read_ahead(&mut conn, &mut next, &mut rx, &before, &mut landed, &Keys::new())
            .await
            .unwrap();
        assert!(plan.is_none());
        assert_eq!(next.len(), 2);

        drop(conn);
        drop_database(&url).await;
    }

    /// The writer holds the graph locks while batches keep coming, and lets them go as soon as none waits: a
    /// transaction elsewhere then takes them at once, and the writer sends nothing more until a job comes.
    #[tokio::test]
    async fn the_writer_lets_the_graph_locks_go_when_no_batch_waits() {
        let Some((url, store, org, i)) = issues(&[], 2).await else {
            return;
        };
        depends(&store, &org, &i, 0).await.unwrap();
        let mut other = PgConnection::connect(&url).await.unwrap();
        let key = format!("tether.links.{}.depends", org.as_str());
        let mut taken = false;
        for _ in 0..50 {
            taken = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(&key)
                .fetch_one(&mut other)
                .await
                .unwrap();
            if taken {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(taken, "the writer still holds the depends lock");
        // And it sends nothing while no job waits.
        let mut last = Vec::new();
        for _ in 0..2 {
            let at: Vec<String> = sqlx::query_scalar(
                "SELECT state_change::text FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = $1 ORDER BY pid",
            )
            .bind(WRITER_NAME)
            .fetch_all(&mut other)
            .await
            .unwrap();
            last.push(at);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(
            !last[0].is_empty() && last[0] == last[1],
            "the idle writer is busy: {last:?}"
        );
        // Held here, the lock keeps the writer's next `depends` link waiting.
        let waiting = {
            let i = i.clone();
            tokio::spawn(async move { depends(&store, &org, &[i[1], i[0]], 0).await.map(|v| v.id) })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished());
        let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(&key)
            .fetch_one(&mut other)
            .await
            .unwrap();
        let refused = waiting.await.unwrap();
        assert!(
            matches!(refused, Err(Error::Unprocessable { .. })),
            "1 → 0 after 0 → 1: {refused:?}"
        );
        other.close().await.unwrap();
        drop_database(&url).await;
    }

    /// Once the graph locks have been held their streak ([`STREAK_MAX`]), the writer keeps them for another only
    /// while no one waits for them: then the next batch is read ahead under them (a batch that needs no lock too);
    /// when a session waits, the next batch is not read ahead, and its turn lets them go.
    #[tokio::test]
    async fn the_writer_keeps_the_graph_locks_past_their_streak_only_while_no_one_waits() {
        let Some((url, _store, org, i)) = issues(&[], 8).await else {
            return;
        };
        let pool = PgPool::connect(&url).await.unwrap();
        let mut writer = Writer::new(pool.clone(), pool.clone());
        writer.streak = Duration::from_secs(60);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (first, _a) = jobs(vec![vec![link(&org, i[0], "depends on", i[1], false)]]);
        let (relates, _b) = jobs(vec![
            vec![link(&org, i[2], "relates", i[3], false)],
            vec![link(&org, i[4], "relates", i[5], false)],
            vec![link(&org, i[6], "relates", i[7], false)],
        ]);
        let mut relates = relates.into_iter();
        tx.send(relates.next().unwrap()).unwrap();
        // The depends batch takes the lock; the first relates batch is read ahead while it is written.
        let (next, read) = writer.batch(first, None, &mut rx).await.unwrap();
        assert!(read.is_some() && !writer.locks.is_empty());
        // The lock has had its time, and no one waits for it: it is kept, and the next batch read ahead.
        writer.streak = Duration::ZERO;
        tx.send(relates.next().unwrap()).unwrap();
        let (next, read) = writer.batch(next, read, &mut rx).await.unwrap();
        assert!(read.is_some(), "not read ahead under a lock no one waits for");
        assert!(!writer.locks.is_empty());
        // A session waits for it: the next batch is not read ahead, and its turn lets the lock go.
        let key = format!("tether.links.{}.depends", org.as_str());
        let waiter = {
            let (url, key) = (url.clone(), key.clone());
            tokio::spawn(async move {
                let mut other = PgConnection::connect(&url).await.unwrap();
                sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
                    .bind(&key)
                    .execute(&mut other)
                    .await
                    .unwrap();
                other
            })
        };
        let mut waits = false;
        for _ in 0..100 {
            waits = sqlx::query_scalar(WAITING_SQL).fetch_one(&pool).await.unwrap();
            if waits {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(waits, "the other session does not wait for the lock");
        tx.send(relates.next().unwrap()).unwrap();
        let (next, read) = writer.batch(next, read, &mut rx).await.unwrap();
        assert!(read.is_none(), "read ahead under a lock someone waits for");
        assert!(writer.batch(next, read, &mut rx).await.is_none());
        assert!(writer.locks.is_empty(), "the lock went before the last batch");
        let other = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        other.close().await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 4);
        drop(writer);
        pool.close().await;
        drop_database(&url).await;
    }

    /// When no job waits as a write begins, the jobs that come while it lasts are read ahead once as many have
    /// come as the batch before answered (its clients' next requests); when fewer have come by the time it
    /// lands, the next batch is planned after it.
    #[tokio::test]
    async fn a_write_begun_with_no_job_waiting_reads_ahead_the_jobs_that_come_meanwhile() {
        let Some((url, _store, org, i)) = issues(&[], 16).await else {
            return;
        };
        let pool = PgPool::connect(&url).await.unwrap();
        let mut writer = Writer::new(pool.clone(), pool.clone());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pair = |k: usize| vec![link(&org, i[2 * k], "relates", i[2 * k + 1], false)];
        let (two, _a) = jobs(vec![pair(0), pair(1)]);
        assert!(writer.batch(two, None, &mut rx).await.is_none());
        assert_eq!(writer.answered, 2);
        for (come, read_ahead) in [(vec![pair(3), pair(4)], true), (vec![pair(6)], false)] {
            let (one, _b) = jobs(vec![pair(if read_ahead { 2 } else { 5 })]);
            let (come, _c) = jobs(come);
            let n = come.len();
            // The write waits for its first issue's row, held here, while the jobs come.
            let mut other = PgConnection::connect(&url).await.unwrap();
            sqlx::raw_sql("BEGIN").execute(&mut other).await.unwrap();
            sqlx::query("SELECT id FROM issues WHERE id = $1 FOR UPDATE")
                .bind(one[0].links[0].this)
                .execute(&mut other)
                .await
                .unwrap();
            let sender = {
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    for job in come {
                        tx.send(job).unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
                    other
                })
            };
            let (next, read) = writer.batch(one, None, &mut rx).await.unwrap();
            assert_eq!(next.len(), n);
            assert_eq!(
                read.is_some(),
                read_ahead,
                "{n} jobs came after a batch that answered 2"
            );
            sender.await.unwrap().close().await.unwrap();
            assert!(writer.batch(next, read, &mut rx).await.is_none());
            assert_eq!(writer.answered, n);
            writer.answered = 2;
        }
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 7);
        drop(writer);
        pool.close().await;
        drop_database(&url).await;
    }

    /// The SQLSTATE of a statement's failure; `None` when it succeeded.
    fn sqlstate<T>(r: std::result::Result<T, sqlx::Error>) -> Option<String> {
        match r {
            Ok(_) => None,
            Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
            Err(e) => panic!("not a database error: {e}"),
        }
    }

    /// One link row from `outward` to `inward` by `uid` (not through the writer: the schema's own checks).
    const ROW_SQL: &str = "INSERT INTO links (org_id, type, outward_id, inward_id, lo, hi, created_by, updated_by, \
         created_at, updated_at) VALUES ($1, 'relates', $2, $3, least($2, $3), greatest($2, $3), $4, $4, 1, 1)";

    /// `n` issues on a fresh database (as [`issues`]), a pool of its own, and the uid of the user who made them.
    async fn plain_issues(n: usize) -> Option<(String, PgPool, OrgId, Vec<i64>, i64)> {
        let (url, _store, org, i) = issues(&[], n).await?;
        let pool = PgPool::connect(&url).await.unwrap();
        let uid: i64 = sqlx::query_scalar("SELECT uid FROM users")
            .fetch_one(&pool)
            .await
            .unwrap();
        Some((url, pool, org, i, uid))
    }

    /// The links' references are checked per statement (migration 0005) as the foreign keys checked them, and a
    /// link's issues are in its organization: each bad write fails with `foreign_key_violation` and writes nothing.
    #[tokio::test]
    async fn the_links_references_are_checked_per_statement() {
        let Some((url, pool, org, i, uid)) = plain_issues(6).await else {
            return;
        };
        // A user whom only links refer to (issues, tokens and memberships refer to `uid`), and one unreferenced.
        let (v, w): (i64, i64) = sqlx::query_as(
            "WITH n AS (INSERT INTO users (login, display, created_at) VALUES ('v', 'V', 1), ('w', 'W', 1) \
             RETURNING uid) SELECT min(uid), max(uid) FROM n",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        // An issue of another organization.
        let other: i64 = sqlx::query_scalar(
            "WITH o AS (INSERT INTO organizations VALUES ('p', 'P', 1) RETURNING id), \
             q AS (INSERT INTO queues (org_id, key, name, default_type, created_at) SELECT id, 'Q', 'Q', 'task', 1 \
             FROM o RETURNING id, org_id) \
             INSERT INTO issues (org_id, queue_id, number, key, summary, type, status, created_by, updated_by, \
             created_at, updated_at) SELECT org_id, id, 1, 'Q-1', 's', 'task', 'open', $1, $1, 1, 1 FROM q \
             RETURNING id",
        )
        .bind(uid)
        .fetch_one(&pool)
        .await
        .unwrap();
        let row = |a: i64, b: i64, by: i64| sqlx::query(ROW_SQL).bind(org.as_str()).bind(a).bind(b).bind(by);
        assert_eq!(sqlstate(row(i[0], i[1], v).execute(&pool).await), None);
        let fk = Some("23503".to_string());
        assert_eq!(
            sqlstate(row(i[0], i[5] + 1000, uid).execute(&pool).await),
            fk,
            "no such issue"
        );
        assert_eq!(
            sqlstate(row(i[5] + 1000, i[0], uid).execute(&pool).await),
            fk,
            "no such issue"
        );
        assert_eq!(
            sqlstate(row(i[0], other, uid).execute(&pool).await),
            fk,
            "another organization's issue"
        );
        assert_eq!(
            sqlstate(row(i[2], i[3], uid + 1000).execute(&pool).await),
            fk,
            "no such user"
        );
        // Many rows in one statement: one bad row fails them all.
        let many = sqlx::query(
            "INSERT INTO links (org_id, type, outward_id, inward_id, lo, hi, created_by, updated_by, created_at, \
             updated_at) SELECT $1, 'relates', a, b, least(a, b), greatest(a, b), $4, $4, 1, 1 \
             FROM unnest($2::bigint[], $3::bigint[]) AS v(a, b)",
        );
        let bad = many
            .bind(org.as_str())
            .bind(vec![i[2], i[3], i[4]])
            .bind(vec![i[3], i[4], i[5] + 1000])
            .bind(uid)
            .execute(&pool)
            .await;
        assert_eq!(sqlstate(bad), fk, "one of three refers to no issue");
        let update = sqlx::query("UPDATE links SET updated_by = $1")
            .bind(uid + 1000)
            .execute(&pool)
            .await;
        assert_eq!(sqlstate(update), fk, "no such user");
        let update = sqlx::query("UPDATE links SET inward_id = $1, hi = $1")
            .bind(other)
            .execute(&pool)
            .await;
        assert_eq!(sqlstate(update), fk, "another organization's issue");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 1, "only the good link was written");
        // The referenced side: a linked issue or user is neither deleted nor given another key; an unlinked one is.
        let linked = [
            format!("DELETE FROM issues WHERE id = {}", i[1]),
            format!("UPDATE issues SET id = {} WHERE id = {}", i[5] + 1000, i[0]),
            format!("UPDATE issues SET org_id = 'p' WHERE id = {}", i[1]),
            format!("DELETE FROM users WHERE uid = {v}"),
            format!("UPDATE users SET uid = {} WHERE uid = {v}", v + 1000),
        ];
        for sql in linked {
            let r = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&pool).await;
            assert_eq!(sqlstate(r), fk, "{sql}");
        }
        for sql in [
            format!("DELETE FROM issues WHERE id = {}", i[5]),
            format!("DELETE FROM users WHERE uid = {w}"),
        ] {
            let r = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&pool).await;
            assert_eq!(sqlstate(r), None, "{sql}: nothing refers to it");
        }
        pool.close().await;
        drop_database(&url).await;
    }

    /// Waits until a session of `pool`'s database waits for a lock.
    async fn until_one_waits(pool: &PgPool) {
        for _ in 0..500 {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            if waiting > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no session came to wait for a lock");
    }

    /// Racing transactions: a link written while its issue is being deleted waits for the delete and then fails;
    /// an issue deleted while a link to it is being written waits for the link and then fails. Either way no link
    /// is left without its issue.
    #[tokio::test]
    async fn a_link_and_a_delete_of_its_issue_racing_do_not_both_succeed() {
        let Some((url, pool, org, i, uid)) = plain_issues(4).await else {
            return;
        };
        let fk = Some("23503".to_string());
        // The delete first: the link's statement waits for it, then finds no issue.
        let mut deleter = PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "BEGIN; DELETE FROM issues WHERE id = {}",
            i[1]
        )))
        .execute(&mut deleter)
        .await
        .unwrap();
        let link = {
            let (pool, org, a, b) = (pool.clone(), org.clone(), i[0], i[1]);
            tokio::spawn(async move {
                let q = sqlx::query(ROW_SQL).bind(org.as_str()).bind(a).bind(b).bind(uid);
                sqlstate(q.execute(&pool).await)
            })
        };
        until_one_waits(&pool).await;
        sqlx::raw_sql("COMMIT").execute(&mut deleter).await.unwrap();
        assert_eq!(link.await.unwrap(), fk, "a link to an issue deleted meanwhile");
        // The link first: the delete waits for it, then finds the link.
        let mut linker = PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("BEGIN").execute(&mut linker).await.unwrap();
        let q = sqlx::query(ROW_SQL).bind(org.as_str()).bind(i[2]).bind(i[3]).bind(uid);
        q.execute(&mut linker).await.unwrap();
        let delete = {
            let (pool, b) = (pool.clone(), i[3]);
            tokio::spawn(async move {
                let q = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM issues WHERE id = {b}")));
                sqlstate(q.execute(&pool).await)
            })
        };
        until_one_waits(&pool).await;
        sqlx::raw_sql("COMMIT").execute(&mut linker).await.unwrap();
        assert_eq!(delete.await.unwrap(), fk, "an issue linked meanwhile");
        let dangling: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM links l WHERE NOT EXISTS (SELECT 1 FROM issues WHERE id = l.outward_id) \
             OR NOT EXISTS (SELECT 1 FROM issues WHERE id = l.inward_id)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(dangling, 0);
        drop((deleter, linker));
        pool.close().await;
        drop_database(&url).await;
    }
}
