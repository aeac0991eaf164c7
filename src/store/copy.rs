//! What `tether db copy` moves: every table, in an order that satisfies the foreign keys, each column typed as an
//! integer or text (the only two types the schema uses on either backend).

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A 64-bit integer (or NULL).
    Int,
    /// Text (or NULL).
    Text,
}

/// One value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// An integer column.
    Int(Option<i64>),
    /// A text column.
    Text(Option<String>),
}

/// A table to copy.
#[derive(Debug, Clone, Copy)]
pub struct TableSpec {
    /// Its name.
    pub name: &'static str,
    /// A total order for paging.
    pub order: &'static str,
    /// Its columns.
    pub columns: &'static [(&'static str, Kind)],
    /// Its identity column, whose sequence must move past the copied ids on PostgreSQL.
    pub identity: Option<&'static str>,
}

use Kind::{Int, Text};

/// Every table, parents before children.
pub const TABLES: &[TableSpec] = &[
    TableSpec {
        name: "meta",
        order: "key",
        columns: &[("key", Text), ("value", Text)],
        identity: None,
    },
    TableSpec {
        name: "organizations",
        order: "id",
        columns: &[("id", Text), ("name", Text), ("created_at", Int)],
        identity: None,
    },
    TableSpec {
        name: "users",
        order: "uid",
        columns: &[
            ("uid", Int),
            ("login", Text),
            ("display", Text),
            ("email", Text),
            ("robot", Int),
            ("created_at", Int),
        ],
        identity: Some("uid"),
    },
    TableSpec {
        name: "memberships",
        order: "org_id, uid",
        columns: &[("org_id", Text), ("uid", Int), ("role", Text)],
        identity: None,
    },
    TableSpec {
        name: "tokens",
        order: "id",
        columns: &[
            ("id", Int),
            ("uid", Int),
            ("hash", Text),
            ("name", Text),
            ("created_at", Int),
            ("revoked_at", Int),
        ],
        identity: Some("id"),
    },
    TableSpec {
        name: "queues",
        order: "id",
        columns: &[
            ("id", Int),
            ("org_id", Text),
            ("key", Text),
            ("name", Text),
            ("lead_uid", Int),
            ("default_type", Text),
            ("last_number", Int),
            ("created_at", Int),
        ],
        identity: Some("id"),
    },
    TableSpec {
        name: "custom_fields",
        order: "org_id, id",
        columns: &[
            ("org_id", Text),
            ("id", Text),
            ("name", Text),
            ("type", Text),
            ("created_at", Int),
        ],
        identity: None,
    },
    TableSpec {
        name: "issues",
        order: "id",
        columns: &[
            ("id", Int),
            ("org_id", Text),
            ("queue_id", Int),
            ("number", Int),
            ("key", Text),
            ("summary", Text),
            ("description", Text),
            ("type", Text),
            ("status", Text),
            ("resolution", Text),
            ("assignee_uid", Int),
            ("unique_key", Text),
            ("custom", Text),
            ("version", Int),
            ("created_by", Int),
            ("updated_by", Int),
            ("created_at", Int),
            ("updated_at", Int),
        ],
        identity: Some("id"),
    },
    TableSpec {
        name: "links",
        order: "id",
        columns: &[
            ("id", Int),
            ("org_id", Text),
            ("type", Text),
            ("outward_id", Int),
            ("inward_id", Int),
            ("lo", Int),
            ("hi", Int),
            ("created_by", Int),
            ("updated_by", Int),
            ("created_at", Int),
            ("updated_at", Int),
        ],
        identity: Some("id"),
    },
    TableSpec {
        name: "applications",
        order: "org_id, id",
        columns: &[
            ("org_id", Text),
            ("id", Text),
            ("name", Text),
            ("type", Text),
            ("default_icon_url", Text),
            ("front_url", Text),
            ("responsible", Text),
            ("oauth_token", Text),
            ("entity_info_url", Text),
            ("create_link_url", Text),
            ("remove_link_url", Text),
            ("can_link_from_front", Int),
            ("created_at", Int),
        ],
        identity: None,
    },
    TableSpec {
        name: "remote_links",
        order: "id",
        columns: &[
            ("id", Int),
            ("org_id", Text),
            ("issue_id", Int),
            ("app_id", Text),
            ("key", Text),
            ("web_url", Text),
            ("actor", Text),
            ("backlink", Int),
            ("installation", Text),
            ("created_by", Int),
            ("updated_by", Int),
            ("created_at", Int),
            ("updated_at", Int),
        ],
        identity: Some("id"),
    },
    TableSpec {
        name: "outbox",
        order: "id",
        columns: &[
            ("id", Int),
            ("org_id", Text),
            ("kind", Text),
            ("idempotency_key", Text),
            ("method", Text),
            ("url", Text),
            ("body", Text),
            ("app_id", Text),
            ("remote_link_id", Int),
            ("after_id", Int),
            ("state", Text),
            ("attempts", Int),
            ("next_attempt_at", Int),
            ("locked_until", Int),
            ("last_error", Text),
            ("created_at", Int),
            ("updated_at", Int),
            ("delivered_at", Int),
        ],
        identity: Some("id"),
    },
    TableSpec {
        name: "sentry_installations",
        order: "uuid",
        columns: &[
            ("uuid", Text),
            ("org_id", Text),
            ("sentry_org_slug", Text),
            ("app_uuid", Text),
            ("token", Text),
            ("refresh_token", Text),
            ("expires_at", Int),
            ("created_at", Int),
            ("updated_at", Int),
        ],
        identity: None,
    },
];
