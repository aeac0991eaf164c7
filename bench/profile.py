#!/usr/bin/env python3
"""Where the time of Tether's hot paths goes: the release server under `valgrind --tool=callgrind`, instrumented
only while it answers N requests of one scenario (create link, get issue, list of 50 links), sent one at a time from 127.0.0.1.

callgrind counts instructions (Ir), not seconds: the figures repeat whatever else the machine is doing, and they
miss time spent waiting (fsync, locks, the network). Then, where `perf record -e cpu-clock` works, the real server
under a 5 s wrk load at c=16, sampled (user and kernel CPU time). Prints, per scenario, instructions per request by component
(SQLite, sqlx, hyper/axum, tokio, serde_json, allocator, Tether's own code, …) and the costliest functions;
keeps the callgrind files in bench/out/<stamp>-profile/.

usage: python3 bench/profile.py [--requests 300]   (bench/profile builds first)
"""

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

BUCKETS = [
    ("SQLite (C library)", r"sqlite3\.c|libsqlite3"),
    ("sqlx", r"/sqlx-"),
    ("hyper / axum / tower / http", r"/(hyper|hyper-util|axum|axum-core|tower|tower-http|http|http-body|httparse|matchit)-\d"),
    ("tokio / mio / futures", r"/(tokio|mio|futures-\w+|flume|crossbeam-\w+|parking_lot\w*|event-listener\w*)-\d"),
    ("serde_json / serde", r"/(serde_json|serde|serde_core|itoa|ryu|zmij)-\d"),
    ("sha2 (token hash)", r"/(sha2|digest|block-buffer|hex)-\d"),
    ("tracing", r"/tracing"),
    ("time / date formatting", r"/time-\d"),
    ("url / percent-encoding", r"/(url|percent-encoding|form_urlencoded|idna)-\d"),
    ("Tether (src/)", r"(^|/)src/(http|store|domain|cli|error|web|outbox|integrations|lib)"),
    ("Rust std / alloc / core", r"/rustc/|library/(std|core|alloc)"),
    ("libc (malloc, memcpy, syscalls)", r"libc\.so|libc-|/glibc|malloc|\?\?\?:(mem|str|__)"),
]


def short(fn):
    """A function name without the machine's paths: `crate-1.2.3/src/x.rs:fn`."""
    fn = re.sub(r"/\S*?/registry/src/[^/]+/", "", fn)
    fn = re.sub(r"/rustc/[0-9a-f]+/", "rustc/", fn)
    return re.sub(r" \[/\S+\]$", "", fn)


def bucket(fn):
    for name, rx in BUCKETS:
        if re.search(rx, fn):
            return name
    return "other"


def annotate(out_file, threshold=100):
    """(total Ir, [(Ir, 'file:function')]) of exclusive costs."""
    r = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", f"--threshold={threshold}", out_file],
                       capture_output=True, text=True, check=True).stdout
    total = 0
    rows = []
    for line in r.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*?)\s*$", line)
        if not m:
            continue
        ir, fn = int(m.group(1).replace(",", "")), m.group(2)
        if fn.startswith("PROGRAM TOTALS"):
            total = ir
        elif not fn.startswith("=>") and not fn.startswith("<"):
            rows.append((ir, fn))
    return total, rows


def inclusive(out_file, names):
    """Inclusive Ir of the functions whose name contains one of `names` (e.g. sqlite3Reprepare)."""
    r = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--auto=no", "--threshold=100", out_file],
                       capture_output=True, text=True, check=True).stdout
    found = {}
    for line in r.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*?)\s*$", line)
        if m:
            for n in names:
                if re.search(":" + re.escape(n) + r"( |$)", m.group(2)) and n not in found:
                    found[n] = int(m.group(1).replace(",", ""))
    return found


def run_scenario(name, db_url, lines, n, outdir, warm):
    port = bench.free_port()
    out_file = os.path.join(outdir, f"callgrind.{name}.out")
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}",
            bench.TETHER, "--database-url", db_url, "serve", "--listen", f"127.0.0.1:{port}"]
    env = {"TETHER_BOOTSTRAP_ORG_ID": bench.ORG, "TETHER_BOOTSTRAP_TOKEN": bench.TOKEN, "RUST_LOG": "warn"}
    srv = bench.Server(f"callgrind-{name}", argv, port, env, outdir)
    try:
        api = bench.Api(port)
        for method, path, body in lines[:warm]:
            api.call(method, path, body)
        subprocess.run(["callgrind_control", "-i", "on", str(srv.p.pid)], check=True, capture_output=True)
        t0 = time.time()
        for method, path, body in lines[warm:warm + n]:
            api.call(method, path, body)
        secs = time.time() - t0
        subprocess.run(["callgrind_control", "-i", "off", str(srv.p.pid)], check=True, capture_output=True)
    finally:
        srv.stop()
    return summarize(name, out_file, n, secs)


