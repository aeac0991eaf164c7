"""Reliability of a real `tether` binary (issue 8): API fuzzing, crash safety, several replicas on one database,
hostile input, secrets in logs and at rest, and moving and keeping data (`tether db copy`, `tether backup`).
See docs/reliability.md for what each test shows, how to run it longer, and the figures of the last run.

Every server here listens on 127.0.0.1:0 and every outbound URL it is given points at 127.0.0.1; every loop is
bounded in count and in time.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import socket
import sqlite3
import threading
import time
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from reliability_support import (
    Database,
    Receiver,
    Tether,
    dead_port,
    run_cli,
    sentry_signature,
    sqlite_integrity,
    sqlite_query,
    tracker_date,
    wait_until,
)

MiB = 1024 * 1024
FIGURES: dict = {}


def figure(section: str, **values) -> None:
    """Records the figures of a run (printed, and written to $TETHER_RELIABILITY_FIGURES when set)."""
    FIGURES.setdefault(section, {}).update(values)
    print(f"[reliability] {section}: {json.dumps(values, sort_keys=True)}")
    path = os.environ.get("TETHER_RELIABILITY_FIGURES")
    if path:
        Path(path).write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, workdir):
    d = Database(request.param, workdir)
    try:
        yield d
    finally:
        d.drop()


@pytest.fixture
def sqlite_db(workdir):
    return Database("sqlite", workdir)


@pytest.fixture
def pg_db(workdir):
    d = Database("postgres", workdir)
    try:
        yield d
    finally:
        d.drop()


@pytest.fixture
def servers():
    """Every Tether a test starts; each is stopped at the end, whatever happened."""
    started: list[Tether] = []
    yield started
    for s in started:
        try:
            s.stop()
        except Exception:
            pass


def launch(servers: list, tether: Tether) -> Tether:
    servers.append(tether)
    return tether.start()


def new_queue(s: Tether, key: str) -> None:
    s.ok("POST", "/v2/queues", json={"key": key, "name": f"Queue {key}"}, status=201)


def new_issue(s: Tether, queue: str, summary: str = "x", **extra) -> dict:
    return s.ok("POST", "/v2/issues", json={"queue": queue, "summary": summary, **extra}, status=201)


def key_number(key: str) -> int:
    return int(key.rsplit("-", 1)[1])


# =============================================================================================================
# 1. Fuzzing the API (schemathesis, against /openapi.json)
# =============================================================================================================

FUZZ_EXAMPLES = int(os.environ.get("TETHER_FUZZ_EXAMPLES", "22"))  # per operation: 99 operations, 2,178 requests
FUZZ_MIN_REQUESTS = int(os.environ.get("TETHER_FUZZ_MIN_REQUESTS", "2000"))
FUZZ_BUDGET = float(os.environ.get("TETHER_FUZZ_BUDGET", "240"))  # seconds


def seed_fuzz_data(s: Tether, receiver: Receiver, secret: str):
    """Real objects for the fuzzer to aim at: queues, issues with links of every kind, custom fields, applications,
    remote links with backlinks (outbox events), spare tokens, a member and a reader, a Sentry installation."""
    from fuzz_support import Pools

    member = s.make_user("member", "fz-member")
    reader = s.make_user("reader", "fz-reader")
    spare = [s.cli("token", "create", "--user", "admin", "--name", f"spare{i}").stdout.strip() for i in range(3)]
    tokens = s.ok("GET", "/v2/_tokens")
    own = next(t for t in tokens if t["current"])
    spare_ids = [str(t["id"]) for t in tokens if not t["current"]]
    assert len(spare) == 3 and len(spare_ids) == 3
    new_queue(s, "FZ")
    new_queue(s, "FZB")
    queues = s.ok("GET", "/v2/queues")
    issues = [new_issue(s, "FZ", f"fuzz target {i}", unique=f"u-{i}") for i in range(8)]
    issues.append(new_issue(s, "FZ", "an epic", type="epic"))
    issues.append(new_issue(s, "FZB", "other queue"))
    keys = [i["key"] for i in issues]
    links = []
    for a, rel, b in [(0, "depends on", 1), (1, "is subtask for", 2), (3, "has epic", 8), (4, "relates", 5),
                      (5, "duplicates", 6)]:
        links.append(s.ok("POST", f"/v2/issues/{keys[a]}/links", json={"relationship": rel, "issue": keys[b]},
                          status=201))
    links.append(s.ok("POST", f"/v2/issues/{keys[6]}/links/_import", json={
        "relationship": "original", "issue": keys[7], "createdAt": issues[7]["createdAt"], "createdBy": "admin"}))
    for fid, ty in [("fzText", {"type": "string"}), ("fzNum", {"type": "number"}), ("fzDate", {"type": "date"}),
                    ("fzWhen", {"type": "datetime"}), ("fzUser", {"type": "user"}),
                    ("fzTags", {"type": "array", "items": "string"})]:
        s.ok("POST", "/v2/fields", json={"id": fid, "name": fid, "schema": ty}, status=201)
    apps = []
    for i in range(2):
        app_id = f"ru.fuzz.app{i}"
        s.ok("POST", "/v2/applications", status=201, json={
            "id": app_id, "name": f"Fuzz app {i}", "oauthToken": f"app-secret-{i}",
            "frontUrl": receiver.base + "/front/{{remoteKey}}", "entityInfoUrl": receiver.base + "/info/{{remoteKey}}",
            "createLinkUrl": receiver.base + "/links",
            "removeLinkUrl": receiver.base + "/links/{{issueKey}}/{{remoteKey}}"})
        apps.append(app_id)
    remotes = []
    for i, k in enumerate(keys[:4]):
        remotes.append(s.ok("POST", f"/v2/issues/{k}/remotelinks?backlink=true", status=201,
                            json={"relationship": "RELATES", "key": f"OBJ-{i}", "origin": apps[i % 2]}))
    events = s.ok("GET", "/v2/_outbox")
    # A Sentry installation, so signed Sentry requests reach the linking code.
    installation = str(uuidlib.uuid4())
    hook = json.dumps({"action": "created", "installation": {"uuid": installation},
                       "data": {"installation": {"uuid": installation, "code": "grant-fuzz",
                                                 "organization": {"slug": "acme"}, "app": {"uuid": "app-uuid"}}},
                       "actor": {"type": "user", "id": 1, "name": "x"}}).encode()
    r = requests.post(s.base_url + "/sentry/webhook", data=hook, timeout=10, headers={
        "Content-Type": "application/json", "Sentry-Hook-Resource": "installation",
        "Sentry-Hook-Timestamp": "1700000000", "Request-ID": uuidlib.uuid4().hex,
        "Sentry-Hook-Signature": sentry_signature(secret, hook)})
    assert r.status_code < 300, r.text
    me = s.ok("GET", "/v2/myself")
    users = s.ok("GET", "/v2/users")
    return Pools(
        org=s.org, token=s.token, member_token=member, reader_token=reader, spare_token_ids=spare_ids,
        own_token_id=str(own["id"]), issue_keys=keys, issue_ids=[str(i["id"]) for i in issues],
        link_ids=[str(link["id"]) for link in links], remote_link_ids=[str(r["id"]) for r in remotes],
        app_ids=apps, object_keys=[f"OBJ-{i}" for i in range(4)], queue_keys=["FZ", "FZB"],
        queue_ids=[str(q["id"]) for q in queues], uids=[str(u["uid"]) for u in users],
        logins=[u["login"] for u in users] + [me["login"]], custom_fields=["fzText", "fzNum", "fzDate", "fzWhen",
                                                                          "fzUser", "fzTags"],
        event_ids=[str(e["id"]) for e in events], uniques=[f"u-{i}" for i in range(8)],
        installation=installation, sentry_secret=secret, loopback=receiver.base,
        issue_created=[i["createdAt"] for i in issues],
    )


def sentry_fake(method: str, path: str, body: bytes):
    """Enough of Sentry for the fuzzed server's outbox: token exchange, verification, issue status."""
    if path.endswith("/authorizations/"):
        exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 8 * 3600))
        return 201, {"id": "1", "token": "fuzz-installation-token", "refreshToken": "fuzz-refresh",
                     "expiresAt": exp}
    if "external-issues" in path:
        return 200, []
    return 200, {}


