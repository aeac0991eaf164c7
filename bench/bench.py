#!/usr/bin/env python3
"""Tether's benchmark driver (run it through bench/run, which builds the binaries first).

Every load runs on 127.0.0.1 only, bounded in time (wrk -d) and in count (each request line is sent at most once,
or at most BENCH_MAX times per thread for repeated reads). Every Tether figure is measured next to a floor built
from the same stack (bench/floor) in the same run: floor 1 answers a fixed JSON body of the size of the Tether
answer it is compared with; floor 2 does one SQLite insert per POST; the bulk import is compared with a raw
batched insert; PostgreSQL with pgbench.

Standard library only. Results go to bench/out/<stamp>/ (results.json, results.md, logs) and the table to stdout.
"""

import argparse
import atexit
import concurrent.futures
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TETHER = os.environ.get("TETHER_BIN") or os.path.join(ROOT, "target", "release", "tether")
FLOOR = os.path.join(HERE, "floor", "target", "release", "floor")
LUA = os.path.join(HERE, "reqs.lua")
ORG = "bench"
TOKEN = "tth_bench_token_for_127_0_0_1_only_0123456789abcdef"
PG_BASE = "postgres://postgres@127.0.0.1:5432"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS"):
                    out[k] = int(v.split()[0]) / 1024.0  # MiB
    except OSError:
        pass
    return out


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---------------------------------------------------------------------------------------------------------------
# HTTP client (keep-alive) for seeding
# ---------------------------------------------------------------------------------------------------------------
class Api:
    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method, path, body=None, expect=(200, 201)):
        headers = {"Authorization": f"OAuth {TOKEN}", "X-Org-ID": ORG, "Content-Type": "application/json"}
        data = None if body is None else json.dumps(body)
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                break
            except (http.client.HTTPException, OSError):
                if attempt:
                    raise
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        if r.status not in expect:
            raise RuntimeError(f"{method} {path} -> {r.status}: {raw[:300]!r}")
        return r.status, raw


def parallel(port, bodies, fn, workers=4):
    """Runs fn(api, item) over items with `workers` keep-alive connections; returns results in order."""
    out = [None] * len(bodies)
    chunks = [list(range(i, len(bodies), workers)) for i in range(workers)]

    def run(idx):
        api = Api(port)
        for i in idx:
            out[i] = fn(api, bodies[i])

    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        for f in [ex.submit(run, c) for c in chunks]:
            f.result()
    return out


def import_issues(port, bodies, workers=4):
    def one(api, b):
        _, raw = api.call("POST", "/v2/issues/_import", b, expect=(200,))
        return json.loads(raw)["key"]

    return parallel(port, bodies, one, workers)


def stamp(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}+0000"


# ---------------------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------------------
RUNNING = []  # servers started and not yet stopped: stopped at exit, whatever happened


@atexit.register
def _stop_all():
    for s in list(RUNNING):
        s.stop()


class Server:
    def __init__(self, name, argv, port, env=None, logdir=None):
        self.name, self.port = name, port
        self.logf = open(os.path.join(logdir, f"{name}.log"), "ab") if logdir else subprocess.DEVNULL
        self.p = subprocess.Popen(argv, stdout=self.logf, stderr=self.logf, env={**os.environ, **(env or {})})
        RUNNING.append(self)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.p.returncode}; see its log")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{name} did not listen on {port}")

    def mem(self):
        return proc_status(self.p.pid)

    def stop(self):
        if self in RUNNING:
            RUNNING.remove(self)
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def tether(name, db_url, sync, logdir, extra_env=None):
    port = free_port()
    argv = [TETHER, "--database-url", db_url, "--sqlite-synchronous", sync, "serve", "--listen", f"127.0.0.1:{port}"]
    env = {"TETHER_BOOTSTRAP_ORG_ID": ORG, "TETHER_BOOTSTRAP_TOKEN": TOKEN, "RUST_LOG": "warn", **(extra_env or {})}
    return Server(name, argv, port, env, logdir)


def floor_json(body_file, status, logdir):
    port = free_port()
    return Server("floor-json", [FLOOR, "json", f"127.0.0.1:{port}", body_file, str(status)], port, logdir=logdir)


def floor_insert(db, sync, body_file, logdir):
    port = free_port()
    return Server("floor-insert", [FLOOR, "insert", f"127.0.0.1:{port}", db, sync, body_file], port, logdir=logdir)


