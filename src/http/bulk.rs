//! Bulk link import for migrations (contract §6, a Tether extension): NDJSON in — one seed-001 record per line plus
//! `"from": "KEY"` — and one result line per record out. Each record is validated exactly like the single import,
//! records are applied in batched transactions, and input and output are streamed, so memory stays flat.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use tokio::sync::mpsc;

use super::AppState;
use super::ctx::Ctx;
use super::links::import_record;
use crate::domain::{IssueLocator, OrgId};
use crate::error::Error;
use crate::store::NewLink;

/// Records per transaction.
pub const BATCH: usize = 500;
/// The longest accepted line.
pub const MAX_LINE: u64 = 1024 * 1024;

/// The result of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// 1-based line number in the input.
    pub line: u64,
    /// 200, or the status the single import would have answered.
    pub status: u16,
    /// The new link's id.
    pub id: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

impl Outcome {
    fn failed(line: u64, e: &Error) -> Outcome {
        Outcome {
            line,
            status: e.status(),
            id: None,
            error: Some(e.to_string()),
        }
    }

    /// The NDJSON line.
    pub fn to_line(&self) -> String {
        let mut v = json!({"line": self.line, "status": self.status});
        if let Some(id) = self.id {
            v["id"] = json!(id);
        }
        if let Some(e) = &self.error {
            v["error"] = json!(e);
        }
        let mut s = v.to_string();
        s.push('\n');
        s
    }
}

/// Counts of a finished run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records imported.
    pub imported: u64,
    /// Records refused.
    pub failed: u64,
}

enum Pending {
    Done(Outcome),
    Queued(u64, NewLink),
}

async fn validate(st: &AppState, org: &OrgId, line: &[u8]) -> Result<NewLink, Error> {
    let v: Value = serde_json::from_slice(line).map_err(|e| Error::BadRequest(format!("Invalid JSON: {e}")))?;
    let Value::Object(b) = v else {
        return Err(Error::BadRequest("Each line must be a JSON object".into()));
    };
    let from = match b.get("from") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(Error::missing("from")),
    };
    let loc =
        IssueLocator::parse(&from).ok_or_else(|| Error::not_found("issue", format!("Issue {from} does not exist")))?;
    let this = st
        .store
        .issue_head(org, &loc)
        .await?
        .ok_or_else(|| Error::not_found("issue", format!("Issue {from} does not exist")))?;
    import_record(st, org, &this, &b).await
}

async fn flush(
    st: &AppState,
    org: &OrgId,
    pending: &mut Vec<Pending>,
    out: &mpsc::Sender<Outcome>,
    sum: &mut Summary,
) -> bool {
    let batch: Vec<NewLink> = pending
        .iter()
        .filter_map(|p| match p {
            Pending::Queued(_, l) => Some(l.clone()),
            Pending::Done(_) => None,
        })
        .collect();
    let mut results = if batch.is_empty() {
        Vec::new().into_iter()
    } else {
        match st.store.import_links(org, &batch).await {
            Ok(r) => r.into_iter(),
            Err(e) => {
                tracing::error!(error = %e, "bulk link import batch failed");
                for p in pending.drain(..) {
                    let line = match p {
                        Pending::Done(o) => o.line,
                        Pending::Queued(l, _) => l,
                    };
                    let _ = out
                        .send(Outcome::failed(line, &Error::Internal(anyhow::anyhow!("batch failed"))))
                        .await;
                }
                return false;
            }
        }
    };
    for p in pending.drain(..) {
        let o = match p {
            Pending::Done(o) => o,
            Pending::Queued(line, _) => match results.next() {
                Some(Ok(id)) => Outcome {
                    line,
                    status: 200,
                    id: Some(id),
                    error: None,
                },
                Some(Err(e)) => Outcome::failed(line, &e),
                None => Outcome::failed(line, &Error::Internal(anyhow::anyhow!("missing batch result"))),
            },
        };
        if o.status == 200 {
            sum.imported += 1;
        } else {
            sum.failed += 1;
        }
        if out.send(o).await.is_err() {
            return false;
        }
    }
    true
}

/// Reads NDJSON records from `input`, validates and imports them in batches, and sends each outcome in input order.
/// Stops early when the receiver is gone or the database fails.
pub async fn run<R: AsyncBufRead + Unpin>(
    st: &AppState,
    org: &OrgId,
    mut input: R,
    out: mpsc::Sender<Outcome>,
) -> Summary {
    let mut sum = Summary::default();
    let mut pending: Vec<Pending> = Vec::with_capacity(BATCH);
    let mut queued = 0usize;
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let read = (&mut input).take(MAX_LINE + 1).read_until(b'\n', &mut buf).await;
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                let _ = out
                    .send(Outcome::failed(
                        line_no + 1,
                        &Error::BadRequest(format!("Could not read input: {e}")),
                    ))
                    .await;
                break;
            }
        };
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.len() as u64 > MAX_LINE && buf.last() != Some(&b'\n') {
            // Skip the rest of an over-long line.
            let mut sink = Vec::new();
            loop {
                sink.clear();
                match (&mut input).take(64 * 1024).read_until(b'\n', &mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) if sink.last() == Some(&b'\n') => break,
                    Ok(_) => {}
                }
            }
            pending.push(Pending::Done(Outcome::failed(
                line_no,
                &Error::TooLarge(MAX_LINE as usize),
            )));
        } else if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        } else {
            match validate(st, org, &buf).await {
                Ok(link) => {
                    pending.push(Pending::Queued(line_no, link));
                    queued += 1;
                }
                Err(e @ Error::Internal(_)) => {
                    tracing::error!(error = %e, "bulk link import validation failed");
                    pending.push(Pending::Done(Outcome::failed(line_no, &e)));
                }
                Err(e) => pending.push(Pending::Done(Outcome::failed(line_no, &e))),
            }
        }
        if queued >= BATCH || pending.len() >= 4 * BATCH {
            if !flush(st, org, &mut pending, &out, &mut sum).await {
                return sum;
            }
            queued = 0;
        }
    }
    flush(st, org, &mut pending, &out, &mut sum).await;
    sum
}

/// `POST /_bulk/links/_import`: NDJSON body, streamed; answers 200 with one NDJSON result line per record.
pub async fn bulk_import_links(
    State(st): State<AppState>,
    ctx: Ctx,
    body: axum::body::Body,
) -> Result<Response, Error> {
    ctx.authorize()?;
    let reader = tokio_util::io::StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let (tx, rx) = mpsc::channel::<Outcome>(BATCH);
    let org = ctx.org.clone();
    tokio::spawn(async move {
        let sum = run(&st, &org, tokio::io::BufReader::new(reader), tx).await;
        tracing::info!(org.id = %org, imported = sum.imported, failed = sum.failed, "bulk link import finished");
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|o| (Ok::<_, Infallible>(Bytes::from(o.to_line())), rx))
    });
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}
