//! The domain: newtypes, the fixed vocabularies (issue types, statuses, transitions, link types) and the
//! pure rules. Nothing here does I/O; everything is checked once at the HTTP boundary.

pub mod dates;
pub mod links;

use std::fmt;

/// A role a user holds in one organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read only.
    Reader,
    /// Read and edit issues, links, remote links, link import.
    Member,
    /// Everything in the organization.
    Admin,
}

impl Role {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored or typed role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "reader" => Some(Role::Reader),
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operation requires, as tagged in the OpenAPI document (`x-tether-access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Public,
    /// Any role in the organization.
    Reader,
    /// Member or admin.
    Member,
    /// Admin only.
    Admin,
    /// Authenticated by Sentry's request signature.
    SentrySignature,
}

impl Access {
    /// The value of `x-tether-access`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Reader => "reader",
            Access::Member => "member",
            Access::Admin => "admin",
            Access::SentrySignature => "sentry-signature",
        }
    }

    /// Whether `role` may perform an operation with this access level.
    pub fn allows(self, role: Role) -> bool {
        match self {
            Access::Public | Access::Reader | Access::SentrySignature => true,
            Access::Member => role >= Role::Member,
            Access::Admin => role == Role::Admin,
        }
    }
}

/// An organization id: `[A-Za-z0-9_-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrgId(String);

impl OrgId {
    /// Validates an organization id.
    pub fn parse(s: &str) -> Option<OrgId> {
        let ok =
            !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| OrgId(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A queue key: 1–15 uppercase Latin letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKey(String);

impl QueueKey {
    /// Validates a queue key.
    pub fn parse(s: &str) -> Option<QueueKey> {
        let ok = !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_uppercase());
        ok.then(|| QueueKey(s.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An issue key `QUEUE-N` with 1 ≤ N < 10^18 (it fits an `i64` with room for the counter).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IssueKey {
    /// The queue part.
    pub queue: QueueKey,
    /// The number within the queue.
    pub number: i64,
}

impl IssueKey {
    /// Parses `QUEUE-N`.
    pub fn parse(s: &str) -> Option<IssueKey> {
        let (q, n) = s.rsplit_once('-')?;
        let queue = QueueKey::parse(q)?;
        if n.is_empty() || n.len() > 18 || !n.bytes().all(|b| b.is_ascii_digit()) || n.starts_with('0') {
            return None;
        }
        let number = n.parse().ok()?;
        Some(IssueKey { queue, number })
    }
}

impl fmt::Display for IssueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.queue.0, self.number)
    }
}

/// How a path or body names an issue: by key or by numeric id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IssueLocator {
    /// `QUEUE-N`.
    Key(IssueKey),
    /// The server-wide numeric id.
    Id(i64),
}

impl IssueLocator {
    /// Parses a key or an id; anything else is `None`.
    pub fn parse(s: &str) -> Option<IssueLocator> {
        let s = s.trim();
        if let Some(k) = IssueKey::parse(s) {
            return Some(IssueLocator::Key(k));
        }
        if !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().ok().map(IssueLocator::Id);
        }
        None
    }
}

impl fmt::Display for IssueLocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IssueLocator::Key(k) => k.fmt(f),
            IssueLocator::Id(id) => id.fmt(f),
        }
    }
}

/// A fixed vocabulary entry (issue type or status): numeric id, key, display name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named {
    /// Numeric id, rendered as a string.
    pub id: i64,
    /// Stable key.
    pub key: &'static str,
    /// Display name.
    pub display: &'static str,
}

/// Issue types.
pub const ISSUE_TYPES: [Named; 3] = [
    Named {
        id: 1,
        key: "bug",
        display: "Bug",
    },
    Named {
        id: 2,
        key: "task",
        display: "Task",
    },
    Named {
        id: 3,
        key: "epic",
        display: "Epic",
    },
];

/// Statuses.
pub const STATUSES: [Named; 3] = [
    Named {
        id: 1,
        key: "open",
        display: "Open",
    },
    Named {
        id: 2,
        key: "inProgress",
        display: "In progress",
    },
    Named {
        id: 3,
        key: "closed",
        display: "Closed",
    },
];

/// Finds a vocabulary entry by key, numeric id or display name (names case-insensitively).
pub fn find_named(
    table: &'static [Named],
    key: Option<&str>,
    id: Option<&str>,
    name: Option<&str>,
) -> Option<&'static Named> {
    table.iter().find(|n| {
        key.is_some_and(|k| n.key == k || n.key.eq_ignore_ascii_case(k))
            || id.is_some_and(|i| i.trim().parse::<i64>().ok() == Some(n.id))
            || name.is_some_and(|m| n.display.eq_ignore_ascii_case(m.trim()) || n.key.eq_ignore_ascii_case(m.trim()))
    })
}

/// Looks up an issue type by key.
pub fn issue_type(key: &str) -> Option<&'static Named> {
    ISSUE_TYPES.iter().find(|t| t.key == key)
}

/// Looks up a status by key.
pub fn status(key: &str) -> Option<&'static Named> {
    STATUSES.iter().find(|t| t.key == key)
}

/// A workflow transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Its id in URLs.
    pub id: &'static str,
    /// Display name.
    pub display: &'static str,
    /// The status key it leads to.
    pub to: &'static str,
    /// The status keys it starts from.
    pub from: &'static [&'static str],
}

