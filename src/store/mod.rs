//! Storage: one `Store` trait, a SQLite and a PostgreSQL implementation, each with its own embedded migrations.
//!
//! Both implementations share one body of SQL (`sql.rs`): timestamps are integer milliseconds and ids are
//! 64-bit integers on both, so only connection handling and locking differ.

pub mod copy;
mod link_batch;
mod link_rules;
mod pg_links;
mod postgres;
mod sql;
mod sqlite;
mod sqlite_links;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::domain::dates::Millis;
use crate::domain::links::{Direction, LinkType, Relationship};
use crate::domain::{FieldType, IssueLocator, OrgId, Role};
use crate::error::Result;

pub use postgres::PgStore;
pub use sqlite::{SqliteStore, Synchronous};

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    /// Server-wide id.
    pub uid: i64,
    /// Unique login.
    pub login: String,
    /// Display name.
    pub display: String,
    /// E-mail, when known.
    pub email: Option<String>,
}

/// A compact user reference, as embedded in other objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRef {
    /// Server-wide id.
    pub uid: i64,
    /// Display name.
    pub display: String,
}

/// Who a token belongs to and where that user may act.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user.
    pub user: User,
    /// The token's id (for revocation).
    pub token_id: i64,
    /// Organization → role.
    pub memberships: Vec<(String, Role)>,
}

/// A token as listed (never its secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenInfo {
    /// Id.
    pub id: i64,
    /// Owner.
    pub uid: i64,
    /// Owner's login.
    pub login: String,
    /// Label.
    pub name: String,
    /// Creation time.
    pub created_at: Millis,
    /// Revocation time.
    pub revoked_at: Option<Millis>,
}

/// A queue.
#[derive(Debug, Clone)]
pub struct Queue {
    /// Server-wide id.
    pub id: i64,
    /// Key, unique in the organization.
    pub key: String,
    /// Name.
    pub name: String,
    /// Lead.
    pub lead: Option<UserRef>,
    /// Default issue type key.
    pub default_type: String,
}

/// A new queue.
#[derive(Debug, Clone)]
pub struct NewQueue {
    /// Key.
    pub key: String,
    /// Name.
    pub name: String,
    /// Lead's uid.
    pub lead: Option<i64>,
    /// Default issue type key.
    pub default_type: String,
}

/// How a client names a queue, user, …: by key/login, by numeric id, or by display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    /// A key or login.
    Key(String),
    /// A numeric id.
    Id(i64),
    /// A display name (case-insensitive).
    Name(String),
}

/// A custom field definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomField {
    /// Id (the JSON key on issues).
    pub id: String,
    /// Name.
    pub name: String,
    /// Value type.
    pub ty: FieldType,
}

/// What the link routes need of an issue: a lookup that reads one row, not the issue's whole view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueHead {
    /// Id.
    pub id: i64,
    /// Key.
    pub key: String,
    /// Creation time.
    pub created_at: Millis,
}

impl From<&Issue> for IssueHead {
    fn from(i: &Issue) -> IssueHead {
        IssueHead {
            id: i.id,
            key: i.key.clone(),
            created_at: i.created_at,
        }
    }
}

/// The heads of issues this process has found or written, by organization and the key or id they were asked by.
///
/// Heads never change: no route or command deletes an issue, moves it to another queue (its key) or edits its
/// creation time, so a head once read from the database stays true for every process sharing it, and needs no
/// invalidation. What is not found is not kept (another process may create it). The link routes look up both
/// issues of every request; this spares them those round trips (`docs/benchmarks.md`).
#[derive(Clone)]
pub(crate) struct HeadCache(Arc<moka::sync::Cache<(OrgId, IssueLocator), IssueHead>>);

impl HeadCache {
    /// How many heads are kept, the least used going first. An entry costs the server about 500 bytes of memory
    /// (inferred from the bench's peak RSS: 76.5 MiB holding 100 000 heads, 53.0 MiB holding 50 000, 24.5 MiB
    /// before the cache; `docs/benchmarks.md`), so at most about 25 MiB.
    const CAPACITY: u64 = 50_000;

