"""External applications and remote links (CONTRACT.md §7, seed 003) through the real yandex-tracker-client 2.10.

The client has no collection for these routes, so the tests go through ``client._connection`` — exactly
what a script using the client does. Every test runs against a live ``tether serve``, once on SQLite and
once on PostgreSQL (see conftest.py). A tiny HTTP server in this process plays the external application
for the tests that need one to answer.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import pytest
from yandex_tracker_client.exceptions import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    UnprocessableEntity,
)

DATE_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$")
WAIT = 10.0  # seconds: the longest wait for a call to reach the fake application


@pytest.fixture(scope="module")
def member(server):
    return server.make_user("member")


@pytest.fixture(scope="module")
def reader(server):
    return server.make_user("reader")


def dead_port() -> int:
    """A port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def app_id() -> str:
    return "ru.example." + secrets.token_hex(4)


def register(client, base: str, token: str | None = None, **extra):
    """Registers an application whose URLs point at `base`; returns the client's resource."""
    data = {
        "id": app_id(),
        "name": "Fake app",
        "frontUrl": base + "/front/{{remoteKey}}",
        "entityInfoUrl": base + "/info/{{remoteKey}}",
        "createLinkUrl": base + "/links",
        "removeLinkUrl": base + "/links/{{issueKey}}/{{remoteKey}}",
    }
    if token is not None:
        data["oauthToken"] = token
    data.update(extra)
    return client._connection.post(path="/v2/applications", data=data)


def add_remote(client, issue_key: str, origin: str, key: str, backlink: bool = False, rel: str = "RELATES"):
    params = {"backlink": "true"} if backlink else None
    return client._connection.post(
        path=f"/v2/issues/{issue_key}/remotelinks",
        params=params,
        data={"relationship": rel, "key": key, "origin": origin},
    )


def remote_links(client, issue_key: str, **params):
    return client._connection.get(path=f"/v2/issues/{issue_key}/remotelinks", params=params or None)


class Receiver:
    """The external application: records every request, answers object info, 201 for the rest."""

    def __init__(self):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with recv.lock:
                    recv.requests.append(
                        {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                    )
                if self.path.startswith("/info/"):
                    key = unquote(self.path[len("/info/"):])
                    out = json.dumps({"key": key, "summary": f"Summary of {key}", "status": {"name": "Open"}})
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                else:
                    out = "{}"
                    self.send_response(201)
                payload = out.encode()
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def calls(self, method: str | None = None) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if method is None or r["method"] == method]

    def wait(self, method: str, n: int = 1) -> list[dict]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            got = self.calls(method)
            if len(got) >= n:
                return got
            time.sleep(0.05)
        pytest.fail(f"{n} {method} call(s) did not reach the application within {WAIT} s: {self.calls()}")

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


# ---------------------------------------------------------------------------------------------
# the application registry


def test_register_and_list_applications_never_shows_the_token(server, client, member):
    token = "app-token-" + secrets.token_hex(8)
    app = register(client, f"http://127.0.0.1:{dead_port()}", token=token)
    assert app.type == app.id, "type defaults to the id"
    assert app.name == "Fake app"
    assert app.self == f"{server.base_url}/v2/applications/{app.id}"
    assert "oauthToken" not in app.as_dict()

    listed = client._connection.get(path="/v2/applications")
    mine = [a for a in listed if a.id == app.id]
    assert len(mine) == 1
    assert mine[0].createLinkUrl.endswith("/links"), "admins see the settings"
    assert "oauthToken" not in mine[0].as_dict()

    one = client._connection.get(path=f"/v2/applications/{app.id}")
    assert one.name == "Fake app"

    for path in ("/v2/applications", f"/v2/applications/{app.id}", "/v3/applications"):
        for tok in (server.token, member.token):
            r = server.http("GET", path, token=tok)
            assert r.status_code == 200, r.text
            assert token not in r.text, f"{path} shows the application's token"
            assert "oauthToken" not in r.text

    for a in server.client(token=member.token)._connection.get(path="/v2/applications"):
        assert set(a.as_dict()) == {"self", "id", "type", "name"}, a.as_dict()


def test_application_errors(server, client, member):
    base = f"http://127.0.0.1:{dead_port()}"
    for bad in (
        {"frontUrl": "ftp://example.com/{{remoteKey}}"},
        {"frontUrl": "https://example.com/no-placeholder"},
        {"entityInfoUrl": "https://example.com/no-placeholder"},
        {"createLinkUrl": "file:///etc/passwd"},
        {"removeLinkUrl": base + "/links/{{issueKey}}"},
        {"id": "has space"},
    ):
        with pytest.raises(UnprocessableEntity):
            register(client, base, **bad)
    app = register(client, base)
    with pytest.raises(Conflict):
        register(client, base, id=app.id)
    with pytest.raises(Forbidden):
        register(server.client(token=member.token), base)
    with pytest.raises(NotFound):
        client._connection.get(path="/v2/applications/no.such.app")
    with pytest.raises(BadRequest):
        client._connection.post(path="/v2/applications", data={"id": 5, "name": "x"})

    patched = client._connection.patch(path=f"/v2/applications/{app.id}", data={"name": "Renamed"})
    assert patched.name == "Renamed"
    assert patched.createLinkUrl == base + "/links"


# ---------------------------------------------------------------------------------------------
# remote links


