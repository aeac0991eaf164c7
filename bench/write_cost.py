#!/usr/bin/env python3
"""What PostgreSQL's batch write costs, part by part: `python3 bench/write_cost.py [ROUNDS] [SECONDS]`.

The link writer (src/store/pg_links.rs) commits a batch with one statement: the links inserted and their issues'
`updatedAt` set, the issue rows locked in id order first (`INSERT_ALL_SQL`). This script takes that statement
apart on a scratch database with Tether's schema (migrations/postgres) and 200 000 issues: pgbench at c=1 with
prepared statements runs each variant for SECONDS (default 3), the variants alternating for ROUNDS (default 3),
and it prints, for each, the median over the rounds of its transactions/s and of its mean latency. A batch of 8
links between fresh issue pairs (the size the create-link benchmark's batches have at c=16) is written as Tether
writes it, with its 16 issue touches, and without parts of it; `nop` is one round trip (`SELECT 1`), `one`
pgbench's floor (one link per transaction). Before each run the issues' pages are written and vacuumed after a
checkpoint (as in the create-link benchmark, where they were written since the last one). The rows come from
generate_series and a sequence rather than bound arrays (pgbench binds no arrays); its shape is otherwise the
writer's. The links' references are checked as migration 0005 checks them (one statement-level trigger), and,
for comparison, by the five foreign keys it replaced (`…_fks`, the schema before it) and not at all (`…_nofk`).
Needs pgbench and psql on 127.0.0.1:5432 (user postgres); the databases `tether_write_cost`, `…_fks` and `…_nofk`
are dropped at the end.
"""
import os
import re
import statistics
import subprocess
import sys

DB = "tether_write_cost"
FKS = DB + "_fks"
NOFK = DB + "_nofk"
DATABASES = (DB, FKS, NOFK)
# The migration from which the links' references are checked per statement rather than by five foreign keys.
PER_STATEMENT = "0005"
ISSUES = 200_000
PSQL = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"]
MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "migrations", "postgres")

# Each transaction takes the next 16 issues (a sequence that wraps): 8 links between (b+1, b+2) … (b+15, b+16).
INSERT = """ins AS (INSERT INTO links (id, org_id, type, outward_id, inward_id, lo, hi, created_by, updated_by,
 created_at, updated_at)
 SELECT nextval('links_id_seq'), 'org', 'depends', b + 2*g + 1, b + 2*g + 2, b + 2*g + 1, b + 2*g + 2, 1, 1, 5, 5
 FROM b, generate_series(0, 7) g RETURNING 1)"""
LOCKED = """locked AS (SELECT id FROM issues WHERE id = ANY(ARRAY(SELECT b + g FROM b, generate_series(1, 16) g))
 ORDER BY id FOR UPDATE)"""
TOUCH = """upd AS (UPDATE issues SET updated_at = v.at FROM (SELECT b + g AS id, 7::bigint AS at
 FROM b, generate_series(1, 16) g) v{locked} WHERE {cond}issues.id = v.id RETURNING 1)"""
BASE = "WITH b AS (SELECT nextval('bseq') * 16 AS b), "


def batch(lock=True, touch=True):
    parts = [INSERT]
    if touch:
        if lock:
            parts.append(LOCKED)
            parts.append(TOUCH.format(locked=", locked", cond="locked.id = v.id AND "))
        else:
            parts.append(TOUCH.format(locked="", cond=""))
    counts = "(SELECT count(*) FROM ins)" + (", (SELECT count(*) FROM upd)" if touch else "")
    return BASE + ", ".join(parts) + " SELECT " + counts + ";\n"


ONE = (BASE + "ins AS (INSERT INTO links (id, org_id, type, outward_id, inward_id, lo, hi, created_by, updated_by, "
       "created_at, updated_at) SELECT nextval('links_id_seq'), 'org', 'depends', b + 1, b + 2, b + 1, b + 2, 1, 1, "
       "5, 5 FROM b RETURNING 1) SELECT count(*) FROM ins;\n")

# name → (database, script, PGOPTIONS)
VARIANTS = {
    "nop: SELECT 1": (DB, "SELECT 1;\n", ""),
    "one: 1 link, commit": (DB, ONE, ""),
    "8 links, commit": (DB, batch(touch=False), ""),
    "8 links + 16 touches (the writer's)": (DB, batch(), ""),
    "… without the row locks": (DB, batch(lock=False), ""),
    "… synchronous_commit off": (DB, batch(), "-c synchronous_commit=off"),
    "… with the five foreign keys (before 0005)": (FKS, batch(), ""),
    "… links without foreign keys or 0005's check": (NOFK, batch(), ""),
    "8 links, commit, with the five foreign keys": (FKS, batch(touch=False), ""),
    "8 links, commit, without foreign keys or check": (NOFK, batch(touch=False), ""),
}