    pub(crate) fn new() -> HeadCache {
        HeadCache(Arc::new(moka::sync::Cache::new(Self::CAPACITY)))
    }

    pub(crate) fn get(&self, org: &OrgId, which: &IssueLocator) -> Option<IssueHead> {
        self.0.get(&(org.clone(), which.clone()))
    }

    /// Keeps `head` under `which`.
    pub(crate) fn put(&self, org: &OrgId, which: IssueLocator, head: IssueHead) {
        self.0.insert((org.clone(), which), head);
    }

    /// Keeps the head of an issue just written under its key (how clients name issues).
    pub(crate) fn put_new(&self, org: &OrgId, issue: &Issue) {
        if let Some(key) = crate::domain::IssueKey::parse(&issue.key) {
            self.put(org, IssueLocator::Key(key), IssueHead::from(issue));
        }
    }
}

/// A short issue reference: what a link's `object` or an issue's `parent` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueBrief {
    /// Id.
    pub id: i64,
    /// Key.
    pub key: String,
    /// Summary (the `display`).
    pub summary: String,
}

/// An issue, with everything its JSON shows.
#[derive(Debug, Clone)]
pub struct Issue {
    /// Server-wide id.
    pub id: i64,
    /// `QUEUE-N`.
    pub key: String,
    /// Summary.
    pub summary: String,
    /// Description.
    pub description: Option<String>,
    /// Type key.
    pub ty: String,
    /// Status key.
    pub status: String,
    /// Resolution, when closed with one.
    pub resolution: Option<String>,
    /// The queue (id, key, name).
    pub queue: (i64, String, String),
    /// Assignee.
    pub assignee: Option<UserRef>,
    /// Creator.
    pub created_by: UserRef,
    /// Last editor.
    pub updated_by: UserRef,
    /// Created.
    pub created_at: Millis,
    /// Updated (links bump it too).
    pub updated_at: Millis,
    /// Edit version (links do not bump it).
    pub version: i64,
    /// The client's idempotency key.
    pub unique: Option<String>,
    /// Custom field values by id.
    pub custom: BTreeMap<String, Value>,
    /// Parent issue, from the `subtask` link.
    pub parent: Option<IssueBrief>,
}

/// A new issue, validated.
#[derive(Debug, Clone)]
pub struct NewIssue {
    /// Organization.
    pub org: OrgId,
    /// Queue id.
    pub queue_id: i64,
    /// Summary.
    pub summary: String,
    /// Description.
    pub description: Option<String>,
    /// Type key.
    pub ty: String,
    /// Assignee uid.
    pub assignee: Option<i64>,
    /// Parent issue id (creates a `subtask` link in the same transaction).
    pub parent: Option<i64>,
    /// Idempotency key.
    pub unique: Option<String>,
    /// Custom field values.
    pub custom: BTreeMap<String, Value>,
    /// Creator.
    pub by: i64,
    /// Creation time.
    pub at: Millis,
}

/// An issue import (migrations): historical author and dates, optional fixed key and status.
#[derive(Debug, Clone)]
pub struct ImportIssue {
    /// The fields of a new issue (`by`/`at` are `createdBy`/`createdAt`).
    pub issue: NewIssue,
    /// A fixed number in the queue, from the given key.
    pub number: Option<i64>,
    /// Status key.
    pub status: String,
    /// `updatedAt`/`updatedBy`, when given.
    pub updated: Option<(Millis, i64)>,
}

/// The changes of a PATCH, validated.
#[derive(Debug, Clone, Default)]
pub struct IssuePatch {
    /// New summary.
    pub summary: Option<String>,
    /// New description (`Some(None)` clears it).
    pub description: Option<Option<String>>,
    /// New assignee (`Some(None)` clears it).
    pub assignee: Option<Option<i64>>,
    /// Custom field edits, applied in order.
    pub custom: Vec<(String, FieldEdit)>,
}

/// One edit of a custom field.
#[derive(Debug, Clone)]
pub enum FieldEdit {
    /// Replace (`Value::Null` clears).
    Set(Value),
    /// Add to an array, skipping values already there.
    Add(Vec<Value>),
    /// Remove from an array.
    Remove(Vec<Value>),
}

