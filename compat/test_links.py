"""Issue links (CONTRACT.md §5) and link import (§6) through the real yandex-tracker-client 2.10.

Every test runs against a live `tether serve`, once on SQLite and once on PostgreSQL
(see conftest.py). One server per module and backend; each test makes its own queue.
"""

from __future__ import annotations

import pytest
from yandex_tracker_client.exceptions import Forbidden, NotFound, UnprocessableEntity

# relationship sent from A about B, type id, the direction A sees (CONTRACT.md §5)
CREATE_TABLE = [
    ("relates", "relates", "inward"),
    ("depends on", "depends", "outward"),
    ("is dependent by", "depends", "inward"),
    ("is subtask for", "subtask", "inward"),
    ("is parent task for", "subtask", "outward"),
    ("duplicates", "duplicates", "outward"),
    ("is duplicated by", "duplicates", "inward"),
    ("has epic", "epic", "outward"),
    ("is epic of", "epic", "inward"),
]
IMPORT_ONLY = [
    ("original", "clone", "outward"),
    ("clone", "clone", "inward"),
]
LABELS = {
    "relates": ("relates", "relates"),
    "depends": ("Depends on", "Blocks"),
    "subtask": ("Parent issue", "Sub-issue"),
    "duplicates": ("Duplicates", "Duplicated by"),
    "epic": ("Issue in epic", "Epic"),
    "clone": ("Clone of", "Cloned to"),
}
OPPOSITE = {"inward": "outward", "outward": "inward"}

T0 = "2017-06-01T00:00:00.000+0000"
T_CREATED = "2017-08-29T12:34:41.740+0000"
T_UPDATED = "2017-09-07T11:24:31.140+0000"


@pytest.fixture(scope="module")
def member(server):
    return server.make_user("member")


@pytest.fixture(scope="module")
def reader(server):
    return server.make_user("reader")


def new_issue(client, queue_key, summary="issue", **kwargs):
    return client.issues.create(queue=queue_key, summary=summary, **kwargs)


def types_for(rel):
    """The issue types of A and B that make `rel` allowed (the epic side must be an epic)."""
    return {
        "has epic": ("task", "epic"),
        "is epic of": ("epic", "task"),
    }.get(rel, ("task", "bug"))


def pair(client, queue_key, rel):
    ta, tb = types_for(rel)
    return (
        new_issue(client, queue_key, f"A {rel}", type=ta),
        new_issue(client, queue_key, f"B {rel}", type=tb),
    )


def old_pair(client, queue_key, rel):
    """Two issues imported with a creation date in the past, so links can be imported with old dates."""
    ta, tb = types_for(rel)
    return tuple(
        client.issues.import_object(queue=queue_key, summary=f"{side} {rel}", type=t, createdAt=T0, createdBy="admin")
        for side, t in (("A", ta), ("B", tb))
    )


def check_link(link, rel, type_id, direction, obj):
    assert link.type.id == type_id, rel
    outward, inward = LABELS[type_id]
    assert (link.type.outward, link.type.inward) == (outward, inward), rel
    assert link.direction == direction, f"{rel}: direction"
    assert link.object.key == obj.key, rel
    assert str(link.object.id) == str(obj.id), rel
    assert isinstance(link.id, int), f"a link id is a number, got {link.id!r}"


# ---------------------------------------------------------------------------------------------
# create, list from both sides, delete


@pytest.mark.parametrize("target", ["key", "issue object"])
@pytest.mark.parametrize("rel,type_id,a_sees", CREATE_TABLE, ids=[r[0] for r in CREATE_TABLE])
def test_every_relationship_from_both_sides(client, queue_key, rel, type_id, a_sees, target):
    a, b = pair(client, queue_key, rel)
    link = a.links.create(issue=b.key if target == "key" else b, relationship=rel)
    check_link(link, rel, type_id, a_sees, b)

    from_a = list(a.links)
    assert [l.id for l in from_a] == [link.id]
    check_link(from_a[0], rel, type_id, a_sees, b)

    from_b = list(client.issues[b.key].links)
    assert [l.id for l in from_b] == [link.id], "one stored link, one id from both sides"
    check_link(from_b[0], rel, type_id, OPPOSITE[a_sees], a)

    if type_id == "subtask":
        child, parent = (a, b) if a_sees == "inward" else (b, a)
        assert client.issues[child.key].parent.key == parent.key

    from_b[0].delete()
    assert list(a.links) == []
    assert list(b.links) == []


