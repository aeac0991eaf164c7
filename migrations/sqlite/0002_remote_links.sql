-- External applications, remote links to their objects, and the outbox of calls to other systems.
CREATE TABLE applications (
    org_id              TEXT NOT NULL REFERENCES organizations (id),
    id                  TEXT NOT NULL,
    name                TEXT NOT NULL,
    type                TEXT NOT NULL,
    default_icon_url    TEXT,
    front_url           TEXT,
    responsible         TEXT,
    oauth_token         TEXT,
    entity_info_url     TEXT,
    create_link_url     TEXT,
    remove_link_url     TEXT,
    can_link_from_front INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,
    PRIMARY KEY (org_id, id)
);

CREATE TABLE remote_links (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id     TEXT NOT NULL REFERENCES organizations (id),
    issue_id   INTEGER NOT NULL REFERENCES issues (id),
    app_id     TEXT NOT NULL,
    key        TEXT NOT NULL,
    web_url    TEXT,
    actor      TEXT,
    backlink   INTEGER NOT NULL DEFAULT 0,
    created_by INTEGER NOT NULL REFERENCES users (uid),
    updated_by INTEGER NOT NULL REFERENCES users (uid),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    FOREIGN KEY (org_id, app_id) REFERENCES applications (org_id, id),
    UNIQUE (issue_id, app_id, key)
);
CREATE INDEX remote_links_object ON remote_links (org_id, app_id, key);

-- Every call Tether makes to another system, written in the transaction of the change that causes it.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    method          TEXT NOT NULL,
    url             TEXT NOT NULL,
    body            TEXT,
    app_id          TEXT,
    remote_link_id  INTEGER,
    after_id        INTEGER,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    locked_until    INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    delivered_at    INTEGER
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_remote_link ON outbox (remote_link_id);
