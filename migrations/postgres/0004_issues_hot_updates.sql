-- A link's create or delete sets both issues' `updatedAt`: two row updates per link, the largest part of a link
-- write's cost on PostgreSQL while `updated_at` is indexed, since then every update is a new row version with a
-- new entry in each of the table's six indexes. Without an index on `updated_at`, and with room left on each page
-- for the new version (fillfactor; it applies to pages filled from now on), such an update is heap-only (HOT): no
-- index entry at all (docs/benchmarks.md has the figures). Searching issues ordered by `updatedAt` sorts the
-- organization's matching issues, which it already reads whole to count them.
DROP INDEX issues_org_updated;
ALTER TABLE issues SET (fillfactor = 80);
