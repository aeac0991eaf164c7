"""The API fuzzer of compat/test_reliability.py: schemathesis generates requests from `/openapi.json`; this module
steers part of them towards real objects and plausible bodies (the document types every body as a bare `object`
and every path parameter as a string, so unaided generation almost never gets past 404), sends them with real
credentials, and checks each answer with schemathesis's `not_a_server_error` and `response_schema_conformance`.

Every URL the fuzzer can make the server call (application URLs, the Sentry base URL) points at 127.0.0.1.
"""

from __future__ import annotations

import json
import random
import shlex
import time
import uuid as uuidlib
from dataclasses import dataclass, field

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from reliability_support import sentry_signature, tracker_date

RELATIONSHIPS = [
    "relates", "depends on", "is dependent by", "is subtask for", "is parent task for", "duplicates",
    "is duplicated by", "has epic", "is epic of", "original", "clone",
]


@dataclass
class Pools:
    """Real objects of the fuzzed organization, to put in paths and bodies."""

    org: str
    token: str
    member_token: str
    reader_token: str
    spare_token_ids: list[str]
    own_token_id: str
    issue_keys: list[str]
    issue_ids: list[str]
    link_ids: list[str]
    remote_link_ids: list[str]
    app_ids: list[str]
    object_keys: list[str]
    queue_keys: list[str]
    queue_ids: list[str]
    uids: list[str]
    logins: list[str]
    custom_fields: list[str]
    event_ids: list[str]
    uniques: list[str]
    installation: str
    sentry_secret: str
    loopback: str  # base URL of a local receiver, for application URLs
    issue_created: list[str] = field(default_factory=list)


@dataclass
class Finding:
    check: str
    operation: str
    status: int
    message: str
    repro: str


@dataclass
class FuzzReport:
    requests: int = 0
    per_operation: dict = field(default_factory=dict)
    per_status: dict = field(default_factory=dict)  # operation -> {status: count}
    samples: dict = field(default_factory=dict)  # (operation, status) -> a few request and answer bodies
    statuses: dict = field(default_factory=dict)
    failures: list[Finding] = field(default_factory=list)  # hard: 5xx, schema violations
    soft: list[Finding] = field(default_factory=list)  # documentation gaps: undocumented status or content type
    errors: list[str] = field(default_factory=list)  # transport errors (the server closed a connection, …)
    seconds: float = 0.0


def same_number(value, number: str) -> bool:
    """Whether a generated path value reads as `number` (the server parses "01" and "+1" as 1)."""
    try:
        return int(str(value).strip()) == int(number)
    except ValueError:
        return False


def curl_of(req: requests.PreparedRequest) -> str:
    parts = ["curl", "-X", req.method or "GET"]
    for k, v in req.headers.items():
        if k.lower() in ("user-agent", "accept-encoding", "connection", "content-length"):
            continue
        parts += ["-H", f"{k}: {v}"]
    if req.body:
        body = req.body.decode("utf-8", "replace") if isinstance(req.body, bytes) else str(req.body)
        if len(body) > 4000:
            body = body[:4000] + "…(truncated)"
        parts += ["--data-raw", body]
    parts.append(req.url or "")
    return shlex.join(parts)


# -- value strategies -----------------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30, 1.5, -0.0, 1e308]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["", " ", "\u0000", "null", "true", "0", "-1", "admin", "%00", "../..", "{{issueKey}}",
                     "\u202e\u0301", "💥" * 10, "a" * 300]),
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)