def test_relationship_names_match_case_insensitively(client, queue_key):
    a, b = new_issue(client, queue_key, "a"), new_issue(client, queue_key, "b")
    link = a.links.create(issue=b.key, relationship="Depends On")
    assert (link.type.id, link.direction) == ("depends", "outward")


def test_a_link_is_deleted_through_the_client_from_the_side_that_made_it(client, queue_key):
    a, b, c = (new_issue(client, queue_key, s) for s in "abc")
    ab = a.links.create(issue=b.key, relationship="relates")
    ac = a.links.create(issue=c, relationship="is parent task for")
    assert sorted(l.id for l in a.links) == sorted([ab.id, ac.id])
    ab.delete()
    assert [l.id for l in a.links] == [ac.id]
    assert list(b.links) == []
    assert [l.id for l in c.links] == [ac.id]
    with pytest.raises(NotFound):
        ab.delete()


def test_list_entries_carry_the_linked_issues_status_and_assignee(client, queue_key):
    a = new_issue(client, queue_key, "a")
    b = new_issue(client, queue_key, "b", assignee="admin")
    c = new_issue(client, queue_key, "c")
    a.links.create(issue=b.key, relationship="relates")
    a.links.create(issue=c.key, relationship="relates")
    by_key = {l.object.key: l for l in a.links}
    assert by_key[b.key].status.key == "open"
    assert str(by_key[b.key].assignee.id) == str(client.myself.uid)
    assert "assignee" not in by_key[c.key].as_dict(), "assignee omitted when the linked issue is unassigned"


# ---------------------------------------------------------------------------------------------
# link types


def test_link_types(client):
    types = {t.id: t for t in client.linktypes}
    assert set(types) == set(LABELS)
    for type_id, (outward, inward) in LABELS.items():
        assert (types[type_id].outward, types[type_id].inward) == (outward, inward)
    depends = client.linktypes["depends"]
    assert (depends.id, depends.inward, depends.outward) == ("depends", "Blocks", "Depends on")
    with pytest.raises(NotFound):
        client.linktypes["blocks"]


# ---------------------------------------------------------------------------------------------
# errors


def test_a_second_link_between_the_same_pair_is_unprocessable(client, queue_key):
    a, b = new_issue(client, queue_key, "a"), new_issue(client, queue_key, "b")
    a.links.create(issue=b.key, relationship="relates")
    with pytest.raises(UnprocessableEntity) as e:
        a.links.create(issue=b.key, relationship="relates")
    assert e.value.error_messages == [f"Issues {a.key} and {b.key} are already linked."]
    assert isinstance(e.value.errors, dict)
    with pytest.raises(UnprocessableEntity):
        b.links.create(issue=a, relationship="depends on")
    assert len(list(a.links)) == 1


def test_rule_breaking_links_are_unprocessable(client, queue_key):
    a, b, c = (new_issue(client, queue_key, s) for s in "abc")
    for rel, target in [
        ("relates", a.key),  # itself
        ("blocks", b.key),  # unknown relationship
        ("clone", b.key),  # import only
        ("has epic", b.key),  # b is not an epic
    ]:
        with pytest.raises(UnprocessableEntity):
            a.links.create(issue=target, relationship=rel)
    a.links.create(issue=b.key, relationship="depends on")
    b.links.create(issue=c.key, relationship="depends on")
    with pytest.raises(UnprocessableEntity) as e:
        c.links.create(issue=a.key, relationship="depends on")
    assert "cycle" in e.value.error_messages[0].lower()
    assert len(list(a.links)) == 1


def test_an_unknown_target_is_not_found(client, queue_key):
    a = new_issue(client, queue_key, "a")
    with pytest.raises(NotFound):
        a.links.create(issue=f"{queue_key}-999", relationship="relates")
    with pytest.raises(NotFound):
        a.links.create(issue="NOSUCHQUEUE-1", relationship="relates")
    assert list(a.links) == []