/// Filters of `_search`.
#[derive(Debug, Clone, Default)]
pub struct IssueFilter {
    /// Queue ids (any of).
    pub queues: Vec<i64>,
    /// Status keys (any of).
    pub statuses: Vec<String>,
    /// Assignee uids (any of); `Some(None)` inside means "unassigned".
    pub assignees: Vec<Option<i64>>,
    /// Type keys (any of).
    pub types: Vec<String>,
    /// Issue keys (any of).
    pub keys: Vec<String>,
    /// Free text in key or summary (the Sentry select).
    pub text: Option<String>,
}

/// A sort order of `_search`: a column and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssueOrder {
    /// The column.
    pub column: OrderColumn,
    /// Ascending?
    pub ascending: bool,
}

/// Sortable columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderColumn {
    /// Queue then number.
    Key,
    /// Creation time.
    CreatedAt,
    /// Update time.
    UpdatedAt,
    /// Status key.
    Status,
    /// Summary.
    Summary,
}

/// A page request: 1-based page, page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based.
    pub page: i64,
    /// Items per page.
    pub per_page: i64,
}

impl Page {
    /// Rows to skip.
    pub fn offset(self) -> i64 {
        (self.page - 1).saturating_mul(self.per_page)
    }
}

/// A link as seen from one of its issues.
#[derive(Debug, Clone)]
pub struct LinkView {
    /// Id.
    pub id: i64,
    /// Type.
    pub ty: LinkType,
    /// The side the viewing issue is on.
    pub direction: Direction,
    /// The viewing issue's key (for `self`).
    pub this_key: String,
    /// The other issue.
    pub object: IssueBrief,
    /// The other issue's status key.
    pub object_status: String,
    /// The other issue's assignee.
    pub object_assignee: Option<UserRef>,
    /// Creator.
    pub created_by: UserRef,
    /// Last editor.
    pub updated_by: UserRef,
    /// Created.
    pub created_at: Millis,
    /// Updated.
    pub updated_at: Millis,
}

/// A new link, validated at the boundary; the store checks the rules that need data.
#[derive(Debug, Clone)]
pub struct NewLink {
    /// Organization.
    pub org: OrgId,
    /// The issue in the URL.
    pub this: i64,
    /// The other issue.
    pub other: i64,
    /// The relationship as the issue in the URL states it.
    pub relationship: Relationship,
    /// Author and dates: (createdBy, createdAt, updatedBy, updatedAt).
    pub created: (i64, Millis),
    /// Last editor and time.
    pub updated: (i64, Millis),
    /// An import: historical dates, `depends` cycles allowed, issues' `updatedAt` untouched.
    pub import: bool,
}

/// A secret that `Debug` does not print.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An external application registered in an organization (contract §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// What clients send as `origin`.
    pub id: String,
    /// Name.
    pub name: String,
    /// Type (defaults to the id).
    pub ty: String,
    /// Icon.
    pub default_icon_url: Option<String>,
    /// The object's page, with `{{remoteKey}}`.
    pub front_url: Option<String>,
    /// Who is responsible for it.
    pub responsible: Option<String>,
    /// Sent as `Authorization: OAuth <token>` on calls to the app; never returned.
    pub oauth_token: Option<Secret>,
    /// Object info, with `{{remoteKey}}`.
    pub entity_info_url: Option<String>,
    /// Backlink creation endpoint.
    pub create_link_url: Option<String>,
    /// Backlink removal, with `{{issueKey}}` and `{{remoteKey}}`.
    pub remove_link_url: Option<String>,
    /// Whether users may link from the web UI.
    pub can_link_from_front: bool,
}

/// The delivery state of a remote link's backlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// pending, delivered, failed or cancelled.
    pub state: String,
    /// Attempts so far.
    pub attempts: i64,
    /// The last error.
    pub last_error: Option<String>,
}

