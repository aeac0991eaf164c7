"""Core resources (CONTRACT.md §1–§4) through the real yandex-tracker-client 2.10.

Every test runs against a live `tether serve`, once on SQLite and once on PostgreSQL
(see conftest.py). One server per module and backend; each test makes its own queue.
"""

from __future__ import annotations

import itertools
import re
import secrets

import pytest
from yandex_tracker_client.exceptions import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TrackerServerError,
    UnprocessableEntity,
)
from yandex_tracker_client.objects import PaginatedList

DATE_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$")
# Upper bound when iterating a paginated answer, so a server that keeps sending rel="next"
# fails the test instead of looping forever.
ITER_LIMIT = 200


def keys(items) -> list[str]:
    got = [i.key for i in itertools.islice(iter(items), ITER_LIMIT)]
    assert len(got) < ITER_LIMIT, "pagination does not end"
    return got


def new_issue(client, queue_key, summary="issue", **kwargs):
    return client.issues.create(queue=queue_key, summary=summary, **kwargs)


@pytest.fixture(scope="module")
def reader(server):
    return server.make_user("reader")


@pytest.fixture(scope="module")
def member(server):
    return server.make_user("member")


# ---------------------------------------------------------------------------------------------
# users


def test_myself_is_the_bootstrap_admin(client):
    me = client.myself
    assert me.login == "admin"
    assert re.fullmatch(r"\d+", str(me.uid)), f"uid should be numeric, got {me.uid!r}"
    assert me.display


def test_users_by_uid_and_login(client):
    me = client.myself
    assert client.users[me.uid].login == "admin"
    assert str(client.users["admin"].uid) == str(me.uid)
    assert "admin" in [u.login for u in client.users.get_all()]
    with pytest.raises(NotFound):
        client.users["no-such-user"]


def test_cli_user_with_token_sees_itself(server, reader):
    me = server.client(token=reader.token).myself
    assert me.login == reader.login
    assert str(me.uid) == reader.uid


# ---------------------------------------------------------------------------------------------
# queues, issue types, statuses, fields


def test_queue_create_get_list(server, client):
    key = server.new_queue_key()
    q = client.queues.create(key=key, name="Compat queue", lead="admin")
    assert q.key == key
    assert q.name == "Compat queue"
    got = client.queues[key]
    assert got.key == key
    assert got.lead.login == "admin"
    assert key in [x.key for x in client.queues.get_all()]
    with pytest.raises(NotFound):
        client.queues["NOSUCHQUEUE"]


def test_queue_key_rules(server, client):
    with pytest.raises(TrackerServerError) as exc:
        client.queues.create(key="BAD1", name="digits are not allowed", lead="admin")
    assert 400 <= exc.value.status_code < 500


def test_issue_types_and_statuses(client):
    types = client.issue_types.get_all()
    assert {"bug", "task", "epic"} <= {t.key for t in types}
    for t in types:
        assert t.id is not None and t.display
    statuses = client.statuses.get_all()
    assert {"open", "inProgress", "closed"} <= {s.key for s in statuses}


def test_fields_list_system_fields(client):
    fields = client.fields.get_all()
    by_id = {f.id: f for f in fields}
    assert "summary" in by_id
    for f in fields:
        assert f.name, f"field {f.id} has no name"
        assert isinstance(f.schema, dict) and f.schema.get("type"), f"field {f.id} has no schema.type"
    # iterating the collection is the same request
    assert "summary" in [f.id for f in client.fields]


# ---------------------------------------------------------------------------------------------
# issues: create and get


def test_issue_create_numbers_and_shape(server, client, queue_key):
    first = new_issue(client, queue_key, summary="Hello é — привет", type={"name": "Bug"})
    second = new_issue(client, queue_key, summary="second")
    assert first.key == f"{queue_key}-1"
    assert second.key == f"{queue_key}-2"

    assert first.summary == "Hello é — привет"
    assert first.type.key == "bug"
    assert first.status.key == "open"
    assert first.queue.key == queue_key
    assert first.createdBy.login == "admin"  # dereferences /v2/users/<uid>
    assert first.updatedBy.login == "admin"
    assert isinstance(first.id, str), "an issue id is rendered as a string"
    assert first.version is not None
    assert DATE_RE.match(first.createdAt), first.createdAt
    assert DATE_RE.match(first.updatedAt), first.updatedAt
    # default type without a queue defaultType: task
    assert second.type.key == "task"
    # absent optional fields are omitted, never null
    raw = first.as_dict()
    assert "assignee" not in raw
    assert all(v is not None for v in raw.values()), raw
    # self: absolute URL on the address the server listens on, path /v2/issues/<key or id>
    assert raw["self"] in (
        f"{server.base_url}/v2/issues/{first.key}",
        f"{server.base_url}/v2/issues/{first.id}",
    ), raw["self"]


