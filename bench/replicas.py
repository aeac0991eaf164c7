#!/usr/bin/env python3
"""Create link at c=16 on PostgreSQL, one Tether process against N sharing the database:
`TETHER_BIN=… python3 bench/replicas.py [N] [ROUNDS] [PAIRS] [REL]`.

Each round runs the scenario twice, on a fresh PostgreSQL database each time (`postgres://postgres@127.0.0.1:5432`,
dropped after the run), once with one process and once with N (default 2; the order swaps every round): the
organization's queue is made through the first process, then each process imports its share of 2 × PAIRS issues
(default 12 000 pairs; each process imports its own, so its caches of issue keys are as warm as the single process's)
and a `wrk -t2 -c(16/N)` of its share of REL links (default `depends on`; `relates` takes no graph lock) between
fresh pairs runs against each process at once. Prints each run (each process's rate and the sum: all requests over
the longest process's time) and the mean of each side. On one 2-core machine the processes share the cores with
PostgreSQL and wrk, so this measures what several writers on one database cost or give, not a scale-out. Uses
bench.py's server, import and wrk helpers; needs wrk.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

PSQL = ["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"]
CONC = 16


def one_run(n, pairs, rel, work):
    db = f"tether_ab_{os.getpid()}"
    subprocess.run(PSQL + [f"CREATE DATABASE {db}"], check=True)
    url = f"{bench.PG_BASE}/{db}"
    servers = []
    try:
        servers.append(bench.tether("replica-0", url, "normal", work))
        bench.Api(servers[0].port).call("POST", "/v2/queues", {"key": "BENCH", "name": "Bench", "defaultType": "task"})
        servers += [bench.tether(f"replica-{k}", url, "normal", work) for k in range(1, n)]
        files = []
        for k, srv in enumerate(servers):
            issues = [{"queue": "BENCH", "summary": f"pair issue {k} {i}", "createdAt": "2020-01-01T00:00:00.000+0000",
                       "createdBy": "admin"} for i in range(2 * (pairs // n))]
            keys = bench.import_issues(srv.port, issues, workers=4)
            path = os.path.join(work, f"replica-{k}.tsv")
            lines = [("POST", f"/v2/issues/{keys[2 * i]}/links", {"relationship": rel, "issue": keys[2 * i + 1]})
                     for i in range(pairs // n)]
            bench.write_reqs(path, lines)
            files.append(path)
        time.sleep(1)
        results = [None] * n

        def load(k):
            results[k] = bench.wrk(servers[k].port, files[k], CONC // n, 30, False)

        threads = [threading.Thread(target=load, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if any(r is None for r in results):
            raise RuntimeError("a wrk run failed; see the output above")
        total = sum(r["requests"] for r in results) / max(r["seconds"] for r in results)
        return total, results
    finally:
        for srv in servers:
            srv.stop()
        subprocess.run(PSQL + [f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], check=True)


def main():
    args = sys.argv[1:]
    n = int(args[0]) if len(args) > 0 else 2
    rounds = int(args[1]) if len(args) > 1 else 3
    pairs = int(args[2]) if len(args) > 2 else 12000
    rel = args[3] if len(args) > 3 else "depends on"
    if n < 1 or CONC % n:
        sys.exit(f"N must divide {CONC}")
    work = tempfile.mkdtemp(prefix="tether-replicas-")
    out = {1: [], n: []}
    for r in range(rounds):
        for k in ([1, n] if r % 2 == 0 else [n, 1]):
            total, results = one_run(k, pairs, rel, work)
            out[k].append(round(total))
            each = " + ".join(f"{x['rps']:.0f}" for x in results)
            print(f"round {r}, {k} process(es), {rel} c={CONC}: {each} → {total:.0f} req/s, "
                  f"p99 {max(x['p99_us'] for x in results) / 1000:.2f} ms, non-2xx {sum(x['non2xx'] for x in results)}",
                  flush=True)
    for k, rates in out.items():
        print(f"{k} process(es): mean {statistics.mean(rates):.0f} req/s {rates}")


if __name__ == "__main__":
    main()