# Functions whose inclusive cost says something on its own.
WATCH = ["sqlite3Reprepare", "sqlite3_prepare_v3", "sqlite3_step", "sqlite3VdbeExec", "walChecksumBytes",
         "tether::http::render::link", "tether::http::render::issue", "tether::http::ctx::hash_token"]


def summarize(name, out_file, n, secs=None):
    total, rows = annotate(out_file)
    per = collections.Counter()
    for ir, fn in rows:
        per[bucket(fn)] += ir
    per["other"] += total - sum(ir for ir, _ in rows)
    return {"scenario": name, "requests": n, "total_ir": total, "ir_per_request": total / n, "seconds_under_valgrind": secs,
            "buckets": {k: v / n for k, v in per.most_common()},
            "watch": {k: v / n for k, v in inclusive(out_file, WATCH).items()},
            "top": [(ir / n, short(fn)) for ir, fn in sorted(rows, reverse=True)[:25]]}


PERF_BUCKETS = [
    ("kernel: scheduler, wakeups, futex (thread hand-offs)",
     r"\[k\].*(spin_unlock|finish_task_switch|schedule|irqentry|futex|wake|switch|pick_next|enqueue|dequeue|idle)"),
    ("kernel: loopback TCP, epoll, syscalls", r"\[k\].*(tcp|ip_|skb|sock|net|loopback|epoll|sys_|syscall|entry_|do_|copy_|__x64)"),
    ("kernel: files, fsync", r"\[k\].*(ext4|jbd2|sync|vfs|filemap|page|xfs|blk|bio)"),
    ("kernel: other", r"\[k\]"),
    ("libc (malloc, memcpy, locks)", r"libc\.so|ld-linux"),
    ("sqlx", r"sqlx"),
    ("SQLite (C library)", r"^[^:]*\[\.\] (sqlite3|[a-z][A-Za-z0-9_]*)$"),
    ("hyper / axum / tower / http", r"(hyper|axum|tower|http::|httparse|matchit)"),
    ("tokio / futures / flume", r"(tokio|mio|futures|flume|crossbeam|parking_lot|event_listener)"),
    ("serde_json / serde", r"(serde_json|serde::|itoa|ryu|zmij)"),
    ("sha2 (token hash)", r"sha2|digest"),
    ("tracing", r"tracing"),
    ("Tether (src/)", r"tether::"),
    ("Rust std / alloc / core", r"(std::|core::|alloc::|<alloc|<core|<std)"),
]


def perf_bucket(line):
    for name, rx in PERF_BUCKETS:
        if re.search(rx, line):
            return name
    return "other"


def perf_scenario(name, db_url, reqs_file, outdir, duration, conc=16):
    """The CPU time of the real server under a wrk load, sampled by perf (cpu-clock, user and kernel)."""
    srv = bench.tether(f"perf-{name}", db_url, "normal", outdir)
    data = os.path.join(outdir, f"perf.{name}.data")
    try:
        rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-o", data, "-p", str(srv.p.pid),
                                "--", "sleep", str(duration)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = bench.wrk(srv.port, reqs_file, conc, duration, cycle=name != "create-link")
        rec.wait(duration + 30)
    finally:
        srv.stop()
    return perf_summary(name, data, r["rps"])