@pytest.mark.timeout(600)
def test_fuzz_the_api_from_its_openapi_document(tether_exe, sqlite_db, workdir, servers):
    """Schemathesis against /openapi.json of a running tether (SQLite) with real credentials: at least
    FUZZ_MIN_REQUESTS requests, no 5xx, every error body conforms to the documented Error schema."""
    from fuzz_support import Fuzzer, random_seed

    receiver = Receiver()
    sentry = Receiver(sentry_fake)
    secret = "fuzz-sentry-secret-" + os.urandom(6).hex()
    try:
        s = launch(servers, Tether(tether_exe, sqlite_db.url, workdir, name="fuzz", args=[
            "--sentry-url", sentry.base, "--outbox-backoff", "50ms", "--outbox-backoff-max", "200ms",
            "--outbox-timeout", "2s", "--outbox-max-attempts", "2"],
            env={"TETHER_SENTRY_CLIENT_SECRET": secret, "TETHER_SENTRY_CLIENT_ID": "fuzz"}))
        pools = seed_fuzz_data(s, receiver, secret)
        rss_before = s.rss_kib()
        rng_seed = int(os.environ.get("TETHER_FUZZ_SEED") or random_seed())
        fuzzer = Fuzzer(s.base_url, pools, FUZZ_EXAMPLES, time.monotonic() + FUZZ_BUDGET, rng_seed)
        report = fuzzer.run()
        assert s.alive() and s.healthy(), f"the server died under fuzzing\n{s.log_tail()}"
        rss_after = s.rss_kib()
        ops_in_doc = sum(len(v) for v in fuzzer.document["paths"].values())
        figure("fuzz", seed=rng_seed, requests=report.requests, operations=len(fuzzer.operations),
               operations_in_document=ops_in_doc, seconds=round(report.seconds, 1),
               statuses={str(k): v for k, v in sorted(report.statuses.items())},
               server_errors=sum(1 for f in report.failures if f.check == "not_a_server_error"),
               schema_violations=sum(1 for f in report.failures if f.check == "response_schema_conformance"),
               documentation_gaps=len(report.soft), transport_errors=len(report.errors),
               rss_mib_before=round(rss_before / 1024, 1), rss_mib_after=round(rss_after / 1024, 1),
               calls_to_fake_app=len(receiver.snapshot()), calls_to_fake_sentry=len(sentry.snapshot()))
        if os.environ.get("TETHER_FUZZ_VERBOSE"):
            for label, statuses in sorted(report.per_status.items()):
                print(f"[reliability] {label}: {dict(sorted(statuses.items()))}")
                for status in statuses:
                    for sample in report.samples.get((label, status), []):
                        print(f"      {status}: {sample}")
        # Documentation gaps (a status or content type the document does not list) are reported, not failed.
        gaps = {}
        for f in report.soft:
            gaps.setdefault((f.check, f.operation, f.status), f)
        for (check, op, status), f in sorted(gaps.items()):
            print(f"[reliability] documentation gap: {check}: {op} answered {status}\n    {f.repro}")
        s.stop()
        assert sqlite_integrity(sqlite_db.path) == "ok"
    finally:
        receiver.close()
        sentry.close()
    assert len(fuzzer.operations) == ops_in_doc, "every operation of the document is fuzzed"
    assert not report.errors, "transport or generation errors:\n" + "\n".join(report.errors[:20])
    distinct = {}
    for f in report.failures:
        distinct.setdefault((f.check, f.operation, f.status), f)
    assert not distinct, "the fuzzer found server faults or schema violations:\n\n" + "\n\n".join(
        f"{f.check}: {f.operation} -> {f.status}\n{f.message}\nReproduce: {f.repro}" for f in distinct.values())
    assert report.requests >= FUZZ_MIN_REQUESTS, f"only {report.requests} requests were fuzzed"


# =============================================================================================================
# 2. Crash safety: SIGKILL in the middle of link creation and link import, then restart on the same database
# =============================================================================================================

CRASH_CYCLES = int(os.environ.get("TETHER_CRASH_CYCLES", "2"))
CRASH_WORKERS = 4  # concurrent clients: 3 creating issues and links (single create and import), 1 bulk importer


class Acks:
    """What the server acknowledged (201/200) before it was killed."""

    def __init__(self):
        self.lock = threading.Lock()
        self.issues: dict[str, int] = {}  # key -> id
        self.links: list[tuple[int, str, str, str]] = []  # (link id, from key, to key, how)
        self.in_flight_failures = 0
        self.requests = 0
        self.errors: list[str] = []

    def sent(self) -> None:
        with self.lock:
            self.requests += 1

    def issue(self, body: dict) -> None:
        with self.lock:
            self.issues[body["key"]] = int(body["id"])

    def link(self, link_id: int, a: str, b: str, how: str) -> None:
        with self.lock:
            self.links.append((int(link_id), a, b, how))


def all_issues(s: Tether, queue: str) -> list[dict]:
    out, page = [], 1
    for _ in range(100):  # bounded: 100 pages of 1000
        r = s.request("POST", f"/v2/issues/_search?perPage=1000&page={page}", json={"queue": queue})
        assert r.status_code == 200, r.text
        out += r.json()
        if page >= int(r.headers["X-Total-Pages"]):
            return out
        page += 1
    raise AssertionError("more than 100 pages of issues")


def crash_load(s: Tether, acks: Acks, queue: str, stop: threading.Event, worker: int, deadline: float) -> None:
    """One client: create an issue, link it to an older one (create or import), repeat; or, for the bulk worker,
    create a batch of issues and import a chain of links between them through the streamed NDJSON endpoint."""
    rng = random.Random(worker)
    sess = requests.Session()
    rels = ["relates", "depends on", "duplicates", "is subtask for", "is dependent by"]
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            if worker == 0:
                batch = []
                for _ in range(6):
                    r = s.request("POST", "/v2/issues", session=sess, json={"queue": queue, "summary": "bulk"})
                    acks.sent()
                    assert r.status_code == 201, r.text
                    acks.issue(r.json())
                    batch.append(r.json())
                records = [{"from": a["key"], "relationship": "relates", "issue": b["key"],
                            "createdAt": tracker_date(), "createdBy": "admin"} for a, b in zip(batch, batch[1:])]
                body = "\n".join(json.dumps(x) for x in records) + "\n"
                r = s.request("POST", "/v2/_bulk/links/_import", session=sess, data=body, stream=True,
                              headers={"Content-Type": "application/x-ndjson"})
                acks.sent()
                assert r.status_code == 200, r.text
                for line in r.iter_lines():
                    res = json.loads(line)
                    assert res["status"] == 200, res
                    rec = records[res["line"] - 1]
                    acks.link(res["id"], rec["from"], rec["issue"], "bulk import")
                continue
            with acks.lock:
                older = list(acks.issues) or None
            r = s.request("POST", "/v2/issues", session=sess, json={"queue": queue, "summary": f"w{worker}"})
            acks.sent()
            assert r.status_code == 201, r.text
            new = r.json()
            acks.issue(new)
            if not older:
                continue
            target = rng.choice(older)
            rel = rng.choice(rels)
            if rng.random() < 0.5:
                r = s.request("POST", f"/v2/issues/{new['key']}/links", session=sess,
                              json={"relationship": rel, "issue": target})
                acks.sent()
                if r.status_code == 201:
                    acks.link(r.json()["id"], new["key"], target, "create")
                else:
                    assert r.status_code == 422, r.text
            else:
                r = s.request("POST", f"/v3/issues/{new['key']}/links/_import", session=sess,
                              json={"relationship": rel, "issue": target, "createdAt": tracker_date(),
                                    "createdBy": "admin"})
                acks.sent()
                if r.status_code == 200:
                    acks.link(r.json()["id"], new["key"], target, "import")
                else:
                    assert r.status_code == 422, r.text
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, requests.Timeout):
        with acks.lock:
            acks.in_flight_failures += 1  # the server died under this request: not acknowledged
    except Exception as e:  # an unexpected answer: reported by the test, not lost in a thread
        with acks.lock:
            acks.errors.append(f"worker {worker}: {type(e).__name__}: {e}")


def verify_links(s: Tether, queue: str, acks: Acks) -> dict:
    """Every acknowledged issue and link is there; every link is whole (both sides, same type, opposite roles,
    objects that exist)."""
    issues = {i["key"]: i for i in all_issues(s, queue)}
    missing_issues = sorted(set(acks.issues) - set(issues), key=key_number)
    assert not missing_issues, f"acknowledged issues lost after the crash: {missing_issues[:20]}"
    for k, i in acks.issues.items():
        assert int(issues[k]["id"]) == i, f"{k} changed id"
    sides: dict[int, list[tuple[str, dict]]] = {}
    for key in issues:
        r = s.request("GET", f"/v2/issues/{key}/links")
        assert r.status_code == 200, r.text
        for link in r.json():
            sides.setdefault(int(link["id"]), []).append((key, link))
    for link_id, seen in sides.items():
        assert len(seen) == 2, f"link {link_id} is seen from {len(seen)} side(s): {seen}"
        (a, la), (b, lb) = seen
        assert la["object"]["key"] == b and lb["object"]["key"] == a, f"link {link_id} is half-written: {seen}"
        assert la["object"]["key"] in issues and lb["object"]["key"] in issues
        assert la["type"]["id"] == lb["type"]["id"], f"link {link_id} has two types: {seen}"
        assert {la["direction"], lb["direction"]} == {"inward", "outward"}, f"link {link_id}: {seen}"
    lost = [x for x in acks.links if x[0] not in sides]
    assert not lost, f"acknowledged links lost after the crash: {lost[:20]}"
    for link_id, a, b, how in acks.links:
        ends = {k for k, _ in sides[link_id]}
        assert ends == {a, b}, f"link {link_id} ({how} {a}->{b}) now joins {ends}"
    return {"issues": len(issues), "links": len(sides)}