def psql(db, *args, **kw):
    return subprocess.run(PSQL + ["-d", db] + list(args), check=True, capture_output=True, text=True, **kw)


def setup():
    for db in DATABASES:
        psql("postgres", "-c", f"DROP DATABASE IF EXISTS {db}")
    psql("postgres", "-c", f"CREATE DATABASE {FKS}")
    migrations = sorted(os.listdir(MIGRATIONS))
    for name in migrations:
        if name < PER_STATEMENT:
            psql(FKS, "-f", os.path.join(MIGRATIONS, name))
    psql(FKS, input=f"""
INSERT INTO organizations VALUES ('org', 'Org', 0);
INSERT INTO users (uid, login, display, created_at) VALUES (1, 'u', 'U', 0);
INSERT INTO queues (id, org_id, key, name, default_type, created_at) VALUES (1, 'org', 'Q', 'Q', 'task', 0);
INSERT INTO issues (id, org_id, queue_id, number, key, summary, type, status, created_by, updated_by, created_at,
  updated_at)
SELECT g, 'org', 1, g, 'Q-' || g, 'Summary of issue ' || g, 'task', 'open', 1, 1, 0, 0
FROM generate_series(1, {ISSUES}) g;
CREATE SEQUENCE bseq MINVALUE 0 MAXVALUE {ISSUES // 16 - 1} START 0 CYCLE;
VACUUM ANALYZE;
""")
    psql("postgres", "-c", f"CREATE DATABASE {DB} TEMPLATE {FKS}")
    for name in migrations:
        if name >= PER_STATEMENT:
            psql(DB, "-f", os.path.join(MIGRATIONS, name))
    psql("postgres", "-c", f"CREATE DATABASE {NOFK} TEMPLATE {FKS}")
    psql(NOFK, "-c", "ALTER TABLE links DROP CONSTRAINT links_org_id_fkey, DROP CONSTRAINT links_outward_id_fkey, "
         "DROP CONSTRAINT links_inward_id_fkey, DROP CONSTRAINT links_created_by_fkey, "
         "DROP CONSTRAINT links_updated_by_fkey")


def run(db, script, options, seconds):
    # As in the create-link benchmark, the issues' pages were written since the last checkpoint: the run's touches
    # write no full-page images (they were written here), and a vacuum leaves room on each page for HOT updates.
    psql(db, "-c", "TRUNCATE links", "-c", "SELECT setval('bseq', 0)", "-c", "CHECKPOINT",
         "-c", "UPDATE issues SET updated_at = 0", "-c", "VACUUM issues")
    path = f"/tmp/{DB}.sql"
    with open(path, "w") as f:
        f.write(script)
    env = dict(os.environ, PGOPTIONS=options)
    out = subprocess.run(["pgbench", "-n", "-h", "127.0.0.1", "-U", "postgres", "-c", "1", "-M", "prepared",
                          "-T", str(seconds), "-f", path, db], env=env, capture_output=True, text=True).stdout
    if "number of failed transactions: 0" not in out:
        sys.exit(f"pgbench failed on {db}:\n{out}")
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    lat = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))
    return tps, lat


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    got = {name: [] for name in VARIANTS}
    try:
        setup()
        for r in range(rounds):
            for name, (db, script, options) in VARIANTS.items():
                got[name].append(run(db, script, options, seconds))
                print(f"round {r}: {name}: {got[name][-1][0]:.0f} tx/s, {got[name][-1][1]:.3f} ms", flush=True)
    finally:
        for db in DATABASES:
            psql("postgres", "-c", f"DROP DATABASE IF EXISTS {db}")
    print(f"\npgbench -c 1 -M prepared, {rounds} × {seconds} s each, alternating; median of the rounds")
    print("| statement | tx/s | latency ms |\n|---|---:|---:|")
    for name, runs in got.items():
        print(f"| {name} | {statistics.median(t for t, _ in runs):.0f} | "
              f"{statistics.median(lat for _, lat in runs):.3f} |")


if __name__ == "__main__":
    main()
