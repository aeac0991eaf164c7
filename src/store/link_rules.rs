//! The rules of contract §5 for one new link, written once for every way a link is written: inside a sqlx
//! transaction (both backends, `sql.rs`) and on SQLite's batched link writer (`sqlite_links.rs`, rusqlite). Each
//! supplies the few reads and writes the rules need ([`LinkTx`]); the SQL text is shared too.

use std::collections::BTreeMap;

use super::NewLink;
use super::sql::{CycleRule, link_conflict};
use crate::domain::dates::Millis;
use crate::domain::links::LinkType;
use crate::error::{Error, Result};

/// The two issues of a new link (`$2`, `$3` in organization `$1`) and whether the pair `$4`/`$5` (lower and
/// higher id) is already linked, in one statement.
pub(super) const PAIR_SQL: &str = "SELECT id, key, type, EXISTS (SELECT 1 FROM links WHERE lo = $4 AND hi = $5) AS linked \
     FROM issues WHERE org_id = $1 AND id IN ($2, $3)";

/// The key of the epic issue `$1` is in, if any.
pub(super) const CURRENT_EPIC_SQL: &str =
    "SELECT e.key FROM links l JOIN issues e ON e.id = l.inward_id WHERE l.outward_id = $1 AND l.type = 'epic'";

/// The key of the parent of issue `$1`, if any.
pub(super) const CURRENT_PARENT_SQL: &str =
    "SELECT p.key FROM links l JOIN issues p ON p.id = l.outward_id WHERE l.inward_id = $1 AND l.type = 'subtask'";

/// Inserts a link row and returns its id; returns no row when a unique index (one link per pair, one parent, one
/// epic) refuses it — which, unlike a failed statement, leaves a PostgreSQL transaction usable.
pub(super) const INSERT_LINK_SQL: &str = "INSERT INTO links (org_id, type, outward_id, inward_id, lo, hi, created_by, updated_by, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING RETURNING id";

/// Sets issue `$1`'s `updatedAt` to `$2`.
pub(super) const TOUCH_ISSUE_SQL: &str = "UPDATE issues SET updated_at = $2 WHERE id = $1";

/// A row of [`PAIR_SQL`].
pub(super) struct PairRow {
    pub id: i64,
    pub key: String,
    pub ty: String,
    pub linked: bool,
}

/// What the rules read and write, on one transaction.
pub(super) trait LinkTx {
    /// The rows of [`PAIR_SQL`].
    async fn pair(&mut self, org: &str, this: i64, other: i64, lo: i64, hi: i64) -> Result<Vec<PairRow>>;
    /// The key of the epic `issue` is in ([`CURRENT_EPIC_SQL`]).
    async fn epic_of(&mut self, issue: i64) -> Result<Option<String>>;
    /// The key of `issue`'s parent ([`CURRENT_PARENT_SQL`]).
    async fn parent_of(&mut self, issue: i64) -> Result<Option<String>>;
    /// Whether `to` is reachable from `from` along `rule`'s links.
    async fn reaches(&mut self, from: i64, rule: CycleRule, to: i64) -> Result<bool>;
    /// Runs [`INSERT_LINK_SQL`] with its ten parameters; `None` when a unique index refused the row.
    async fn insert(&mut self, row: &LinkInsert<'_>) -> Result<Option<i64>>;
    /// Runs [`TOUCH_ISSUE_SQL`].
    async fn touch(&mut self, issue: i64, at: Millis) -> Result<()>;
}

/// The parameters of [`INSERT_LINK_SQL`], in order.
pub(super) struct LinkInsert<'a> {
    pub org: &'a str,
    pub ty: &'static str,
    pub outward: i64,
    pub inward: i64,
    pub lo: i64,
    pub hi: i64,
    pub created_by: i64,
    pub updated_by: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Checks the rules of contract §5 for one new link and inserts it; the caller holds the transaction (and, for
/// graph rules on PostgreSQL, `lock_graph`).
pub(super) async fn insert_link<T: LinkTx>(tx: &mut T, new: &NewLink) -> Result<i64> {
    let rel = new.relationship;
    let (outward, inward) = rel.orient(new.this, new.other);
    let (lo, hi) = (outward.min(inward), outward.max(inward));
    let rows = tx.pair(new.org.as_str(), new.this, new.other, lo, hi).await?;
    let mut key_of = BTreeMap::new();
    let mut type_of = BTreeMap::new();
    let mut linked = false;
    for r in rows {
        linked |= r.linked;
        key_of.insert(r.id, r.key);
        type_of.insert(r.id, r.ty);
    }
    let (Some(this_key), Some(other_key)) = (key_of.get(&new.this).cloned(), key_of.get(&new.other).cloned()) else {
        return Err(Error::not_found("issue", "Issue does not exist"));
    };
    let key = |id: i64| key_of.get(&id).cloned().unwrap_or_default();
    let is_epic = |id: i64| type_of.get(&id).is_some_and(|t| t == "epic");
    if linked {
        return Err(link_conflict(&this_key, &other_key));
    }
    match rel.ty {
        LinkType::Epic => {
            if !is_epic(inward) {
                return Err(Error::rule(
                    "relationship",
                    format!(
                        "Issue {} is not an epic: only an issue of type epic can be an epic",
                        key(inward)
                    ),
                ));
            }
            if is_epic(outward) {
                return Err(Error::rule(
                    "relationship",
                    format!("Epic {} cannot be in an epic", key(outward)),
                ));
            }
            if let Some(epic) = tx.epic_of(outward).await? {
                return Err(Error::rule(
                    "relationship",
                    format!("Issue {} is already in epic {epic}", key(outward)),
                ));
            }
        }
        LinkType::Subtask => {
            if is_epic(inward) {
                return Err(Error::rule(
                    "relationship",
                    format!("Epic {} cannot be a sub-issue", key(inward)),
                ));
            }
            if let Some(p) = tx.parent_of(inward).await? {
                return Err(Error::rule(
                    "relationship",
                    format!("Issue {} already has a parent issue {p}", key(inward)),
                ));
            }
            if tx.reaches(inward, CycleRule::Subtask, outward).await? {
                return Err(Error::rule(
                    "relationship",
                    format!(
                        "Issue {} is a sub-issue of {}: the link would make a cycle",
                        key(outward),
                        key(inward)
                    ),
                ));
            }
        }
        LinkType::Depends if !new.import && tx.reaches(inward, CycleRule::Depends, outward).await? => {
            return Err(Error::rule(
                "relationship",
                format!(
                    "{} already depends on {}: the link would make a dependency cycle",
                    key(inward),
                    key(outward)
                ),
            ));
        }
        _ => {}
    }
    let row = LinkInsert {
        org: new.org.as_str(),
        ty: rel.ty.id(),
        outward,
        inward,
        lo,
        hi,
        created_by: new.created.0,
        updated_by: new.updated.0,
        created_at: new.created.1,
        updated_at: new.updated.1,
    };
    // `None`: a concurrent writer won the pair (or the one-parent / one-epic index) between check and insert.
    let Some(id) = tx.insert(&row).await? else {
        return Err(link_conflict(&this_key, &other_key));
    };
    if !new.import {
        // In id order, so two transactions touching the same pair never wait on each other in a circle.
        for issue in [lo, hi] {
            tx.touch(issue, new.created.1).await?;
        }
    }
    Ok(id)
}
