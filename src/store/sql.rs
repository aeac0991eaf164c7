//! The SQL both backends run. It is written once, as a macro instantiated per backend: sqlx's generic bounds over
//! `Database` (`for<'q> i64: Encode<'q, DB>`, executor lifetimes, …) do not propagate through a trait, so a
//! generic implementation would repeat them on every function. Each backend supplies `read()` (a pool for reads),
//! `write()` (a transaction that holds the write lock on SQLite) and `lock_graph()` (serialises the rules that span
//! many rows — cycles, per graph — on PostgreSQL; a no-op on SQLite, whose writes are already serial).

use std::collections::BTreeMap;

/// A no-cycle rule, whose checks `lock_graph` serialises, per organization. A transaction that takes both takes
/// `Depends` first (their order here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum CycleRule {
    /// `depends` links.
    Depends,
    /// The subtask tree.
    Subtask,
}

impl CycleRule {
    /// Its name in the lock key.
    pub(super) fn name(self) -> &'static str {
        match self {
            CycleRule::Depends => "depends",
            CycleRule::Subtask => "subtask",
        }
    }

    /// Its reachability statement.
    pub(super) fn reaches_sql(self) -> &'static str {
        match self {
            CycleRule::Depends => REACHES_DEPENDS,
            CycleRule::Subtask => REACHES_SUBTASK,
        }
    }
}

use serde_json::Value;

use super::{Application, Delivery, FieldEdit, Issue, IssueBrief, LinkView, Queue, RemoteLink, Secret, User, UserRef};
use crate::domain::links::{Direction, LinkType};
use crate::domain::{FieldType, Role};
use crate::error::{Error, Result};

/// The columns of an issue, with its queue, people and parent joined in.
pub(super) const ISSUE_SELECT: &str = "SELECT i.id, i.key, i.summary, i.description, i.type AS ty, i.status, \
     i.resolution, i.unique_key, i.custom, i.version, i.created_at, i.updated_at, \
     q.id AS queue_id, q.key AS queue_key, q.name AS queue_name, \
     i.assignee_uid, au.display AS assignee_display, \
     i.created_by, cu.display AS created_by_display, i.updated_by, uu.display AS updated_by_display, \
     p.id AS parent_id, p.key AS parent_key, p.summary AS parent_summary \
     FROM issues i \
     JOIN queues q ON q.id = i.queue_id \
     LEFT JOIN users au ON au.uid = i.assignee_uid \
     JOIN users cu ON cu.uid = i.created_by \
     JOIN users uu ON uu.uid = i.updated_by \
     LEFT JOIN links pl ON pl.inward_id = i.id AND pl.type = 'subtask' \
     LEFT JOIN issues p ON p.id = pl.outward_id ";

/// The columns of a link seen from its `this` issue, up to `FROM`: what supplies them names the link `l`, its
/// `this` issue `t`, the other issue `o` and the users `au` (the other issue's assignee), `cu` and `uu` (who
/// created and updated the link). [`LinkRow`] reads them.
macro_rules! link_columns {
    () => {
        "SELECT l.id, l.type AS ty, l.outward_id, t.key AS this_key, \
         o.id AS object_id, o.key AS object_key, o.summary AS object_summary, o.status AS object_status, \
         o.assignee_uid, au.display AS assignee_display, \
         l.created_by, cu.display AS created_by_display, l.updated_by, uu.display AS updated_by_display, \
         l.created_at, l.updated_at \
         FROM "
    };
}
pub(super) use link_columns;

/// [`link_columns`] for a link seen from its `this` issue (the SQL expression `$this`), with the other issue and
/// people joined in; `$from` names the links as `l` (and whatever supplies `$this`).
macro_rules! link_select {
    ($from:literal, $this:literal) => {
        concat!(
            link_columns!(),
            $from,
            " JOIN issues t ON t.id = ",
            $this,
            " JOIN issues o ON o.id = CASE WHEN l.outward_id = ",
            $this,
            " THEN l.inward_id ELSE l.outward_id END \
             LEFT JOIN users au ON au.uid = o.assignee_uid \
             JOIN users cu ON cu.uid = l.created_by \
             JOIN users uu ON uu.uid = l.updated_by "
        )
    };
}

/// The links of issue `$2` in organization `$1`, seen from it.
pub(super) const LINK_SELECT: &str = concat!(
    link_select!("links l", "$2"),
    "WHERE l.org_id = $1 AND (l.outward_id = $2 OR l.inward_id = $2) "
);

/// Whether `$2` is reachable from `$1` following outward → inward edges of one type. The type is written into the
/// SQL, one constant statement per type, not bound: SQLite compares a bound `l.type = $n` with the `WHERE type = …`
/// of the partial indexes while planning, which makes the prepared statement expire on every new binding and be
/// compiled again on each call (14.8 % of a link create's instructions, see `docs/benchmarks.md`).
macro_rules! reaches_sql {
    ($ty:literal) => {
        concat!(
            "WITH RECURSIVE reach(id) AS ( \
             SELECT CAST($1 AS BIGINT) \
             UNION \
             SELECT l.inward_id FROM links l JOIN reach r ON l.outward_id = r.id WHERE l.type = '",
            $ty,
            "' ) SELECT COUNT(*) FROM reach WHERE id = $2"
        )
    };
}
pub(super) const REACHES_DEPENDS: &str = reaches_sql!("depends");
pub(super) const REACHES_SUBTASK: &str = reaches_sql!("subtask");

pub(super) const QUEUE_SELECT: &str = "SELECT q.id, q.key, q.name, q.default_type, q.lead_uid, u.display AS lead_display \
     FROM queues q LEFT JOIN users u ON u.uid = q.lead_uid ";

#[derive(sqlx::FromRow)]
pub(super) struct IssueRow {
    id: i64,
    key: String,
    summary: String,
    description: Option<String>,
    ty: String,
    status: String,
    resolution: Option<String>,
    unique_key: Option<String>,
    custom: Option<String>,
    version: i64,
    created_at: i64,
    updated_at: i64,
    queue_id: i64,
    queue_key: String,
    queue_name: String,
    assignee_uid: Option<i64>,
    assignee_display: Option<String>,
    created_by: i64,
    created_by_display: String,
    updated_by: i64,
    updated_by_display: String,
    parent_id: Option<i64>,
    parent_key: Option<String>,
    parent_summary: Option<String>,
}

fn user_ref(uid: Option<i64>, display: Option<String>) -> Option<UserRef> {
    uid.map(|uid| UserRef {
        uid,
        display: display.unwrap_or_default(),
    })
}