def test_issue_type_forms(client, queue_key):
    assert new_issue(client, queue_key, type="epic").type.key == "epic"
    assert new_issue(client, queue_key, type={"key": "bug"}).type.key == "bug"
    assert new_issue(client, queue_key, type={"name": "TASK"}).type.key == "task"


def test_queue_default_type(server, client):
    key = server.new_queue_key()
    client.queues.create(key=key, name="Bugs by default", lead="admin", defaultType="bug")
    assert new_issue(client, key).type.key == "bug"


def test_issue_create_with_description_assignee_and_parent(client, queue_key):
    parent = new_issue(client, queue_key, summary="parent")
    child = new_issue(
        client, queue_key, summary="child", description="line 1\nline 2 ü",
        assignee="admin", parent=parent,  # the client sends parent as {"key": ...}
    )
    assert child.description == "line 1\nline 2 ü"
    assert child.assignee.login == "admin"
    assert child.parent.key == parent.key
    again = client.issues[child.key]
    assert again.parent.key == parent.key
    assert again.assignee.login == "admin"
    by_string = new_issue(client, queue_key, summary="child 2", parent=parent.key)
    assert by_string.parent.key == parent.key


def test_issue_get_by_key_and_id(client, queue_key):
    issue = new_issue(client, queue_key, summary="get me")
    by_key = client.issues[issue.key]
    assert by_key.summary == "get me"
    assert by_key.id == issue.id
    by_id = client.issues[issue.id]
    assert by_id.key == issue.key


def test_issue_not_found(client, queue_key):
    with pytest.raises(NotFound) as exc:
        client.issues["NOPE-1"]
    # error body: errors is an object, errorMessages a list of strings
    assert isinstance(exc.value.errors, dict)
    assert exc.value.error_messages and all(isinstance(m, str) for m in exc.value.error_messages)
    assert exc.value.response.json().get("statusCode") == 404
    str(exc.value)  # must not crash
    new_issue(client, queue_key)
    with pytest.raises(NotFound):
        client.issues[f"{queue_key}-999"]


def test_duplicate_unique_returns_the_same_issue(server, client, queue_key):
    unique = "compat-" + secrets.token_hex(8)
    a = new_issue(client, queue_key, summary="once", unique=unique)
    # the server answers 409, the client then asks _findByUnique and returns that issue
    b = new_issue(client, queue_key, summary="twice", unique=unique)
    assert b.key == a.key
    assert b.summary == "once"
    raw = server.http("POST", "/v2/issues/", json={"queue": queue_key, "summary": "x", "unique": unique})
    assert raw.status_code == 409, raw.text
    # no gap in the numbering from the refused creates
    assert new_issue(client, queue_key).key == f"{queue_key}-2"


def test_failed_creates_leave_no_gaps(client, queue_key):
    assert new_issue(client, queue_key).key == f"{queue_key}-1"
    with pytest.raises(UnprocessableEntity):
        new_issue(client, queue_key, type={"name": "NoSuchType"})
    assert new_issue(client, queue_key).key == f"{queue_key}-2"


# ---------------------------------------------------------------------------------------------
# issues: update


def test_issue_update_bumps_version(client, queue_key):
    issue = new_issue(client, queue_key, summary="old")
    v0 = issue.version
    issue.update(summary="new", description="described")
    assert issue.summary == "new"  # the PATCH answer replaces the object in place
    again = client.issues[issue.key]
    assert again.summary == "new"
    assert again.description == "described"
    assert int(again.version) > int(v0)
    assert again.updatedBy.login == "admin"


def test_issue_update_stale_version_conflicts(client, queue_key):
    issue = new_issue(client, queue_key, summary="v")
    stale = client.issues[issue.key]
    issue.update(summary="first writer")
    with pytest.raises(Conflict):
        stale.update(summary="second writer")  # If-Match: "<old version>"
    assert client.issues[issue.key].summary == "first writer"
    stale.update(summary="forced", ignore_version_change=True)  # no If-Match
    assert client.issues[issue.key].summary == "forced"


def test_issue_update_if_match_forms(server, client, queue_key):
    issue = new_issue(client, queue_key)
    path = f"/v2/issues/{issue.key}"
    for bad in ('"999999"', "999999"):
        r = server.http("PATCH", path, json={"summary": "x"}, headers={"If-Match": bad})
        assert r.status_code == 409, (bad, r.status_code, r.text)
    r = server.http("PATCH", path, json={"summary": "bare"}, headers={"If-Match": str(issue.version)})
    assert r.status_code == 200, r.text
    assert r.json()["summary"] == "bare"