class Values:
    """Field strategies built on the real objects; with `junk`, each value is sometimes anything at all."""

    def __init__(self, p: Pools, junk: bool):
        self.p = p
        self.junk = junk

        def maybe(strategy):
            return st.one_of(strategy, strategy, strategy, JUNK) if junk else strategy

        self.maybe = maybe
        keys = p.issue_keys
        issue = st.sampled_from(keys) if not junk else st.one_of(
            st.sampled_from(keys),
            st.sampled_from(p.issue_ids),
            st.sampled_from([int(i) for i in p.issue_ids]),
            st.sampled_from(keys).map(lambda k: {"key": k}),
            st.sampled_from(p.issue_ids).map(lambda i: {"id": i}),
            st.sampled_from([k.lower() for k in keys] + ["FZ-0", "FZ-999999", "FZ-99999999999999999999", "NOPE-1",
                                                          "0", "-1", "FZ-", "-", "FZ-1-1"]),
        )
        self.issue = maybe(issue)
        user = st.sampled_from(p.logins + p.uids) if not junk else st.one_of(
            st.sampled_from(p.logins),
            st.sampled_from(p.uids),
            st.sampled_from([int(u) for u in p.uids]),
            st.sampled_from(p.uids).map(lambda u: {"uid": u}),
            st.sampled_from(p.logins).map(lambda login: {"login": login}),
            st.sampled_from([{"display": "Admin"}, {"id": "999999"}, "nobody", {"uid": None}, {}]),
        )
        self.user = maybe(user)
        now = time.time()
        recent = st.builds(lambda: tracker_date(time.time() - 1))
        dates = recent if not junk else st.one_of(
            recent,
            st.sampled_from(p.issue_created or [tracker_date(now - 60)]),
            st.floats(min_value=now - 10 * 365 * 86400, max_value=now + 86400).map(tracker_date),
            st.sampled_from([
                tracker_date(now + 3600), "1970-01-01T00:00:00.000+0000", "0001-01-01T00:00:00.000+0000",
                "9999-12-31T23:59:59.999+0000", "2024-02-30T00:00:00.000+0000", "2024-01-01T00:00:00Z",
                "2024-01-01T00:00:00.123456789+03:00", "2024-01-01", "yesterday", "", "2024-01-01T25:00:00.000+0000",
            ]),
        )
        self.date = maybe(dates)
        self.relationship = st.sampled_from(RELATIONSHIPS[:9]) if not junk else maybe(st.one_of(
            st.sampled_from(RELATIONSHIPS),
            st.sampled_from(RELATIONSHIPS).map(str.upper),
            st.sampled_from(["", "depends", "subtask", "epic", "relates ", "is  subtask for", "RELATES"]),
        ))
        self.queue = st.sampled_from(p.queue_keys) if not junk else maybe(st.one_of(
            st.sampled_from(p.queue_keys),
            st.sampled_from(p.queue_ids),
            st.sampled_from(p.queue_keys).map(lambda k: {"key": k}),
            st.sampled_from(p.queue_keys).map(lambda k: {"name": f"Queue {k}"}),
            st.sampled_from(["fz", "NOPE", {"id": "999999"}, {"key": None}]),
        ))
        def pick(valid: list, invalid: list):
            """One of the valid values, or (with junk) of both lists, or anything."""
            return maybe(st.sampled_from(valid + invalid)) if junk else st.sampled_from(valid)

        self.pick = pick
        self.type = pick(["bug", "task", "epic", "BUG", "Epic", 1, 2, 3, {"key": "epic"}, {"name": "Bug"},
                          {"id": "2"}], [99, "story", {"key": None}])
        self.status = pick(["open", "inProgress", "closed", "OPEN", {"key": "closed"}, {"name": "Open"}],
                           [1, 3, "resolved"])
        text = st.text(min_size=1, max_size=60).filter(lambda t: "\x00" not in t)
        self.text = maybe(st.one_of(text, st.sampled_from(["x" * 5000, "line\nbreak", "\t", "Ünïcødé ✓"])))
        lo = p.loopback
        self.urls = pick([f"{lo}/front/{{{{remoteKey}}}}", f"{lo}/info/{{{{remoteKey}}}}",
                          f"{lo}/x?k={{{{remoteKey}}}}"],
                         ["https://127.0.0.1:1/{{remoteKey}}", "ftp://127.0.0.1/{{remoteKey}}", "not a url", "",
                          "http://127.0.0.1:0/{{remoteKey}}", "http://[::1", "http://127.0.0.1:99999/{{remoteKey}}",
                          f"{lo}/links"])
        self.create_url = pick([f"{lo}/links"], ["", "not a url", "http://127.0.0.1:0/"])
        self.remove_url = pick([f"{lo}/links/{{{{issueKey}}}}/{{{{remoteKey}}}}"], [f"{lo}/links/{{{{issueKey}}}}"])
        fresh_app = st.from_regex(r"\Aru\.fz\.[a-z0-9]{1,12}\Z")
        self.app_id = maybe(st.one_of(st.sampled_from(p.app_ids), st.from_regex(r"\A[A-Za-z0-9._-]{1,110}\Z"))) \
            if junk else st.sampled_from(p.app_ids)
        self.new_app_id = fresh_app if not junk else self.app_id
        key = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ ./%", min_size=1, max_size=20)
        self.object_key = maybe(st.one_of(st.sampled_from(p.object_keys), st.text(max_size=40))) if junk else key
        self.field_id = maybe(st.one_of(st.sampled_from(p.custom_fields + ["summary", "sentryIssues", "self"]),
                                        st.from_regex(r"\A[A-Za-z][A-Za-z0-9_]{0,70}\Z"))) \
            if junk else st.from_regex(r"\Af[A-Za-z0-9_]{1,20}\Z")
        self.schema = maybe(st.fixed_dictionaries(
            {"type": st.sampled_from(["string", "number", "date", "datetime", "user", "array", "bool", ""])},
            optional={"items": st.sampled_from(["string", "number", "user", None])},
        )) if junk else st.sampled_from([{"type": t} for t in ("string", "number", "date", "datetime", "user")]
                                         + [{"type": "array", "items": "string"}])
        text_list = st.lists(st.one_of(st.text(max_size=10), st.sampled_from(["2024-01-01", "admin"])), max_size=4)
        self.field_value = st.one_of(
            JUNK,
            st.sampled_from(["2024-01-01", "2024-01-01T00:00:00.000+0000", "admin", 42, "text"]),
            text_list,
            st.fixed_dictionaries({}, optional={"set": text_list, "add": text_list, "remove": text_list}),
        )
        self.order = pick(["+key", "-key", "-updatedAt", "+createdAt", "updatedAt"],
                          ["+nope", "", "+status", "-summary", "++key"])
        self.filter = maybe(st.fixed_dictionaries({}, optional={
            "queue": self.queue, "status": self.status, "assignee": self.user, "type": self.type,
        }))
        self.keys = maybe(st.lists(self.issue, max_size=5))

    def body_fields(self, method: str, path: str) -> dict:
        """The fields a request body of this operation may carry."""
        p = self.p
        maybe = self.maybe
        if self.junk:
            custom = {f: self.field_value for f in p.custom_fields}
        else:
            tags = st.lists(st.text(min_size=1, max_size=8).filter(lambda t: "\x00" not in t), max_size=3)
            by_type = {"fzText": self.text, "fzNum": st.integers(-1000, 1000), "fzDate": st.just("2024-02-29"),
                       "fzWhen": self.date, "fzUser": self.user,
                       "fzTags": tags if method == "POST" else st.one_of(tags, tags.map(lambda t: {"add": t}),
                                                                         tags.map(lambda t: {"remove": t}))}
            custom = {f: by_type[f] for f in p.custom_fields if f in by_type}
        unique = maybe(st.sampled_from(p.uniques)) if self.junk else st.uuids().map(str)
        if path.endswith("/issues") and method == "POST":
            return {"queue": self.queue, "summary": self.text, "description": self.text, "type": self.type,
                    "assignee": self.user, "parent": self.issue, "unique": unique, **custom}
        if path.endswith("/issues/{issue}") and method == "PATCH":
            if not self.junk:
                return {"summary": self.text, "description": self.text, "assignee": self.user, **custom}
            return {"summary": self.text, "description": self.text, "assignee": self.user, "type": self.type,
                    "parent": self.issue, "status": self.status, "nosuchfield": JUNK, **custom}
        if path.endswith("/issues/_search"):
            return {"filter": self.filter, "queue": self.queue, "keys": self.keys, "order": self.order,
                    "query": st.one_of(st.none(), JUNK)}
        if path.endswith("/issues/_import"):
            return {"queue": self.queue, "summary": self.text, "createdAt": self.date, "createdBy": self.user,
                    "updatedAt": self.date, "updatedBy": self.user, "key": maybe(st.sampled_from(
                        ["FZ-500", "FZ-1", "FZ-99999999999", "FZ-0", "OT-5", "FZ-7000000000000000000"])),
                    "type": self.type, "status": self.status, "description": self.text, "assignee": self.user}
        if path.endswith("/links/_import"):
            return {"relationship": self.relationship, "issue": self.issue, "createdAt": self.date,
                    "createdBy": self.user, "updatedAt": self.date, "updatedBy": self.user}
        if path.endswith("/links"):
            return {"relationship": self.relationship, "issue": self.issue}
        if path.endswith("/remotelinks"):
            return {"relationship": maybe(st.sampled_from(["RELATES", "relates", "Relates", "depends on", ""])),
                    "key": self.object_key, "origin": self.app_id if self.junk else st.sampled_from(p.app_ids)}
        if "/applications" in path:
            return {"id": self.new_app_id, "name": self.text, "type": self.text, "defaultIconUrl": self.urls,
                    "frontUrl": self.urls, "responsible": self.user, "oauthToken": self.text,
                    "entityInfoUrl": self.urls, "createLinkUrl": self.create_url, "removeLinkUrl": self.remove_url,
                    "canLinkFromFront": maybe(st.booleans())}
        if path.endswith("/queues"):
            return {"key": maybe(st.from_regex(r"\A[A-Z]{1,16}\Z" if self.junk else r"\AQ[A-Z]{1,14}\Z")),
                    "name": self.text, "lead": self.user,
                    "defaultType": self.type}
        if path.endswith("/fields"):
            return {"id": self.field_id, "name": self.text, "schema": self.schema}
        if path.endswith("/_execute"):
            return {"comment": self.text, "resolution": self.text}
        return {}

    def required(self, method: str, path: str) -> tuple[str, ...]:
        """The fields without which the operation cannot succeed."""
        if path.endswith("/issues") and method == "POST":
            return ("queue", "summary")
        if path.endswith("/issues/_import") or path.endswith("/links/_import"):
            return ("createdAt", "createdBy") + (("queue", "summary") if "/issues/_" in path else
                                                 ("relationship", "issue"))
        if path.endswith("/links"):
            return ("relationship", "issue")
        if path.endswith("/remotelinks"):
            return ("relationship", "key", "origin")
        if path.endswith("/applications") and method == "POST":
            return ("id", "name")
        if path.endswith("/queues") and method == "POST":
            return ("key", "name")
        if path.endswith("/fields") and method == "POST":
            return ("id", "name", "schema")
        return ()

    def body(self, method: str, path: str):
        """A body strategy: the required fields, and any of the others."""
        fields = self.body_fields(method, path)
        if not fields:
            return None
        req = self.required(method, path) if not self.junk else ()
        return st.fixed_dictionaries({k: fields[k] for k in req},
                                     optional={k: v for k, v in fields.items() if k not in req})

    def query(self, method: str, path: str) -> dict:
        q = {}
        if path.endswith("/remotelinks"):
            q = {"backlink": st.sampled_from(["true", "false", "1", "0", "yes", ""]),
                 "expand": st.sampled_from(["info", "", "everything"])}
        elif path.endswith("/remotelinks/{link}"):
            q = {"expand": st.sampled_from(["info", ""])}
        elif path.endswith("/_graph"):
            q = {"types": st.sampled_from(["depends,subtask,epic", "relates", "", "bogus,depends", ",", "depends"]),
                 "direction": st.sampled_from(["both", "out", "in", "sideways", ""]),
                 "depth": st.sampled_from(["0", "1", "3", "10", "11", "-1", "99999999999999999999", "x"])}
        elif path.endswith("/_findByUnique"):
            q = {"unique": st.one_of(st.sampled_from(self.p.uniques), st.text(max_size=20))}
        elif path.endswith("/_outbox"):
            q = {"state": st.sampled_from(["pending", "delivered", "failed", "cancelled", "x", ""])}
        junk_page = st.sampled_from(["0", "1", "2", "1000", "1001", "-5", "x", "", "99999999999999999999", "1e3"])
        q.update({"perPage": junk_page, "page": junk_page})
        return q


