-- A link's references (its two issues, its organization, its two users) are checked once per statement rather than
-- once per row and column. The five foreign keys of `links` ran five lookups per link, each a query of its own
-- (PostgreSQL's referential-integrity triggers are row-level): with the issues' `updatedAt` touches and the commit,
-- the largest part of the link writer's batch write. One statement-level trigger reads the statement's new links
-- (a transition table) and checks them all with one query (docs/benchmarks.md has the figures). The same rules
-- hold as with the foreign keys, and one more: a link's issues are in the link's organization.
--
-- Concurrency is what the foreign keys did: the referenced rows are locked `FOR KEY SHARE` by the statement that
-- writes the link, so an issue or user cannot be deleted (or its key changed) by another transaction until that
-- one ends; and a deleted row that the lock waited for is not found, so the link fails. The referenced side
-- checks, after a delete or a key change, with a snapshot taken then, that no link refers to the old key.
-- `links.org_id` needs no check of its own: the link's issues are in its organization, an issue's organization is
-- a foreign key of `issues`, and an issue with links cannot move to another organization.
ALTER TABLE links
    DROP CONSTRAINT links_org_id_fkey,
    DROP CONSTRAINT links_outward_id_fkey,
    DROP CONSTRAINT links_inward_id_fkey,
    DROP CONSTRAINT links_created_by_fkey,
    DROP CONSTRAINT links_updated_by_fkey;

-- The links a statement wrote (`written`) refer to issues of their organization and to users that exist.
CREATE FUNCTION links_check_references() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (WITH issue AS (SELECT org_id, outward_id AS id FROM written UNION SELECT org_id, inward_id FROM written),
             usr AS (SELECT created_by AS uid FROM written UNION SELECT updated_by FROM written),
             issue_found AS (SELECT i.id FROM issues i JOIN issue ON i.id = issue.id AND i.org_id = issue.org_id
                             ORDER BY i.id FOR KEY SHARE OF i),
             usr_found AS (SELECT u.uid FROM users u JOIN usr ON u.uid = usr.uid ORDER BY u.uid FOR KEY SHARE OF u)
         SELECT (SELECT count(*) FROM issue) <> (SELECT count(*) FROM issue_found)
             OR (SELECT count(*) FROM usr) <> (SELECT count(*) FROM usr_found))
    THEN
        RAISE EXCEPTION 'a link refers to an issue or user that does not exist, or to an issue of another organization'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

-- A trigger with transition tables has one event.
CREATE TRIGGER links_inserted_references AFTER INSERT ON links REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION links_check_references();
CREATE TRIGGER links_updated_references AFTER UPDATE ON links REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION links_check_references();

-- An issue that links refer to is not deleted, and keeps its id and organization. A row trigger on a delete and on
-- a change of those columns alone: the link writer's touches of `updated_at` do not fire it.
CREATE FUNCTION issues_check_no_links() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.id = NEW.id AND OLD.org_id = NEW.org_id THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM links WHERE outward_id = OLD.id) OR EXISTS (SELECT 1 FROM links WHERE inward_id = OLD.id)
    THEN
        RAISE EXCEPTION 'an issue that links refer to is not deleted and keeps its id and organization'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER issues_referenced_by_links AFTER DELETE OR UPDATE OF id, org_id ON issues
    FOR EACH ROW EXECUTE FUNCTION issues_check_no_links();

-- A user that links refer to is not deleted, and keeps its uid.
CREATE FUNCTION users_check_no_links() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.uid = NEW.uid THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM links WHERE created_by = OLD.uid OR updated_by = OLD.uid) THEN
        RAISE EXCEPTION 'a user that links refer to is not deleted and keeps its uid'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER users_referenced_by_links AFTER DELETE OR UPDATE OF uid ON users
    FOR EACH ROW EXECUTE FUNCTION users_check_no_links();