impl IssueRow {
    pub(super) fn into_issue(self) -> Issue {
        let custom = self
            .custom
            .and_then(|c| serde_json::from_str::<BTreeMap<String, Value>>(&c).ok())
            .unwrap_or_default();
        let parent = match (self.parent_id, self.parent_key, self.parent_summary) {
            (Some(id), Some(key), Some(summary)) => Some(IssueBrief { id, key, summary }),
            _ => None,
        };
        Issue {
            id: self.id,
            key: self.key,
            summary: self.summary,
            description: self.description,
            ty: self.ty,
            status: self.status,
            resolution: self.resolution,
            queue: (self.queue_id, self.queue_key, self.queue_name),
            assignee: user_ref(self.assignee_uid, self.assignee_display),
            created_by: UserRef {
                uid: self.created_by,
                display: self.created_by_display,
            },
            updated_by: UserRef {
                uid: self.updated_by,
                display: self.updated_by_display,
            },
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
            unique: self.unique_key,
            custom,
            parent,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct LinkRow {
    pub(super) id: i64,
    pub(super) ty: String,
    pub(super) outward_id: i64,
    pub(super) this_key: String,
    pub(super) object_id: i64,
    pub(super) object_key: String,
    pub(super) object_summary: String,
    pub(super) object_status: String,
    pub(super) assignee_uid: Option<i64>,
    pub(super) assignee_display: Option<String>,
    pub(super) created_by: i64,
    pub(super) created_by_display: String,
    pub(super) updated_by: i64,
    pub(super) updated_by_display: String,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
}

impl LinkRow {
    /// A row of [`LINK_SELECT`] read by rusqlite (SQLite's link writer), the columns in the order above.
    pub(super) fn from_rusqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<LinkRow> {
        Ok(LinkRow {
            id: r.get(0)?,
            ty: r.get(1)?,
            outward_id: r.get(2)?,
            this_key: r.get(3)?,
            object_id: r.get(4)?,
            object_key: r.get(5)?,
            object_summary: r.get(6)?,
            object_status: r.get(7)?,
            assignee_uid: r.get(8)?,
            assignee_display: r.get(9)?,
            created_by: r.get(10)?,
            created_by_display: r.get(11)?,
            updated_by: r.get(12)?,
            updated_by_display: r.get(13)?,
            created_at: r.get(14)?,
            updated_at: r.get(15)?,
        })
    }

    pub(super) fn into_view(self) -> Result<LinkView> {
        let ty = LinkType::parse(&self.ty)
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("unknown link type {:?} in the database", self.ty)))?;
        // The viewing issue is outward exactly when the other issue is not the outward one.
        let direction = if self.outward_id == self.object_id {
            Direction::Inward
        } else {
            Direction::Outward
        };
        Ok(LinkView {
            id: self.id,
            ty,
            direction,
            this_key: self.this_key,
            object: IssueBrief {
                id: self.object_id,
                key: self.object_key,
                summary: self.object_summary,
            },
            object_status: self.object_status,
            object_assignee: user_ref(self.assignee_uid, self.assignee_display),
            created_by: UserRef {
                uid: self.created_by,
                display: self.created_by_display,
            },
            updated_by: UserRef {
                uid: self.updated_by,
                display: self.updated_by_display,
            },
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct QueueRow {
    id: i64,
    key: String,
    name: String,
    default_type: String,
    lead_uid: Option<i64>,
    lead_display: Option<String>,
}

impl QueueRow {
    pub(super) fn into_queue(self) -> Queue {
        Queue {
            id: self.id,
            key: self.key,
            name: self.name,
            lead: user_ref(self.lead_uid, self.lead_display),
            default_type: self.default_type,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct PrincipalRow {
    pub(super) uid: i64,
    pub(super) login: String,
    pub(super) display: String,
    pub(super) email: Option<String>,
    pub(super) token_id: i64,
    pub(super) org_id: Option<String>,
    pub(super) role: Option<String>,
}

impl PrincipalRow {
    pub(super) fn user(&self) -> User {
        User {
            uid: self.uid,
            login: self.login.clone(),
            display: self.display.clone(),
            email: self.email.clone(),
        }
    }

    pub(super) fn membership(&self) -> Option<(String, Role)> {
        Some((self.org_id.clone()?, Role::parse(self.role.as_deref()?)?))
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct FieldRow {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) ty: String,
}

#[derive(sqlx::FromRow)]
pub(super) struct AppRow {
    id: String,
    name: String,
    ty: String,
    default_icon_url: Option<String>,
    front_url: Option<String>,
    responsible: Option<String>,
    oauth_token: Option<String>,
    entity_info_url: Option<String>,
    create_link_url: Option<String>,
    remove_link_url: Option<String>,
    can_link_from_front: i64,
}

impl AppRow {
    pub(super) fn into_app(self) -> Application {
        Application {
            id: self.id,
            name: self.name,
            ty: self.ty,
            default_icon_url: self.default_icon_url,
            front_url: self.front_url,
            responsible: self.responsible,
            oauth_token: self.oauth_token.map(Secret),
            entity_info_url: self.entity_info_url,
            create_link_url: self.create_link_url,
            remove_link_url: self.remove_link_url,
            can_link_from_front: self.can_link_from_front != 0,
        }
    }
}

pub(super) const APP_SELECT: &str = "SELECT id, name, type AS ty, default_icon_url, front_url, responsible, oauth_token, \
     entity_info_url, create_link_url, remove_link_url, can_link_from_front FROM applications ";

/// A remote link with its issue, application, people and backlink delivery joined in.
pub(super) const REMOTE_SELECT: &str = "SELECT r.id, i.key AS issue_key, r.issue_id, a.id AS app_id, a.type AS app_type, \
     a.name AS app_name, r.key, r.web_url, r.actor, r.backlink, \
     e.state AS backlink_state, e.attempts AS backlink_attempts, e.last_error AS backlink_error, \
     r.created_by, cu.display AS created_by_display, r.updated_by, uu.display AS updated_by_display, \
     r.created_at, r.updated_at \
     FROM remote_links r \
     JOIN issues i ON i.id = r.issue_id \
     JOIN applications a ON a.org_id = r.org_id AND a.id = r.app_id \
     JOIN users cu ON cu.uid = r.created_by \
     JOIN users uu ON uu.uid = r.updated_by \
     LEFT JOIN outbox e ON e.remote_link_id = r.id AND e.kind = 'backlink.create' ";

pub(super) const EVENT_COLUMNS: &str = "id, org_id, kind, idempotency_key, method, url, body, app_id, remote_link_id, \
     state, attempts, next_attempt_at, last_error, created_at, updated_at, delivered_at";

#[derive(sqlx::FromRow)]
pub(super) struct RemoteRow {
    id: i64,
    issue_key: String,
    issue_id: i64,
    app_id: String,
    app_type: String,
    app_name: String,
    key: String,
    web_url: Option<String>,
    actor: Option<String>,
    backlink: i64,
    backlink_state: Option<String>,
    backlink_attempts: Option<i64>,
    backlink_error: Option<String>,
    created_by: i64,
    created_by_display: String,
    updated_by: i64,
    updated_by_display: String,
    created_at: i64,
    updated_at: i64,
}

impl RemoteRow {
    pub(super) fn into_link(self) -> RemoteLink {
        let backlink = match (self.backlink, self.backlink_state) {
            (0, _) => None,
            (_, Some(state)) => Some(Delivery {
                state,
                attempts: self.backlink_attempts.unwrap_or(0),
                last_error: self.backlink_error,
            }),
            // Asked for, but the application takes no backlinks: nothing to deliver.
            (_, None) => None,
        };
        RemoteLink {
            id: self.id,
            issue_key: self.issue_key,
            issue_id: self.issue_id,
            app: (self.app_id, self.app_type, self.app_name),
            key: self.key,
            web_url: self.web_url,
            actor: self.actor,
            backlink,
            created_by: UserRef {
                uid: self.created_by,
                display: self.created_by_display,
            },
            updated_by: UserRef {
                uid: self.updated_by,
                display: self.updated_by_display,
            },
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// A fresh idempotency key for an outbox event.
pub(super) fn new_event_key() -> String {
    let b: [u8; 16] = rand::random();
    // RFC 4122 version 4 layout, written out by hand to avoid a dependency for sixteen random bytes.
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        (b[8] & 0x3) | 0x8,
        &h[17..20],
        &h[20..32]
    )
}

/// Stored field type names: `schema.type`, with `array` meaning an array of strings.
pub(super) fn field_type_from_db(s: &str) -> FieldType {
    FieldType::parse(s, None).unwrap_or(FieldType::String)
}

/// Applies custom-field edits to an issue's values (pure; the HTTP layer validated the types).
pub(super) fn apply_field_edits(values: &mut BTreeMap<String, Value>, edits: &[(String, FieldEdit)]) {
    for (id, edit) in edits {
        match edit {
            FieldEdit::Set(Value::Null) => {
                values.remove(id);
            }
            FieldEdit::Set(v) => {
                values.insert(id.clone(), v.clone());
            }
            FieldEdit::Add(items) => {
                let mut arr = match values.remove(id) {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                for item in items {
                    if !arr.contains(item) {
                        arr.push(item.clone());
                    }
                }
                values.insert(id.clone(), Value::Array(arr));
            }
            FieldEdit::Remove(items) => {
                if let Some(Value::Array(arr)) = values.get_mut(id) {
                    arr.retain(|v| !items.contains(v));
                    if arr.is_empty() {
                        values.remove(id);
                    }
                }
            }
        }
    }
}

/// Serialises custom values for storage (`None` when empty).
pub(super) fn custom_to_db(values: &BTreeMap<String, Value>) -> Option<String> {
    (!values.is_empty()).then(|| Value::Object(values.clone().into_iter().collect()).to_string())
}

/// The message for a lost race on one of the links table's unique indexes.
pub(super) fn link_conflict(this_key: &str, other_key: &str) -> Error {
    Error::rule(
        "issue",
        format!("Issues {this_key} and {other_key} are already linked."),
    )
}

/// Implements `Store` for a backend struct that has `read()`, `write()` and `lock_graph()`.
macro_rules! impl_store {
    ($store:ty, $db:ty, $backend:literal) => {
        use std::collections::BTreeMap as __Map;

        use async_trait::async_trait;
        use sqlx::{QueryBuilder, Row};

        use crate::domain::dates::Millis;
        use crate::domain::links::LinkType;
        use crate::domain::{IssueLocator, OrgId, Role};
        use crate::error::{is_unique_violation, Error, Result};
        use crate::store::sql::{
            apply_field_edits, custom_to_db, field_type_from_db, new_event_key, AppRow, FieldRow, CycleRule,
            IssueRow, LinkRow, PrincipalRow, QueueRow, RemoteRow, APP_SELECT, EVENT_COLUMNS, ISSUE_SELECT,
            LINK_SELECT, QUEUE_SELECT, REMOTE_SELECT,
        };
        use crate::store::{
            Application, CustomField, ImportIssue, Issue, IssueFilter, IssueOrder, IssuePatch, LinkView, Locator,
            NewEvent, NewIssue, NewLink, NewQueue, NewRemoteLink, OrderColumn, OutboxEvent, Page, Principal, Queue,
            RemoteLink, Secret, Store, TokenInfo, User, Installation, SentryLink,
        };

        impl $store {
            fn push_filter(qb: &mut QueryBuilder<$db>, org: &OrgId, f: &IssueFilter) {
                qb.push(" WHERE i.org_id = ");
                qb.push_bind(org.as_str().to_owned());
                fn any_of<T>(qb: &mut QueryBuilder<$db>, column: &str, values: &[T])
                where
                    T: Clone + for<'q> sqlx::Encode<'q, $db> + sqlx::Type<$db> + 'static,
                {
                    if values.is_empty() {
                        return;
                    }
                    qb.push(format_args!(" AND {column} IN ("));
                    let mut sep = qb.separated(", ");
                    for v in values {
                        sep.push_bind(v.clone());
                    }
                    sep.push_unseparated(")");
                }
                any_of(qb, "i.queue_id", &f.queues);
                any_of(qb, "i.status", &f.statuses);
                any_of(qb, "i.type", &f.types);
                any_of(qb, "i.key", &f.keys);
                if !f.assignees.is_empty() {
                    let uids: Vec<i64> = f.assignees.iter().flatten().copied().collect();
                    let unassigned = f.assignees.iter().any(Option::is_none);
                    qb.push(" AND (");
                    if unassigned {
                        qb.push("i.assignee_uid IS NULL");
                    } else {
                        qb.push("1 = 0");
                    }
                    if !uids.is_empty() {
                        qb.push(" OR i.assignee_uid IN (");
                        let mut sep = qb.separated(", ");
                        for u in uids {
                            sep.push_bind(u);
                        }
                        sep.push_unseparated(")");
                    }
                    qb.push(")");
                }
                if let Some(text) = &f.text {
                    let escaped = text.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                    qb.push(" AND (LOWER(i.key) LIKE ");
                    qb.push_bind(format!("{escaped}%"));
                    qb.push(" ESCAPE '\\' OR LOWER(i.summary) LIKE ");
                    qb.push_bind(format!("%{escaped}%"));
                    qb.push(" ESCAPE '\\')");
                }
            }

            async fn issue_by_id_tx(tx: &mut sqlx::Transaction<'static, $db>, id: i64) -> Result<Issue> {
                let sql = format!("{ISSUE_SELECT} WHERE i.id = $1");
                let row = sqlx::query_as::<$db, IssueRow>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_one(&mut **tx).await?;
                Ok(row.into_issue())
            }

            /// Inserts an issue row, allocating its number; returns its id.
            async fn insert_issue(
                tx: &mut sqlx::Transaction<'static, $db>,
                new: &NewIssue,
                number: Option<i64>,
                status: &str,
                updated: (Millis, i64),
            ) -> Result<i64> {
                if let Some(u) = &new.unique {
                    let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM issues WHERE org_id = $1 AND unique_key = $2")
                        .bind(new.org.as_str())
                        .bind(u)
                        .fetch_optional(&mut **tx)
                        .await?;
                    if taken.is_some() {
                        return Err(Error::Conflict(format!("An issue with unique '{u}' already exists")));
                    }
                }
                let (qkey, number): (String, i64) = match number {
                    None => {
                        let row = sqlx::query(
                            "UPDATE queues SET last_number = last_number + 1 WHERE id = $1 AND org_id = $2 RETURNING key, last_number",
                        )
                        .bind(new.queue_id)
                        .bind(new.org.as_str())
                        .fetch_optional(&mut **tx)
                        .await?
                        .ok_or_else(|| Error::not_found("queue", "Queue does not exist"))?;
                        (row.try_get(0)?, row.try_get(1)?)
                    }
                    Some(n) => {
                        let row = sqlx::query(
                            "UPDATE queues SET last_number = CASE WHEN last_number < $3 THEN $3 ELSE last_number END \
                             WHERE id = $1 AND org_id = $2 RETURNING key",
                        )
                        .bind(new.queue_id)
                        .bind(new.org.as_str())
                        .bind(n)
                        .fetch_optional(&mut **tx)
                        .await?
                        .ok_or_else(|| Error::not_found("queue", "Queue does not exist"))?;
                        let qkey: String = row.try_get(0)?;
                        let used: Option<i64> = sqlx::query_scalar("SELECT id FROM issues WHERE queue_id = $1 AND number = $2")
                            .bind(new.queue_id)
                            .bind(n)
                            .fetch_optional(&mut **tx)
                            .await?;
                        if used.is_some() {
                            return Err(Error::rule("key", format!("Issue {qkey}-{n} already exists")));
                        }
                        (qkey, n)
                    }
                };
                let key = format!("{qkey}-{number}");
                let inserted = sqlx::query_scalar::<$db, i64>(
                    "INSERT INTO issues (org_id, queue_id, number, key, summary, description, type, status, assignee_uid, \
                     unique_key, custom, version, created_by, updated_by, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1, $12, $13, $14, $15) RETURNING id",
                )
                .bind(new.org.as_str())
                .bind(new.queue_id)
                .bind(number)
                .bind(&key)
                .bind(&new.summary)
                .bind(&new.description)
                .bind(&new.ty)
                .bind(status)
                .bind(new.assignee)
                .bind(&new.unique)
                .bind(custom_to_db(&new.custom))
                .bind(new.by)
                .bind(updated.1)
                .bind(new.at)
                .bind(updated.0)
                .fetch_one(&mut **tx)
                .await;
                let id = match inserted {
                    Ok(id) => id,
                    Err(e) if is_unique_violation(&e) => {
                        return Err(Error::Conflict("An issue with this unique value or key already exists".into()))
                    }
                    Err(e) => return Err(e.into()),
                };
                if let Some(parent) = new.parent {
                    if new.ty == "epic" {
                        return Err(Error::rule("parent", "An epic cannot be a sub-issue of another issue"));
                    }
                    sqlx::query(
                        "INSERT INTO links (org_id, type, outward_id, inward_id, lo, hi, created_by, updated_by, created_at, updated_at) \
                         VALUES ($1, 'subtask', $2, $3, $4, $5, $6, $6, $7, $7)",
                    )
                    .bind(new.org.as_str())
                    .bind(parent)
                    .bind(id)
                    .bind(parent.min(id))
                    .bind(parent.max(id))
                    .bind(new.by)
                    .bind(new.at)
                    .execute(&mut **tx)
                    .await?;
                    sqlx::query("UPDATE issues SET updated_at = $2 WHERE id = $1")
                        .bind(parent)
                        .bind(new.at)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(id)
            }

            async fn insert_event(
                tx: &mut sqlx::Transaction<'static, $db>,
                org: &str,
                e: &NewEvent,
                remote_link_id: Option<i64>,
                after_id: Option<i64>,
                at: Millis,
            ) -> Result<i64> {
                Ok(sqlx::query_scalar(
                    "INSERT INTO outbox (org_id, kind, idempotency_key, method, url, body, app_id, remote_link_id, after_id, \
                     state, attempts, next_attempt_at, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $10, $10) RETURNING id",
                )
                .bind(org)
                .bind(&e.kind)
                .bind(new_event_key())
                .bind(&e.method)
                .bind(&e.url)
                .bind(&e.body)
                .bind(&e.app_id)
                .bind(remote_link_id)
                .bind(after_id)
                .bind(at)
                .fetch_one(&mut **tx)
                .await?)
            }

            async fn remote_view(
                ex: impl sqlx::Executor<'_, Database = $db>,
                org: &OrgId,
                issue: i64,
                id: i64,
            ) -> Result<Option<RemoteLink>> {
                let sql = format!("{REMOTE_SELECT} WHERE r.org_id = $1 AND r.issue_id = $2 AND r.id = $3");
                let row = sqlx::query_as::<$db, RemoteRow>(sqlx::AssertSqlSafe(sql))
                    .bind(org.as_str())
                    .bind(issue)
                    .bind(id)
                    .fetch_optional(ex)
                    .await?;
                Ok(row.map(RemoteRow::into_link))
            }

            /// Rewrites an issue's `sentryIssues` field from its Sentry remote links.
            async fn rewrite_sentry_field(tx: &mut sqlx::Transaction<'static, $db>, issue: i64, at: Millis) -> Result<()> {
                let keys: Vec<String> =
                    sqlx::query_scalar("SELECT key FROM remote_links WHERE issue_id = $1 AND app_id = 'sentry' ORDER BY id")
                        .bind(issue)
                        .fetch_all(&mut **tx)
                        .await?;
                let custom: Option<String> = sqlx::query_scalar("SELECT custom FROM issues WHERE id = $1")
                    .bind(issue)
                    .fetch_one(&mut **tx)
                    .await?;
                let mut values: __Map<String, serde_json::Value> =
                    custom.and_then(|c| serde_json::from_str(&c).ok()).unwrap_or_default();
                if keys.is_empty() {
                    values.remove("sentryIssues");
                } else {
                    values.insert("sentryIssues".into(), serde_json::json!(keys));
                }
                sqlx::query("UPDATE issues SET custom = $2, updated_at = $3 WHERE id = $1")
                    .bind(issue)
                    .bind(custom_to_db(&values))
                    .bind(at)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            async fn link_view(
                ex: impl sqlx::Executor<'_, Database = $db>,
                org: &OrgId,
                issue: i64,
                link: i64,
            ) -> Result<Option<LinkView>> {
                let sql = format!("{LINK_SELECT} AND l.id = $3");
                let row = sqlx::query_as::<$db, LinkRow>(sqlx::AssertSqlSafe(sql))
                    .bind(org.as_str())
                    .bind(issue)
                    .bind(link)
                    .fetch_optional(ex)
                    .await?;
                row.map(LinkRow::into_view).transpose()
            }
        }

        #[async_trait]
        impl Store for $store {
            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(self.read()).await?;
                Ok(())
            }

            fn backend(&self) -> &'static str {
                $backend
            }

            fn read_epoch(&self) -> Option<crate::store::ReadEpoch> {
                self.epoch()
            }

            async fn bootstrap(&self, org: &OrgId, token_hash: &str, at: Millis) -> Result<bool> {
                let mut tx = self.write().await?;
                let first = sqlx::query("INSERT INTO meta (key, value) VALUES ('bootstrap', $1) ON CONFLICT DO NOTHING")
                    .bind(org.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if !first {
                    return Ok(false);
                }
                sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ($1, $1, $2) ON CONFLICT DO NOTHING")
                    .bind(org.as_str())
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                let uid: i64 = sqlx::query_scalar(
                    "INSERT INTO users (login, display, created_at) VALUES ('admin', 'Administrator', $1) \
                     ON CONFLICT (login) DO UPDATE SET login = excluded.login RETURNING uid",
                )
                .bind(at)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query("INSERT INTO memberships (org_id, uid, role) VALUES ($1, $2, 'admin') ON CONFLICT DO NOTHING")
                    .bind(org.as_str())
                    .bind(uid)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO tokens (uid, hash, name, created_at) VALUES ($1, $2, 'bootstrap', $3)")
                    .bind(uid)
                    .bind(token_hash)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn bootstrap_org(&self) -> Result<Option<String>> {
                Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = 'bootstrap'").fetch_optional(self.read()).await?)
            }

            async fn create_org(&self, id: &OrgId, name: &str, at: Millis) -> Result<()> {
                let r = sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(id.as_str())
                    .bind(name)
                    .bind(at)
                    .execute(self.write_pool())
                    .await;
                match r {
                    Ok(_) => Ok(()),
                    Err(e) if is_unique_violation(&e) => Err(Error::Conflict(format!("Organization {id} already exists"))),
                    Err(e) => Err(e.into()),
                }
            }

            async fn list_orgs(&self) -> Result<Vec<(String, String)>> {
                Ok(sqlx::query_as("SELECT id, name FROM organizations ORDER BY id").fetch_all(self.read()).await?)
            }

            async fn create_user(&self, login: &str, display: &str, email: Option<&str>, at: Millis) -> Result<User> {
                let r = sqlx::query_as::<$db, User>(
                    "INSERT INTO users (login, display, email, created_at) VALUES ($1, $2, $3, $4) RETURNING uid, login, display, email",
                )
                .bind(login)
                .bind(display)
                .bind(email)
                .bind(at)
                .fetch_one(self.write_pool())
                .await;
                match r {
                    Ok(u) => Ok(u),
                    Err(e) if is_unique_violation(&e) => Err(Error::Conflict(format!("User {login} already exists"))),
                    Err(e) => Err(e.into()),
                }
            }

            async fn find_user(&self, who: &Locator) -> Result<Option<User>> {
                let q = match who {
                    Locator::Id(uid) => sqlx::query_as::<$db, User>("SELECT uid, login, display, email FROM users WHERE uid = $1").bind(*uid),
                    Locator::Key(l) | Locator::Name(l) => {
                        sqlx::query_as::<$db, User>("SELECT uid, login, display, email FROM users WHERE login = $1").bind(l.clone())
                    }
                };
                Ok(q.fetch_optional(self.read()).await?)
            }

            async fn set_membership(&self, org: &OrgId, uid: i64, role: Role) -> Result<()> {
                sqlx::query(
                    "INSERT INTO memberships (org_id, uid, role) VALUES ($1, $2, $3) \
                     ON CONFLICT (org_id, uid) DO UPDATE SET role = excluded.role",
                )
                .bind(org.as_str())
                .bind(uid)
                .bind(role.as_str())
                .execute(self.write_pool())
                .await?;
                Ok(())
            }

            async fn create_token(&self, uid: i64, name: &str, hash: &str, at: Millis) -> Result<i64> {
                Ok(sqlx::query_scalar("INSERT INTO tokens (uid, hash, name, created_at) VALUES ($1, $2, $3, $4) RETURNING id")
                    .bind(uid)
                    .bind(hash)
                    .bind(name)
                    .bind(at)
                    .fetch_one(self.write_pool())
                    .await?)
            }

            async fn list_tokens(&self, uid: Option<i64>) -> Result<Vec<TokenInfo>> {
                Ok(sqlx::query_as(
                    "SELECT t.id, t.uid, u.login, t.name, t.created_at, t.revoked_at FROM tokens t JOIN users u ON u.uid = t.uid \
                     WHERE $1 IS NULL OR t.uid = $1 ORDER BY t.id",
                )
                .bind(uid)
                .fetch_all(self.read())
                .await?)
            }

            async fn revoke_token(&self, id: i64, owner: Option<i64>, at: Millis) -> Result<bool> {
                let n = sqlx::query(
                    "UPDATE tokens SET revoked_at = $3 WHERE id = $1 AND ($2 IS NULL OR uid = $2) AND revoked_at IS NULL",
                )
                .bind(id)
                .bind(owner)
                .bind(at)
                .execute(self.write_pool())
                .await?
                .rows_affected();
                Ok(n > 0)
            }

            async fn authenticate(&self, hash: &str) -> Result<Option<Principal>> {
                let rows: Vec<PrincipalRow> = sqlx::query_as(
                    "SELECT u.uid, u.login, u.display, u.email, t.id AS token_id, m.org_id, m.role \
                     FROM tokens t JOIN users u ON u.uid = t.uid LEFT JOIN memberships m ON m.uid = u.uid \
                     WHERE t.hash = $1 AND t.revoked_at IS NULL",
                )
                .bind(hash)
                .fetch_all(self.read())
                .await?;
                let Some(first) = rows.first() else { return Ok(None) };
                Ok(Some(Principal {
                    user: first.user(),
                    token_id: first.token_id,
                    memberships: rows.iter().filter_map(PrincipalRow::membership).collect(),
                }))
            }

            async fn get_member(&self, org: &OrgId, who: &Locator) -> Result<Option<User>> {
                const BASE: &str = "SELECT u.uid, u.login, u.display, u.email FROM users u JOIN memberships m ON m.uid = u.uid WHERE m.org_id = $1 AND ";
                let q = match who {
                    Locator::Id(uid) => sqlx::query_as::<$db, User>(sqlx::AssertSqlSafe(format!("{BASE} u.uid = $2"))).bind(org.as_str()).bind(*uid),
                    Locator::Key(l) => {
                        sqlx::query_as::<$db, User>(sqlx::AssertSqlSafe(format!("{BASE} u.login = $2"))).bind(org.as_str()).bind(l.clone())
                    }
                    Locator::Name(n) => sqlx::query_as::<$db, User>(sqlx::AssertSqlSafe(format!(
                        "{BASE} (LOWER(u.display) = LOWER($2) OR u.login = $2) ORDER BY u.uid"
                    )))
                    .bind(org.as_str())
                    .bind(n.clone()),
                };
                Ok(q.fetch_optional(self.read()).await?)
            }

            async fn list_members(&self, org: &OrgId, page: Page) -> Result<(Vec<User>, i64)> {
                let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM memberships WHERE org_id = $1")
                    .bind(org.as_str())
                    .fetch_one(self.read())
                    .await?;
                let users = sqlx::query_as(
                    "SELECT u.uid, u.login, u.display, u.email FROM users u JOIN memberships m ON m.uid = u.uid \
                     WHERE m.org_id = $1 ORDER BY u.uid LIMIT $2 OFFSET $3",
                )
                .bind(org.as_str())
                .bind(page.per_page)
                .bind(page.offset())
                .fetch_all(self.read())
                .await?;
                Ok((users, total))
            }

            async fn create_queue(&self, org: &OrgId, q: &NewQueue, at: Millis) -> Result<Queue> {
                let r = sqlx::query_scalar::<$db, i64>(
                    "INSERT INTO queues (org_id, key, name, lead_uid, default_type, created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind(org.as_str())
                .bind(&q.key)
                .bind(&q.name)
                .bind(q.lead)
                .bind(&q.default_type)
                .bind(at)
                .fetch_one(self.write_pool())
                .await;
                let id = match r {
                    Ok(id) => id,
                    Err(e) if is_unique_violation(&e) => return Err(Error::Conflict(format!("Queue {} already exists", q.key))),
                    Err(e) => return Err(e.into()),
                };
                self.get_queue(org, &Locator::Id(id))
                    .await?
                    .ok_or_else(|| Error::Internal(anyhow::anyhow!("queue {id} vanished after insert")))
            }

            async fn get_queue(&self, org: &OrgId, which: &Locator) -> Result<Option<Queue>> {
                let q = match which {
                    Locator::Id(id) => sqlx::query_as::<$db, QueueRow>(sqlx::AssertSqlSafe(format!("{QUEUE_SELECT} WHERE q.org_id = $1 AND q.id = $2")))
                        .bind(org.as_str())
                        .bind(*id),
                    Locator::Key(k) => sqlx::query_as::<$db, QueueRow>(sqlx::AssertSqlSafe(format!("{QUEUE_SELECT} WHERE q.org_id = $1 AND q.key = $2")))
                        .bind(org.as_str())
                        .bind(k.clone()),
                    Locator::Name(n) => sqlx::query_as::<$db, QueueRow>(sqlx::AssertSqlSafe(format!(
                        "{QUEUE_SELECT} WHERE q.org_id = $1 AND (LOWER(q.name) = LOWER($2) OR q.key = $2) ORDER BY q.id"
                    )))
                    .bind(org.as_str())
                    .bind(n.clone()),
                };
                Ok(q.fetch_optional(self.read()).await?.map(QueueRow::into_queue))
            }

            async fn list_queues(&self, org: &OrgId, page: Page) -> Result<(Vec<Queue>, i64)> {
                let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queues WHERE org_id = $1")
                    .bind(org.as_str())
                    .fetch_one(self.read())
                    .await?;
                let rows: Vec<QueueRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "{QUEUE_SELECT} WHERE q.org_id = $1 ORDER BY q.key LIMIT $2 OFFSET $3"
                )))
                .bind(org.as_str())
                .bind(page.per_page)
                .bind(page.offset())
                .fetch_all(self.read())
                .await?;
                Ok((rows.into_iter().map(QueueRow::into_queue).collect(), total))
            }

            async fn list_fields(&self, org: &OrgId) -> Result<Vec<CustomField>> {
                let rows: Vec<FieldRow> = sqlx::query_as("SELECT id, name, type AS ty FROM custom_fields WHERE org_id = $1 ORDER BY id")
                    .bind(org.as_str())
                    .fetch_all(self.read())
                    .await?;
                Ok(rows.into_iter().map(|r| CustomField { ty: field_type_from_db(&r.ty), id: r.id, name: r.name }).collect())
            }

            async fn create_field(&self, org: &OrgId, f: &CustomField, at: Millis) -> Result<bool> {
                let n = sqlx::query(
                    "INSERT INTO custom_fields (org_id, id, name, type, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(org.as_str())
                .bind(&f.id)
                .bind(&f.name)
                .bind(f.ty.schema_type())
                .bind(at)
                .execute(self.write_pool())
                .await?
                .rows_affected();
                if n == 1 {
                    return Ok(true);
                }
                let existing = self.list_fields(org).await?.into_iter().find(|x| x.id == f.id);
                match existing {
                    Some(x) if x.ty == f.ty => Ok(false),
                    _ => Err(Error::Conflict(format!("Field {} already exists with another type", f.id))),
                }
            }

            async fn create_issue(&self, new: &NewIssue) -> Result<Issue> {
                let mut tx = self.write().await?;
                if new.parent.is_some() {
                    Self::lock_graph(&mut tx, &new.org, CycleRule::Subtask).await?;
                }
                let id = Self::insert_issue(&mut tx, new, None, "open", (new.at, new.by)).await?;
                let issue = Self::issue_by_id_tx(&mut tx, id).await?;
                tx.commit().await?;
                self.heads().put_new(&new.org, &issue);
                Ok(issue)
            }

            async fn import_issue(&self, imp: &ImportIssue) -> Result<Issue> {
                let mut tx = self.write().await?;
                let updated = imp.updated.unwrap_or((imp.issue.at, imp.issue.by));
                let id = Self::insert_issue(&mut tx, &imp.issue, imp.number, &imp.status, updated).await?;
                let issue = Self::issue_by_id_tx(&mut tx, id).await?;
                tx.commit().await?;
                self.heads().put_new(&imp.issue.org, &issue);
                Ok(issue)
            }

            async fn get_issue(&self, org: &OrgId, which: &IssueLocator) -> Result<Option<Issue>> {
                let q = match which {
                    IssueLocator::Key(k) => sqlx::query_as::<$db, IssueRow>(sqlx::AssertSqlSafe(format!("{ISSUE_SELECT} WHERE i.org_id = $1 AND i.key = $2")))
                        .bind(org.as_str())
                        .bind(k.to_string()),
                    IssueLocator::Id(id) => sqlx::query_as::<$db, IssueRow>(sqlx::AssertSqlSafe(format!("{ISSUE_SELECT} WHERE i.org_id = $1 AND i.id = $2")))
                        .bind(org.as_str())
                        .bind(*id),
                };
                Ok(q.fetch_optional(self.read()).await?.map(IssueRow::into_issue))
            }

            async fn issue_head(&self, org: &OrgId, which: &IssueLocator) -> Result<Option<crate::store::IssueHead>> {
                if let Some(head) = self.heads().get(org, which) {
                    return Ok(Some(head));
                }
                let q = match which {
                    IssueLocator::Key(k) => sqlx::query_as::<$db, (i64, String, i64)>(
                        "SELECT id, key, created_at FROM issues WHERE org_id = $1 AND key = $2",
                    )
                    .bind(org.as_str())
                    .bind(k.to_string()),
                    IssueLocator::Id(id) => sqlx::query_as::<$db, (i64, String, i64)>(
                        "SELECT id, key, created_at FROM issues WHERE org_id = $1 AND id = $2",
                    )
                    .bind(org.as_str())
                    .bind(*id),
                };
                let head = q.fetch_optional(self.read()).await?.map(|(id, key, created_at)| crate::store::IssueHead { id, key, created_at });
                if let Some(h) = &head {
                    self.heads().put(org, which.clone(), h.clone());
                }
                Ok(head)
            }

            async fn find_by_unique(&self, org: &OrgId, unique: &str) -> Result<Option<Issue>> {
                let row = sqlx::query_as::<$db, IssueRow>(sqlx::AssertSqlSafe(format!(
                    "{ISSUE_SELECT} WHERE i.org_id = $1 AND i.unique_key = $2"
                )))
                .bind(org.as_str())
                .bind(unique)
                .fetch_optional(self.read())
                .await?;
                Ok(row.map(IssueRow::into_issue))
            }

            async fn update_issue(
                &self,
                org: &OrgId,
                id: i64,
                patch: &IssuePatch,
                if_match: Option<i64>,
                by: i64,
                at: Millis,
            ) -> Result<Issue> {
                let mut tx = self.write().await?;
                let row = sqlx::query("SELECT version, custom FROM issues WHERE org_id = $1 AND id = $2")
                    .bind(org.as_str())
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| Error::not_found("issue", "Issue does not exist"))?;
                let version: i64 = row.try_get(0)?;
                let custom: Option<String> = row.try_get(1)?;
                if let Some(expected) = if_match {
                    if expected != version {
                        return Err(Error::Conflict(format!(
                            "The issue was changed: version is {version}, If-Match asked for {expected}"
                        )));
                    }
                }
                let mut values: __Map<String, serde_json::Value> =
                    custom.and_then(|c| serde_json::from_str(&c).ok()).unwrap_or_default();
                apply_field_edits(&mut values, &patch.custom);
                let n = sqlx::query(
                    "UPDATE issues SET \
                     summary = CASE WHEN $3 THEN $4 ELSE summary END, \
                     description = CASE WHEN $5 THEN $6 ELSE description END, \
                     assignee_uid = CASE WHEN $7 THEN $8 ELSE assignee_uid END, \
                     custom = $9, version = version + 1, updated_by = $10, updated_at = $11 \
                     WHERE id = $1 AND version = $2",
                )
                .bind(id)
                .bind(version)
                .bind(patch.summary.is_some())
                .bind(patch.summary.clone())
                .bind(patch.description.is_some())
                .bind(patch.description.clone().flatten())
                .bind(patch.assignee.is_some())
                .bind(patch.assignee.flatten())
                .bind(custom_to_db(&values))
                .bind(by)
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n == 0 {
                    return Err(Error::Conflict("The issue was changed concurrently; read it again".into()));
                }
                let issue = Self::issue_by_id_tx(&mut tx, id).await?;
                tx.commit().await?;
                Ok(issue)
            }

            async fn transition_issue(
                &self,
                org: &OrgId,
                id: i64,
                from: &[&str],
                to: &str,
                resolution: Option<&str>,
                by: i64,
                at: Millis,
            ) -> Result<Issue> {
                let mut tx = self.write().await?;
                let current: String = sqlx::query_scalar("SELECT status FROM issues WHERE org_id = $1 AND id = $2")
                    .bind(org.as_str())
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| Error::not_found("issue", "Issue does not exist"))?;
                let unavailable =
                    || Error::not_found("transition", format!("The transition is not available from status {current}"));
                if !from.contains(&current.as_str()) {
                    return Err(unavailable());
                }
                let resolution = if to == "closed" { Some(resolution.unwrap_or("fixed")) } else { None };
                let changed = sqlx::query(
                    "UPDATE issues SET status = $3, resolution = $4, version = version + 1, updated_by = $5, updated_at = $6 \
                     WHERE id = $1 AND status = $2",
                )
                .bind(id)
                .bind(&current)
                .bind(to)
                .bind(resolution)
                .bind(by)
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                // A concurrent transition moved the issue first (PostgreSQL re-checks `status` after the row lock).
                if changed == 0 {
                    return Err(unavailable());
                }
                // Closing or reopening a linked issue sets the Sentry issue's status through the outbox — unless the
                // change came from Sentry itself (the robot user), which would only echo back.
                let sentry_status = match (current.as_str(), to) {
                    (c, "closed") if c != "closed" => Some("resolved"),
                    ("closed", t) if t != "closed" => Some("unresolved"),
                    _ => None,
                };
                if let Some(status) = sentry_status {
                    sqlx::query(
                        "INSERT INTO outbox (org_id, kind, idempotency_key, method, url, body, app_id, remote_link_id, state, attempts, \
                         next_attempt_at, created_at, updated_at) \
                         SELECT r.org_id, 'sentry.status', 'sentry-status-' || CAST(r.id AS TEXT) || '-' || CAST($2 AS TEXT) || '-' || $3, \
                         'PUT', '', '{\"installation\":\"' || r.installation || '\",\"issue\":\"' || r.key || '\",\"status\":\"' || $3 || '\"}', \
                         'sentry', r.id, 'pending', 0, $2, $2, $2 \
                         FROM remote_links r WHERE r.issue_id = $1 AND r.app_id = 'sentry' AND r.installation IS NOT NULL \
                         AND $4 NOT IN (SELECT uid FROM users WHERE login = 'sentry' AND robot = 1) \
                         ON CONFLICT (idempotency_key) DO NOTHING",
                    )
                    .bind(id)
                    .bind(at)
                    .bind(status)
                    .bind(by)
                    .execute(&mut *tx)
                    .await?;
                }
                let issue = Self::issue_by_id_tx(&mut tx, id).await?;
                tx.commit().await?;
                Ok(issue)
            }

            async fn search_issues(
                &self,
                org: &OrgId,
                filter: &IssueFilter,
                order: IssueOrder,
                page: Page,
            ) -> Result<(Vec<Issue>, i64)> {
                let mut count = QueryBuilder::<$db>::new("SELECT COUNT(*) FROM issues i");
                Self::push_filter(&mut count, org, filter);
                let total: i64 = count.build_query_scalar().fetch_one(self.read()).await?;
                let mut qb = QueryBuilder::<$db>::new(ISSUE_SELECT);
                Self::push_filter(&mut qb, org, filter);
                let dir = if order.ascending { "ASC" } else { "DESC" };
                let col = match order.column {
                    OrderColumn::Key => "q.key {dir}, i.number",
                    OrderColumn::CreatedAt => "i.created_at",
                    OrderColumn::UpdatedAt => "i.updated_at",
                    OrderColumn::Status => "i.status",
                    OrderColumn::Summary => "i.summary",
                };
                let col = col.replace("{dir}", dir);
                qb.push(format_args!(" ORDER BY {col} {dir}, i.id {dir} LIMIT "));
                qb.push_bind(page.per_page);
                qb.push(" OFFSET ");
                qb.push_bind(page.offset());
                let rows: Vec<IssueRow> = qb.build_query_as().fetch_all(self.read()).await?;
                Ok((rows.into_iter().map(IssueRow::into_issue).collect(), total))
            }

            async fn create_link(&self, new: &NewLink) -> Result<LinkView> {
                // Written in a batch, which answers the link's view too (`Job::views`).
                let mut out = self.link_writer().write(vec![new.clone()], true).await?;
                match out.pop() {
                    Some(Ok((_, Some(view)))) => Ok(view),
                    Some(Err(e)) => Err(e),
                    _ => Err(Error::Internal(anyhow::anyhow!("a link write gave no view"))),
                }
            }

            async fn list_links(&self, org: &OrgId, issue: i64) -> Result<Vec<LinkView>> {
                let rows: Vec<LinkRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{LINK_SELECT} ORDER BY l.id")))
                    .bind(org.as_str())
                    .bind(issue)
                    .fetch_all(self.read())
                    .await?;
                rows.into_iter().map(LinkRow::into_view).collect()
            }

            async fn get_link(&self, org: &OrgId, issue: i64, link: i64) -> Result<Option<LinkView>> {
                Self::link_view(self.read(), org, issue, link).await
            }

            async fn delete_link(&self, org: &OrgId, issue: i64, link: i64, at: Millis) -> Result<bool> {
                let mut tx = self.write().await?;
                let row = sqlx::query(
                    "DELETE FROM links WHERE org_id = $1 AND id = $2 AND (outward_id = $3 OR inward_id = $3) RETURNING lo, hi",
                )
                .bind(org.as_str())
                .bind(link)
                .bind(issue)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else { return Ok(false) };
                for col in [0, 1] {
                    let id: i64 = row.try_get(col)?;
                    sqlx::query("UPDATE issues SET updated_at = $2 WHERE id = $1").bind(id).bind(at).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn import_links(&self, _org: &OrgId, batch: &[NewLink]) -> Result<Vec<Result<i64>>> {
                let out = self.link_writer().write(batch.to_vec(), false).await?;
                Ok(out.into_iter().map(|r| r.map(|(id, _)| id)).collect())
            }

            async fn issue_graph(
                &self,
                org: &OrgId,
                root: i64,
                types: &[LinkType],
                out: bool,
                inward: bool,
                depth: i64,
            ) -> Result<crate::store::Graph> {
                let type_list: Vec<String> = types.iter().map(|t| t.id().to_owned()).collect();
                // One walk in each asked direction; UNION keeps (id, depth, dir) distinct, so cycles end at `depth`.
                let mut qb = QueryBuilder::<$db>::new("WITH RECURSIVE walk(id, depth, dir) AS (SELECT CAST(");
                qb.push_bind(root);
                qb.push(" AS BIGINT), 0, 'o' WHERE ");
                qb.push_bind(out);
                qb.push(" UNION SELECT CAST(");
                qb.push_bind(root);
                qb.push(" AS BIGINT), 0, 'i' WHERE ");
                qb.push_bind(inward);
                qb.push(
                    " UNION SELECT CASE WHEN w.dir = 'o' THEN l.inward_id ELSE l.outward_id END, w.depth + 1, w.dir \
                     FROM walk w JOIN links l ON (w.dir = 'o' AND l.outward_id = w.id) OR (w.dir = 'i' AND l.inward_id = w.id) \
                     WHERE w.depth < ",
                );
                qb.push_bind(depth);
                qb.push(" AND l.org_id = ");
                qb.push_bind(org.as_str().to_owned());
                qb.push(" AND l.type IN (");
                {
                    let mut sep = qb.separated(", ");
                    for t in &type_list {
                        sep.push_bind(t.clone());
                    }
                }
                qb.push(")) SELECT DISTINCT i.id, i.key, i.summary, i.status, i.assignee_uid, u.display \
                         FROM walk w JOIN issues i ON i.id = w.id LEFT JOIN users u ON u.uid = i.assignee_uid");
                let mut tx = self.read().begin().await?;
                let rows = qb.build().fetch_all(&mut *tx).await?;
                let mut nodes = Vec::with_capacity(rows.len().max(1));
                for r in &rows {
                    let uid: Option<i64> = r.try_get(4)?;
                    let node = crate::store::GraphNode {
                        issue: crate::store::IssueBrief { id: r.try_get(0)?, key: r.try_get(1)?, summary: r.try_get(2)? },
                        status: r.try_get(3)?,
                        assignee: uid.map(|uid| crate::store::UserRef { uid, display: r.try_get(5).unwrap_or_default() }),
                    };
                    nodes.push(node);
                }
                nodes.sort_by_key(|n| (n.issue.id != root, n.issue.id));
                if nodes.is_empty() {
                    return Ok(crate::store::Graph::default());
                }
                let mut eq = QueryBuilder::<$db>::new(
                    "SELECT o.key, n.key, l.type FROM links l JOIN issues o ON o.id = l.outward_id JOIN issues n ON n.id = l.inward_id \
                     WHERE l.org_id = ",
                );
                eq.push_bind(org.as_str().to_owned());
                for (column, _) in [("l.outward_id", 0), ("l.inward_id", 1)] {
                    eq.push(format_args!(" AND {column} IN ("));
                    let mut sep = eq.separated(", ");
                    for n in &nodes {
                        sep.push_bind(n.issue.id);
                    }
                    sep.push_unseparated(")");
                }
                eq.push(" AND l.type IN (");
                {
                    let mut sep = eq.separated(", ");
                    for t in &type_list {
                        sep.push_bind(t.clone());
                    }
                }
                eq.push(") ORDER BY l.id");
                let erows = eq.build().fetch_all(&mut *tx).await?;
                tx.commit().await?;
                let mut edges = Vec::with_capacity(erows.len());
                for r in &erows {
                    let ty: String = r.try_get(2)?;
                    if let Some(t) = LinkType::parse(&ty) {
                        edges.push((r.try_get(0)?, r.try_get(1)?, t));
                    }
                }
                Ok(crate::store::Graph { nodes, edges })
            }

            async fn backup_to(&self, path: &str) -> Result<()> {
                if self.backend() != "sqlite" {
                    return Err(Error::BadRequest("backup works on SQLite; for PostgreSQL use pg_dump".into()));
                }
                // `VACUUM INTO` reads one snapshot, so the copy is consistent while the server keeps writing.
                sqlx::query("VACUUM INTO $1").bind(path).execute(self.read()).await?;
                Ok(())
            }

            async fn export_rows(
                &self,
                table: &crate::store::copy::TableSpec,
                offset: i64,
                limit: i64,
            ) -> Result<Vec<Vec<crate::store::copy::Cell>>> {
                use crate::store::copy::{Cell, Kind};
                let cols: Vec<&str> = table.columns.iter().map(|c| c.0).collect();
                let sql = format!("SELECT {} FROM {} ORDER BY {} LIMIT $1 OFFSET $2", cols.join(", "), table.name, table.order);
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(limit).bind(offset).fetch_all(self.read()).await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let mut cells = Vec::with_capacity(table.columns.len());
                    for (i, (_, kind)) in table.columns.iter().enumerate() {
                        cells.push(match kind {
                            Kind::Int => Cell::Int(r.try_get(i)?),
                            Kind::Text => Cell::Text(r.try_get(i)?),
                        });
                    }
                    out.push(cells);
                }
                Ok(out)
            }

            async fn import_rows(&self, table: &crate::store::copy::TableSpec, rows: &[Vec<crate::store::copy::Cell>]) -> Result<()> {
                use crate::store::copy::Cell;
                let cols: Vec<&str> = table.columns.iter().map(|c| c.0).collect();
                let marks: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
                let sql = format!("INSERT INTO {} ({}) VALUES ({})", table.name, cols.join(", "), marks.join(", "));
                let mut tx = self.write().await?;
                for row in rows {
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                    for cell in row {
                        q = match cell {
                            Cell::Int(v) => q.bind(*v),
                            Cell::Text(v) => q.bind(v.clone()),
                        };
                    }
                    q.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn finish_copy(&self) -> Result<()> {
                if self.backend() != "postgres" {
                    // SQLite's AUTOINCREMENT already moved past every id inserted explicitly.
                    return Ok(());
                }
                for t in crate::store::copy::TABLES {
                    if let Some(col) = t.identity {
                        let sql = format!(
                            "SELECT setval(pg_get_serial_sequence('{t}', '{col}'), COALESCE((SELECT MAX({col}) FROM {t}), 0) + 1, false)",
                            t = t.name
                        );
                        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(self.write_pool()).await?;
                    }
                }
                Ok(())
            }

            async fn upsert_installation(&self, inst: &Installation, at: Millis) -> Result<()> {
                sqlx::query(
                    "INSERT INTO sentry_installations (uuid, org_id, sentry_org_slug, app_uuid, token, refresh_token, expires_at, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
                     ON CONFLICT (uuid) DO UPDATE SET \
                     sentry_org_slug = COALESCE(excluded.sentry_org_slug, sentry_installations.sentry_org_slug), \
                     app_uuid = COALESCE(excluded.app_uuid, sentry_installations.app_uuid), \
                     token = COALESCE(excluded.token, sentry_installations.token), \
                     refresh_token = COALESCE(excluded.refresh_token, sentry_installations.refresh_token), \
                     expires_at = COALESCE(excluded.expires_at, sentry_installations.expires_at), updated_at = excluded.updated_at",
                )
                .bind(&inst.uuid)
                .bind(&inst.org_id)
                .bind(&inst.sentry_org_slug)
                .bind(&inst.app_uuid)
                .bind(inst.token.as_ref().map(|t| t.0.clone()))
                .bind(inst.refresh_token.as_ref().map(|t| t.0.clone()))
                .bind(inst.expires_at)
                .bind(at)
                .execute(self.write_pool())
                .await?;
                Ok(())
            }

            async fn get_installation(&self, uuid: &str) -> Result<Option<Installation>> {
                let row = sqlx::query(
                    "SELECT uuid, org_id, sentry_org_slug, app_uuid, token, refresh_token, expires_at FROM sentry_installations WHERE uuid = $1",
                )
                .bind(uuid)
                .fetch_optional(self.write_pool())
                .await?;
                let Some(r) = row else { return Ok(None) };
                Ok(Some(Installation {
                    uuid: r.try_get(0)?,
                    org_id: r.try_get(1)?,
                    sentry_org_slug: r.try_get(2)?,
                    app_uuid: r.try_get(3)?,
                    token: r.try_get::<Option<String>, _>(4)?.map(Secret),
                    refresh_token: r.try_get::<Option<String>, _>(5)?.map(Secret),
                    expires_at: r.try_get(6)?,
                }))
            }

            async fn delete_installation(&self, uuid: &str) -> Result<bool> {
                let n = sqlx::query("DELETE FROM sentry_installations WHERE uuid = $1")
                    .bind(uuid)
                    .execute(self.write_pool())
                    .await?
                    .rows_affected();
                Ok(n > 0)
            }

            async fn set_installation_tokens(
                &self,
                uuid: &str,
                token: &Secret,
                refresh: Option<&Secret>,
                expires_at: Option<Millis>,
                at: Millis,
            ) -> Result<()> {
                sqlx::query(
                    "UPDATE sentry_installations SET token = $2, refresh_token = COALESCE($3, refresh_token), expires_at = $4, \
                     updated_at = $5 WHERE uuid = $1",
                )
                .bind(uuid)
                .bind(&token.0)
                .bind(refresh.map(|r| r.0.clone()))
                .bind(expires_at)
                .bind(at)
                .execute(self.write_pool())
                .await?;
                Ok(())
            }

            async fn enqueue_event(&self, org: &str, ev: &NewEvent, key: Option<&str>, at: Millis) -> Result<bool> {
                let key = key.map_or_else(new_event_key, str::to_owned);
                let n = sqlx::query(
                    "INSERT INTO outbox (org_id, kind, idempotency_key, method, url, body, app_id, state, attempts, \
                     next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8, $8) \
                     ON CONFLICT (idempotency_key) DO NOTHING",
                )
                .bind(org)
                .bind(&ev.kind)
                .bind(key)
                .bind(&ev.method)
                .bind(&ev.url)
                .bind(&ev.body)
                .bind(&ev.app_id)
                .bind(at)
                .execute(self.write_pool())
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn sentry_robot(&self, org: &OrgId, at: Millis) -> Result<i64> {
                let mut tx = self.write().await?;
                let uid: i64 = sqlx::query_scalar(
                    "INSERT INTO users (login, display, robot, created_at) VALUES ('sentry', 'Sentry', 1, $1) \
                     ON CONFLICT (login) DO UPDATE SET login = excluded.login RETURNING uid",
                )
                .bind(at)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query("INSERT INTO memberships (org_id, uid, role) VALUES ($1, $2, 'member') ON CONFLICT DO NOTHING")
                    .bind(org.as_str())
                    .bind(uid)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(uid)
            }

            async fn sentry_link(&self, link: &SentryLink, robot: i64) -> Result<RemoteLink> {
                let org = link.org.as_str();
                let mut tx = self.write().await?;
                sqlx::query(
                    "INSERT INTO applications (org_id, id, name, type, default_icon_url, created_at) \
                     VALUES ($1, 'sentry', 'Sentry', 'sentry', 'https://sentry.io/favicon.ico', $2) ON CONFLICT DO NOTHING",
                )
                .bind(org)
                .bind(link.at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO custom_fields (org_id, id, name, type, created_at) VALUES ($1, 'sentryIssues', 'Sentry issues', 'array', $2) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(org)
                .bind(link.at)
                .execute(&mut *tx)
                .await?;
                let existing: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM remote_links WHERE issue_id = $1 AND app_id = 'sentry' AND key = $2",
                )
                .bind(link.issue_id)
                .bind(&link.sentry_issue)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(id) = existing {
                    if !link.replace {
                        return Err(Error::Conflict(format!("Sentry issue {} is already linked to this issue", link.sentry_issue)));
                    }
                    sqlx::query("DELETE FROM remote_links WHERE id = $1").bind(id).execute(&mut *tx).await?;
                }
                // Sentry's own rule: one external issue per Sentry issue and app, so a new link moves it.
                let moved: Vec<(i64, i64)> = sqlx::query_as(
                    "SELECT id, issue_id FROM remote_links WHERE org_id = $1 AND app_id = 'sentry' AND key = $2 \
                     AND installation = $3 AND issue_id <> $4",
                )
                .bind(org)
                .bind(&link.sentry_issue)
                .bind(&link.installation)
                .bind(link.issue_id)
                .fetch_all(&mut *tx)
                .await?;
                for (id, _) in &moved {
                    sqlx::query("DELETE FROM remote_links WHERE id = $1").bind(*id).execute(&mut *tx).await?;
                }
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO remote_links (org_id, issue_id, app_id, key, web_url, actor, backlink, installation, created_by, \
                     updated_by, created_at, updated_at) VALUES ($1, $2, 'sentry', $3, $4, $5, 0, $6, $7, $7, $8, $8) RETURNING id",
                )
                .bind(org)
                .bind(link.issue_id)
                .bind(&link.sentry_issue)
                .bind(&link.web_url)
                .bind(&link.actor)
                .bind(&link.installation)
                .bind(robot)
                .bind(link.at)
                .fetch_one(&mut *tx)
                .await?;
                Self::rewrite_sentry_field(&mut tx, link.issue_id, link.at).await?;
                for (_, issue) in &moved {
                    Self::rewrite_sentry_field(&mut tx, *issue, link.at).await?;
                }
                let view = Self::remote_view(&mut *tx, &link.org, link.issue_id, id)
                    .await?
                    .ok_or_else(|| Error::Internal(anyhow::anyhow!("remote link {id} vanished after insert")))?;
                tx.commit().await?;
                Ok(view)
            }

            async fn sentry_link_state(&self, remote_link: i64) -> Result<Option<(String, String, String)>> {
                Ok(sqlx::query_as(
                    "SELECT r.installation, r.key, i.status FROM remote_links r JOIN issues i ON i.id = r.issue_id \
                     WHERE r.id = $1 AND r.app_id = 'sentry' AND r.installation IS NOT NULL",
                )
                .bind(remote_link)
                .fetch_optional(self.read())
                .await?)
            }

            async fn sentry_linked_issues(&self, installation: &str, sentry_issue: &str) -> Result<Vec<(i64, String)>> {
                Ok(sqlx::query_as(
                    "SELECT i.id, i.status FROM remote_links r JOIN issues i ON i.id = r.issue_id \
                     WHERE r.app_id = 'sentry' AND r.installation = $1 AND r.key = $2 ORDER BY i.id",
                )
                .bind(installation)
                .bind(sentry_issue)
                .fetch_all(self.read())
                .await?)
            }

            async fn create_app(&self, org: &OrgId, app: &Application, at: Millis) -> Result<()> {
                let r = sqlx::query(
                    "INSERT INTO applications (org_id, id, name, type, default_icon_url, front_url, responsible, oauth_token, \
                     entity_info_url, create_link_url, remove_link_url, can_link_from_front, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(org.as_str())
                .bind(&app.id)
                .bind(&app.name)
                .bind(&app.ty)
                .bind(&app.default_icon_url)
                .bind(&app.front_url)
                .bind(&app.responsible)
                .bind(app.oauth_token.as_ref().map(|s| s.0.clone()))
                .bind(&app.entity_info_url)
                .bind(&app.create_link_url)
                .bind(&app.remove_link_url)
                .bind(i64::from(app.can_link_from_front))
                .bind(at)
                .execute(self.write_pool())
                .await;
                match r {
                    Ok(_) => Ok(()),
                    Err(e) if is_unique_violation(&e) => Err(Error::Conflict(format!("Application {} already exists", app.id))),
                    Err(e) => Err(e.into()),
                }
            }

            async fn get_app(&self, org: &OrgId, id: &str) -> Result<Option<Application>> {
                let row = sqlx::query_as::<$db, AppRow>(sqlx::AssertSqlSafe(format!("{APP_SELECT} WHERE org_id = $1 AND id = $2")))
                    .bind(org.as_str())
                    .bind(id)
                    .fetch_optional(self.read())
                    .await?;
                Ok(row.map(AppRow::into_app))
            }

            async fn list_apps(&self, org: &OrgId) -> Result<Vec<Application>> {
                let rows = sqlx::query_as::<$db, AppRow>(sqlx::AssertSqlSafe(format!("{APP_SELECT} WHERE org_id = $1 ORDER BY id")))
                    .bind(org.as_str())
                    .fetch_all(self.read())
                    .await?;
                Ok(rows.into_iter().map(AppRow::into_app).collect())
            }

            async fn update_app(&self, org: &OrgId, app: &Application) -> Result<()> {
                sqlx::query(
                    "UPDATE applications SET name = $3, type = $4, default_icon_url = $5, front_url = $6, responsible = $7, \
                     oauth_token = $8, entity_info_url = $9, create_link_url = $10, remove_link_url = $11, \
                     can_link_from_front = $12 WHERE org_id = $1 AND id = $2",
                )
                .bind(org.as_str())
                .bind(&app.id)
                .bind(&app.name)
                .bind(&app.ty)
                .bind(&app.default_icon_url)
                .bind(&app.front_url)
                .bind(&app.responsible)
                .bind(app.oauth_token.as_ref().map(|s| s.0.clone()))
                .bind(&app.entity_info_url)
                .bind(&app.create_link_url)
                .bind(&app.remove_link_url)
                .bind(i64::from(app.can_link_from_front))
                .execute(self.write_pool())
                .await?;
                Ok(())
            }

            async fn delete_app(&self, org: &OrgId, id: &str) -> Result<bool> {
                let mut tx = self.write().await?;
                let used: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM remote_links WHERE org_id = $1 AND app_id = $2")
                    .bind(org.as_str())
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                if used > 0 {
                    return Err(Error::rule("application", format!("Application {id} still has {used} remote links")));
                }
                let n = sqlx::query("DELETE FROM applications WHERE org_id = $1 AND id = $2")
                    .bind(org.as_str())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(n > 0)
            }

            async fn create_remote_link(&self, new: &NewRemoteLink) -> Result<RemoteLink> {
                let mut tx = self.write().await?;
                let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM remote_links WHERE issue_id = $1 AND app_id = $2 AND key = $3")
                    .bind(new.issue_id)
                    .bind(&new.app_id)
                    .bind(&new.key)
                    .fetch_optional(&mut *tx)
                    .await?;
                let already = || Error::Conflict(format!("Object {} of {} is already linked to this issue", new.key, new.app_id));
                if taken.is_some() {
                    return Err(already());
                }
                let inserted = sqlx::query_scalar::<$db, i64>(
                    "INSERT INTO remote_links (org_id, issue_id, app_id, key, web_url, actor, backlink, created_by, updated_by, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $9) RETURNING id",
                )
                .bind(new.org.as_str())
                .bind(new.issue_id)
                .bind(&new.app_id)
                .bind(&new.key)
                .bind(&new.web_url)
                .bind(&new.actor)
                .bind(i64::from(new.backlink.is_some()))
                .bind(new.by)
                .bind(new.at)
                .fetch_one(&mut *tx)
                .await;
                let id = match inserted {
                    Ok(id) => id,
                    Err(e) if is_unique_violation(&e) => return Err(already()),
                    Err(e) => return Err(e.into()),
                };
                if let Some(ev) = &new.backlink {
                    Self::insert_event(&mut tx, new.org.as_str(), ev, Some(id), None, new.at).await?;
                }
                sqlx::query("UPDATE issues SET updated_at = $2 WHERE id = $1").bind(new.issue_id).bind(new.at).execute(&mut *tx).await?;
                let view = Self::remote_view(&mut *tx, &new.org, new.issue_id, id)
                    .await?
                    .ok_or_else(|| Error::Internal(anyhow::anyhow!("remote link {id} vanished after insert")))?;
                tx.commit().await?;
                Ok(view)
            }

            async fn list_remote_links(&self, org: &OrgId, issue: i64) -> Result<Vec<RemoteLink>> {
                let rows = sqlx::query_as::<$db, RemoteRow>(sqlx::AssertSqlSafe(format!(
                    "{REMOTE_SELECT} WHERE r.org_id = $1 AND r.issue_id = $2 ORDER BY r.id"
                )))
                .bind(org.as_str())
                .bind(issue)
                .fetch_all(self.read())
                .await?;
                Ok(rows.into_iter().map(RemoteRow::into_link).collect())
            }

            async fn get_remote_link(&self, org: &OrgId, issue: i64, id: i64) -> Result<Option<RemoteLink>> {
                Self::remote_view(self.read(), org, issue, id).await
            }

            async fn delete_remote_link(
                &self,
                org: &OrgId,
                issue: i64,
                id: i64,
                remove: Option<NewEvent>,
                at: Millis,
            ) -> Result<bool> {
                let mut tx = self.write().await?;
                let backlink: Option<i64> = sqlx::query_scalar("SELECT backlink FROM remote_links WHERE org_id = $1 AND issue_id = $2 AND id = $3")
                    .bind(org.as_str())
                    .bind(issue)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(backlink) = backlink else { return Ok(false) };
                if backlink != 0 {
                    // Locked (on PostgreSQL) so a worker cannot claim it between this read and the cancel below; a
                    // claim that committed first shows as `locked_until` and the remove is queued after it.
                    let create = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT id, state, locked_until FROM outbox WHERE remote_link_id = $1 AND kind = 'backlink.create'{}",
                        Self::FOR_UPDATE
                    )))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(row) = create {
                        let create_id: i64 = row.try_get(0)?;
                        let state: String = row.try_get(1)?;
                        let locked: Option<i64> = row.try_get(2)?;
                        let in_flight = locked.is_some_and(|l| l > at);
                        match state.as_str() {
                            // Not sent yet: cancel it, and there is nothing to remove.
                            "pending" if !in_flight => {
                                sqlx::query("UPDATE outbox SET state = 'cancelled', updated_at = $2, last_error = 'cancelled: link removed' WHERE id = $1")
                                    .bind(create_id)
                                    .bind(at)
                                    .execute(&mut *tx)
                                    .await?;
                            }
                            // Sent, or being sent: remove it once the create has gone through.
                            "pending" | "delivered" => {
                                if let Some(ev) = &remove {
                                    let after = (state == "pending").then_some(create_id);
                                    Self::insert_event(&mut tx, org.as_str(), ev, Some(id), after, at).await?;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                sqlx::query("DELETE FROM remote_links WHERE id = $1").bind(id).execute(&mut *tx).await?;
                sqlx::query("UPDATE issues SET updated_at = $2 WHERE id = $1").bind(issue).bind(at).execute(&mut *tx).await?;
                // Deleting a Sentry link through the API keeps `sentryIssues` true to the remaining links.
                Self::rewrite_sentry_field(&mut tx, issue, at).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn claim_events(&self, now: Millis, lease_ms: i64, limit: i64) -> Result<Vec<OutboxEvent>> {
                // A read first: an idle outbox costs no write transaction per poll (on SQLite every write also makes
                // the API's kept answers stale).
                let due: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM outbox WHERE state = 'pending' AND next_attempt_at <= $1 LIMIT 1",
                )
                .bind(now)
                .fetch_optional(self.read())
                .await?;
                if due.is_none() {
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "UPDATE outbox SET locked_until = $2, attempts = attempts + 1, updated_at = $1 WHERE id IN ( \
                     SELECT o.id FROM outbox o WHERE o.state = 'pending' AND o.next_attempt_at <= $1 \
                     AND (o.locked_until IS NULL OR o.locked_until < $1) \
                     AND (o.after_id IS NULL OR EXISTS (SELECT 1 FROM outbox a WHERE a.id = o.after_id AND a.state = 'delivered')) \
                     ORDER BY o.next_attempt_at, o.id LIMIT $3{}) RETURNING {EVENT_COLUMNS}",
                    Self::SKIP_LOCKED
                );
                let mut tx = self.write().await?;
                let events = sqlx::query_as::<$db, OutboxEvent>(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .bind(now + lease_ms)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(events)
            }

            async fn app_token(&self, org: &str, app: &str) -> Result<Option<Secret>> {
                let t: Option<Option<String>> = sqlx::query_scalar("SELECT oauth_token FROM applications WHERE org_id = $1 AND id = $2")
                    .bind(org)
                    .bind(app)
                    .fetch_optional(self.read())
                    .await?;
                Ok(t.flatten().map(Secret))
            }

            async fn event_delivered(&self, id: i64, at: Millis) -> Result<()> {
                sqlx::query("UPDATE outbox SET state = 'delivered', delivered_at = $2, updated_at = $2, locked_until = NULL, last_error = NULL WHERE id = $1 AND state = 'pending'")
                    .bind(id)
                    .bind(at)
                    .execute(self.write_pool())
                    .await?;
                Ok(())
            }

            async fn event_failed(&self, id: i64, error: &str, retry_at: Option<Millis>, at: Millis) -> Result<()> {
                let mut tx = self.write().await?;
                match retry_at {
                    Some(next) => {
                        sqlx::query("UPDATE outbox SET next_attempt_at = $2, last_error = $3, updated_at = $4, locked_until = NULL WHERE id = $1 AND state = 'pending'")
                            .bind(id)
                            .bind(next)
                            .bind(error)
                            .bind(at)
                            .execute(&mut *tx)
                            .await?;
                    }
                    None => {
                        sqlx::query("UPDATE outbox SET state = 'failed', last_error = $2, updated_at = $3, locked_until = NULL WHERE id = $1 AND state = 'pending'")
                            .bind(id)
                            .bind(error)
                            .bind(at)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("UPDATE outbox SET state = 'cancelled', last_error = 'cancelled: the event before it failed', updated_at = $2 \
                                     WHERE after_id = $1 AND state = 'pending'")
                            .bind(id)
                            .bind(at)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
                Ok(())
            }

            async fn list_events(&self, org: &OrgId, state: Option<&str>, limit: i64) -> Result<Vec<OutboxEvent>> {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM outbox WHERE org_id = $1 AND ($2 IS NULL OR state = $2) ORDER BY id DESC LIMIT $3"
                );
                Ok(sqlx::query_as::<$db, OutboxEvent>(sqlx::AssertSqlSafe(sql))
                    .bind(org.as_str())
                    .bind(state)
                    .bind(limit)
                    .fetch_all(self.read())
                    .await?)
            }

            async fn retry_event(&self, org: &OrgId, id: i64, at: Millis) -> Result<Option<OutboxEvent>> {
                let mut tx = self.write().await?;
                // The create call of a link that has since been removed must not reach the application.
                let orphan: Option<i64> = sqlx::query_scalar(
                    "SELECT o.id FROM outbox o WHERE o.org_id = $1 AND o.id = $2 AND o.kind = 'backlink.create' \
                     AND NOT EXISTS (SELECT 1 FROM remote_links r WHERE r.id = o.remote_link_id)",
                )
                .bind(org.as_str())
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                if orphan.is_some() {
                    return Err(Error::rule("event", "The remote link of this backlink was removed; there is nothing to retry"));
                }
                sqlx::query(
                    "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = $3, locked_until = NULL, updated_at = $3 \
                     WHERE org_id = $1 AND id = $2 AND state IN ('failed', 'cancelled')",
                )
                .bind(org.as_str())
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                let ev = sqlx::query_as::<$db, OutboxEvent>(sqlx::AssertSqlSafe(format!(
                    "SELECT {EVENT_COLUMNS} FROM outbox WHERE org_id = $1 AND id = $2"
                )))
                .bind(org.as_str())
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(ev)
            }
        }
    };
}

pub(super) use impl_store;