PATH_POOLS = {
    "issue": lambda p: p.issue_keys + p.issue_ids,
    "queue": lambda p: p.queue_keys + p.queue_ids,
    "user": lambda p: p.uids + p.logins,
    "app": lambda p: p.app_ids,
    "key": lambda p: p.object_keys,
    "transition": lambda p: ["start_progress", "close", "reopen", "stop_progress"],
}
ID_POOLS = {
    "/issuetypes/": lambda p: ["bug", "task", "epic", "1", "2", "3"],
    "/statuses/": lambda p: ["open", "inProgress", "closed", "1", "2"],
    "/linktypes/": lambda p: ["relates", "depends", "subtask", "epic", "duplicates", "clone"],
    "/fields/": lambda p: p.custom_fields + ["summary", "status", "assignee"],
    "/_tokens/": lambda p: p.spare_token_ids,
    "/_outbox/": lambda p: p.event_ids,
}


def path_pool(p: Pools, path: str, name: str) -> list[str]:
    if name == "link":
        return p.remote_link_ids if "/remotelinks/" in path else p.link_ids
    if name == "id":
        for marker, pool in ID_POOLS.items():
            if marker in path:
                return pool(p)
        return []
    pool = PATH_POOLS.get(name)
    return pool(p) if pool else []


# -- the run --------------------------------------------------------------------------------------------------