def test_remote_link_with_backlink_to_a_dead_application(server, client, queue_key):
    app = register(client, f"http://127.0.0.1:{dead_port()}")
    issue = client.issues.create(queue=queue_key, summary="remote")
    link = add_remote(client, issue.key, app.id, "4242", backlink=True)

    assert isinstance(link.id, int)
    assert link.self == f"{server.base_url}/v2/issues/{issue.key}/remotelinks/{link.id}"
    assert link.direction == "outward"
    assert link.type.id == "relates"
    assert link.object.key == "4242"
    assert link.object.id == "4242"
    assert link.object.self == f"{server.base_url}/v2/applications/{app.id}/objects/4242"
    assert link.object.application.id == app.id
    assert link.object.application.type == app.id
    assert link.object.application.name == "Fake app"
    assert link.createdBy.id is not None
    assert DATE_RE.match(link.createdAt) and DATE_RE.match(link.updatedAt)
    assert link.backlink["state"] in ("pending", "failed")

    listed = remote_links(client, issue.key)
    assert isinstance(listed, list)
    assert [l.id for l in listed] == [link.id]
    assert listed[0].object.key == "4242"

    one = client._connection.get(path=f"/v2/issues/{issue.key}/remotelinks/{link.id}")
    assert one.id == link.id

    # The application cannot be deleted while the link exists.
    with pytest.raises(UnprocessableEntity):
        client._connection.delete(path=f"/v2/applications/{app.id}")

    assert link.delete() is None
    assert remote_links(client, issue.key) == []
    with pytest.raises(NotFound):
        client._connection.get(path=f"/v2/issues/{issue.key}/remotelinks/{link.id}")

    # Removed while the create call was still pending: both are cancelled, nothing stays pending.
    r = server.http("GET", "/v2/_outbox")
    assert r.status_code == 200, r.text
    events = [e for e in r.json() if e.get("remoteLinkId") == link.id]
    assert events and all(e["state"] in ("cancelled", "failed") for e in events), events
    assert not any(e["kind"] == "backlink.remove" for e in events), events

    client._connection.delete(path=f"/v2/applications/{app.id}")
    with pytest.raises(NotFound):
        client._connection.get(path=f"/v2/applications/{app.id}")


def test_remote_link_errors(server, client, queue_key, reader):
    app = register(client, f"http://127.0.0.1:{dead_port()}")
    issue = client.issues.create(queue=queue_key, summary="remote errors")
    for rel in ("relates", "Relates", "RELATES"):
        add_remote(client, issue.key, app.id, f"k-{rel}", rel=rel)
    with pytest.raises(Conflict):
        add_remote(client, issue.key, app.id, "k-relates")
    with pytest.raises(UnprocessableEntity):
        add_remote(client, issue.key, app.id, "x", rel="depends on")
    with pytest.raises(UnprocessableEntity):
        add_remote(client, issue.key, "no.such.app", "x")
    with pytest.raises(NotFound):
        add_remote(client, f"{queue_key}-9999", app.id, "x")
    with pytest.raises(Forbidden):
        add_remote(server.client(token=reader.token), issue.key, app.id, "x")
    with pytest.raises(BadRequest):
        client._connection.post(
            path=f"/v2/issues/{issue.key}/remotelinks",
            params={"backlink": "maybe"},
            data={"relationship": "relates", "key": "x", "origin": app.id},
        )
    as_reader = server.client(token=reader.token)
    links = remote_links(as_reader, issue.key)
    assert len(links) == 3, "readers read"
    with pytest.raises(Forbidden):
        as_reader._connection.delete(path=f"/v2/issues/{issue.key}/remotelinks/{links[0].id}")
    assert len(remote_links(client, issue.key)) == 3


def test_backlink_reaches_the_application_and_removal_follows(server, client, queue_key, receiver):
    token = "app-token-" + secrets.token_hex(8)
    app = register(client, receiver.base, token=token)
    issue = client.issues.create(queue=queue_key, summary="backlinked")
    link = add_remote(client, issue.key, app.id, "a b/c", backlink=True)

    post = receiver.wait("POST")[0]
    assert post["path"] == "/links"
    assert json.loads(post["body"]) == {"issueKey": issue.key, "entityIds": ["a b/c"]}
    headers = {k.lower(): v for k, v in post["headers"].items()}
    assert headers["authorization"] == f"OAuth {token}"
    assert headers["content-type"] == "application/json"
    assert headers["idempotency-key"]

    deadline = time.monotonic() + WAIT
    while remote_links(client, issue.key)[0].backlink["state"] != "delivered":
        assert time.monotonic() < deadline, remote_links(client, issue.key)[0].backlink
        time.sleep(0.05)

    link.delete()
    delete = receiver.wait("DELETE")[0]
    assert delete["path"] == f"/links/{issue.key}/a%20b%2Fc"
    assert delete["body"] == b""
    dh = {k.lower(): v for k, v in delete["headers"].items()}
    assert dh["authorization"] == f"OAuth {token}"
    assert dh["idempotency-key"] != headers["idempotency-key"]


def test_expand_info_shows_the_object(client, queue_key, receiver):
    app = register(client, receiver.base)
    issue = client.issues.create(queue=queue_key, summary="info")
    add_remote(client, issue.key, app.id, "TEST-17")
    plain = remote_links(client, issue.key)[0]
    assert "info" not in plain.object.as_dict()
    expanded = remote_links(client, issue.key, expand="info")[0]
    info = expanded.object.info
    assert info["key"] == "TEST-17"
    assert info["summary"] == "Summary of TEST-17"
    assert info["status"] == {"name": "Open"}
    assert not receiver.calls("POST"), "no backlink was asked for"