@pytest.mark.timeout(300)
def test_acknowledged_links_survive_sigkill(tether_exe, db, workdir, servers):
    """Several clients create issues, links and link imports; the server is killed with SIGKILL mid-load, then
    restarted on the same database: every acknowledged write is there, nothing is half-written, issue numbers are
    never reused, and (SQLite) the file passes PRAGMA integrity_check."""
    s = launch(servers, Tether(tether_exe, db.url, workdir, name=f"crash-{db.backend}"))
    queue = "CR"
    new_queue(s, queue)
    acks = Acks()
    highest_before = 0
    totals = {"kills": 0, "requests": 0, "in_flight_at_kill": 0}
    rng = random.Random()
    for cycle in range(CRASH_CYCLES):
        stop = threading.Event()
        deadline = time.monotonic() + 30
        threads = [threading.Thread(target=crash_load, args=(s, acks, queue, stop, w, deadline), daemon=True)
                   for w in range(CRASH_WORKERS)]
        before = len(acks.links)
        for t in threads:
            t.start()
        # Kill once the load has produced acknowledged links, at a random moment.
        wait_until("the load acknowledges links", lambda: len(acks.links) >= before + 20, timeout=60, interval=0.05)
        time.sleep(rng.uniform(0.2, 1.5))
        s.kill()
        totals["kills"] += 1
        stop.set()
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive(), "a client did not stop after the kill"
        assert not acks.errors, "unexpected answers under load:\n" + "\n".join(acks.errors)
        if db.backend == "sqlite":
            # The crashed file as the kill left it (a copy, so the check cannot touch the original).
            crashed = workdir / f"crashed-{cycle}"
            crashed.mkdir()
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(db.path) + suffix)
                if src.exists():
                    (crashed / ("tether.db" + suffix)).write_bytes(src.read_bytes())
            conn = sqlite3.connect(crashed / "tether.db")
            try:
                assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            finally:
                conn.close()
        s = launch(servers, s.clone())
        figures = verify_links(s, queue, acks)
        existing = [key_number(i["key"]) for i in all_issues(s, queue)]
        fresh = new_issue(s, queue, f"after kill {cycle}")
        acks.issue(fresh)
        assert key_number(fresh["key"]) > max(existing + [highest_before]), (
            f"{fresh['key']} after the restart reuses or undercuts a number (highest was {max(existing)})")
        highest_before = key_number(fresh["key"])
    totals["requests"] = acks.requests
    totals["in_flight_at_kill"] = acks.in_flight_failures
    figure(f"crash_{db.backend}", cycles=CRASH_CYCLES, acknowledged_issues=len(acks.issues),
           acknowledged_links=len(acks.links), links_by_kind={k: sum(1 for x in acks.links if x[3] == k)
                                                             for k in ("create", "import", "bulk import")},
           verified_issues=figures["issues"], verified_links=figures["links"], lost=0, **totals)
    s.stop()
    if db.backend == "sqlite":
        assert sqlite_integrity(db.path) == "ok"


# =============================================================================================================
# 3. Several replicas: two `tether serve` processes on one PostgreSQL database
# =============================================================================================================

REPLICA_ROUNDS = int(os.environ.get("TETHER_REPLICA_ROUNDS", "20"))
REPLICA_BACKLINKS = int(os.environ.get("TETHER_REPLICA_BACKLINKS", "100"))


def race(calls: list) -> list[requests.Response]:
    """Runs the calls at the same moment (a barrier), each on its own warm connection; returns the answers."""
    barrier = threading.Barrier(len(calls))
    out: list = [None] * len(calls)

    def run(i, call):
        server, method, path, body = call
        sess = requests.Session()
        server.request("GET", "/v2/myself", session=sess)  # warm the connection and the token cache
        barrier.wait(timeout=30)
        out[i] = server.request(method, path, session=sess, json=body)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in out), "a racing request did not finish"
    return out


def one_winner(answers: list[requests.Response], what: str) -> None:
    """Exactly one request succeeded (201 create, 200 import); the others broke a rule (422)."""
    codes = sorted(r.status_code for r in answers)
    wins = [c for c in codes if c in (200, 201)]
    assert len(wins) == 1 and all(c == 422 for c in codes if c not in (200, 201)), (
        f"{what}: expected one success and the rest 422, got {codes}: {[r.text[:200] for r in answers]}")


@pytest.mark.timeout(300)
def test_two_replicas_keep_the_link_rules_and_deliver_each_backlink_once(tether_exe, pg_db, workdir, servers):
    """Two processes on one PostgreSQL database, requests spread over both: the link rules hold across processes,
    and each outbox event is delivered by exactly one of them."""
    fast = ["--outbox-backoff", "100ms", "--outbox-backoff-max", "500ms", "--outbox-timeout", "5s"]
    a = launch(servers, Tether(tether_exe, pg_db.url, workdir, name="replica-a", args=fast,
                               rust_log="info,sqlx=warn"))
    b = launch(servers, a.clone(name="replica-b"))
    both = [a, b]
    new_queue(a, "RP")
    counter = iter(range(10**6))

    def issue(**extra) -> str:
        return new_issue(both[next(counter) % 2], "RP", "replica", **extra)["key"]

    races = 0
    for _ in range(REPLICA_ROUNDS):
        # The same pair from both processes, both ways round: one link.
        x, y = issue(), issue()
        answers = race([(a, "POST", f"/v2/issues/{x}/links", {"relationship": "relates", "issue": y}),
                        (b, "POST", f"/v2/issues/{x}/links", {"relationship": "relates", "issue": y}),
                        (a, "POST", f"/v3/issues/{y}/links", {"relationship": "duplicates", "issue": x}),
                        (b, "POST", f"/v2/issues/{y}/links/_import", {"relationship": "relates", "issue": x,
                                                                      "createdAt": tracker_date(),
                                                                      "createdBy": "admin"})])
        one_winner(answers, f"same pair {x} {y}")
        assert len(b.ok("GET", f"/v2/issues/{x}/links")) == 1
        # A depends on B and B depends on A, from both processes: one link.
        p, q = issue(), issue()
        one_winner(race([(a, "POST", f"/v2/issues/{p}/links", {"relationship": "depends on", "issue": q}),
                         (b, "POST", f"/v2/issues/{q}/links", {"relationship": "depends on", "issue": p})]),
                   f"depends both ways {p} {q}")
        # A longer cycle: u depends on v; then v->w and w->u race (each closes the cycle the other opens).
        u, v, w = issue(), issue(), issue()
        a.ok("POST", f"/v2/issues/{u}/links", json={"relationship": "depends on", "issue": v}, status=201)
        one_winner(race([(a, "POST", f"/v2/issues/{v}/links", {"relationship": "depends on", "issue": w}),
                         (b, "POST", f"/v2/issues/{w}/links", {"relationship": "depends on", "issue": u})]),
                   f"a three-issue depends cycle {u} {v} {w}")
        # One child, two parents, through both processes: one parent.
        c, p1, p2 = issue(), issue(), issue()
        one_winner(race([(a, "POST", f"/v2/issues/{c}/links", {"relationship": "is subtask for", "issue": p1}),
                         (b, "POST", f"/v2/issues/{c}/links", {"relationship": "is subtask for", "issue": p2})]),
                   f"two parents for {c}")
        child = a.ok("GET", f"/v2/issues/{c}")
        assert child["parent"]["key"] in (p1, p2)
        assert len(a.ok("GET", f"/v2/issues/{c}/links")) == 1
        # One issue, two epics.
        i, e1, e2 = issue(), issue(type="epic"), issue(type="epic")
        one_winner(race([(a, "POST", f"/v2/issues/{i}/links", {"relationship": "has epic", "issue": e1}),
                         (b, "POST", f"/v2/issues/{i}/links", {"relationship": "has epic", "issue": e2})]),
                   f"two epics for {i}")
        races += 5

    # Backlinks: every outbox event delivered by exactly one process.
    receiver = Receiver()
    try:
        a.ok("POST", "/v2/applications", status=201, json={
            "id": "ru.replica.app", "name": "Replica app", "oauthToken": "replica-app-token",
            "frontUrl": receiver.base + "/front/{{remoteKey}}", "createLinkUrl": receiver.base + "/links",
            "removeLinkUrl": receiver.base + "/links/{{issueKey}}/{{remoteKey}}"})
        targets = [issue() for _ in range(10)]

        def make(n: int) -> tuple[str, str]:
            server = both[n % 2]
            key = targets[n % len(targets)]
            link = server.ok("POST", f"/v2/issues/{key}/remotelinks?backlink=true", status=201,
                             json={"relationship": "RELATES", "key": f"OBJ-{n}", "origin": "ru.replica.app"})
            return key, link["id"]

        with ThreadPoolExecutor(max_workers=4) as pool:
            made = list(pool.map(make, range(REPLICA_BACKLINKS)))
        assert len(made) == REPLICA_BACKLINKS

        def all_delivered():
            states = []
            for key in targets:
                for link in both[len(states) % 2].ok("GET", f"/v2/issues/{key}/remotelinks"):
                    states.append(link.get("backlink", {}).get("state"))
            return len(states) == REPLICA_BACKLINKS and all(st == "delivered" for st in states)

        wait_until("every backlink is delivered", all_delivered, timeout=60, interval=0.25)
        time.sleep(1.0)  # a quiet window: a duplicate delivery would arrive now
        keys = receiver.posts_per_key
        events = a.ok("GET", "/v2/_outbox?state=delivered&perPage=1000")
        event_keys = {e["idempotencyKey"] for e in events if e["kind"] == "backlink.create"}
        bodies = [json.loads(r["body"]) for r in receiver.snapshot() if r["method"] == "POST"]
        assert len(event_keys) == REPLICA_BACKLINKS
        assert set(keys) == event_keys, "the receiver saw keys that are not the outbox's, or missed some"
        dupes = {k: n for k, n in keys.items() if n != 1}
        assert not dupes, f"backlinks delivered more than once: {dupes}"
        assert sorted(e for body in bodies for e in body["entityIds"]) == sorted(
            f"OBJ-{n}" for n in range(REPLICA_BACKLINKS))
        auth = {r["headers"].get("authorization") for r in receiver.snapshot()}
        assert auth == {"OAuth replica-app-token"}
    finally:
        receiver.close()
    delivered_by = {s.name: len(re.findall(r"outbox: delivered", s.log_text())) for s in both}
    figure("replicas", processes=2, link_races=races, racing_requests=REPLICA_ROUNDS * 12,
           backlinks=REPLICA_BACKLINKS, deliveries=sum(keys.values()), duplicates=0, delivered_by=delivered_by)


# =============================================================================================================
# 4. Hostile input: each attempt gets a clean 4xx or a closed connection; the server stays up, its memory bounded
# =============================================================================================================

RSS_GROWTH_LIMIT_MIB = 50
HOSTILE_SECRET = "hostile-sentry-secret"


