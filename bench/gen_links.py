#!/usr/bin/env python3
"""Generates a bulk data set for Tether's import benchmark (docs/benchmarks.md).

Writes two NDJSON files:
  ISSUES: one `POST /v2/issues/_import` body per line (`queue`, `key` QUEUE-1..N, `summary`, `type`, `createdAt`,
          `createdBy`), about 1 % of them epics;
  LINKS:  one seed-001 link record per line plus `"from": "KEY"`, as `tether import links FILE --org ORG` reads.

The links follow Tether's rules (contract §5), so every record should import:
  - one link per unordered pair, no self-links;
  - `depends` only from a higher-numbered issue to a lower one, `subtask` parents numbered below their children:
    no cycle through either;
  - at most one parent and one epic per issue; the epic side is an epic; epics are never in an epic nor a
    sub-issue (nor, here, a parent);
  - createdAt after both issues were created, before now.
Mix (default): 47 % relates, 38 % depends, 7 % subtask, 5 % epic, 3 % duplicates, each named from either side.
Degrees are skewed: a fifth of the endpoints come from a hot 1 % of the issues.

usage: gen_links.py --issues 100000 --links 1000000 --queue BULK --issues-out I.ndjson --links-out L.ndjson
"""

import argparse
import json
import random
import sys

MIX = [("relates", 0.47), ("depends", 0.38), ("subtask", 0.07), ("epic", 0.05), ("duplicates", 0.03)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--issues", type=int, default=100_000)
    ap.add_argument("--links", type=int, default=1_000_000)
    ap.add_argument("--queue", default="BULK")
    ap.add_argument("--user", default="admin", help="createdBy of issues and links")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epic-fraction", type=float, default=0.01)
    ap.add_argument("--updated-fraction", type=float, default=0.1, help="records that also carry updatedAt/By")
    ap.add_argument("--issues-out", required=True)
    ap.add_argument("--links-out", required=True)
    a = ap.parse_args()

    n, m, q = a.issues, a.links, a.queue
    if n < 100 or m > n * (n - 1) // 4:
        print("gen_links: too many links for so few issues", file=sys.stderr)
        return 2
    rng = random.Random(a.seed)
    epic = bytearray(n + 1)
    for i in range(1, n + 1):
        if rng.random() < a.epic_fraction:
            epic[i] = 1
    epics = [i for i in range(1, n + 1) if epic[i]]
    hot = rng.sample(range(1, n + 1), max(1, n // 100))

    # Issues: created one second apart from 2020-01-01 (all well before the links' dates).
    with open(a.issues_out, "w") as f:
        for i in range(1, n + 1):
            t = 1577836800 + i
            f.write(json.dumps({
                "queue": q, "key": f"{q}-{i}", "summary": f"Bulk issue {i}",
                "type": "epic" if epic[i] else "task",
                "createdAt": stamp(t), "createdBy": a.user,
            }, separators=(",", ":")) + "\n")

    def pick() -> int:
        return rng.choice(hot) if rng.random() < 0.2 else rng.randint(1, n)

    pairs = set()
    has_parent = bytearray(n + 1)
    has_epic = bytearray(n + 1)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    counts = dict.fromkeys(kinds, 0)
    written = 0
    with open(a.links_out, "w") as f:
        while written < m:
            kind = rng.choices(kinds, weights)[0]
            rec = None
            for _ in range(50):  # a few tries to find a free pair for this kind
                x, y = pick(), pick()
                if x == y:
                    continue
                lo, hi = (x, y) if x < y else (y, x)
                if (lo, hi) in pairs:
                    continue
                if kind in ("relates", "duplicates"):
                    if kind == "relates":
                        rec = (x, "relates", y)
                    else:
                        rec = (x, "duplicates", y) if rng.random() < 0.5 else (y, "is duplicated by", x)
                elif kind == "depends":
                    # hi depends on lo: edges only go down, so no cycle.
                    rec = (hi, "depends on", lo) if rng.random() < 0.5 else (lo, "is dependent by", hi)
                elif kind == "subtask":
                    child, parent = hi, lo
                    if has_parent[child] or epic[child] or epic[parent]:
                        continue
                    has_parent[child] = 1
                    rec = (child, "is subtask for", parent) if rng.random() < 0.5 else (parent, "is parent task for", child)
                else:  # epic
                    member = x
                    if epic[member] or has_epic[member]:
                        continue
                    e = rng.choice(epics)
                    if e == member:
                        continue
                    lo, hi = (member, e) if member < e else (e, member)
                    if (lo, hi) in pairs:
                        continue
                    has_epic[member] = 1
                    rec = (member, "has epic", e) if rng.random() < 0.5 else (e, "is epic of", member)
                pairs.add((lo, hi))
                break
            if rec is None:
                continue
            frm, rel, to = rec
            created = 1704067200 + rng.randint(0, 365 * 86400)
            r = {"from": f"{q}-{frm}", "relationship": rel, "issue": f"{q}-{to}",
                 "createdAt": stamp(created), "createdBy": a.user}
            if rng.random() < a.updated_fraction:
                r["updatedAt"] = stamp(created + rng.randint(0, 86400))
                r["updatedBy"] = a.user
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
            counts[kind] += 1
            written += 1
    print(json.dumps({"issues": n, "epics": len(epics), "links": written, "by_type": counts}))
    return 0


def stamp(t: int) -> str:
    import time
    return time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime(t))


if __name__ == "__main__":
    sys.exit(main())