/// A link from an issue to an object of an application.
#[derive(Debug, Clone)]
pub struct RemoteLink {
    /// Id.
    pub id: i64,
    /// The issue's key.
    pub issue_key: String,
    /// The issue's id.
    pub issue_id: i64,
    /// Application (id, type, name).
    pub app: (String, String, String),
    /// The object's key.
    pub key: String,
    /// The object's page as the creator gave it (Sentry's `webUrl`).
    pub web_url: Option<String>,
    /// Who created it on the other side (Sentry's actor), as JSON.
    pub actor: Option<String>,
    /// Backlink delivery, when one was asked for.
    pub backlink: Option<Delivery>,
    /// Creator.
    pub created_by: UserRef,
    /// Last editor.
    pub updated_by: UserRef,
    /// Created.
    pub created_at: Millis,
    /// Updated.
    pub updated_at: Millis,
}

/// A call to another system, to be made by the outbox worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// What it is (`backlink.create`, `backlink.remove`, …).
    pub kind: String,
    /// HTTP method.
    pub method: String,
    /// Target URL.
    pub url: String,
    /// JSON body.
    pub body: Option<String>,
    /// The application whose token authorises it.
    pub app_id: Option<String>,
}

/// A new remote link and the backlink event it causes.
#[derive(Debug, Clone)]
pub struct NewRemoteLink {
    /// Organization.
    pub org: OrgId,
    /// Issue id.
    pub issue_id: i64,
    /// Application id.
    pub app_id: String,
    /// Object key.
    pub key: String,
    /// Object page.
    pub web_url: Option<String>,
    /// Remote actor JSON.
    pub actor: Option<String>,
    /// The backlink call, when `backlink=true` and the app takes one.
    pub backlink: Option<NewEvent>,
    /// Creator.
    pub by: i64,
    /// Time.
    pub at: Millis,
}

/// An outbox event.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxEvent {
    /// Id.
    pub id: i64,
    /// Organization.
    pub org_id: String,
    /// Kind.
    pub kind: String,
    /// Sent as `Idempotency-Key`, the same on every attempt.
    pub idempotency_key: String,
    /// HTTP method.
    pub method: String,
    /// URL.
    pub url: String,
    /// JSON body.
    pub body: Option<String>,
    /// Application.
    pub app_id: Option<String>,
    /// The remote link it is about.
    pub remote_link_id: Option<i64>,
    /// pending, delivered, failed, cancelled.
    pub state: String,
    /// Attempts so far.
    pub attempts: i64,
    /// When the next attempt is due.
    pub next_attempt_at: Millis,
    /// The last error.
    pub last_error: Option<String>,
    /// Created.
    pub created_at: Millis,
    /// Updated (last attempt).
    pub updated_at: Millis,
    /// Delivered.
    pub delivered_at: Option<Millis>,
}

/// A node of the dependency graph.
#[derive(Debug, Clone)]
pub struct GraphNode {
    /// The issue.
    pub issue: IssueBrief,
    /// Its status key.
    pub status: String,
    /// Its assignee.
    pub assignee: Option<UserRef>,
}

/// The neighbourhood of an issue: nodes, and edges as (outward key, inward key, type).
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// The issues reached, the root first.
    pub nodes: Vec<GraphNode>,
    /// The links among them.
    pub edges: Vec<(String, String, LinkType)>,
}

/// A Sentry Integration Platform installation, mapped to a Tether organization.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Installation {
    /// Sentry's installation uuid.
    pub uuid: String,
    /// The Tether organization it maps to.
    pub org_id: String,
    /// The Sentry organization's slug.
    pub sentry_org_slug: Option<String>,
    /// The Sentry app's uuid (webhooks it causes are ours).
    pub app_uuid: Option<String>,
    /// Access token.
    pub token: Option<Secret>,
    /// Refresh token.
    pub refresh_token: Option<Secret>,
    /// When the access token expires.
    pub expires_at: Option<Millis>,
}

/// A Sentry issue to link to a Tether issue (contract §8).
#[derive(Debug, Clone)]
pub struct SentryLink {
    /// Organization.
    pub org: OrgId,
    /// The Tether issue.
    pub issue_id: i64,
    /// The Sentry issue id.
    pub sentry_issue: String,
    /// The Sentry issue's page.
    pub web_url: Option<String>,
    /// Sentry's actor, as JSON.
    pub actor: Option<String>,
    /// The installation it came through.
    pub installation: String,
    /// Replace an existing link of this pair instead of answering 409.
    pub replace: bool,
    /// Time.
    pub at: Millis,
}