# ---------------------------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------------------------
def write_reqs(path, lines):
    with open(path, "w") as f:
        for method, p, body in lines:
            f.write(f"{method}\t{p}\t{'' if body is None else json.dumps(body, separators=(',', ':'))}\n")


def wrk(port, reqs_file, conc, duration, cycle, max_per_thread=200_000, auth=True):
    threads = 1 if conc == 1 else 2
    env = {**os.environ, "BENCH_REQS": reqs_file, "BENCH_THREADS": str(threads),
           "BENCH_CYCLE": "1" if cycle else "0", "BENCH_MAX": str(max_per_thread)}
    if auth:
        env.update(BENCH_TOKEN=TOKEN, BENCH_ORG=ORG)
    argv = ["wrk", "-t", str(threads), "-c", str(conc), "-d", f"{duration}s", "--timeout", "10s",
            "-s", LUA, f"http://127.0.0.1:{port}"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 60)
    m = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not m:
        raise RuntimeError(f"wrk printed no result: {out.stdout}\n{out.stderr}")
    r = json.loads(m[-1])
    # A run bounded by its lines is timed from its first request to its last answer (reqs.lua).
    secs = (r["active_us"] if not cycle and r.get("active_us") else r["duration_us"]) / 1e6
    r["rps"] = r["requests"] / secs
    r["seconds"] = secs
    r["conc"] = conc
    return r


def body_of(port, method, path, body=None):
    api = Api(port)
    _, raw = api.call(method, path, body)
    return raw