class Fuzzer:
    def __init__(self, base_url: str, pools: Pools, examples: int, deadline: float, rng_seed: int):
        self.base = base_url
        self.p = pools
        self.values = Values(pools, junk=True)
        self.clean = Values(pools, junk=False)
        self.examples = examples
        self.deadline = deadline
        self.seed = rng_seed
        self.report = FuzzReport()
        self.session = requests.Session()
        doc = self.session.get(base_url + "/openapi.json", timeout=15).json()
        self.document = doc
        self.schema = schemathesis.openapi.from_dict(doc)
        self.operations = []
        for result in self.schema.get_all_operations():
            self.operations.append(result.ok())

    # one request

    def headers(self, data, op) -> dict:
        p = self.p
        who = data.draw(st.sampled_from(["admin"] * 14 + ["member"] * 3 + ["reader"] * 2 + ["none", "junk", "bearer"]),
                        label="caller")
        h = {}
        if who == "admin":
            h["Authorization"] = f"OAuth {p.token}"
        elif who == "member":
            h["Authorization"] = f"OAuth {p.member_token}"
        elif who == "reader":
            h["Authorization"] = f"OAuth {p.reader_token}"
        elif who == "bearer":
            h["Authorization"] = f"Bearer {p.token}"
        elif who == "junk":
            h["Authorization"] = data.draw(st.sampled_from(["OAuth ", "OAuth x", "Basic YWRtaW46YWRtaW4=", "OAuth",
                                                            f"OAuth {p.token}x", "OAuth not provided"]))
        org = data.draw(st.sampled_from(["real"] * 16 + ["generated", "absent", "not provided", "other", "both"]),
                        label="org")
        if org == "real":
            h["X-Org-ID"] = p.org
        elif org == "not provided":
            h["X-Org-ID"] = "not provided"
        elif org == "other":
            h["X-Org-ID"] = "no-such-org"
        elif org == "both":
            h["X-Org-ID"] = p.org
            h["X-Cloud-Org-ID"] = data.draw(st.sampled_from([p.org, "no-such-org"]))
        elif org == "absent":
            h["X-Org-ID"] = "not provided"
        if op.method.upper() == "PATCH" and data.draw(st.booleans(), label="if-match"):
            h["If-Match"] = data.draw(st.sampled_from(["1", '"1"', '"2"', "abc", '""', "99999999999999999999", "*"]))
        return h

    def enrich(self, case, data, op) -> None:
        path = op.path
        method = op.method.upper()
        for name in list((case.path_parameters or {}).keys()):
            pool = path_pool(self.p, path, name)
            if pool and data.draw(st.integers(0, 9), label=f"real {name}") < 7:
                case.path_parameters[name] = data.draw(st.sampled_from(pool), label=name)
        if path.endswith("/_tokens/{id}") and same_number(case.path_parameters.get("id"), self.p.own_token_id):
            case.path_parameters["id"] = self.p.spare_token_ids[0]  # never revoke the fuzzer's own token
        extra_q = self.values.query(method, path)
        if extra_q and data.draw(st.integers(0, 9), label="query") < 6:
            q = dict(case.query or {})
            for k, strat in extra_q.items():
                if data.draw(st.booleans(), label=f"q {k}"):
                    q[k] = data.draw(strat, label=k)
            case.query = q
        if method in ("POST", "PATCH"):
            junky = self.values.body(method, path)
            clean = self.clean.body(method, path)
            pick = data.draw(st.integers(0, 19), label="body kind")
            if junky is not None and pick < 8:
                case.body = data.draw(junky, label="body")
                if data.draw(st.integers(0, 9)) == 0:
                    case.body[data.draw(st.text(max_size=10))] = data.draw(JUNK)
            elif clean is not None and pick < 15:
                case.body = data.draw(clean, label="plausible body")
            elif pick < 17:
                case.body = data.draw(JUNK, label="junk body")
        if "/applications" in path and isinstance(case.body, dict):
            # The server calls these URLs: they must stay on the loopback, whatever was generated.
            for k in ("frontUrl", "entityInfoUrl", "createLinkUrl", "removeLinkUrl", "defaultIconUrl"):
                v = case.body.get(k)
                if isinstance(v, str) and "://" in v and not v.split("://", 1)[1].startswith(("127.0.0.1", "[::1")):
                    case.body[k] = f"{self.p.loopback}/links"

    def send(self, case, data, op) -> requests.Response | None:
        path = op.path
        method = op.method.upper()
        if path.startswith("/sentry/") and path != "/sentry/setup":
            return self.send_sentry(data, op)
        if path.endswith("/_bulk/links/_import") and data.draw(st.integers(0, 3), label="ndjson") < 3:
            return self.send_bulk(data, op)
        headers = self.headers(data, op)
        self.enrich(case, data, op)
        try:
            return case.call(base_url=self.base, session=self.session, headers=headers, timeout=30,
                             allow_redirects=False)
        except requests.RequestException as e:
            self.report.errors.append(f"{method} {path}: {type(e).__name__}: {e}")
            return None

    def send_bulk(self, data, op) -> requests.Response | None:
        v = self.values
        record = st.fixed_dictionaries(
            {"from": v.issue},
            optional={"relationship": v.relationship, "issue": v.issue, "createdAt": v.date, "createdBy": v.user,
                      "updatedAt": v.date, "updatedBy": v.user},
        ).map(lambda r: json.dumps(r).encode())
        junk_line = st.sampled_from([b"", b"   ", b"{", b"[]", b"null", b"\xff\xfe", b"[" * 300 + b"]" * 300,
                                     b'{"from": "FZ-1"}\r', b"\x00"])
        lines = data.draw(st.lists(st.one_of(record, record, junk_line), max_size=12), label="ndjson")
        body = b"\n".join(lines) + data.draw(st.sampled_from([b"", b"\n"]))
        headers = self.headers(data, op)
        headers["Content-Type"] = data.draw(st.sampled_from(["application/x-ndjson", "application/json", "text/plain"]))
        try:
            return self.session.post(self.base + op.path, data=body, headers=headers, timeout=30)
        except requests.RequestException as e:
            self.report.errors.append(f"POST {op.path} (NDJSON): {type(e).__name__}: {e}")
            return None

    def send_sentry(self, data, op) -> requests.Response | None:
        p = self.p
        v = self.values
        maybe = v.maybe
        inst = st.sampled_from([p.installation, p.installation, str(uuidlib.uuid4()), "", "x"])
        issue_id = st.one_of(st.integers(min_value=-5, max_value=2**64), st.sampled_from(["1", "42", "", "abc", None]))
        web_url = st.sampled_from(["http://127.0.0.1:9/organizations/acme/issues/1/", "", "not a url"])
        common = {
            "issueId": maybe(issue_id), "installationId": maybe(inst), "webUrl": maybe(web_url),
            "project": maybe(st.fixed_dictionaries({}, optional={"slug": st.text(max_size=8),
                                                               "id": st.one_of(st.integers(), st.text(max_size=5))})),
            "actor": maybe(st.fixed_dictionaries({}, optional={"type": st.sampled_from(["user", "application"]),
                                                             "id": st.integers(0, 9), "name": st.text(max_size=8)})),
        }
        method = op.method.upper()
        params = None
        body = b""
        headers = {}
        if op.path == "/sentry/issues/link":
            fields = {"fields": maybe(st.fixed_dictionaries({}, optional={"issue_id": v.issue})), **common}
            body = json.dumps(data.draw(st.fixed_dictionaries({}, optional=fields), label="link")).encode()
            sig_header = "Sentry-App-Signature"
        elif op.path == "/sentry/issues/create":
            form = st.fixed_dictionaries({}, optional={"title": v.text, "description": v.text, "queue": v.queue})
            fields = {"fields": maybe(form), **common}
            body = json.dumps(data.draw(st.fixed_dictionaries({}, optional=fields), label="create")).encode()
            sig_header = "Sentry-App-Signature"
        elif op.path in ("/sentry/issues", "/sentry/queues"):
            params = data.draw(st.fixed_dictionaries({}, optional={"installationId": inst, "query": st.one_of(
                st.text(max_size=12), st.sampled_from(p.issue_keys))}), label="select")
            sig_header = "Sentry-App-Signature"
        else:  # webhook
            resource = data.draw(st.sampled_from(["installation", "issue", "event_alert", "", "metric_alert"]))
            action = st.sampled_from(["created", "deleted", "resolved", "unresolved", "ignored", "assigned", ""])
            hook = st.fixed_dictionaries(
                {"action": maybe(action)},
                optional={
                    "installation": maybe(st.fixed_dictionaries({"uuid": maybe(inst)})),
                    "data": maybe(st.fixed_dictionaries({}, optional={
                        "installation": st.fixed_dictionaries({"uuid": inst}, optional={
                            "code": st.sampled_from(["grant-x", "", None]),
                            "organization": st.fixed_dictionaries({"slug": st.text(max_size=6)}),
                            "app": st.fixed_dictionaries({"uuid": st.text(max_size=6)})}),
                        "issue": st.fixed_dictionaries({"id": issue_id.map(str)}, optional={
                            "status": st.sampled_from(["resolved", "unresolved"])}),
                    })),
                    "actor": common["actor"],
                },
            )
            body = json.dumps(data.draw(hook, label="hook")).encode()
            headers["Sentry-Hook-Resource"] = resource
            headers["Sentry-Hook-Timestamp"] = str(data.draw(st.integers(0, 2**40)))
            headers["Request-ID"] = uuidlib.uuid4().hex
            sig_header = "Sentry-Hook-Signature"
        sig = data.draw(st.sampled_from(["good"] * 8 + ["bad", "none"]), label="signature")
        if sig == "good":
            headers[sig_header] = sentry_signature(p.sentry_secret, body)
        elif sig == "bad":
            headers[sig_header] = sentry_signature("wrong", body)
        if method == "POST":
            headers["Content-Type"] = "application/json"
        try:
            return self.session.request(method, self.base + op.path, params=params, data=body or None,
                                        headers=headers, timeout=30, allow_redirects=False)
        except requests.RequestException as e:
            self.report.errors.append(f"{method} {op.path}: {type(e).__name__}: {e}")
            return None

    def check(self, case, op, resp: requests.Response) -> None:
        r = self.report
        r.requests += 1
        label = f"{op.method.upper()} {op.path}"
        r.per_operation[label] = r.per_operation.get(label, 0) + 1
        r.statuses[resp.status_code] = r.statuses.get(resp.status_code, 0) + 1
        by_op = r.per_status.setdefault(label, {})
        by_op[resp.status_code] = by_op.get(resp.status_code, 0) + 1
        samples = r.samples.setdefault((label, resp.status_code), [])
        if len(samples) < 4:
            body = resp.request.body
            body = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
            samples.append(f"{body[:300]} -> {resp.text[:300]}")
        for check, bucket in ((not_a_server_error, r.failures), (response_schema_conformance, r.failures),
                              (status_code_conformance, r.soft), (content_type_conformance, r.soft)):
            try:
                case.validate_response(resp, checks=[check])
            except (Exception, BaseExceptionGroup) as e:  # schemathesis raises a FailureGroup per failed check
                bucket.append(Finding(check.__name__, label, resp.status_code, str(e)[:1500], curl_of(resp.request)))

    def fuzz_one(self, op, strategies):
        """The Hypothesis test of one operation."""

        @seed(self.seed)
        @settings(max_examples=self.examples, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), derandomize=False, print_blob=False)
        @given(case=st.one_of(*strategies), data=st.data())
        def one(case, data):
            if time.monotonic() > self.deadline:
                return
            resp = self.send(case, data, op)
            if resp is not None:
                self.check(case, op, resp)

        return one

    def run(self) -> FuzzReport:
        started = time.monotonic()
        for op in self.operations:
            if time.monotonic() > self.deadline:
                self.report.errors.append(f"time budget exhausted before {op.method.upper()} {op.path}")
                break
            strategies = [op.as_strategy()]
            try:
                strategies.append(op.as_strategy(generation_mode=GenerationMode.NEGATIVE))
            except Exception:  # nothing to negate in this operation
                pass

            try:
                self.fuzz_one(op, strategies)()
            except Exception as e:  # generation trouble in one operation must not hide the others
                self.report.errors.append(f"{op.method.upper()} {op.path}: generation: {type(e).__name__}: {e}"[:500])
        self.report.seconds = time.monotonic() - started
        return self.report


def random_seed() -> int:
    return random.SystemRandom().randrange(2**32)