def perf_summary(name, data, rps):
    rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,sym",
                          "--percent-limit", "0"], capture_output=True, text=True).stdout
    per = collections.Counter()
    top = []
    for line in rep.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(\[[.k]\])\s+(.*)$", line)
        if not m:
            continue
        pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
        key = f"{dso} {kind} {sym}"
        per[perf_bucket(key)] += pct
        top.append((pct, key))
    return {"scenario": name, "rps": rps, "buckets": dict(per.most_common()), "top": top[:25]}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--perf-pairs", type=int, default=6000, help="fresh pairs for the perf create-link load")
    ap.add_argument("--from", dest="from_dir", help="only re-analyse the files of an earlier run (a bench/out/*-profile dir)")
    a = ap.parse_args()
    if a.from_dir:
        return reanalyse(a.from_dir)
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if not shutil.which(tool):
            sys.exit(f"profile: {tool} not found (apt-get install valgrind)")
    outdir = os.path.join(bench.HERE, "out", time.strftime("%Y%m%d-%H%M%S") + "-profile")
    os.makedirs(outdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="tether-profile-")
    db_url = f"sqlite://{os.path.join(work, 'tether.db')}"
    n, warm = a.requests, 20
    # Seed through the API with the plain server, then profile the same database.
    srv = bench.tether("seed", db_url, "normal", outdir)
    try:
        api = bench.Api(srv.port)
        api.call("POST", "/v2/queues", {"key": "BENCH", "name": "Bench", "defaultType": "task"})
        keys = bench.import_issues(srv.port, [{"queue": "BENCH", "summary": f"pair issue {i}",
                                               "createdAt": "2020-01-01T00:00:00.000+0000", "createdBy": "admin"}
                                              for i in range(2 * (n + warm) + 1)], workers=2)
        _, raw = api.call("POST", "/v2/issues", {"queue": "BENCH", "summary": "The issue clients read",
                                                 "description": "Read by the get-issue scenario. " * 8,
                                                 "assignee": "admin", "parent": keys[-1]})
        one = json.loads(raw)["key"]
        # An issue with 50 links of mixed types, for the list-of-links scenario.
        targets = bench.import_issues(srv.port, [{"queue": "BENCH", "summary": f"hub target {i}",
                                                  "createdAt": "2020-01-01T00:00:00.000+0000", "createdBy": "admin"}
                                                 for i in range(50)], workers=2)
        _, raw = api.call("POST", "/v2/issues", {"queue": "BENCH", "summary": "The hub", "assignee": "admin"})
        hub = json.loads(raw)["key"]
        for i, t in enumerate(targets):
            rel = ("relates", "depends on", "is dependent by")[i % 3]
            api.call("POST", f"/v2/issues/{hub}/links", {"relationship": rel, "issue": t})
    finally:
        srv.stop()
    pairs = [(keys[2 * i], keys[2 * i + 1]) for i in range(n + warm)]
    results = [
        run_scenario("create-link", db_url, [("POST", f"/v2/issues/{x}/links", {"relationship": "depends on", "issue": y})
                                             for x, y in pairs], n, outdir, warm),
        run_scenario("get-issue", db_url, [("GET", f"/v2/issues/{one}", None)] * (n + warm), n, outdir, warm),
        run_scenario("list-links", db_url, [("GET", f"/v2/issues/{hub}/links", None)] * (n + warm), n, outdir, warm),
    ]
    perf = []
    if shutil.which("perf") and subprocess.run(["perf", "record", "-e", "cpu-clock", "-o", os.devnull, "true"],
                                               capture_output=True).returncode == 0:
        # Fresh pairs for a 5 s create-link load at c=16 (the database now has the callgrind runs' links too).
        srv = bench.tether("seed2", db_url, "normal", outdir)
        try:
            keys2 = bench.import_issues(srv.port, [{"queue": "BENCH", "summary": f"perf pair {i}",
                                                    "createdAt": "2020-01-01T00:00:00.000+0000", "createdBy": "admin"}
                                                   for i in range(2 * a.perf_pairs)], workers=4)
        finally:
            srv.stop()
        cl = os.path.join(work, "perf-create.tsv")
        bench.write_reqs(cl, [("POST", f"/v2/issues/{keys2[2 * i]}/links", {"relationship": "depends on", "issue": keys2[2 * i + 1]})
                              for i in range(a.perf_pairs)])
        gi = os.path.join(work, "perf-get.tsv")
        bench.write_reqs(gi, [("GET", f"/v2/issues/{one}", None)])
        perf = [perf_scenario("create-link", db_url, cl, outdir, 5), perf_scenario("get-issue", db_url, gi, outdir, 5)]
    with open(os.path.join(outdir, "profile.json"), "w") as f:
        json.dump({"callgrind": results, "perf": perf}, f, indent=1)
    report(results, perf, outdir)
    shutil.rmtree(work, ignore_errors=True)


def reanalyse(outdir):
    with open(os.path.join(outdir, "profile.json")) as f:
        old = json.load(f)
    results = [summarize(r["scenario"], os.path.join(outdir, f"callgrind.{r['scenario']}.out"), r["requests"],
                         r.get("seconds_under_valgrind")) for r in old["callgrind"]]
    perf = [perf_summary(r["scenario"], os.path.join(outdir, f"perf.{r['scenario']}.data"), r["rps"]) for r in old["perf"]]
    with open(os.path.join(outdir, "profile.json"), "w") as f:
        json.dump({"callgrind": results, "perf": perf}, f, indent=1)
    report(results, perf, outdir)


def report(results, perf, outdir):
    for r in results:
        print(f"\n## {r['scenario']}: {r['ir_per_request']:,.0f} instructions per request ({r['requests']} requests)")
        print("| component | Ir/request | share |\n|---|---:|---:|")
        for k, v in r["buckets"].items():
            print(f"| {k} | {v:,.0f} | {100 * v / r['ir_per_request']:.1f} % |")
        print("\nInclusive Ir per request of some functions: " + ", ".join(f"{k} {v:,.0f}" for k, v in r["watch"].items()))
        print("\nTop functions (exclusive Ir per request):")
        for ir, fn in r["top"][:20]:
            print(f"  {ir:>10,.0f}  {fn[:150]}")
    for r in perf:
        print(f"\n## perf, {r['scenario']} at c=16 ({r['rps']:.0f} req/s): share of the server's CPU samples")
        print("| component | share |\n|---|---:|")
        for k, v in r["buckets"].items():
            print(f"| {k} | {v:.1f} % |")
        print("\nTop symbols:")
        for pct, key in r["top"][:20]:
            print(f"  {pct:5.1f} %  {key[:150]}")
    print(f"\ncallgrind and perf files: {outdir}")


if __name__ == "__main__":
    main()