def test_issue_update_unknown_field_is_422(client, queue_key):
    issue = new_issue(client, queue_key)
    with pytest.raises(UnprocessableEntity):
        issue.update(noSuchFieldAnywhere="x")


def test_custom_array_field(server, client, queue_key):
    field = client.fields.create(
        id="sentryIssues", name="Sentry issues", schema={"type": "array", "items": "string"}
    )
    assert field.id == "sentryIssues"
    listed = {f.id: f for f in client.fields.get_all()}
    assert listed["sentryIssues"].schema["type"] == "array"

    issue = new_issue(client, queue_key, summary="with sentry")
    other = new_issue(client, queue_key, summary="without sentry")
    assert "sentryIssues" not in issue.as_dict()  # omitted while unset

    issue.update(sentryIssues=["1", "2"])
    assert issue.sentryIssues == ["1", "2"]
    assert client.issues[issue.key].sentryIssues == ["1", "2"]

    # A new client loads /v2/fields afresh: the field is known and an unset array reads as [].
    fresh = server.client()
    assert fresh.issues[issue.key].sentryIssues == ["1", "2"]
    assert fresh.issues[other.key].sentryIssues == []

    issue = client.issues[issue.key]
    issue.update(sentryIssues={"add": ["3"]})
    assert sorted(client.issues[issue.key].sentryIssues) == ["1", "2", "3"]
    issue = client.issues[issue.key]
    issue.update(sentryIssues={"remove": ["1"]})
    assert sorted(client.issues[issue.key].sentryIssues) == ["2", "3"]
    issue = client.issues[issue.key]
    issue.update(sentryIssues={"set": ["9"]})
    assert client.issues[issue.key].sentryIssues == ["9"]


# ---------------------------------------------------------------------------------------------
# search


def test_find_by_filter_queue_and_keys(client, queue_key):
    created = [new_issue(client, queue_key, summary=f"find {i}").key for i in range(3)]
    assert sorted(keys(client.issues.find(filter={"queue": queue_key}))) == sorted(created)
    assert sorted(keys(client.issues.find(queue=queue_key))) == sorted(created)
    assert keys(client.issues.find(keys=[created[0]])) == [created[0]]
    assert sorted(keys(client.issues.find(keys=created[1:]))) == sorted(created[1:])


def test_find_order(client, queue_key):
    created = [new_issue(client, queue_key, summary=f"order {i}").key for i in range(4)]
    assert keys(client.issues.find(filter={"queue": queue_key}, order=["+key"])) == created
    assert keys(client.issues.find(filter={"queue": queue_key}, order=["-key"])) == created[::-1]


def test_find_with_query_language_is_400(client, queue_key):
    with pytest.raises(BadRequest):
        list(client.issues.find(query=f"Queue: {queue_key}"))


def test_find_paginates_with_link_next(server, client, queue_key):
    created = [new_issue(client, queue_key, summary=f"page {i}").key for i in range(5)]
    found = client.issues.find(filter={"queue": queue_key}, per_page=2)
    assert isinstance(found, PaginatedList), 'the first page should carry Link: <…>; rel="next"'
    got = keys(found)
    assert len(got) == len(set(got)), f"an issue came back twice across pages: {got}"
    assert sorted(got) == sorted(created)

    r = server.http("POST", "/v2/issues/_search?perPage=2", json={"filter": {"queue": queue_key}})
    assert r.status_code == 200, r.text
    assert len(r.json()) == 2
    assert r.headers.get("X-Total-Count") == "5"
    assert r.headers.get("X-Total-Pages") == "3"
    assert "next" in r.links
    r = server.http("POST", "/v2/issues/_search?perPage=2&page=3", json={"filter": {"queue": queue_key}})
    assert r.status_code == 200, r.text
    assert len(r.json()) == 1
    assert "next" not in r.links


# ---------------------------------------------------------------------------------------------
# transitions


def test_transitions_workflow(client, queue_key):
    issue = new_issue(client, queue_key, summary="flow")
    ids = {t.id for t in issue.transitions.get_all()}
    assert {"start_progress", "close"} <= ids, ids
    for t in issue.transitions.get_all():
        assert t.to.key, f"transition {t.id} has no target status"

    issue.transitions["start_progress"].execute()
    assert client.issues[issue.key].status.key == "inProgress"

    after_close = issue.transitions["close"].execute(comment="done")
    assert isinstance(after_close, list)
    assert "reopen" in {t.id for t in after_close}
    issue = client.issues[issue.key]
    assert issue.status.key == "closed"
    assert "reopen" in {t.id for t in issue.transitions.get_all()}

    issue.transitions["reopen"].execute()
    assert client.issues[issue.key].status.key == "open"


