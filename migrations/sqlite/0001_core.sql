-- Core schema. Timestamps are UTC milliseconds (INTEGER) on both backends so the SQL stays the same.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE organizations (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE users (
    uid        INTEGER PRIMARY KEY AUTOINCREMENT,
    login      TEXT NOT NULL UNIQUE,
    display    TEXT NOT NULL,
    email      TEXT,
    robot      INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE memberships (
    org_id TEXT NOT NULL REFERENCES organizations (id),
    uid    INTEGER NOT NULL REFERENCES users (uid),
    role   TEXT NOT NULL CHECK (role IN ('admin', 'member', 'reader')),
    PRIMARY KEY (org_id, uid)
);
CREATE INDEX memberships_uid ON memberships (uid);

CREATE TABLE tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    uid        INTEGER NOT NULL REFERENCES users (uid),
    hash       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX tokens_uid ON tokens (uid);

CREATE TABLE queues (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id       TEXT NOT NULL REFERENCES organizations (id),
    key          TEXT NOT NULL,
    name         TEXT NOT NULL,
    lead_uid     INTEGER REFERENCES users (uid),
    default_type TEXT NOT NULL,
    last_number  INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    UNIQUE (org_id, key)
);

CREATE TABLE custom_fields (
    org_id     TEXT NOT NULL REFERENCES organizations (id),
    id         TEXT NOT NULL,
    name       TEXT NOT NULL,
    type       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, id)
);

CREATE TABLE issues (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id       TEXT NOT NULL REFERENCES organizations (id),
    queue_id     INTEGER NOT NULL REFERENCES queues (id),
    number       INTEGER NOT NULL,
    key          TEXT NOT NULL,
    summary      TEXT NOT NULL,
    description  TEXT,
    type         TEXT NOT NULL,
    status       TEXT NOT NULL,
    resolution   TEXT,
    assignee_uid INTEGER REFERENCES users (uid),
    unique_key   TEXT,
    custom       TEXT,
    version      INTEGER NOT NULL DEFAULT 1,
    created_by   INTEGER NOT NULL REFERENCES users (uid),
    updated_by   INTEGER NOT NULL REFERENCES users (uid),
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (org_id, key),
    UNIQUE (queue_id, number),
    UNIQUE (org_id, unique_key)
);
CREATE INDEX issues_org_updated ON issues (org_id, updated_at);
CREATE INDEX issues_queue_status ON issues (queue_id, status);

-- One row per link. `lo`/`hi` are the two issue ids in order, so one unique index enforces one link per pair.
CREATE TABLE links (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id     TEXT NOT NULL REFERENCES organizations (id),
    type       TEXT NOT NULL,
    outward_id INTEGER NOT NULL REFERENCES issues (id),
    inward_id  INTEGER NOT NULL REFERENCES issues (id),
    lo         INTEGER NOT NULL,
    hi         INTEGER NOT NULL,
    created_by INTEGER NOT NULL REFERENCES users (uid),
    updated_by INTEGER NOT NULL REFERENCES users (uid),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    CHECK (lo < hi)
);
CREATE UNIQUE INDEX links_pair ON links (lo, hi);
CREATE INDEX links_outward ON links (outward_id, type);
CREATE INDEX links_inward ON links (inward_id, type);
-- A sub-issue has one parent; an issue is in one epic.
CREATE UNIQUE INDEX links_one_parent ON links (inward_id) WHERE type = 'subtask';
CREATE UNIQUE INDEX links_one_epic ON links (outward_id) WHERE type = 'epic';