/// A point in the sequence of a store's writes, read before an answer is computed from the database.
///
/// `generation` changes when a write takes the writer connection and again when the connection is back in the
/// pool, which is after its `COMMIT` or `ROLLBACK` has run (sqlx pings the connection before it releases it, even
/// when the future that used it was dropped half-way). `quiet` says that no write held the connection. An answer
/// read while quiet, with the same generation before and after, shows the database as it is until the next write
/// starts; an answer cached under a generation is never served under another, so a write is seen by every read that
/// starts after the write was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadEpoch {
    /// Changes at the start and at the end of every write.
    pub generation: u64,
    /// No write was under way.
    pub quiet: bool,
}

/// The shared store handle.
pub type DynStore = Arc<dyn Store>;

/// Everything Tether keeps.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Whether the database answers.
    async fn ping(&self) -> Result<()>;
    /// Which backend this is (`sqlite` or `postgres`).
    fn backend(&self) -> &'static str;
    /// Where this process stands in the sequence of its own writes, when every write that matters goes through
    /// it (SQLite: one writer connection); `None` when other processes write too (PostgreSQL replicas). The read
    /// cache of the API keys its answers by it (see [`ReadEpoch`]).
    fn read_epoch(&self) -> Option<ReadEpoch>;

    /// On an empty database, once even when processes race: creates the organization, the `admin` user and a token
    /// with this hash. Returns whether this call did it.
    async fn bootstrap(&self, org: &OrgId, token_hash: &str, at: Millis) -> Result<bool>;
    /// The organization the first start created.
    async fn bootstrap_org(&self) -> Result<Option<String>>;
    /// Creates an organization.
    async fn create_org(&self, id: &OrgId, name: &str, at: Millis) -> Result<()>;
    /// Lists organizations (id, name).
    async fn list_orgs(&self) -> Result<Vec<(String, String)>>;
    /// Creates a user.
    async fn create_user(&self, login: &str, display: &str, email: Option<&str>, at: Millis) -> Result<User>;
    /// Finds a user anywhere by login or uid (CLI).
    async fn find_user(&self, who: &Locator) -> Result<Option<User>>;
    /// Grants or changes a role.
    async fn set_membership(&self, org: &OrgId, uid: i64, role: Role) -> Result<()>;
    /// Stores a token hash; returns the token id.
    async fn create_token(&self, uid: i64, name: &str, hash: &str, at: Millis) -> Result<i64>;
    /// Lists tokens, of one user or all.
    async fn list_tokens(&self, uid: Option<i64>) -> Result<Vec<TokenInfo>>;
    /// Revokes a token; `owner` restricts to that user's tokens. Returns whether one was revoked.
    async fn revoke_token(&self, id: i64, owner: Option<i64>, at: Millis) -> Result<bool>;
    /// Resolves a token hash.
    async fn authenticate(&self, hash: &str) -> Result<Option<Principal>>;

    /// A member of the organization by uid or login.
    async fn get_member(&self, org: &OrgId, who: &Locator) -> Result<Option<User>>;
    /// Members, paginated, with the total.
    async fn list_members(&self, org: &OrgId, page: Page) -> Result<(Vec<User>, i64)>;

    /// Creates a queue.
    async fn create_queue(&self, org: &OrgId, q: &NewQueue, at: Millis) -> Result<Queue>;
    /// A queue by key, id or name.
    async fn get_queue(&self, org: &OrgId, which: &Locator) -> Result<Option<Queue>>;
    /// Queues, paginated, with the total.
    async fn list_queues(&self, org: &OrgId, page: Page) -> Result<(Vec<Queue>, i64)>;

    /// Custom fields.
    async fn list_fields(&self, org: &OrgId) -> Result<Vec<CustomField>>;
    /// Creates a custom field; creating an identical one again is not an error (returns `false`).
    async fn create_field(&self, org: &OrgId, f: &CustomField, at: Millis) -> Result<bool>;

    /// Creates an issue (and its parent link).
    async fn create_issue(&self, new: &NewIssue) -> Result<Issue>;
    /// Imports an issue with its history.
    async fn import_issue(&self, imp: &ImportIssue) -> Result<Issue>;
    /// An issue by key or id.
    async fn get_issue(&self, org: &OrgId, which: &IssueLocator) -> Result<Option<Issue>>;
    /// An issue's id, key and creation time, by key or id.
    async fn issue_head(&self, org: &OrgId, which: &IssueLocator) -> Result<Option<IssueHead>>;
    /// An issue by its `unique`.
    async fn find_by_unique(&self, org: &OrgId, unique: &str) -> Result<Option<Issue>>;
    /// Applies a PATCH; `if_match` is the expected version.
    async fn update_issue(
        &self,
        org: &OrgId,
        id: i64,
        patch: &IssuePatch,
        if_match: Option<i64>,
        by: i64,
        at: Millis,
    ) -> Result<Issue>;
    /// Moves an issue from one of `from` to `to`.
    #[allow(clippy::too_many_arguments)] // each is a distinct fact of the change; a struct would only rename them
    async fn transition_issue(
        &self,
        org: &OrgId,
        id: i64,
        from: &[&str],
        to: &str,
        resolution: Option<&str>,
        by: i64,
        at: Millis,
    ) -> Result<Issue>;
    /// Searches, paginated, with the total.
    async fn search_issues(
        &self,
        org: &OrgId,
        filter: &IssueFilter,
        order: IssueOrder,
        page: Page,
    ) -> Result<(Vec<Issue>, i64)>;

    /// Creates a link, checking every rule of contract §5 in one transaction.
    async fn create_link(&self, new: &NewLink) -> Result<LinkView>;
    /// Every link of an issue, with a fixed number of queries.
    async fn list_links(&self, org: &OrgId, issue: i64) -> Result<Vec<LinkView>>;
    /// One link of an issue.
    async fn get_link(&self, org: &OrgId, issue: i64, link: i64) -> Result<Option<LinkView>>;
    /// Deletes a link of an issue; returns whether it existed.
    async fn delete_link(&self, org: &OrgId, issue: i64, link: i64, at: Millis) -> Result<bool>;
    /// Imports a batch of links in one transaction; each record succeeds or fails on its own.
    async fn import_links(&self, org: &OrgId, batch: &[NewLink]) -> Result<Vec<Result<i64>>>;

    /// The issues reachable from `root` through links of `types` within `depth` steps, following outward → inward
    /// (`out`), inward → outward (`inward`) or both, and the links among them. One recursive query for the walk.
    async fn issue_graph(
        &self,
        org: &OrgId,
        root: i64,
        types: &[LinkType],
        out: bool,
        inward: bool,
        depth: i64,
    ) -> Result<Graph>;

    /// Writes a consistent copy of the whole database to a new file while writes go on (SQLite `VACUUM INTO`).
    async fn backup_to(&self, path: &str) -> Result<()>;
    /// A page of a table's rows (`tether db copy`).
    async fn export_rows(&self, table: &copy::TableSpec, offset: i64, limit: i64) -> Result<Vec<Vec<copy::Cell>>>;
    /// Inserts rows into a table in one transaction (`tether db copy`).
    async fn import_rows(&self, table: &copy::TableSpec, rows: &[Vec<copy::Cell>]) -> Result<()>;
    /// After a copy: moves PostgreSQL's identity sequences past the copied ids.
    async fn finish_copy(&self) -> Result<()>;

    /// Creates or updates an installation (tokens are kept when the new record has none).
    async fn upsert_installation(&self, inst: &Installation, at: Millis) -> Result<()>;
    /// An installation.
    async fn get_installation(&self, uuid: &str) -> Result<Option<Installation>>;
    /// Forgets an installation. Returns whether it existed.
    async fn delete_installation(&self, uuid: &str) -> Result<bool>;
    /// Stores fresh tokens.
    async fn set_installation_tokens(
        &self,
        uuid: &str,
        token: &Secret,
        refresh: Option<&Secret>,
        expires_at: Option<Millis>,
        at: Millis,
    ) -> Result<()>;
    /// Queues an event; with `key`, a second event with the same key is dropped (returns `false`).
    async fn enqueue_event(&self, org: &str, ev: &NewEvent, key: Option<&str>, at: Millis) -> Result<bool>;
    /// The organization's robot user `sentry` (created on first use, no token).
    async fn sentry_robot(&self, org: &OrgId, at: Millis) -> Result<i64>;
    /// Links a Sentry issue: the `sentry` application and the `sentryIssues` field are created on first use, a link
    /// of the same Sentry issue on another Tether issue (same installation) moves here, and `sentryIssues` is
    /// rewritten on every issue touched — all in one transaction.
    async fn sentry_link(&self, link: &SentryLink, robot: i64) -> Result<RemoteLink>;
    /// For a Sentry remote link: (installation, Sentry issue id, the Tether issue's status key), if it still exists.
    async fn sentry_link_state(&self, remote_link: i64) -> Result<Option<(String, String, String)>>;
    /// The Tether issues a Sentry issue is linked to through an installation: (issue id, status key).
    async fn sentry_linked_issues(&self, installation: &str, sentry_issue: &str) -> Result<Vec<(i64, String)>>;

    /// Registers an application (409 when the id is taken).
    async fn create_app(&self, org: &OrgId, app: &Application, at: Millis) -> Result<()>;
    /// An application.
    async fn get_app(&self, org: &OrgId, id: &str) -> Result<Option<Application>>;
    /// Every application of the organization.
    async fn list_apps(&self, org: &OrgId) -> Result<Vec<Application>>;
    /// Replaces an application's fields.
    async fn update_app(&self, org: &OrgId, app: &Application) -> Result<()>;
    /// Deletes an application; 422 while remote links use it. Returns whether it existed.
    async fn delete_app(&self, org: &OrgId, id: &str) -> Result<bool>;

    /// Creates a remote link and its backlink event in one transaction (409 when the object is linked already).
    async fn create_remote_link(&self, new: &NewRemoteLink) -> Result<RemoteLink>;
    /// The remote links of an issue.
    async fn list_remote_links(&self, org: &OrgId, issue: i64) -> Result<Vec<RemoteLink>>;
    /// One remote link of an issue.
    async fn get_remote_link(&self, org: &OrgId, issue: i64, id: i64) -> Result<Option<RemoteLink>>;
    /// Deletes a remote link. When its backlink was created (or is being created), `remove` is queued after it;
    /// when the create call is still waiting, both are cancelled instead. Returns whether it existed.
    async fn delete_remote_link(
        &self,
        org: &OrgId,
        issue: i64,
        id: i64,
        remove: Option<NewEvent>,
        at: Millis,
    ) -> Result<bool>;

    /// Claims up to `limit` due events for `lease_ms` (one claimer per event, across processes).
    async fn claim_events(&self, now: Millis, lease_ms: i64, limit: i64) -> Result<Vec<OutboxEvent>>;
    /// The OAuth token of an application (for the worker only).
    async fn app_token(&self, org: &str, app: &str) -> Result<Option<Secret>>;
    /// Records a delivery.
    async fn event_delivered(&self, id: i64, at: Millis) -> Result<()>;
    /// Records a failed attempt: retried at `retry_at`, or `failed` for good when `None` (which also cancels the
    /// events queued after it).
    async fn event_failed(&self, id: i64, error: &str, retry_at: Option<Millis>, at: Millis) -> Result<()>;
    /// Events of an organization, optionally in one state, newest first.
    async fn list_events(&self, org: &OrgId, state: Option<&str>, limit: i64) -> Result<Vec<OutboxEvent>>;
    /// Puts a failed or cancelled event back in the queue, due now. Returns it when it existed.
    async fn retry_event(&self, org: &OrgId, id: i64, at: Millis) -> Result<Option<OutboxEvent>>;
}

/// Opens the store a URL names (`sqlite://PATH`, `postgres://…`), runs its migrations.
pub async fn open(url: &str, sync: Synchronous) -> anyhow::Result<DynStore> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url, sync).await?))
    } else {
        anyhow::bail!("unsupported database URL (expected sqlite://PATH or postgres://…)")
    }
}