def raw_http(base_url: str, data: bytes, timeout: float = 15) -> tuple[int | None, bytes]:
    """Sends raw bytes on a new connection; returns (status, head) of the answer, or (None, b"") when the server
    closed the connection without one."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    buf = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: what it answered (if anything) is still readable
        try:
            while b"\r\n\r\n" not in buf and len(buf) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", buf)
    return (int(m.group(1)) if m else None), buf.split(b"\r\n\r\n", 1)[0]


def refused(status: int | None) -> bool:
    """A clean refusal: a 4xx, or a closed connection."""
    return status is None or 400 <= status < 500


@pytest.fixture(scope="module")
def hostile(tether_exe, tmp_path_factory):
    """One server (SQLite) for every hostile-input test, watched across all of them."""
    workdir = tmp_path_factory.mktemp("hostile")
    s = Tether(tether_exe, f"sqlite://{workdir}/t.db", workdir, name="hostile",
               args=["--sentry-url", f"http://127.0.0.1:{dead_port()}"],
               env={"TETHER_SENTRY_CLIENT_SECRET": HOSTILE_SECRET})
    s.start()
    try:
        new_queue(s, "HX")
        new_issue(s, "HX", "first")
        new_issue(s, "HX", "second")
        s.rss_baseline = s.rss_kib()
        s.attempts = 0
        yield s
    finally:
        s.stop()


@pytest.fixture
def watched(hostile):
    """After each hostile test: the server is up, answers, and its memory has not grown past the limit."""
    yield hostile
    assert hostile.alive(), f"the server died\n{hostile.log_tail()}"
    assert hostile.healthy(), "the server no longer answers /healthz"
    assert hostile.request("GET", "/v2/issues/HX-1").status_code == 200
    growth = (hostile.rss_kib() - hostile.rss_baseline) / 1024
    figure("hostile", rss_baseline_mib=round(hostile.rss_baseline / 1024, 1), rss_growth_mib=round(growth, 1),
           attempts=hostile.attempts)
    assert growth < RSS_GROWTH_LIMIT_MIB, f"RSS grew by {growth:.1f} MiB"


AUTH = b"Authorization: OAuth %s\r\nX-Org-ID: %s\r\n"


def auth_lines(s: Tether) -> bytes:
    return AUTH % (s.token.encode(), s.org.encode())


def send_big(s: Tether, method: str, path: str, data, **headers) -> int | None:
    """Sends an oversized body; the status, or None when the server closed the connection before the client could
    read its answer (it answers 413 as soon as it knows, without reading the rest, then closes)."""
    try:
        r = s.request(method, path, data=data, headers={"Content-Type": "application/json", **headers})
    except requests.ConnectionError:
        return None
    if r.status_code < 500 and r.content and r.headers.get("content-type", "").startswith("application/json"):
        body = r.json()
        assert body.get("statusCode", r.status_code) == r.status_code or "message" in body, body
    return r.status_code


def test_oversized_bodies_are_refused_with_413(watched):
    s = watched
    big = json.dumps({"queue": "HX", "summary": "x" * (2 * MiB)}).encode()
    head = b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    for path in ("/v2/issues", "/v2/issues/_search", "/v2/issues/HX-1/links", "/v3/issues/HX-1/links/_import"):
        # Declared length: 413 before the body is read (seen on a raw socket, which keeps what arrived).
        status, got = raw_http(s.base_url, head % (path.encode(), len(big)) + auth_lines(s) + b"\r\n" + big)
        assert status in (413, None), f"{path}: {got[:300]!r}"
        assert send_big(s, "POST", path, big) in (413, None)
        # The same body without a declared length (chunked): the limit holds while reading.
        chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))
        assert send_big(s, "POST", path, chunks) in (413, None), f"{path} (chunked)"
        s.attempts += 3
    assert send_big(s, "PATCH", "/v2/issues/HX-1", big) in (413, None)
    # Just over the limit (1 MiB + 1 byte).
    status, got = raw_http(s.base_url, head % (b"/v2/issues", MiB + 1) + auth_lines(s) + b"\r\n" + b" " * (MiB + 1))
    assert status in (413, None), got
    # A signed Sentry request over the limit.
    body = b'{"x": "' + b"y" * (2 * MiB) + b'"}'
    assert send_big(s, "POST", "/sentry/issues/link", body,
                    **{"Sentry-App-Signature": sentry_signature(HOSTILE_SECRET, body)}) in (400, 413, None)
    s.attempts += 3
    assert new_issue(s, "HX", "after the big bodies")["key"]


def test_bulk_import_streams_any_length_with_flat_memory(watched):
    """The NDJSON import has no body limit, only a line limit: a 2 MiB line is refused (413 for that line), and a
    32 MiB body streams through without the server holding it."""
    s = watched
    long_line = json.dumps({"from": "HX-1", "x": "y" * (2 * MiB)})
    good = json.dumps({"from": "HX-2", "relationship": "relates", "issue": "HX-1", "createdAt": tracker_date(),
                       "createdBy": "admin"})
    r = s.request("POST", "/v2/_bulk/links/_import", data=(long_line + "\n" + good + "\n").encode(),
                  headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 200
    results = [json.loads(x) for x in r.text.splitlines()]
    assert [x["status"] for x in results] == [413, 200], results
    filler = (json.dumps({"from": "HX-1", "pad": "z" * 1000}) + "\n").encode()
    lines = 32 * MiB // len(filler)
    rss_before = s.rss_kib()

    def body():
        for _ in range(lines // 256):
            yield filler * 256

    r = s.request("POST", "/v2/_bulk/links/_import", data=body(), stream=True, timeout=120,
                  headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 200
    n = 0
    for line in r.iter_lines():
        n += 1
        assert json.loads(line)["status"] == 422  # "relationship" is missing: validated, refused, line by line
    assert n == lines // 256 * 256
    grew = (s.rss_kib() - rss_before) / 1024
    s.attempts += 2
    figure("hostile_bulk", streamed_mib=round(n * len(filler) / MiB, 1), lines=n, rss_growth_mib=round(grew, 1))
    assert grew < 16, f"streaming a 32 MiB import grew the server by {grew:.1f} MiB"


def test_huge_headers_and_urls_are_refused(watched):
    s = watched
    head = b"GET /v2/myself HTTP/1.1\r\nHost: t\r\n" + auth_lines(s)
    cases = {
        "a 1 MiB header": head + b"X-Junk: " + b"a" * MiB + b"\r\n\r\n",
        "1,000 headers": head + b"".join(b"X-J%d: v\r\n" % i for i in range(1000)) + b"\r\n",
        "a 100 kB URL": b"GET /v2/issues/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: t\r\n" + auth_lines(s) + b"\r\n",
        "a 1 MiB URL": b"GET /v2/issues/" + b"a" * MiB + b" HTTP/1.1\r\nHost: t\r\n\r\n",
    }
    for what, data in cases.items():
        status, got = raw_http(s.base_url, data)
        assert refused(status), f"{what}: {got[:300]!r}"
        s.attempts += 1


def test_a_100_kb_header_is_refused(watched):
    s = watched
    data = b"GET /v2/myself HTTP/1.1\r\nHost: t\r\n" + auth_lines(s) + b"X-Junk: " + b"a" * 100_000 + b"\r\n\r\n"
    served = []
    for _ in range(5):
        status, got = raw_http(s.base_url, data)
        s.attempts += 1
        if not refused(status):
            served.append(status)
    assert not served, f"a 100 kB header in one write was served {len(served)} times out of 5: {served}"


DEEP = {
    "10,000 nested arrays": b"[" * 10_000 + b"]" * 10_000,
    "100,000 nested objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep nesting in a field": b'{"queue": "HX", "summary": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "invalid UTF-8": b'{"queue": "HX", "summary": "\xff\xfe\xfd"}',
    "a lone surrogate escape": b'{"queue": "HX", "summary": "\\ud800"}',
    "a NUL escape": b'{"queue": "HX", "summary": "a\\u0000b"}',
    "a number out of range": b'{"queue": "HX", "summary": "x", "n": 1e999999}',
    "truncated JSON": b'{"queue": "HX", "summ',
}


def test_malformed_json_is_a_400(watched):
    s = watched
    targets = [("POST", "/v2/issues"), ("POST", "/v2/issues/_search"), ("POST", "/v2/issues/HX-1/links"),
               ("POST", "/v3/issues/HX-1/links/_import"), ("PATCH", "/v2/issues/HX-1"), ("POST", "/v2/queues"),
               ("POST", "/v2/applications"), ("POST", "/v2/issues/HX-1/remotelinks")]
    for what, body in DEEP.items():
        for method, path in targets:
            r = s.request(method, path, data=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, f"{what} to {method} {path}: {r.status_code} {r.text[:200]}"
            assert r.json()["statusCode"] == 400
            s.attempts += 1
        # The same on a signed Sentry route (the signature is checked first, then the JSON).
        r = requests.post(s.base_url + "/sentry/issues/link", data=body, timeout=15, headers={
            "Content-Type": "application/json", "Sentry-App-Signature": sentry_signature(HOSTILE_SECRET, body)})
        assert r.status_code == 400, f"{what} to /sentry/issues/link: {r.status_code} {r.text[:200]}"
        assert set(r.json()) == {"message"}
        s.attempts += 1
    # In the NDJSON import, each bad line is refused on its own.
    ndjson = b"\n".join(DEEP.values()) + b"\n"
    r = s.request("POST", "/v2/_bulk/links/_import", data=ndjson, headers={"Content-Type": "application/x-ndjson"})
    statuses = [json.loads(x)["status"] for x in r.text.splitlines()]
    assert r.status_code == 200 and len(statuses) == len(DEEP) and all(400 <= x < 500 for x in statuses), statuses
    s.attempts += 1


def test_bad_text_in_headers_query_and_path(watched):
    s = watched
    cases = {
        "invalid UTF-8 in X-Org-ID": b"GET /v2/myself HTTP/1.1\r\nHost: t\r\nAuthorization: OAuth "
                                     + s.token.encode() + b"\r\nX-Org-ID: \xff\xfe\r\n\r\n",
        "invalid UTF-8 in the token": b"GET /v2/myself HTTP/1.1\r\nHost: t\r\nAuthorization: OAuth \xff\xfe\r\n\r\n",
        "invalid UTF-8 in the query": b"GET /v2/users?perPage=%FF%FE HTTP/1.1\r\nHost: t\r\n" + auth_lines(s)
                                      + b"\r\n",
        "invalid UTF-8 in the path": b"GET /v2/issues/%FF%FE HTTP/1.1\r\nHost: t\r\n" + auth_lines(s) + b"\r\n",
        "NUL in the path": b"GET /v2/issues/HX-1%00 HTTP/1.1\r\nHost: t\r\n" + auth_lines(s) + b"\r\n",
        "a raw control byte in the path": b"GET /v2/issues/\x01 HTTP/1.1\r\nHost: t\r\n\r\n",
        "both Content-Length and chunked": b"POST /v2/issues HTTP/1.1\r\nHost: t\r\n" + auth_lines(s)
                                           + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "two Content-Lengths": b"POST /v2/issues HTTP/1.1\r\nHost: t\r\n" + auth_lines(s)
                               + b"Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
        "a TLS handshake": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100,
        "HTTP/9.9": b"GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n",
        "an unknown method": b"BREW /v2/issues HTTP/1.1\r\nHost: t\r\n" + auth_lines(s) + b"\r\n",
    }
    for what, data in cases.items():
        status, got = raw_http(s.base_url, data)
        assert refused(status), f"{what}: {got[:300]!r}"
        s.attempts += 1


def test_page_sizes_out_of_range_are_a_400(watched):
    s = watched
    lists = [("POST", "/v2/issues/_search", {}), ("GET", "/v2/users", None), ("GET", "/v2/queues", None),
             ("GET", "/v2/issues/HX-1/links", None), ("GET", "/v2/_outbox", None)]
    for value in ("1001", "1000000", "99999999999999999999999999999", "0", "-1", "1e3", "NaN", "", "%00"):
        for method, path, body in lists:
            r = s.request(method, f"{path}?perPage={value}", json=body)
            assert r.status_code == 400, f"perPage={value!r} on {path}: {r.status_code} {r.text[:200]}"
            s.attempts += 1
    for value in ("0", "1000001", "99999999999999999999"):
        r = s.request("GET", f"/v2/users?page={value}")
        assert r.status_code == 400, (value, r.status_code)
        s.attempts += 1
    r = s.request("POST", "/v2/issues/_search?perPage=1000", json={})
    assert r.status_code == 200 and r.headers["X-Total-Count"]


def test_a_wrong_content_type_still_works_or_is_a_4xx(watched):
    s = watched
    body = json.dumps({"queue": "HX", "summary": "content type"}).encode()
    for ct in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
               "application/xml", None, "application/json; charset=latin1", "application/json, text/plain",
               "*/*", "application/x-ndjson"):
        headers = {} if ct is None else {"Content-Type": ct}
        for method, path in (("POST", "/v2/issues"), ("POST", "/v2/issues/_search"), ("PATCH", "/v2/issues/HX-2")):
            r = s.request(method, path, data=body if method != "PATCH" else b'{"summary": "ct"}', headers=headers)
            assert r.status_code in (200, 201) or 400 <= r.status_code < 500, (
                f"Content-Type {ct!r} on {method} {path}: {r.status_code} {r.text[:200]}")
            s.attempts += 1
    status, got = raw_http(s.base_url, b"POST /v2/issues HTTP/1.1\r\nHost: t\r\n" + auth_lines(s)
                           + b"Content-Type: \x01\x02\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert status is None or status < 500, got


IDLE_CONNECTIONS = 500


def test_many_idle_connections_do_not_starve_the_server(watched):
    s = watched
    rss_before = s.rss_kib()
    host, port = s.base_url.removeprefix("http://").rsplit(":", 1)
    socks = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            socks.append(socket.create_connection((host, int(port)), timeout=10))
        # Half of them start a request and stop in the middle of the headers.
        for sk in socks[::2]:
            sk.sendall(b"GET /v2/myself HTTP/1.1\r\nHost: t\r\nAuthori")
        started = time.monotonic()
        assert s.healthy(), "/healthz does not answer with 500 idle connections open"
        assert s.request("GET", "/v2/issues/HX-1").status_code == 200
        answer_s = time.monotonic() - started
        fds = s.open_fds()
        grew = (s.rss_kib() - rss_before) / 1024
    finally:
        for sk in socks:
            sk.close()
    s.attempts += IDLE_CONNECTIONS
    figure("hostile_idle", connections=IDLE_CONNECTIONS, answer_seconds=round(answer_s, 2), server_fds=fds,
           rss_growth_mib=round(grew, 1))
    assert answer_s < 5
    assert grew < RSS_GROWTH_LIMIT_MIB


# Slow clients (the server's header read timeout is 10 s, its body read timeout 30 s: src/http/mod.rs).
HEADER_TIMEOUT_S = 10
BODY_TIMEOUT_S = 30
SLACK_S = 5


def watch_close(base_url: str, first: bytes, drip: bytes, per_byte_s: float, limit_s: float, out: dict, name: str):
    """Opens a connection, sends `first`, then `drip` one byte every `per_byte_s`; records in `out[name]` the
    seconds until the server closed the connection (or answered), or None when it was still open at `limit_s`."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    started = time.monotonic()
    out[name] = None
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.settimeout(0.2)
        if first:
            s.sendall(first)
        sent = 0
        while time.monotonic() - started < limit_s:
            try:
                data = s.recv(4096)
                if not data:
                    out[name] = ("closed", round(time.monotonic() - started, 1))
                    return
                if first.startswith(b"GET /healthz") and not drip:
                    first = b""  # the keep-alive case: the first answer is expected; wait for the close
                    continue
                out[name] = (data.split(b"\r\n", 1)[0].decode("latin-1"), round(time.monotonic() - started, 1))
                return
            except socket.timeout:
                pass
            except OSError:
                out[name] = ("reset", round(time.monotonic() - started, 1))
                return
            if sent < len(drip) and time.monotonic() - started >= sent * per_byte_s:
                try:
                    s.sendall(drip[sent:sent + 1])
                except OSError:
                    out[name] = ("reset while sending", round(time.monotonic() - started, 1))
                    return
                sent += 1


