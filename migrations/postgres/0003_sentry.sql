-- Sentry Integration Platform installations, and which installation a Sentry remote link came through.
CREATE TABLE sentry_installations (
    uuid            TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organizations (id),
    sentry_org_slug TEXT,
    app_uuid        TEXT,
    token           TEXT,
    refresh_token   TEXT,
    expires_at      BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

ALTER TABLE remote_links ADD COLUMN installation TEXT;
