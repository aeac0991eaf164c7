//! The queue in front of each backend's link writer (`sqlite_links.rs`, `pg_links.rs`): requests put their new
//! links on it and wait; the writer's task takes everything waiting and writes it as one transaction (group commit).

use tokio::sync::{mpsc, oneshot};

use super::{LinkView, NewLink};
use crate::error::{Error, Result};

/// The most links one transaction takes (an import batch is 500).
pub(super) const MAX_BATCH_LINKS: usize = 2_000;

/// A written record: its id, and its view when the job asked for it.
pub(super) type Written = (i64, Option<LinkView>);

/// Each record's outcome, or the job's failure.
pub(super) type Outcome = Result<Vec<Result<Written>>>;

/// Links to write, and where their outcome goes.
pub(super) struct Job {
    pub links: Vec<NewLink>,
    /// Answer each written link's view (as seen from its `this` issue). SQLite's writer reads it in the
    /// transaction that writes the link; PostgreSQL's reads it with the batch's facts (the issues and people as they
    /// were then, a moment before the commit), or after the commit for a batch written step by step.
    pub views: bool,
    pub reply: oneshot::Sender<Outcome>,
}

/// The handle the store keeps; the writer's task ends when it is dropped.
pub(super) struct LinkWriter {
    jobs: mpsc::UnboundedSender<Job>,
}

impl LinkWriter {
    /// A handle and the queue its writer's task reads.
    pub(super) fn channel() -> (LinkWriter, mpsc::UnboundedReceiver<Job>) {
        let (jobs, rx) = mpsc::unbounded_channel();
        (LinkWriter { jobs }, rx)
    }

    /// Writes `links`, each under the rules, in one transaction with whatever else is waiting: each record's id
    /// (and view, when `views`) or the rule it broke (a refused record writes nothing; the others land).
    pub(super) async fn write(&self, links: Vec<NewLink>, views: bool) -> Outcome {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { links, views, reply })
            .map_err(|_| Error::Internal(anyhow::anyhow!("the link writer has stopped")))?;
        answer
            .await
            .map_err(|_| Error::Internal(anyhow::anyhow!("the link writer dropped a batch")))?
    }
}

/// `first` and the jobs waiting behind it, up to [`MAX_BATCH_LINKS`] links.
pub(super) fn gather(first: Job, rx: &mut mpsc::UnboundedReceiver<Job>) -> Vec<Job> {
    let mut jobs = vec![first];
    gather_more(&mut jobs, rx);
    jobs
}

/// Adds the jobs waiting to `jobs`, up to [`MAX_BATCH_LINKS`] links in all: `true` when it added one.
pub(super) fn gather_more(jobs: &mut Vec<Job>, rx: &mut mpsc::UnboundedReceiver<Job>) -> bool {
    let mut size: usize = jobs.iter().map(|j| j.links.len()).sum();
    let mut added = false;
    while size < MAX_BATCH_LINKS {
        let Ok(job) = rx.try_recv() else { break };
        size += job.links.len();
        jobs.push(job);
        added = true;
    }
    added
}

/// What the link writers' unit tests (`sqlite_links.rs`, `pg_links.rs`) set up.
#[cfg(test)]
pub(super) mod test_support {
    #![allow(clippy::unwrap_used)]

    use crate::domain::OrgId;
    use crate::store::{NewIssue, NewQueue, Store};

    /// Organization `o`, a user, queue `Q` and `n` issues (of type `types[k]`, or task); the organization and the
    /// issues' ids.
    pub async fn seed(store: &dyn Store, types: &[&str], n: usize) -> (OrgId, Vec<i64>) {
        let org = OrgId::parse("o").unwrap();
        store.create_org(&org, "o", 1).await.unwrap();
        let user = store.create_user("u", "U", None, 1).await.unwrap();
        let queue = NewQueue {
            key: "Q".into(),
            name: "Q".into(),
            lead: None,
            default_type: "task".into(),
        };
        let queue = store.create_queue(&org, &queue, 1).await.unwrap();
        let mut ids = Vec::new();
        for k in 0..n {
            let issue = store
                .create_issue(&NewIssue {
                    org: org.clone(),
                    queue_id: queue.id,
                    summary: format!("issue {k}"),
                    description: None,
                    ty: types.get(k).copied().unwrap_or("task").into(),
                    assignee: None,
                    parent: None,
                    unique: None,
                    custom: Default::default(),
                    by: user.uid,
                    at: 1,
                })
                .await
                .unwrap();
            ids.push(issue.id);
        }
        (org, ids)
    }
}
