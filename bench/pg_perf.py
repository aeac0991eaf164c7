#!/usr/bin/env python3
"""Where the CPU goes while Tether creates links on PostgreSQL: a fresh database, N fresh issue pairs, a wrk load of
`depends on` (or REL) creates at c=16, and `perf record -a` (the whole machine: postgres backends, Tether, wrk) for
3 s of it. Prints the requests/s and the share of samples per command and per postgres backend; the data stays in
/tmp/pg_perf.data for `perf report`.

usage: TETHER_BIN=target/release/tether python3 bench/pg_perf.py [PAIRS] [REL]   (root, perf installed)
       PERFARGS="-F 499 --call-graph dwarf,16384" … for call graphs
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def main():
    pairs_n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    rel = sys.argv[2] if len(sys.argv) > 2 else "depends on"
    work = tempfile.mkdtemp(prefix="pg-perf-")

    class Args:
        reps = 1
        duration = 5

    b = bench.Bench.__new__(bench.Bench)
    b.a, b.work = Args(), work
    dbname = f"tether_perf_{os.getpid()}"
    psql = ["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres"]
    subprocess.run(psql + ["-d", "postgres", "-c", f"CREATE DATABASE {dbname}"], check=True)
    data = "/tmp/pg_perf.data"
    try:
        srv = bench.tether("perf", f"{bench.PG_BASE}/{dbname}", "normal", work)
        try:
            bench.Api(srv.port).call("POST", "/v2/queues", {"key": "BENCH", "name": "Bench", "defaultType": "task"})
            reqs = b.link_reqs("reqs.tsv", b.pairs(srv.port, "BENCH", pairs_n), rel)
            rec = subprocess.Popen(["perf", "record", "-a"] + os.environ.get("PERFARGS", "-F 999").split()
                                   + ["-o", data, "--", "sleep", "3"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r = bench.wrk(srv.port, reqs, 16, 5, cycle=False)
            rec.wait()
        finally:
            srv.stop()
    finally:
        subprocess.run(psql + ["-d", "postgres", "-c", f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"])
    print(f"{rel} c=16: {r['rps']:.0f} req/s (non2xx {r['non2xx']})")
    for sort in (["--sort", "comm"], ["--comm", "postgres", "--sort", "pid"]):
        out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none"] + sort,
                             capture_output=True, text=True).stdout
        print("\n".join([ln for ln in out.splitlines() if ln.strip() and not ln.startswith("#")][:8]))


if __name__ == "__main__":
    main()