def test_slow_and_idle_clients_are_cut_off(watched):
    """Headers sent one byte per second, a half-sent head, a connection that never sends, an idle keep-alive
    connection: each is closed within the header read timeout (plus slack); 200 half-sent heads at once too."""
    s = watched
    out: dict = {}
    limit = HEADER_TIMEOUT_S + SLACK_S
    cases = {
        "headers at one byte per second": (b"", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 60, 1.0),
        "half a head, then nothing": (b"GET /healthz HTTP/1.1\r\nHost: t\r\n", b"", 1.0),
        "nothing at all": (b"", b"", 1.0),
        "idle after one request (keep-alive)": (b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", b"", 1.0),
    }
    threads = [threading.Thread(target=watch_close, args=(s.base_url, first, drip, per, limit + 5, out, name))
               for name, (first, drip, per) in cases.items()]
    host, port = s.base_url.removeprefix("http://").rsplit(":", 1)
    fds_before = s.open_fds()
    crowd = []
    try:
        for t in threads:
            t.start()
        for _ in range(200):
            c = socket.create_connection((host, int(port)), timeout=10)
            c.sendall(b"GET /v2/myself HTTP/1.1\r\nHost: t\r\nAuthorization: OAuth ")
            crowd.append(c)
        # Opening the crowd takes a while on a busy machine (about 1 s here): each of its connections is due to be
        # closed within the limit of its own opening, so the last one's deadline is counted from the end.
        crowd_due = time.monotonic() + limit
        fds_crowded = s.open_fds()
        assert s.healthy()
        for t in threads:
            t.join(timeout=limit + 15)
        fds_after = s.open_fds()
        while fds_after >= fds_before + 20 and time.monotonic() < crowd_due:
            time.sleep(0.25)
            fds_after = s.open_fds()
    finally:
        for c in crowd:
            c.close()
    s.attempts += len(cases) + len(crowd)
    figure("hostile_slow", closed_after_s={k: v for k, v in out.items()}, fds_before=fds_before,
           fds_with_200_half_heads=fds_crowded, fds_after_timeout=fds_after)
    for name in cases:
        assert out[name] is not None, f"{name}: still open after {limit + 5} s"
        what, after = out[name]
        assert after <= limit, f"{name}: closed after {after} s, more than {limit} s"
        assert what in ("closed", "reset") or what.startswith("HTTP/1.1 408"), f"{name}: {what}"
    assert fds_after < fds_before + 20, "the half-sent heads were not closed by the server"


def test_a_body_sent_one_byte_per_second_is_cut_off(watched):
    s = watched
    out: dict = {}
    head = (b"POST /v2/issues HTTP/1.1\r\nHost: t\r\n" + auth_lines(s)
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    limit = BODY_TIMEOUT_S + SLACK_S
    watch_close(s.base_url, head, b" " * 1000, 1.0, limit, out, "body")
    s.attempts += 1
    assert out["body"] is not None, f"a body sent at one byte per second is still being read after {limit} s"


# =============================================================================================================
# 5. Secrets: never in the logs (RUST_LOG=debug), hashed at rest, never returned
# =============================================================================================================


def fake_sentry(tokens: dict):
    """A Sentry that hands out `tokens` on the code exchange and accepts everything else."""

    def respond(method: str, path: str, body: bytes):
        if path.endswith("/authorizations/"):
            exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 8 * 3600))
            return 201, {"id": "1", "token": tokens["token"], "refreshToken": tokens["refresh"], "expiresAt": exp}
        if "external-issues" in path:
            return 200, []
        return 200, {}

    return respond