def test_find_by_status(client, queue_key):
    a = new_issue(client, queue_key, summary="stays open")
    b = new_issue(client, queue_key, summary="gets closed")
    b.transitions["close"].execute()
    assert keys(client.issues.find(filter={"queue": queue_key, "status": "closed"})) == [b.key]
    assert keys(client.issues.find(filter={"queue": queue_key, "status": "open"})) == [a.key]


# ---------------------------------------------------------------------------------------------
# errors, roles, authentication, organization headers


def test_unknown_queue_is_404(client):
    with pytest.raises(NotFound):
        client.issues.create(queue="NOQUEUE", summary="x")


def test_unknown_parent_is_404(client, queue_key):
    with pytest.raises(NotFound):
        new_issue(client, queue_key, parent=f"{queue_key}-999")


def test_unknown_type_is_422(client, queue_key):
    with pytest.raises(UnprocessableEntity):
        new_issue(client, queue_key, type={"name": "NoSuchType"})


def test_unknown_assignee_is_422(client, queue_key):
    with pytest.raises(UnprocessableEntity):
        new_issue(client, queue_key, assignee="nobody-by-this-login")


def test_missing_summary_is_422_naming_the_field(client, queue_key):
    with pytest.raises(UnprocessableEntity) as exc:
        client.issues.create(queue=queue_key)
    assert isinstance(exc.value.errors, dict) and "summary" in exc.value.errors, exc.value.errors


def test_reader_reads_but_cannot_write(server, client, reader, queue_key):
    issue = new_issue(client, queue_key, summary="readable")
    rc = server.client(token=reader.token)
    got = rc.issues[issue.key]
    assert got.summary == "readable"
    assert issue.key in keys(rc.issues.find(filter={"queue": queue_key}))
    with pytest.raises(Forbidden):
        rc.issues.create(queue=queue_key, summary="nope")
    with pytest.raises(Forbidden):
        got.update(summary="nope")
    with pytest.raises(Forbidden):
        got.transitions["close"].execute()
    assert client.issues[issue.key].summary == "readable"
    assert client.issues[issue.key].status.key == "open"


def test_member_edits_issues_but_not_queues_or_fields(server, member, queue_key):
    mc = server.client(token=member.token)
    issue = mc.issues.create(queue=queue_key, summary="by a member")
    assert issue.createdBy.login == member.login
    issue.update(summary="edited by a member")
    assert mc.issues[issue.key].summary == "edited by a member"
    with pytest.raises(Forbidden):
        mc.queues.create(key=server.new_queue_key(), name="no", lead=member.login)
    with pytest.raises(Forbidden):
        mc.fields.create(id="memberField", name="no", schema={"type": "string"})


def test_wrong_or_missing_token_is_401(server, client, queue_key):
    key = new_issue(client, queue_key).key
    for token in ("x" * 32, None):
        with pytest.raises(TrackerServerError) as exc:
            server.client(token=token).issues[key]
        assert type(exc.value) is TrackerServerError  # 401 has no subclass in the client
        assert exc.value.status_code == 401


def test_unknown_org_is_403(server, client, queue_key):
    key = new_issue(client, queue_key).key
    with pytest.raises(Forbidden):
        server.client(org_id="no-such-org-" + secrets.token_hex(3)).issues[key]


def test_no_org_header_uses_the_only_org(server, client, queue_key):
    key = new_issue(client, queue_key, summary="single org").key
    c = server.client(org_id=None)  # the client sends X-Org-Id: not provided
    assert c.myself.login == "admin"
    assert c.issues[key].summary == "single org"


def test_cloud_org_header_and_bearer(server, client, queue_key):
    key = new_issue(client, queue_key, summary="cloud").key
    c = server.client(cloud_org_id=server.org)  # X-Org-Id: not provided + X-Cloud-Org-Id
    assert c.issues[key].summary == "cloud"
    b = server.client(iam_token=server.token, cloud_org_id=server.org)  # Authorization: Bearer
    assert b.issues[key].summary == "cloud"


def test_conflicting_org_headers_are_400(server, client, queue_key):
    key = new_issue(client, queue_key).key
    c = server.client(headers={"X-Cloud-Org-Id": "some-other-org"})
    with pytest.raises(BadRequest):
        c.issues[key]


# ---------------------------------------------------------------------------------------------
# /v3


def test_v3_paths(server, queue_key):
    c3 = server.client(api_version="v3")
    issue = c3.issues.create(queue=queue_key, summary="via v3")
    assert issue._path in (f"/v3/issues/{issue.key}", f"/v3/issues/{issue.id}"), issue._path
    got = c3.issues[issue.key]
    assert got.summary == "via v3"
    got.update(summary="v3 updated")
    assert got._path.startswith("/v3/")
    assert c3.issues[issue.key].summary == "v3 updated"
    assert "close" in {t.id for t in got.transitions.get_all()}