# ---------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, a):
        self.a = a
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.out = os.path.join(HERE, "out", self.stamp)
        os.makedirs(self.out, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="tether-bench-")
        self.rows = []  # scenario rows for the table
        self.results = {"machine": machine(), "args": vars(a), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                        "load_before": loadavg(), "rows": self.rows, "memory": {}, "bulk": None, "pg": None}

    def path(self, name):
        return os.path.join(self.work, name)

    def save_body(self, name, raw):
        p = self.path(name)
        with open(p, "wb") as f:
            f.write(raw)
        return p

    # -- one scenario: Tether and its floor, side by side, at each concurrency --------------------------------
    def measure(self, label, tether_srv, reqs, floor_factory, cycle, concs=(1, 16), warm=True, notes=""):
        """Tether and its floor side by side at each concurrency, alternating, `--reps` times; the best run of each
        side is kept (the machine is shared: the best run is the least disturbed one). `reqs` is a request file,
        or {c: [file per rep]} for lines that may be sent only once."""
        for c in concs:
            best = {}
            for rep in range(self.a.reps):
                for who in ("tether", "floor"):
                    srv = tether_srv if who == "tether" else floor_factory()
                    try:
                        rf = reqs[c][rep] if isinstance(reqs, dict) else reqs
                        # The floors ignore what the body names, so they may send the lines round and round.
                        cyc = cycle or who == "floor"
                        if warm and cyc:
                            wrk(srv.port, rf, c, 1, cyc, auth=(who == "tether"))
                        r = wrk(srv.port, rf, c, self.a.duration, cyc, auth=(who == "tether"))
                        r["rep"] = rep
                        if who == "floor":
                            r["floor_mem"] = srv.mem()
                    finally:
                        if who == "floor":
                            srv.stop()
                    r["all_rps"] = best.get(who, {}).get("all_rps", []) + [round(r["rps"])]
                    if who not in best or r["rps"] > best[who]["rps"]:
                        best[who] = r
                    else:
                        best[who]["all_rps"] = r["all_rps"]
            row = {"scenario": label, "conc": c, "tether": best["tether"], "floor": best["floor"], "notes": notes,
                   "ratio": best["tether"]["rps"] / best["floor"]["rps"] if best["floor"]["rps"] else None}
            self.rows.append(row)
            t, f = best["tether"], best["floor"]
            log(f"{label} c={c}: tether {t['rps']:.0f} req/s {t['all_rps']} p50 {t['p50_us']/1000:.2f} ms p99 {t['p99_us']/1000:.2f} ms"
                f" (non2xx {t['non2xx']}, exhausted {t['exhausted']}) | floor {f['rps']:.0f} req/s {f['all_rps']}"
                f" p99 {f['p99_us']/1000:.2f} ms | ratio {fmt_ratio(row['ratio'])}")

    def pairs(self, port, queue, n):
        """n fresh pairs of new issues, none linked to anything."""
        keys = import_issues(port, [{"queue": queue, "summary": f"pair issue {i}", "createdAt": "2020-01-01T00:00:00.000+0000",
                                     "createdBy": "admin"} for i in range(2 * n)], workers=4)
        return [(keys[2 * i], keys[2 * i + 1]) for i in range(n)]

    def link_reqs_reps(self, name, pairs, rel="depends on", imp=False):
        """One request file per repetition, each with its own pairs."""
        n = len(pairs) // self.a.reps
        return [self.link_reqs(f"{name}.{r}", pairs[r * n:(r + 1) * n], rel, imp) for r in range(self.a.reps)]

    def link_reqs(self, name, pairs, rel="depends on", imp=False):
        p = self.path(name)
        lines = []
        now = time.time()
        for a, b in pairs:
            body = {"relationship": rel, "issue": b}
            if imp:
                body.update(createdAt=stamp(now - 1), createdBy="admin")
            lines.append(("POST", f"/v2/issues/{a}/links" + ("/_import" if imp else ""), body))
        write_reqs(p, lines)
        return p

    def run(self):
        a = self.a
        log(f"work dir {self.work}; results in {self.out}; load average {loadavg()}")
        if not a.only_bulk and not a.only_pg:
            self.sqlite_main()
        if not a.skip_pg and not a.only_bulk:
            self.postgres()
        if not a.skip_bulk and not a.only_pg:
            self.bulk()
        self.results["load_after"] = loadavg()
        self.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=1)
        md = render(self.results)
        with open(os.path.join(self.out, "results.md"), "w") as f:
            f.write(md)
        print(md)
        if not a.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- SQLite: every request scenario, then create-link again with synchronous=full ------------------------
    def sqlite_main(self):
        a = self.a
        db = self.path("tether.db")
        url = f"sqlite://{db}"
        srv = tether("tether-sqlite-normal", url, "normal", self.out)
        api = Api(srv.port)
        api.call("POST", "/v2/queues", {"key": "BENCH", "name": "Bench", "defaultType": "task"})
        log("seeding (SQLite)")
        t0 = time.time()
        need = {(k, c): a.reps * (a.pairs_c1 if c == 1 else a.pairs_c16)
                for k in ("normal", "full", "import") for c in (1, 16)}
        total = sum(need.values())
        allp = self.pairs(srv.port, "BENCH", total)
        pools, i = {}, 0
        for k, n in need.items():
            pools[k] = allp[i:i + n]
            i += n
        seeded_issues = 2 * total
        # An issue with 50 links (a mix of types, seen from both sides).
        hub_keys = import_issues(srv.port, [{"queue": "BENCH", "summary": f"hub target {i}", "createdAt": "2020-01-01T00:00:00.000+0000",
                                             "createdBy": "admin"} for i in range(51)], workers=2)
        hub, targets = hub_keys[0], hub_keys[1:]
        rels = ["relates", "depends on", "is dependent by", "duplicates", "is parent task for"]
        for j, t in enumerate(targets):
            api.call("POST", f"/v2/issues/{hub}/links", {"relationship": rels[j % len(rels)], "issue": t})
        # One issue to read: a description, an assignee, a parent (its JSON is the one clients fetch most).
        _, raw = api.call("POST", "/v2/issues", {"queue": "BENCH", "summary": "The issue clients read",
                                                 "description": "Read by the get-issue scenario. " * 8,
                                                 "assignee": "admin", "parent": targets[0]})
        one = json.loads(raw)["key"]
        # A dependency tree for the graph query: depth 3, branching 3 (40 nodes), plus a subtask and an epic.
        root_keys = import_issues(srv.port, [{"queue": "BENCH", "summary": f"graph node {i}", "createdAt": "2020-01-01T00:00:00.000+0000",
                                              "createdBy": "admin"} for i in range(40)], workers=2)
        root, level, nxt = root_keys[0], [root_keys[0]], 1
        for _depth in range(3):
            new_level = []
            for parent in level:
                for _ in range(3):
                    child = root_keys[nxt]
                    nxt += 1
                    api.call("POST", f"/v2/issues/{parent}/links", {"relationship": "depends on", "issue": child})
                    new_level.append(child)
            level = new_level
        # Remote links: an application without createLinkUrl (no backlink event), 16 issues, a new key per request.
        api.call("POST", "/v2/applications", {"id": "bench.app", "name": "Bench app",
                                              "frontUrl": "http://127.0.0.1:9/{{remoteKey}}"})
        rl_issues = import_issues(srv.port, [{"queue": "BENCH", "summary": f"remote {i}", "createdAt": "2020-01-01T00:00:00.000+0000",
                                              "createdBy": "admin"} for i in range(16)], workers=2)
        seeded_issues += 51 + 1 + 40 + 16
        self.results["seed"] = {"issues": seeded_issues, "seconds": time.time() - t0}
        log(f"seeded {seeded_issues} issues in {time.time() - t0:.1f} s")

        # Request files.
        fr = {}
        fr["create"] = {c: self.link_reqs_reps(f"create-n{c}.tsv", pools[("normal", c)]) for c in (1, 16)}
        fr["create_full"] = {c: self.link_reqs_reps(f"create-f{c}.tsv", pools[("full", c)]) for c in (1, 16)}
        fr["import"] = {c: self.link_reqs_reps(f"import-{c}.tsv", pools[("import", c)], imp=True) for c in (1, 16)}
        write_reqs(self.path("list.tsv"), [("GET", f"/v2/issues/{hub}/links", None)])
        write_reqs(self.path("get.tsv"), [("GET", f"/v2/issues/{one}", None)])
        write_reqs(self.path("graph.tsv"), [("GET", f"/v2/issues/{root}/_graph", None)])
        remote_lines = [("POST", f"/v2/issues/{rl_issues[i % 16]}/remotelinks",
                         {"relationship": "relates", "key": f"OBJ-{i}", "origin": "bench.app"})
                        for i in range(a.reps * (a.pairs_c1 + a.pairs_c16))]
        fr["remote"] = {1: [], 16: []}
        at = 0
        for c, n in ((1, a.pairs_c1), (16, a.pairs_c16)):
            for rep in range(a.reps):
                f = self.path(f"remote-{c}.{rep}.tsv")
                write_reqs(f, remote_lines[at:at + n])
                at += n
                fr["remote"][c].append(f)

        # Response bodies of the sizes the floors answer with.
        sizes = {}
        b_list = body_of(srv.port, "GET", f"/v2/issues/{hub}/links")
        b_get = body_of(srv.port, "GET", f"/v2/issues/{one}")
        b_graph = body_of(srv.port, "GET", f"/v2/issues/{root}/_graph")
        spare = self.pairs(srv.port, "BENCH", 2)
        b_create = body_of(srv.port, "POST", f"/v2/issues/{spare[0][0]}/links", {"relationship": "depends on", "issue": spare[0][1]})
        b_import = body_of(srv.port, "POST", f"/v2/issues/{spare[1][0]}/links/_import",
                           {"relationship": "depends on", "issue": spare[1][1], "createdAt": stamp(time.time() - 1), "createdBy": "admin"})
        b_remote = body_of(srv.port, "POST", f"/v2/issues/{rl_issues[0]}/remotelinks",
                           {"relationship": "relates", "key": "OBJ-spare", "origin": "bench.app"})
        files = {}
        for name, raw in (("list", b_list), ("get", b_get), ("graph", b_graph), ("create", b_create),
                          ("import", b_import), ("remote", b_remote)):
            files[name] = self.save_body(f"body-{name}.json", raw)
            sizes[name] = len(raw)
        self.results["body_sizes"] = sizes
        assert len(json.loads(b_list)) == 50, "the hub issue should have 50 links"
        log(f"response sizes: {sizes}")

        fdb = self.path("floor-normal.db")
        self.measure("create link (depends on, fresh pair)", srv, fr["create"],
                     lambda: floor_insert(fdb, "normal", files["create"], self.out), cycle=False,
                     notes="floor 2 (one INSERT per POST)")
        self.measure("list links (50)", srv, self.path("list.tsv"),
                     lambda: floor_json(files["list"], 200, self.out), cycle=True, notes="floor 1 (fixed body)")
        self.measure("get issue", srv, self.path("get.tsv"),
                     lambda: floor_json(files["get"], 200, self.out), cycle=True, notes="floor 1 (fixed body)")
        self.measure("create remote link (no backlink)", srv, fr["remote"],
                     lambda: floor_insert(fdb, "normal", files["remote"], self.out), cycle=False,
                     notes="floor 2 (one INSERT per POST)")
        self.measure("import link (_import)", srv, fr["import"],
                     lambda: floor_insert(fdb, "normal", files["import"], self.out), cycle=False,
                     notes="floor 2 (one INSERT per POST)")
        self.measure("dependency graph (_graph, 40 nodes)", srv, self.path("graph.tsv"),
                     lambda: floor_json(files["graph"], 200, self.out), cycle=True, notes="floor 1 (fixed body)")
        self.results["memory"]["tether_sqlite_normal"] = srv.mem()
        log(f"tether (SQLite, normal) memory after the runs: {srv.mem()}")
        srv.stop()

        # The same reads with the read cache off (an environment variable, so that a server without the cache
        # starts too): what a read costs when its answer is not kept, e.g. the first read after a write.
        srv = tether("tether-sqlite-nocache", url, "normal", self.out, {"TETHER_READ_CACHE_TTL": "0s"})
        for label, name, req in (("list links (50), read cache off", "list", "list.tsv"),
                                 ("get issue, read cache off", "get", "get.tsv"),
                                 ("dependency graph, read cache off", "graph", "graph.tsv")):
            self.measure(label, srv, self.path(req), lambda name=name: floor_json(files[name], 200, self.out),
                         cycle=True, concs=(16,), notes="floor 1 (fixed body)")
        self.results["memory"]["tether_sqlite_nocache"] = srv.mem()
        srv.stop()

        # synchronous=full: the same database, restarted with the other setting.
        srv = tether("tether-sqlite-full", url, "full", self.out)
        ffdb = self.path("floor-full.db")
        self.measure("create link, synchronous=full", srv, fr["create_full"],
                     lambda: floor_insert(ffdb, "full", files["create"], self.out), cycle=False,
                     notes="floor 2 with synchronous=full")
        self.results["memory"]["tether_sqlite_full"] = srv.mem()
        srv.stop()
        self.files = files

    # -- PostgreSQL: create link c=16 against pgbench's one-row insert per transaction -----------------------
    def postgres(self):
        a = self.a
        if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"]).returncode != 0:
            log("PostgreSQL not reachable on 127.0.0.1:5432: skipped")
            self.results["pg"] = {"skipped": "not reachable"}
            return
        dbname = f"tether_bench_{os.getpid()}"
        psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"]
        subprocess.run(psql + ["-d", "postgres", "-c", f"CREATE DATABASE {dbname}"], check=True)
        try:
            url = f"{PG_BASE}/{dbname}"
            srv = tether("tether-postgres", url, "normal", self.out)
            api = Api(srv.port)
            api.call("POST", "/v2/queues", {"key": "BENCH", "name": "Bench", "defaultType": "task"})
            log("seeding (PostgreSQL)")
            pools = {c: self.pairs(srv.port, "BENCH", a.reps * n) for c, n in ((1, a.pg_pairs_c1), (16, a.pg_pairs_c16))}
            reqs = {c: self.link_reqs_reps(f"pg-create-{c}.tsv", pools[c]) for c in (1, 16)}
            relates = self.pairs(srv.port, "BENCH", a.reps * a.pg_pairs_c16)
            reqs_rel = {16: self.link_reqs_reps("pg-create-relates-16.tsv", relates, rel="relates")}
            # pgbench: one single-row INSERT per transaction into a copy of the links table, same indexes.
            ddl = open(os.path.join(ROOT, "migrations", "postgres", "0001_core.sql")).read()
            m = re.search(r"CREATE TABLE links \((.*?)\n\);", ddl, re.S)
            cols = re.sub(r"REFERENCES \w+ \(\w+\)", "", m.group(1))
            setup = (f"CREATE TABLE bench_links ({cols}\n);\n"
                     "CREATE UNIQUE INDEX bench_links_pair ON bench_links (lo, hi);\n"
                     "CREATE INDEX bench_links_outward ON bench_links (outward_id, type);\n"
                     "CREATE INDEX bench_links_inward ON bench_links (inward_id, type);\n"
                     "CREATE UNIQUE INDEX bench_links_one_parent ON bench_links (inward_id) WHERE type = 'subtask';\n"
                     "CREATE UNIQUE INDEX bench_links_one_epic ON bench_links (outward_id) WHERE type = 'epic';\n"
                     "CREATE SEQUENCE bench_seq;\n")
            subprocess.run(psql + ["-d", dbname], input=setup, text=True, check=True)
            script = self.path("pgbench-insert.sql")
            with open(script, "w") as f:
                f.write("INSERT INTO bench_links (org_id, type, outward_id, inward_id, lo, hi, created_by, updated_by, "
                        "created_at, updated_at) SELECT 'bench', 'depends', n, n + 1, n, n + 1, 1, 1, 0, 0 "
                        "FROM (SELECT nextval('bench_seq') * 2 AS n) s;\n")

            self_dir = self.path("pgbench")
            os.makedirs(self_dir, exist_ok=True)
            rows = []
            for label, rq, concs in (("PostgreSQL: create link (depends on)", reqs, (1, 16)),
                                     ("PostgreSQL: create link (relates)", reqs_rel, (16,))):
                for c in concs:
                    t = p = None
                    for rep in range(a.reps):
                        t1 = wrk(srv.port, rq[c][rep], c, a.duration, cycle=False)
                        p1 = pgbench(dbname, script, c, a.duration, self_dir)
                        t = t1 if t is None or t1["rps"] > t["rps"] else t
                        p = p1 if p is None or p1["rps"] > p["rps"] else p
                    row = {"scenario": label, "conc": c, "tether": t, "floor": p, "ratio": t["rps"] / p["rps"] if p["rps"] else None,
                           "notes": "pgbench: one single-row INSERT per transaction"}
                    self.rows.append(row)
                    rows.append(row)
                    log(f"{label} c={c}: tether {t['rps']:.0f} req/s p99 {t['p99_us']/1000:.2f} ms (non2xx {t['non2xx']},"
                        f" exhausted {t['exhausted']}) | pgbench {p['rps']:.0f} tps p99 {p['p99_us']/1000:.2f} ms |"
                        f" ratio {fmt_ratio(row['ratio'])}")
            self.results["memory"]["tether_postgres"] = srv.mem()
            srv.stop()
            self.results["pg"] = {"db": dbname, "rows": len(rows)}
        finally:
            subprocess.run(psql + ["-d", "postgres", "-c", f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"])

    # -- Bulk: issues through the API, links through the CLI, against a raw batched insert -------------------
    def bulk(self):
        a = self.a
        issues_f, links_f = self.path("bulk-issues.ndjson"), self.path("bulk-links.ndjson")
        log(f"generating {a.bulk_issues} issues and {a.bulk_links} links")
        gen = subprocess.run([sys.executable, os.path.join(HERE, "gen_links.py"), "--issues", str(a.bulk_issues),
                              "--links", str(a.bulk_links), "--queue", "BULK", "--issues-out", issues_f,
                              "--links-out", links_f], capture_output=True, text=True, check=True)
        genstats = json.loads(gen.stdout.strip().splitlines()[-1])
        db = self.path("bulk.db")
        url = f"sqlite://{db}"
        srv = tether("tether-bulk-seed", url, "normal", self.out)
        Api(srv.port).call("POST", "/v2/queues", {"key": "BULK", "name": "Bulk", "defaultType": "task"})
        with open(issues_f) as f:
            bodies = [json.loads(line) for line in f]
        t0 = time.time()
        import_issues(srv.port, bodies, workers=4)
        issue_secs = time.time() - t0
        log(f"{len(bodies)} issues through POST /v2/issues/_import in {issue_secs:.1f} s")
        del bodies
        srv.stop()

        size = os.path.getsize(links_f)
        argv = [TETHER, "--database-url", url, "--sqlite-synchronous", "normal", "import", "links", links_f, "--org", ORG]
        log(f"tether import links ({a.bulk_links} records, {size / 1e6:.0f} MB)")
        t0 = time.time()
        with open(os.path.join(self.out, "import-refused.ndjson"), "wb") as out, \
                open(os.path.join(self.out, "import.log"), "wb") as err:
            p = subprocess.Popen(argv, stdout=out, stderr=err, env={**os.environ, "RUST_LOG": "warn"})
            samples = watch_import(p, links_f, size)
            rc = p.wait()
        secs = time.time() - t0
        summary = open(os.path.join(self.out, "import.log")).read().strip().splitlines()
        log(f"tether import: {secs:.1f} s, exit {rc}: {summary[-1] if summary else ''}")

        raw_db = self.path("raw.db")
        t0 = time.time()
        r = subprocess.run([FLOOR, "raw-insert", raw_db, "normal", links_f, "500"], capture_output=True, text=True, check=True)
        raw = json.loads(r.stdout.strip().splitlines()[-1])
        raw["wall_seconds"] = time.time() - t0
        log(f"raw insert: {raw}")
        n_links = int(subprocess.run(["sqlite3", db, "SELECT COUNT(*) FROM links"], capture_output=True, text=True).stdout.strip() or 0)
        self.results["bulk"] = {"gen": genstats, "issues_seconds": issue_secs, "import_seconds": secs, "import_exit": rc,
                                "import_summary": summary[-1] if summary else "", "links_in_db": n_links,
                                "raw": raw, "ratio": secs / raw["seconds"], "rss": samples, "input_bytes": size}


def watch_import(p, path, size):
    """Samples the importer's RSS against how far it has read its input (from /proc/PID/fdinfo)."""
    samples = []
    real = os.path.realpath(path)
    fd = None
    while p.poll() is None:
        st = proc_status(p.pid)
        pos = None
        try:
            if fd is None:
                for f in os.listdir(f"/proc/{p.pid}/fd"):
                    try:
                        if os.readlink(f"/proc/{p.pid}/fd/{f}") == real:
                            fd = f
                    except OSError:
                        pass
            if fd is not None:
                with open(f"/proc/{p.pid}/fdinfo/{fd}") as f:
                    pos = int(f.readline().split()[1])
        except (OSError, ValueError, IndexError):
            pass
        if st and pos is not None:
            samples.append({"t": time.time(), "frac": pos / size, "rss": st.get("VmRSS"), "hwm": st.get("VmHWM")})
        time.sleep(0.25)
    return samples


def pgbench(dbname, script, c, duration, workdir):
    for f in os.listdir(workdir):
        os.remove(os.path.join(workdir, f))
    argv = ["pgbench", "-h", "127.0.0.1", "-U", "postgres", "-n", "-M", "prepared", "-c", str(c), "-j", str(min(c, 2)),
            "-T", str(duration), "-f", script, "-l", "--log-prefix", os.path.join(workdir, "tx"), dbname]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stderr}")
    lat = []
    for f in os.listdir(workdir):
        with open(os.path.join(workdir, f)) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
    lat.sort()
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))

    def pct(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0

    return {"rps": tps, "requests": len(lat), "p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99),
            "max_us": lat[-1] if lat else 0, "non2xx": 0, "exhausted": 0, "conc": c}


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])

    def ver(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return ""

    return {"nproc": os.cpu_count(), "cpu": model, "ram_gib": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "wrk": ver(["wrk", "-v"]) or ver(["sh", "-c", "wrk -v 2>&1"]),
            "pgbench": ver(["pgbench", "--version"]), "sqlite_cli": ver(["sqlite3", "--version"])}


# ---------------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------------
def fmt_ratio(r):
    # None: the floor completed no request in its run (e.g. every connection waited on one long checkpoint).
    return "n/a" if r is None else f"{r:.2f}"


def ms(us):
    return f"{us / 1000:.2f}"


def render(res):
    m = res["machine"]
    out = [f"Tether benchmark — {res['started']} → {res.get('finished', '')}",
           f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}; "
           f"load average before {res['load_before']}, after {res.get('load_after', '')}",
           f"each run {res['args']['duration']} s (or until its request lines ran out), best of {res['args']['reps']} alternating "
           f"runs per side; wrk -t1 -c1 at c=1, wrk -t2 -c16 at c=16; "
           f"response sizes (bytes): {res.get('body_sizes')}", ""]
    out.append("| scenario | c | Tether req/s | p50 ms | p99 ms | floor req/s | floor p50 | floor p99 | ratio | floor |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in res["rows"]:
        t, f = r["tether"], r["floor"]
        flags = []
        if t.get("non2xx"):
            flags.append(f"{t['non2xx']} non-2xx")
        if t.get("exhausted"):
            flags.append(f"all {t['requests']} lines sent in {t['seconds']:.1f} s")
        if t.get("socket_errors"):
            flags.append(f"{t['socket_errors']} socket errors")
        fl = f" ({', '.join(flags)})" if flags else ""
        out.append(f"| {r['scenario']}{fl} | {r['conc']} | {t['rps']:.0f} | {ms(t['p50_us'])} | {ms(t['p99_us'])} | "
                   f"{f['rps']:.0f} | {ms(f['p50_us'])} | {ms(f['p99_us'])} | {fmt_ratio(r['ratio'])} | {r['notes']} |")
    out.append("")
    out.append("Memory (MiB): " + json.dumps({k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in res["memory"].items()}))
    b = res.get("bulk")
    if b:
        out.append("")
        out.append(f"Bulk: {b['gen']['issues']} issues via POST /v2/issues/_import in {b['issues_seconds']:.1f} s; "
                   f"`tether import links` of {b['gen']['links']} links ({b['input_bytes'] / 1e6:.0f} MB NDJSON): "
                   f"{b['import_seconds']:.1f} s (exit {b['import_exit']}; {b['import_summary']}; {b['links_in_db']} rows) "
                   f"vs raw batched insert {b['raw']['seconds']:.1f} s ({b['raw']['rows']} rows) → {b['ratio']:.2f}×")
        s = b["rss"]
        if s:
            def at(q):
                c = [x for x in s if x["frac"] >= q]
                return c[0] if c else s[-1]

            out.append(f"Import RSS: at 10 % of input {at(0.1)['rss']:.1f} MiB, at 50 % {at(0.5)['rss']:.1f} MiB, "
                       f"at 100 % {s[-1]['rss']:.1f} MiB (peak {max(x['hwm'] for x in s):.1f} MiB), {len(s)} samples")
    out += ["", "Targets:"] + [f"- {t}" for t in targets(res)]
    return "\n".join(out) + "\n"


def targets(res):
    def row(prefix, c):
        for r in res["rows"]:
            if r["scenario"].startswith(prefix) and r["conc"] == c:
                return r
        return None

    out = []

    def ratio_target(name, r, want, p99=None):
        if r is None or r["ratio"] is None:
            out.append(f"{name}: not measured")
            return
        ok = r["ratio"] >= want
        line = f"{name}: {r['ratio']:.2f} of the floor (target ≥ {want:.2f}) — {'met' if ok else 'MISSED'}"
        line += f" ({r['ratio'] / want * 100:.0f} % of the target)"
        if p99 is not None:
            got = r["tether"]["p99_us"] / 1000
            line += f"; p99 {got:.1f} ms (target ≤ {p99} ms) — {'met' if got <= p99 else f'MISSED by {got - p99:.1f} ms'}"
        out.append(line)

    ratio_target("create link c=16", row("create link (", 16), 0.60, 10)
    ratio_target("list 50 links c=16", row("list links", 16), 0.50, 10)
    ratio_target("get issue c=16", row("get issue", 16), 0.50)
    ratio_target("PostgreSQL create link c=16 vs pgbench", row("PostgreSQL: create link (depends", 16), 0.50)
    b = res.get("bulk")
    if b:
        ok = b["ratio"] <= 3
        out.append(f"bulk import: {b['ratio']:.2f}× the raw insert (target ≤ 3×) — {'met' if ok else 'MISSED'}")
        s = b["rss"]
        if s:
            first = next((x for x in s if x["frac"] >= 0.1), s[0])
            grow = s[-1]["rss"] - first["rss"]
            out.append(f"import memory: {first['rss']:.1f} MiB at 10 %, {s[-1]['rss']:.1f} MiB at the end "
                       f"({grow:+.1f} MiB) — {'flat' if grow < 16 else 'GROWS'}")
    for k, v in res["memory"].items():
        hwm = v.get("VmHWM", 0)
        out.append(f"{k} peak RSS {hwm:.1f} MiB (target ≤ 100 MiB) — {'met' if hwm <= 100 else 'MISSED'}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    ap.add_argument("--reps", type=int, default=2, help="alternating runs of Tether and its floor; the best of each is kept")
    ap.add_argument("--pairs-c1", type=int, default=2000, help="fresh issue pairs per c=1 create run (its count bound)")
    ap.add_argument("--pairs-c16", type=int, default=10000, help="fresh issue pairs per c=16 create run")
    ap.add_argument("--pg-pairs-c1", type=int, default=1000)
    ap.add_argument("--pg-pairs-c16", type=int, default=6000)
    ap.add_argument("--bulk-issues", type=int, default=100_000)
    ap.add_argument("--bulk-links", type=int, default=1_000_000)
    ap.add_argument("--skip-bulk", action="store_true")
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--only-bulk", action="store_true", help="only the bulk import (no request scenarios)")
    ap.add_argument("--only-pg", action="store_true", help="only the PostgreSQL scenarios")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (databases, request files)")
    a = ap.parse_args()
    for tool in ("wrk", "sqlite3"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found (bench/run installs it)")
    if not a.only_pg and not os.access(FLOOR, os.X_OK):
        sys.exit(f"bench: the floor binary {FLOOR} is not built "
                 "(bench/run builds it: cd bench/floor && cargo build --release)")
    Bench(a).run()


if __name__ == "__main__":
    main()