def signed_post(s: Tether, path: str, payload: dict, secret: str, header: str, **extra) -> requests.Response:
    body = json.dumps(payload).encode()
    return requests.post(s.base_url + path, data=body, timeout=15, headers={
        "Content-Type": "application/json", header: sentry_signature(secret, body), **extra})


@pytest.mark.timeout(300)
def test_secrets_stay_out_of_logs_responses_and_the_database(tether_exe, sqlite_db, workdir, servers):
    hexs = lambda: os.urandom(12).hex()  # noqa: E731
    sentry_secret = "sentry-client-secret-" + hexs()
    app_tokens = ["app-oauth-token-" + hexs(), "app-oauth-token-rotated-" + hexs()]
    sentry_tokens = {"token": "sentry-installation-token-" + hexs(), "refresh": "sentry-refresh-token-" + hexs()}
    app_receiver = Receiver(lambda m, p, b: (200, {"key": p.rsplit("/", 1)[-1], "summary": "object"})
                            if p.startswith("/info/") else (201, {}))
    sentry = Receiver(fake_sentry(sentry_tokens))
    try:
        # First start on an empty database, bootstrap not pinned: the admin token is printed once, on stdout.
        s = launch(servers, Tether(tether_exe, sqlite_db.url, workdir, name="secrets", bootstrap=False,
                                   rust_log=os.environ.get("TETHER_SECRETS_RUST_LOG", "debug"), args=[
                                       "--sentry-url", sentry.base, "--outbox-backoff", "50ms",
                                       "--outbox-backoff-max", "200ms", "--outbox-timeout", "5s"],
                                   env={"TETHER_SENTRY_CLIENT_SECRET": sentry_secret,
                                        "TETHER_SENTRY_CLIENT_ID": "cid", "TETHER_SENTRY_APP_SLUG": "tether"}))
        printed = "\n".join(s.stdout_lines)
        s.token = re.search(r"admin token \(shown once\): (\S+)", printed).group(1)
        s.org = re.search(r"created organization (\S+)", printed).group(1)
        cli_logs = []

        def cli(*args):
            res = run_cli(tether_exe, sqlite_db.url, *args, rust_log="debug")
            cli_logs.append(res.stderr)
            return res.stdout.strip()

        cli("user", "create", "--login", "bob", "--display", "Bob")
        cli("member", "add", "--org", s.org, "--user", "bob", "--role", "member")
        cli_token = cli("token", "create", "--user", "bob")
        spare_token = cli("token", "create", "--user", "bob", "--name", "spare")
        cli("token", "list")
        secrets = {"admin token": s.token, "CLI token": cli_token, "spare CLI token": spare_token,
                   "application oauthToken": app_tokens[0], "rotated application oauthToken": app_tokens[1],
                   "Sentry client secret": sentry_secret, "Sentry installation token": sentry_tokens["token"],
                   "Sentry refresh token": sentry_tokens["refresh"]}

        # A session touching every secret: both schemes, a wrong token, the CLI user's token, token revocation.
        assert s.request("GET", "/v2/myself").status_code == 200
        assert s.request("GET", "/v2/myself", headers={"Authorization": f"Bearer {s.token}"}).status_code == 200
        assert s.request("GET", "/v2/myself", token=s.token + "x").status_code == 401
        assert s.request("GET", "/v2/myself", token=cli_token).status_code == 200
        new_queue(s, "SE")
        key = new_issue(s, "SE", "secret keeping")["key"]
        bob_tokens = s.request("GET", "/v2/_tokens", token=spare_token).json()
        spare_id = next(t["id"] for t in bob_tokens if t["current"])
        assert s.request("DELETE", f"/v2/_tokens/{spare_id}", token=cli_token).status_code == 204
        assert s.request("GET", "/v2/myself", token=spare_token).status_code == 401
        # An application with an oauthToken, rotated by PATCH; a backlink and object info that carry it.
        s.ok("POST", "/v2/applications", status=201, json={
            "id": "ru.secret.app", "name": "Secret app", "oauthToken": app_tokens[0],
            "frontUrl": app_receiver.base + "/front/{{remoteKey}}",
            "entityInfoUrl": app_receiver.base + "/info/{{remoteKey}}", "createLinkUrl": app_receiver.base + "/links",
            "removeLinkUrl": app_receiver.base + "/links/{{issueKey}}/{{remoteKey}}"})
        link = s.ok("POST", f"/v2/issues/{key}/remotelinks?backlink=true", status=201,
                    json={"relationship": "relates", "key": "OBJ-1", "origin": "ru.secret.app"})
        wait_until("the first backlink is delivered", lambda: s.ok(
            "GET", f"/v2/issues/{key}/remotelinks/{link['id']}").get("backlink", {}).get("state") == "delivered",
            timeout=30)
        s.ok("PATCH", "/v2/applications/ru.secret.app", json={"oauthToken": app_tokens[1]})
        link2 = s.ok("POST", f"/v3/issues/{key}/remotelinks?backlink=true", status=201,
                     json={"relationship": "relates", "key": "OBJ-2", "origin": "ru.secret.app"})
        wait_until("the second backlink is delivered", lambda: s.ok(
            "GET", f"/v2/issues/{key}/remotelinks/{link2['id']}").get("backlink", {}).get("state") == "delivered",
            timeout=30)
        s.ok("GET", f"/v2/issues/{key}/remotelinks?expand=info")
        # The deliveries did carry the tokens (so the log check below is not vacuous).
        auths = [r["headers"].get("authorization") for r in app_receiver.snapshot()]
        assert f"OAuth {app_tokens[0]}" in auths and f"OAuth {app_tokens[1]}" in auths, auths
        # Sentry: an installation (the code exchange sends the client secret, the answer holds the tokens), a link.
        inst = str(uuidlib.uuid4())
        r = signed_post(s, "/sentry/webhook", {
            "action": "created", "installation": {"uuid": inst},
            "data": {"installation": {"uuid": inst, "code": "grant-1", "organization": {"slug": "acme"},
                                      "app": {"uuid": "app-uuid", "slug": "tether"}}},
            "actor": {"type": "user", "id": 1, "name": "x"}}, sentry_secret, "Sentry-Hook-Signature",
            **{"Sentry-Hook-Resource": "installation", "Sentry-Hook-Timestamp": "1700000000",
               "Request-ID": uuidlib.uuid4().hex})
        assert r.status_code < 300, r.text
        wait_until("the installation is verified", lambda: any(
            x["method"] == "PUT" and x["headers"].get("authorization") == f"Bearer {sentry_tokens['token']}"
            for x in sentry.snapshot()), timeout=30)
        exchange = next(x for x in sentry.snapshot() if x["path"].endswith("/authorizations/"))
        assert json.loads(exchange["body"])["client_secret"] == sentry_secret
        r = signed_post(s, "/sentry/issues/link", {
            "fields": {"issue_id": key}, "issueId": 77, "installationId": inst,
            "webUrl": "http://127.0.0.1:9/organizations/acme/issues/77/", "project": {"slug": "p", "id": 1},
            "actor": {"type": "user", "id": 1, "name": "Jane"}}, sentry_secret, "Sentry-App-Signature")
        assert r.status_code == 201, r.text
        bad = signed_post(s, "/sentry/issues/link", {"installationId": inst}, "wrong-secret", "Sentry-App-Signature")
        assert bad.status_code == 401

        # No GET returns an application's oauthToken (admin or member, v2 or v3, list or one, expanded or not).
        reads = []
        for v in ("v2", "v3"):
            for who in (s.token, cli_token):
                for path in (f"/{v}/applications", f"/{v}/applications/ru.secret.app",
                             f"/{v}/issues/{key}/remotelinks", f"/{v}/issues/{key}/remotelinks?expand=info",
                             f"/{v}/issues/{key}/remotelinks/{link['id']}?expand=info",
                             f"/{v}/applications/ru.secret.app/objects/OBJ-1", f"/{v}/_outbox", f"/{v}/issues/{key}",
                             f"/{v}/_tokens", f"/{v}/myself", f"/{v}/users"):
                    r = s.request("GET", path, token=who)
                    assert r.status_code in (200, 403), (path, r.status_code)
                    reads.append((path, r.text))
        for path, text in reads:
            assert "oauthToken" not in text, f"GET {path} shows an oauthToken field: {text[:300]}"
            for what, value in secrets.items():
                assert value not in text, f"GET {path} returns the {what}"
        app = s.ok("GET", "/v2/applications/ru.secret.app")
        assert app.get("hasOauthToken") in (True, None), app
        stopped = s.stop()
        assert stopped == 0
    finally:
        app_receiver.close()
        sentry.close()

    # The logs: the server's (RUST_LOG=debug) and the CLI's.
    server_log = s.log_text()
    logs = server_log + "\n".join(cli_logs)
    debug_lines = sum(1 for line in server_log.splitlines() if "DEBUG" in line)
    assert debug_lines > 20, "the server did not log at debug level, so the check below would prove nothing"
    leaked = [what for what, value in secrets.items() if value in logs]
    # Tokens at rest: only hashes. The whole database, every table, as SQL text.
    conn = sqlite3.connect(f"file:{sqlite_db.path}?mode=ro", uri=True)
    try:
        dump = "\n".join(conn.iterdump())
        token_rows = conn.execute("SELECT * FROM tokens").fetchall()
    finally:
        conn.close()
    hashes = {hashlib.sha256(t.encode()).hexdigest() for t in (s.token, cli_token, spare_token)}
    figure("secrets", secrets_checked=len(secrets), log_lines=len(logs.splitlines()), debug_lines=debug_lines,
           responses_checked=len(reads), token_rows=len(token_rows), leaked=leaked)
    assert not leaked, f"secrets in the logs: {leaked}"
    for what in ("admin token", "CLI token", "spare CLI token", "Sentry client secret"):
        assert secrets[what] not in dump, f"the {what} is stored in the clear"
    assert len(token_rows) >= 3
    assert hashes <= set(dump.split("'")), "the tokens table should hold the SHA-256 of each token"


