#!/usr/bin/env python3
"""Create link at c=16, two Tether binaries measured alternately:
`python3 bench/ab_create.py BEFORE AFTER [ROUNDS] [PAIRS] [--pg]`.

The create-link figure of `bench/bench.py` comes from one short run per repetition and moves by ±20 % between runs on
a shared 2-core machine; this script measures just that scenario many times, alternating the two binaries (their
order swaps every round), each round on a fresh SQLite database: 2 × PAIRS issues imported through the API, then
`wrk -t2 -c16` sends PAIRS (default 4 000) `depends on` creates between fresh pairs (each line once; the run lasts
at most 30 s). It prints each run and the
median and mean of each side. Uses bench.py's server, import and wrk helpers; needs wrk. With `--pg`, each round is
on a fresh PostgreSQL database instead (`postgres://postgres@127.0.0.1:5432`, dropped after the run).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


PSQL = ["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"]


def one_run(path, name, work, pairs, pg):
    bench.TETHER = path
    if pg:
        db = f"tether_ab_{os.getpid()}"
        subprocess.run(PSQL + [f"CREATE DATABASE {db}"], check=True)
        url = f"{bench.PG_BASE}/{db}"
    else:
        url = f"sqlite://{os.path.join(work, f'{name}.db')}"
    srv = bench.tether(f"ab-{name}", url, "normal", work)
    try:
        api = bench.Api(srv.port)
        api.call("POST", "/v2/queues", {"key": "BENCH", "name": "Bench", "defaultType": "task"})
        issues = [{"queue": "BENCH", "summary": f"pair issue {i}", "createdAt": "2020-01-01T00:00:00.000+0000",
                   "createdBy": "admin"} for i in range(2 * pairs)]
        keys = bench.import_issues(srv.port, issues, workers=4)
        reqs = os.path.join(work, f"{name}.tsv")
        bench.write_reqs(reqs, [("POST", f"/v2/issues/{keys[2 * i]}/links",
                                 {"relationship": "depends on", "issue": keys[2 * i + 1]}) for i in range(pairs)])
        time.sleep(1)
        return bench.wrk(srv.port, reqs, 16, 30, False)
    finally:
        srv.stop()
        if pg:
            subprocess.run(PSQL + [f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], check=True)


def main():
    pg = "--pg" in sys.argv
    sys.argv = [a for a in sys.argv if a != "--pg"]
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    bins = {"before": sys.argv[1], "after": sys.argv[2]}
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    pairs = int(sys.argv[4]) if len(sys.argv) > 4 else 4000
    out = {k: [] for k in bins}
    work = tempfile.mkdtemp(prefix="tether-ab-")
    for r in range(rounds):
        order = list(bins.items()) if r % 2 == 0 else list(reversed(bins.items()))
        for name, path in order:
            res = one_run(path, f"{name}-{r}", work, pairs, pg)
            out[name].append(round(res["rps"]))
            print(f"{name} round {r}: {res['rps']:.0f} req/s, p99 {res['p99_us'] / 1000:.2f} ms, "
                  f"non-2xx {res['non2xx']}", flush=True)
    for name, rates in out.items():
        print(f"{name}: median {statistics.median(rates):.0f}, mean {statistics.mean(rates):.0f} req/s {rates}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