def test_a_reader_cannot_link(server, client, queue_key, reader):
    a, b = new_issue(client, queue_key, "a"), new_issue(client, queue_key, "b")
    as_reader = server.client(token=reader.token)
    with pytest.raises(Forbidden):
        as_reader.issues[a.key].links.create(issue=b.key, relationship="relates")
    link = a.links.create(issue=b.key, relationship="relates")
    assert [l.id for l in as_reader.issues[b.key].links] == [link.id]


# ---------------------------------------------------------------------------------------------
# import


@pytest.mark.parametrize("rel,type_id,a_sees", CREATE_TABLE + IMPORT_ONLY, ids=[r[0] for r in CREATE_TABLE + IMPORT_ONLY])
def test_import_every_relationship_with_its_history(client, queue_key, member, rel, type_id, a_sees):
    a, b = old_pair(client, queue_key, rel)
    link = a.links.import_object(
        relationship=rel,
        issue=b.key,
        createdAt=T_CREATED,
        createdBy=int(member.uid),
        updatedAt=T_UPDATED,
        updatedBy="admin",
    )
    check_link(link, rel, type_id, a_sees, b)
    assert link.createdAt == T_CREATED
    assert link.updatedAt == T_UPDATED
    assert str(link.createdBy.id) == member.uid
    assert str(link.updatedBy.id) == str(client.myself.uid)

    (from_b,) = list(b.links)
    assert from_b.id == link.id
    check_link(from_b, rel, type_id, OPPOSITE[a_sees], a)
    assert (from_b.createdAt, from_b.updatedAt) == (T_CREATED, T_UPDATED)
    # The issues themselves keep their dates.
    assert client.issues[a.key].updatedAt == a.updatedAt
    assert client.issues[b.key].updatedAt == b.updatedAt


def test_import_through_a_members_client(server, client, queue_key, member):
    a, b = old_pair(client, queue_key, "relates")
    as_member = server.client(token=member.token)
    link = as_member.issues[a.key].links.import_object(
        relationship="relates", issue=b.key, createdAt=T_CREATED, createdBy=member.login
    )
    assert (link.createdAt, link.updatedAt) == (T_CREATED, T_CREATED)
    assert str(link.updatedBy.id) == member.uid


def test_import_errors(client, queue_key):
    a, b = old_pair(client, queue_key, "relates")
    base = dict(relationship="relates", issue=b.key, createdAt=T_CREATED, createdBy="admin")
    for extra in [
        dict(updatedAt=T_UPDATED),  # without updatedBy
        dict(updatedBy="admin"),  # without updatedAt
        dict(createdAt="2017-05-31T23:59:59.999+0000"),  # before the issues existed
        dict(createdAt="2999-01-01T00:00:00.000+0000"),  # in the future
        dict(updatedAt="2017-08-01T00:00:00.000+0000", updatedBy="admin"),  # before createdAt
        dict(createdBy="nobody-at-all"),  # unknown user
    ]:
        with pytest.raises(UnprocessableEntity):
            a.links.import_object(**{**base, **extra})
    with pytest.raises(NotFound):
        a.links.import_object(**{**base, "issue": f"{queue_key}-999"})
    assert list(a.links) == []
    a.links.import_object(**base)
    with pytest.raises(UnprocessableEntity):
        a.links.import_object(**{**base, "relationship": "depends on"})  # the pair is linked already


def test_import_accepts_a_depends_cycle(client, queue_key):
    a, b = old_pair(client, queue_key, "depends on")
    (c,) = [client.issues.import_object(queue=queue_key, summary="c", createdAt=T0, createdBy="admin")]
    a.links.create(issue=b.key, relationship="depends on")
    b.links.create(issue=c.key, relationship="depends on")
    with pytest.raises(UnprocessableEntity):
        c.links.create(issue=a.key, relationship="depends on")
    link = c.links.import_object(relationship="depends on", issue=a.key, createdAt=T_CREATED, createdBy="admin")
    assert (link.type.id, link.direction) == ("depends", "outward")
    assert len(list(a.links)) == 2