# =============================================================================================================
# 6. Moving and keeping data: `tether db copy` (SQLite -> PostgreSQL -> SQLite) and `tether backup`, under writes
# =============================================================================================================

MOVE_QUEUES = ("MV", "MW")  # the data compared field by field
WRITE_QUEUE = "WR"  # written to while copies are taken


def populate(s: Tether, receiver: Receiver) -> None:
    """A bit of everything: users and tokens (one revoked), custom fields, issues of every type with custom values,
    transitions and edits, links of every relationship (created, imported, bulk-imported), applications, remote
    links whose backlinks were delivered, failed, and removed. Waits until the outbox has settled."""
    s.make_user("member", "carol")
    s.make_user("reader", "dave")
    doomed = s.cli("token", "create", "--user", "carol", "--name", "doomed").stdout.strip()
    doomed_id = next(t["id"] for t in s.ok("GET", "/v2/_tokens", token=doomed) if t["current"])
    s.ok("DELETE", f"/v2/_tokens/{doomed_id}", token=doomed, status=204)
    for fid, schema in [("mvText", {"type": "string"}), ("mvTags", {"type": "array", "items": "string"}),
                        ("mvUser", {"type": "user"}), ("mvDate", {"type": "date"}), ("mvNum", {"type": "number"})]:
        s.ok("POST", "/v2/fields", json={"id": fid, "name": fid, "schema": schema}, status=201)
    for q in (*MOVE_QUEUES, WRITE_QUEUE):
        new_queue(s, q)
    keys = []
    for n in range(24):
        extra = {"type": ["bug", "task", "epic"][n % 3], "description": f"Описание №{n} ✓",
                 "mvText": f"text {n}", "mvTags": [f"t{n}", "common"], "mvNum": n * 1.5, "mvDate": "2024-02-29"}
        if n % 4 == 0:
            extra["assignee"] = "carol"
            extra["mvUser"] = "dave"
        if n % 5 == 0:
            extra["unique"] = f"unique-{n}"
        keys.append(new_issue(s, MOVE_QUEUES[n % 2], f"issue {n}", **extra)["key"])
    for k in keys[:6]:
        s.ok("POST", f"/v2/issues/{k}/transitions/start_progress/_execute")
    for k in keys[6:9]:
        s.ok("POST", f"/v2/issues/{k}/transitions/close/_execute", json={"resolution": "fixed"})
    for k in keys[9:12]:
        s.ok("PATCH", f"/v2/issues/{k}", json={"summary": "edited", "mvTags": {"add": ["edited"]}})
    epic = keys[2]
    plan = [(0, "relates", 1), (1, "depends on", 3), (4, "is dependent by", 5), (6, "is subtask for", 7),
            (7, "is parent task for", 9), (10, "duplicates", 11), (12, "is duplicated by", 13), (0, "has epic", 2),
            (14, "is epic of", 15)]
    for a, rel, b in plan:
        if rel == "is epic of":
            a, b = 5, 16  # issue 5 is an epic (5 % 3 == 2)
        s.ok("POST", f"/v2/issues/{keys[a]}/links", json={"relationship": rel, "issue": keys[b]}, status=201)
    for a, rel, b in [(16, "original", 17), (18, "clone", 19)]:
        s.ok("POST", f"/v2/issues/{keys[a]}/links/_import", json={
            "relationship": rel, "issue": keys[b], "createdAt": tracker_date(), "createdBy": "carol",
            "updatedAt": tracker_date(), "updatedBy": "admin"})
    bulk = "\n".join(json.dumps({"from": keys[a], "relationship": "relates", "issue": keys[b],
                                 "createdAt": tracker_date(), "createdBy": "admin"}) for a, b in [(20, 21), (22, 23)])
    r = s.request("POST", "/v2/_bulk/links/_import", data=bulk, headers={"Content-Type": "application/x-ndjson"})
    assert [json.loads(x)["status"] for x in r.text.splitlines()] == [200, 200], r.text
    assert epic
    s.ok("POST", "/v2/applications", status=201, json={
        "id": "ru.move.app", "name": "Move app", "oauthToken": "move-app-token",
        "frontUrl": receiver.base + "/front/{{remoteKey}}", "createLinkUrl": receiver.base + "/links",
        "removeLinkUrl": receiver.base + "/links/{{issueKey}}/{{remoteKey}}"})
    dead = f"http://127.0.0.1:{dead_port()}"
    s.ok("POST", "/v2/applications", status=201, json={
        "id": "ru.move.dead", "name": "Dead app", "frontUrl": dead + "/{{remoteKey}}", "createLinkUrl": dead + "/l"})
    for n in range(5):
        s.ok("POST", f"/v2/issues/{keys[n]}/remotelinks?backlink=true", status=201,
             json={"relationship": "relates", "key": f"OBJ-{n}", "origin": "ru.move.app"})
    for n in range(2):
        s.ok("POST", f"/v2/issues/{keys[n]}/remotelinks?backlink=true", status=201,
             json={"relationship": "relates", "key": f"DEAD-{n}", "origin": "ru.move.dead"})
    gone = s.ok("POST", f"/v2/issues/{keys[5]}/remotelinks", status=201,
                json={"relationship": "relates", "key": "GONE", "origin": "ru.move.app"})
    s.ok("DELETE", f"/v2/issues/{keys[5]}/remotelinks/{gone['id']}", status=204)
    wait_until("the outbox settles", lambda: not s.ok("GET", "/v2/_outbox?state=pending"), timeout=60,
               interval=0.2)


def api_snapshot(s: Tether, queues: tuple[str, ...]) -> dict:
    """Everything the API shows about `queues`, with the server's address taken out of the `self` URLs."""
    issues = {i["key"]: i for q in queues for i in all_issues(s, q)}
    snap = {
        "issues": issues,
        "links": {k: sorted(s.ok("GET", f"/v2/issues/{k}/links"), key=lambda x: x["id"]) for k in issues},
        "remotelinks": {k: sorted(s.ok("GET", f"/v2/issues/{k}/remotelinks"), key=lambda x: x["id"])
                        for k in issues},
        "users": s.ok("GET", "/v2/users?perPage=1000"),
        "fields": s.ok("GET", "/v2/fields"),
        "applications": s.ok("GET", "/v2/applications"),
        "queues": [q for q in s.ok("GET", "/v2/queues?perPage=1000") if q["key"] in queues],
        "outbox": s.ok("GET", "/v2/_outbox?perPage=1000"),
    }
    return json.loads(json.dumps(snap).replace(s.base_url, "BASE"))


def diff(a: dict, b: dict, path: str = "") -> list[str]:
    """The first differences between two JSON values, as paths."""
    if type(a) is not type(b):
        return [f"{path}: {a!r:.200} != {b!r:.200}"]
    if isinstance(a, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'second' if k not in a else 'first'}")
            else:
                out += diff(a[k], b[k], f"{path}/{k}")
        return out[:20]
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)} items"]
        return [d for x, y in zip(a, b) for d in diff(x, y, path + "[]")][:20]
    return [] if a == b else [f"{path}: {a!r:.200} != {b!r:.200}"]


class Writer:
    """Clients writing to WRITE_QUEUE (issues, links, link imports) while a copy is taken."""

    def __init__(self, s: Tether, workers: int = 3):
        self.s = s
        self.acks = Acks()
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(w,), daemon=True) for w in range(workers)]

    def run(self, worker: int) -> None:
        s, acks = self.s, self.acks
        sess = requests.Session()
        deadline = time.monotonic() + 120
        try:
            while not self.stop_flag.is_set() and time.monotonic() < deadline:
                x = s.ok("POST", "/v2/issues", status=201, session=sess,
                         json={"queue": WRITE_QUEUE, "summary": f"w{worker}"})
                acks.issue(x)
                y = s.ok("POST", "/v2/issues", status=201, session=sess,
                         json={"queue": WRITE_QUEUE, "summary": f"w{worker}"})
                acks.issue(y)
                link = s.ok("POST", f"/v2/issues/{x['key']}/links", status=201, session=sess,
                            json={"relationship": "depends on", "issue": y["key"]})
                acks.link(link["id"], x["key"], y["key"], "create")
                z = s.ok("POST", "/v2/issues", status=201, session=sess,
                         json={"queue": WRITE_QUEUE, "summary": f"w{worker}"})
                acks.issue(z)
                imp = s.ok("POST", f"/v3/issues/{z['key']}/links/_import", session=sess, json={
                    "relationship": "relates", "issue": x["key"], "createdAt": tracker_date(), "createdBy": "admin"})
                acks.link(imp["id"], z["key"], x["key"], "import")
        except Exception as e:
            with acks.lock:
                acks.errors.append(f"writer {worker}: {type(e).__name__}: {e}")

    def start(self) -> "Writer":
        for t in self.threads:
            t.start()
        wait_until("the writers are writing", lambda: len(self.acks.links) >= 6, timeout=30, interval=0.05)
        return self

    def acknowledged(self) -> tuple[dict, list]:
        with self.acks.lock:
            return dict(self.acks.issues), list(self.acks.links)

    def stop(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=30)
        assert not self.acks.errors, "\n".join(self.acks.errors)