/// The default workflow: open → start_progress → inProgress, any open status → close → closed, closed → reopen → open.
pub const TRANSITIONS: [Transition; 3] = [
    Transition {
        id: "start_progress",
        display: "Start progress",
        to: "inProgress",
        from: &["open"],
    },
    Transition {
        id: "close",
        display: "Close",
        to: "closed",
        from: &["open", "inProgress"],
    },
    Transition {
        id: "reopen",
        display: "Reopen",
        to: "open",
        from: &["closed"],
    },
];

/// The transitions available from a status.
pub fn transitions_from(status: &str) -> impl Iterator<Item = &'static Transition> + '_ {
    TRANSITIONS.iter().filter(move |t| t.from.contains(&status))
}

/// A custom field's value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Free text.
    String,
    /// A JSON number.
    Number,
    /// `YYYY-MM-DD`.
    Date,
    /// A date and time in the API's format.
    DateTime,
    /// A user reference.
    User,
    /// An array of strings.
    StringArray,
}

impl FieldType {
    /// Parses `schema.type` (+ `schema.items` for arrays).
    pub fn parse(ty: &str, items: Option<&str>) -> Option<FieldType> {
        match (ty, items) {
            ("string", _) => Some(FieldType::String),
            ("number", _) => Some(FieldType::Number),
            ("date", _) => Some(FieldType::Date),
            ("datetime", _) => Some(FieldType::DateTime),
            ("user", _) => Some(FieldType::User),
            ("array", Some("string") | None) => Some(FieldType::StringArray),
            _ => None,
        }
    }

    /// `schema.type`.
    pub fn schema_type(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Number => "number",
            FieldType::Date => "date",
            FieldType::DateTime => "datetime",
            FieldType::User => "user",
            FieldType::StringArray => "array",
        }
    }

    /// `schema.items`, for arrays.
    pub fn schema_items(self) -> Option<&'static str> {
        (self == FieldType::StringArray).then_some("string")
    }
}

/// A custom field id: a Latin letter then letters, digits or `_`, at most 64 characters.
pub fn valid_field_id(s: &str) -> bool {
    let mut b = s.bytes();
    s.len() <= 64
        && b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The system fields every issue has; custom field ids may not take these names.
pub const SYSTEM_FIELDS: [(&str, &str, &str); 15] = [
    ("summary", "Summary", "string"),
    ("description", "Description", "string"),
    ("type", "Type", "issuetype"),
    ("status", "Status", "status"),
    ("queue", "Queue", "queue"),
    ("assignee", "Assignee", "user"),
    ("parent", "Parent issue", "issue"),
    ("createdBy", "Created by", "user"),
    ("updatedBy", "Updated by", "user"),
    ("createdAt", "Created", "datetime"),
    ("updatedAt", "Updated", "datetime"),
    ("key", "Key", "string"),
    ("version", "Version", "number"),
    ("unique", "Unique", "string"),
    ("id", "Id", "string"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_keys_need_an_uppercase_queue_and_a_positive_number() {
        assert_eq!(
            IssueKey::parse("TEST-12").map(|k| k.to_string()).as_deref(),
            Some("TEST-12")
        );
        assert!(IssueKey::parse("test-1").is_none());
        assert!(IssueKey::parse("TEST-0").is_none());
        assert!(IssueKey::parse("TEST-01").is_none());
        assert!(IssueKey::parse("TEST-").is_none());
        assert!(IssueKey::parse("-1").is_none());
        assert!(IssueKey::parse("ABCDEFGHIJKLMNOP-1").is_none());
    }

    #[test]
    fn an_issue_locator_is_a_key_or_a_number() {
        assert_eq!(IssueLocator::parse("42"), Some(IssueLocator::Id(42)));
        assert!(matches!(IssueLocator::parse("Q-3"), Some(IssueLocator::Key(_))));
        assert_eq!(IssueLocator::parse("4x"), None);
        assert_eq!(IssueLocator::parse("99999999999999999999"), None);
    }

    #[test]
    fn org_ids_are_limited_to_safe_characters() {
        assert!(OrgId::parse("org_1-A").is_some());
        assert!(OrgId::parse("").is_none());
        assert!(OrgId::parse("a b").is_none());
        assert!(OrgId::parse(&"a".repeat(65)).is_none());
    }

    #[test]
    fn roles_are_ordered_by_power_and_access_follows() {
        assert!(Access::Member.allows(Role::Admin));
        assert!(Access::Member.allows(Role::Member));
        assert!(!Access::Member.allows(Role::Reader));
        assert!(!Access::Admin.allows(Role::Member));
        assert!(Access::Reader.allows(Role::Reader));
    }

    #[test]
    fn the_default_workflow_closes_from_any_open_status() {
        let from_open: Vec<_> = transitions_from("open").map(|t| t.id).collect();
        assert_eq!(from_open, ["start_progress", "close"]);
        let from_closed: Vec<_> = transitions_from("closed").map(|t| t.id).collect();
        assert_eq!(from_closed, ["reopen"]);
    }

    #[test]
    fn named_lookup_accepts_key_id_and_case_insensitive_name() {
        assert_eq!(find_named(&ISSUE_TYPES, Some("bug"), None, None).map(|t| t.id), Some(1));
        assert_eq!(
            find_named(&ISSUE_TYPES, None, Some("3"), None).map(|t| t.key),
            Some("epic")
        );
        assert_eq!(
            find_named(&ISSUE_TYPES, None, None, Some("task")).map(|t| t.id),
            Some(2)
        );
        assert_eq!(
            find_named(&ISSUE_TYPES, None, None, Some("TASK")).map(|t| t.id),
            Some(2)
        );
        assert!(find_named(&ISSUE_TYPES, Some("story"), None, None).is_none());
    }
}