def check_copy_of_writes(source: Tether, copy: Tether, before: tuple[dict, list]) -> dict:
    """The copy holds everything acknowledged before it was started, is whole (verify_links), and everything in it
    is in the source as well: a snapshot of the source at one moment."""
    issues_before, links_before = before
    acks = Acks()
    acks.issues, acks.links = issues_before, links_before
    figures = verify_links(copy, WRITE_QUEUE, acks)
    src_issues = {i["key"]: i["id"] for i in all_issues(source, WRITE_QUEUE)}
    for i in all_issues(copy, WRITE_QUEUE):
        assert src_issues.get(i["key"]) == i["id"], f"{i['key']} in the copy is not the source's"
        for link in copy.ok("GET", f"/v2/issues/{i['key']}/links"):
            theirs = {x["id"]: x["object"]["key"] for x in source.ok("GET", f"/v2/issues/{i['key']}/links")}
            assert theirs.get(link["id"]) == link["object"]["key"], f"link {link['id']} is not the source's"
    return figures


def sqlite_whole(path: Path) -> None:
    """A SQLite file that passes integrity and foreign-key checks, with no link or remote link whose issue is
    missing and no issue number past its queue's counter."""
    assert sqlite_integrity(path) == "ok"
    assert sqlite_query(path, "PRAGMA foreign_key_check") == []
    orphans = sqlite_query(path, "SELECT id FROM links l WHERE NOT EXISTS (SELECT 1 FROM issues i WHERE i.id = "
                                 "l.outward_id) OR NOT EXISTS (SELECT 1 FROM issues i WHERE i.id = l.inward_id)")
    assert orphans == [], f"half-written links: {orphans}"
    assert sqlite_query(path, "SELECT id FROM remote_links r WHERE NOT EXISTS "
                              "(SELECT 1 FROM issues i WHERE i.id = r.issue_id)") == []
    assert sqlite_query(path, "SELECT i.key FROM issues i JOIN queues q ON q.id = i.queue_id "
                              "WHERE i.number > q.last_number") == []


def token_list(exe: Path, url: str) -> list[str]:
    return sorted(run_cli(exe, url, "token", "list").stdout.splitlines())


@pytest.mark.timeout(300)
def test_backups_taken_under_writes_are_consistent(tether_exe, sqlite_db, workdir, servers):
    receiver = Receiver()
    try:
        s = launch(servers, Tether(tether_exe, sqlite_db.url, workdir, name="backup-src",
                                   args=["--outbox-backoff", "50ms", "--outbox-backoff-max", "100ms",
                                         "--outbox-max-attempts", "2", "--outbox-timeout", "2s"]))
        populate(s, receiver)
        before = api_snapshot(s, MOVE_QUEUES)
        writer = Writer(s).start()
        backups = []
        for n in range(3):
            acked = writer.acknowledged()
            target = workdir / f"backup-{n}.db"
            run_cli(tether_exe, sqlite_db.url, "backup", "--to", str(target))
            backups.append((target, acked))
            time.sleep(0.3)
        writer.stop()
        # An existing file is never overwritten.
        res = run_cli(tether_exe, sqlite_db.url, "backup", "--to", str(backups[0][0]), check=False)
        assert res.returncode != 0 and "exists" in res.stderr, res.stderr
        after = api_snapshot(s, MOVE_QUEUES)
        assert not diff(before, after), "the writers touched the compared data"
        tokens = token_list(tether_exe, sqlite_db.url)
        checked = []
        for target, acked in backups:
            sqlite_whole(target)  # read-only, before any server touches it
            copy_url = f"sqlite://{target}"
            assert token_list(tether_exe, copy_url) == tokens
            c = launch(servers, Tether(tether_exe, copy_url, workdir, org=s.org, token=s.token, name="backup-copy",
                                       args=["--outbox-max-attempts", "2"]))
            differences = diff(before, api_snapshot(c, MOVE_QUEUES))
            assert not differences, f"{target.name} differs from the source:\n" + "\n".join(differences)
            checked.append(check_copy_of_writes(s, c, acked))
            c.stop()
        figure("backup", backups=len(backups), writes_acknowledged_during=len(writer.acks.links) + len(
            writer.acks.issues), compared_issues=len(before["issues"]), compared_links=sum(
            len(v) for v in before["links"].values()) // 2, compared_remote_links=sum(
            len(v) for v in before["remotelinks"].values()), compared_events=len(before["outbox"]),
            writer_issues_in_backups=[x["issues"] for x in checked], writer_links_in_backups=[
                x["links"] for x in checked], lost=0)
    finally:
        receiver.close()


@pytest.mark.timeout(300)
def test_db_copy_sqlite_to_postgres_and_back_under_writes(tether_exe, sqlite_db, pg_db, workdir, servers):
    receiver = Receiver()
    try:
        s = launch(servers, Tether(tether_exe, sqlite_db.url, workdir, name="copy-src",
                                   args=["--outbox-backoff", "50ms", "--outbox-backoff-max", "100ms",
                                         "--outbox-max-attempts", "2", "--outbox-timeout", "2s"]))
        populate(s, receiver)
        before = api_snapshot(s, MOVE_QUEUES)
        writer = Writer(s).start()
        acked = writer.acknowledged()
        started = time.monotonic()
        res = run_cli(tether_exe, sqlite_db.url, "db", "copy", "--from", sqlite_db.url, "--to", pg_db.url)
        copy_seconds = time.monotonic() - started
        writer.stop()
        assert "copy finished" in res.stderr, res.stderr
        tokens = token_list(tether_exe, sqlite_db.url)
        assert token_list(tether_exe, pg_db.url) == tokens
        c = launch(servers, Tether(tether_exe, pg_db.url, workdir, org=s.org, token=s.token, name="copy-pg",
                                   args=["--outbox-backoff", "50ms", "--outbox-max-attempts", "2"]))
        differences = diff(before, api_snapshot(c, MOVE_QUEUES))
        assert not differences, "the PostgreSQL copy differs from the source:\n" + "\n".join(differences)
        writes = check_copy_of_writes(s, c, acked)
        # Into a database that holds data: refused, nothing changed.
        res = run_cli(tether_exe, sqlite_db.url, "db", "copy", "--from", sqlite_db.url, "--to", pg_db.url,
                      check=False)
        assert res.returncode != 0, res.stderr
        # `tether backup` is for SQLite: on PostgreSQL it refuses (pg_dump is the tool there).
        res = run_cli(tether_exe, pg_db.url, "backup", "--to", str(workdir / "pg.db"), check=False)
        assert res.returncode != 0 and not (workdir / "pg.db").exists(), res.stderr
        # The copy is a working database: its sequences moved past the copied ids, its tokens and app token work.
        existing = max(key_number(i["key"]) for i in all_issues(c, "MV"))
        copied_ids = [int(i["id"]) for q in (*MOVE_QUEUES, WRITE_QUEUE) for i in all_issues(c, q)]
        copied_links = {x["id"] for q in (*MOVE_QUEUES, WRITE_QUEUE) for i in all_issues(c, q)
                        for x in c.ok("GET", f"/v2/issues/{i['key']}/links")}
        fresh = new_issue(c, "MV", "on the copy")
        assert key_number(fresh["key"]) > existing
        assert int(fresh["id"]) > max(copied_ids), (fresh["id"], max(copied_ids))
        link = c.ok("POST", f"/v2/issues/{fresh['key']}/links", json={"relationship": "relates", "issue": "MV-1"},
                    status=201)
        assert link["id"] > max(copied_links)
        before_calls = len(receiver.snapshot())
        c.ok("POST", f"/v2/issues/{fresh['key']}/remotelinks?backlink=true", status=201,
             json={"relationship": "relates", "key": "ON-COPY", "origin": "ru.move.app"})
        wait_until("the copy delivers a backlink", lambda: len(receiver.snapshot()) > before_calls, timeout=30)
        assert receiver.snapshot()[-1]["headers"].get("authorization") == "OAuth move-app-token"
        c.make_user("member", "erin")
        assert c.request("GET", "/v2/myself").status_code == 200
        revoked = [line for line in tokens if "doomed" in line]
        assert revoked and "revoked" in revoked[0]
        # And back: PostgreSQL -> a new SQLite file, compared with the PostgreSQL copy as it now is.
        wait_until("the copy's outbox settles", lambda: not c.ok("GET", "/v2/_outbox?state=pending"), timeout=30)
        c.stop()
        back = workdir / "roundtrip.db"
        run_cli(tether_exe, pg_db.url, "db", "copy", "--from", pg_db.url, "--to", f"sqlite://{back}")
        sqlite_whole(back)
        c = launch(servers, Tether(tether_exe, pg_db.url, workdir, org=s.org, token=s.token, name="copy-pg-2",
                                   args=["--outbox-max-attempts", "2"]))
        r = launch(servers, Tether(tether_exe, f"sqlite://{back}", workdir, org=s.org, token=s.token,
                                   name="copy-back", args=["--outbox-max-attempts", "2"]))
        queues = (*MOVE_QUEUES, WRITE_QUEUE)
        differences = diff(api_snapshot(c, queues), api_snapshot(r, queues))
        assert not differences, "the round trip changed data:\n" + "\n".join(differences)
        assert token_list(tether_exe, f"sqlite://{back}") == token_list(tether_exe, pg_db.url)
        figure("db_copy", copy_seconds=round(copy_seconds, 2), compared_issues=len(before["issues"]),
               compared_links=sum(len(v) for v in before["links"].values()) // 2,
               compared_remote_links=sum(len(v) for v in before["remotelinks"].values()),
               compared_events=len(before["outbox"]), compared_users=len(before["users"]),
               writes_acknowledged_before_copy=len(acked[0]) + len(acked[1]),
               writer_issues_in_copy=writes["issues"], writer_links_in_copy=writes["links"], lost=0)
    finally:
        receiver.close()
