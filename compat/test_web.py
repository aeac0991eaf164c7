"""The web UI end to end: headless Chromium, driven by Selenium, against a live `tether serve`.

Runs once on SQLite and once on PostgreSQL (see conftest.py). Needs Debian's `chromium` and
`chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver); scripts/test.sh installs them. Without
them these tests FAIL: a browser test that skips silently proves nothing.

Screenshots: with TETHER_SCREENSHOTS_DIR set, `test_screenshots` writes issue.png and graph.png there
(`compat/screenshots.py` does that for docs/screenshots); otherwise into a temporary directory.
"""

from __future__ import annotations

import http.server
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 15  # seconds for a page to load after a form is sent

# relationship sent from A about B → (the group B appears in on A's page, the group A appears in on B's page):
# each issue lists the other under the role label the OTHER plays (CONTRACT.md §5).
ROLE_GROUPS = {
    "relates": ("relates", "relates"),
    "depends on": ("Blocks", "Depends on"),
    "is dependent by": ("Depends on", "Blocks"),
    "is subtask for": ("Parent issue", "Sub-issues"),
    "is parent task for": ("Sub-issues", "Parent issue"),
    "duplicates": ("Duplicated by", "Duplicates"),
    "is duplicated by": ("Duplicates", "Duplicated by"),
    "has epic": ("Epic", "Issues in epic"),
    "is epic of": ("Issues in epic", "Epic"),
}


@pytest.fixture(scope="module")
def chrome():
    """One headless Chromium per module, with a fresh profile."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(`apt-get install -y chromium chromium-driver`; scripts/test.sh does it)",
            pytrace=False,
        )
    os.environ.setdefault("SE_AVOID_STATS", "true")
    profile = tempfile.mkdtemp(prefix="tether-chrome-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1200,1000",
        "--lang=en-US",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# -- helpers ---------------------------------------------------------------------------------------


def submit(d, button) -> None:
    """Clicks a submit button and waits for the page it leads to.

    The old document is marked with a window property; the wait ends when a document without the mark is fully
    loaded (after the 303). Selenium's `staleness_of` is not used: while Chromium swaps documents it may answer
    "Node with given id does not belong to the document" instead of a stale-element error, which `staleness_of`
    does not catch. Any driver error during the swap counts as "not there yet".
    """
    d.execute_script("window.__tetherOldPage = true")
    button.click()

    def new_page_loaded(drv) -> bool:
        try:
            return bool(
                drv.execute_script("return !window.__tetherOldPage && document.readyState === 'complete'")
            )
        except WebDriverException:
            return False

    WebDriverWait(d, WAIT).until(new_page_loaded)


def log_in(d, server, token: str) -> None:
    d.delete_all_cookies()
    d.get(server.base_url + "/")
    assert "/login" in d.current_url, "a page without a session must lead to the login page"
    d.find_element(By.ID, "token").send_keys(token)
    submit(d, d.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]"))
    assert "/login" not in d.current_url, d.find_element(By.TAG_NAME, "main").text


def create_issue(d, server, queue_key: str, summary: str, description: str = "", ty: str = "task") -> str:
    d.get(f"{server.base_url}/new?queue={queue_key}")
    Select(d.find_element(By.ID, "type")).select_by_value(ty)
    d.find_element(By.ID, "summary").send_keys(summary)
    if description:
        d.find_element(By.ID, "description").send_keys(description)
    submit(d, d.find_element(By.ID, "create"))
    key = d.find_element(By.ID, "key").text
    assert d.current_url.endswith("/" + key), d.current_url
    assert d.find_element(By.ID, "summary").text == summary
    return key


def groups(d) -> dict[str, list[str]]:
    """The issue page's link groups: heading → linked keys."""
    out = {}
    for section in d.find_elements(By.CSS_SELECTOR, "#links section.link-group"):
        items = section.find_elements(By.CSS_SELECTOR, "li[data-key]")
        out[section.get_attribute("data-group")] = [li.get_attribute("data-key") for li in items]
    return out


def open_issue(d, server, key: str) -> None:
    d.get(f"{server.base_url}/{key}")
    assert d.find_element(By.ID, "key").text == key


def add_link(d, relationship: str, target: str) -> None:
    Select(d.find_element(By.ID, "link-relationship")).select_by_value(relationship)
    field = d.find_element(By.ID, "link-issue")
    field.clear()
    field.send_keys(target)
    submit(d, d.find_element(By.ID, "link-submit"))


def delete_link_to(d, key: str) -> None:
    submit(d, d.find_element(By.CSS_SELECTOR, f'#links li[data-key="{key}"] button[type=submit]'))


# -- tests -----------------------------------------------------------------------------------------


def test_log_in_create_link_see_both_sides_delete_and_refuse_a_self_link(server, queue_key, chrome, client):
    d = chrome
    log_in(d, server, server.token)
    assert queue_key in d.find_element(By.ID, "queues").text

    a = create_issue(d, server, queue_key, "Checkout page crashes", "Steps:\n1. open <cart>\n2. pay")
    b = create_issue(d, server, queue_key, "Payment API times out")
    assert d.find_element(By.ID, "no-links")

    open_issue(d, server, a)
    assert d.find_element(By.ID, "description").text == "Steps:\n1. open <cart>\n2. pay"
    add_link(d, "depends on", b)
    assert d.current_url.endswith("/" + a), "a linked issue's page comes back after the form"
    assert groups(d) == {"Blocks": [b]}
    open_issue(d, server, b)
    assert groups(d) == {"Depends on": [a]}
    # The API sees the same link.
    assert [link.object.key for link in client.issues[a].links] == [b]

    delete_link_to(d, a)  # from the other side
    assert groups(d) == {}
    open_issue(d, server, a)
    assert groups(d) == {}
    assert list(client.issues[a].links) == []

    add_link(d, "relates", a)
    error = d.find_element(By.ID, "link-error").text
    assert error == f"An issue cannot be linked to itself ({a})"
    assert d.find_element(By.ID, "link-issue").get_attribute("value") == a, "the form keeps what was typed"
    assert groups(d) == {}

    add_link(d, "relates", f"{queue_key}-999")
    assert d.find_element(By.ID, "link-error").text == f"Issue {queue_key}-999 does not exist"

    # Log out: the session is gone.
    submit(d, d.find_element(By.ID, "logout"))
    assert "/login" in d.current_url
    d.get(f"{server.base_url}/{a}")
    assert "/login" in d.current_url


@pytest.mark.parametrize("relationship", list(ROLE_GROUPS))
def test_each_relationship_shows_the_right_role_on_both_pages(server, queue_key, chrome, client, relationship):
    d = chrome
    ty_a, ty_b = {"has epic": ("task", "epic"), "is epic of": ("epic", "task")}.get(relationship, ("task", "task"))
    a = client.issues.create(queue=queue_key, summary="A", type=ty_a).key
    b = client.issues.create(queue=queue_key, summary="B", type=ty_b).key
    log_in(d, server, server.token)
    open_issue(d, server, a)
    add_link(d, relationship, b)
    on_a, on_b = ROLE_GROUPS[relationship]
    assert groups(d) == {on_a: [b]}, d.find_element(By.ID, "links").text
    open_issue(d, server, b)
    assert groups(d) == {on_b: [a]}
    delete_link_to(d, a)
    assert groups(d) == {}


def test_a_reader_sees_no_forms(server, queue_key, chrome, client):
    d = chrome
    a = client.issues.create(queue=queue_key, summary="Read only").key
    b = client.issues.create(queue=queue_key, summary="Other").key
    client.issues[a].links.create(issue=b, relationship="relates")
    reader = server.make_user("reader")
    log_in(d, server, reader.token)
    open_issue(d, server, a)
    assert groups(d) == {"relates": [b]}
    assert d.find_elements(By.ID, "link-form") == []
    assert d.find_elements(By.CSS_SELECTOR, "#links button") == []
    d.get(f"{server.base_url}/new")
    assert "member role" in d.find_element(By.ID, "error").text


def test_pages_fit_a_narrow_screen_and_carry_no_script(server, queue_key, chrome, client):
    d = chrome
    a = client.issues.create(queue=queue_key, summary="A rather long summary that has to wrap on a phone screen").key
    b = client.issues.create(queue=queue_key, summary="Blocker").key
    client.issues[a].links.create(issue=b, relationship="depends on")
    log_in(d, server, server.token)
    # A phone: 390 CSS px wide, honouring the viewport meta tag (a desktop window cannot be made that narrow).
    d.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
    )
    try:
        for path in ("/", f"/queues/{queue_key}", f"/{a}", f"/{a}/graph", "/new"):
            d.get(server.base_url + path)
            assert "<script" not in d.page_source
            width = d.execute_script("return window.innerWidth")
            assert width == 390, f"{path}: the viewport is {width}px wide (is the viewport meta tag there?)"
            # The graph may scroll inside its own box; the page itself must not.
            overflow = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} is {overflow}px wider than a 390px screen"
    finally:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


class _Icons(http.server.BaseHTTPRequestHandler):
    """Two small SVG icons for the applications of the screenshots (no network needed)."""

    ICONS = {
        "/sentry.svg": '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#362d59"/><path d="M3 12 L8 3 L13 12 Z" fill="none" stroke="#fff" stroke-width="1.6"/></svg>',
        "/git.svg": '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#e24329"/><circle cx="5" cy="5" r="2" fill="#fff"/><circle cx="11" cy="11" r="2" fill="#fff"/><path d="M5 5 L11 11" stroke="#fff" stroke-width="1.5"/></svg>',
    }

    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = self.ICONS.get(self.path)
        if body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "image/svg+xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _full_page(d, path: Path, width: int = 1100) -> None:
    """Resizes the window so the viewport holds the whole page, then saves it."""
    d.set_window_size(width, 800)
    chrome_height = 800 - d.execute_script("return window.innerHeight")
    height = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(width, min(max(height, 400), 4000) + chrome_height)
    assert d.save_screenshot(str(path)), f"could not save {path}"
    assert path.stat().st_size > 10_000, f"{path} is suspiciously small"


def test_screenshots(server, chrome, client, tmp_path):
    """An issue page with every kind of link and its dependency graph, as PNGs."""
    d = chrome
    out = Path(os.environ.get("TETHER_SCREENSHOTS_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    icons = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Icons)
    threading.Thread(target=icons.serve_forever, daemon=True).start()
    icon_base = f"http://127.0.0.1:{icons.server_address[1]}"
    try:
        q = "PAY"
        if not any(x.key == q for x in client.queues):
            client.queues.create(key=q, name="Payments", lead="admin")

        def issue(summary, ty="task"):
            return client.issues.create(queue=q, summary=summary, type=ty).key

        epic = issue("Checkout revamp", "epic")
        parent = issue("Q3 payments reliability")
        main = client.issues.create(
            queue=q,
            summary="Card form rejects valid Visa numbers",
            type="bug",
            assignee="admin",
            description="Cards starting with 4 and 19 digits long are refused at checkout.\n"
            "Seen by ~2% of Visa payments since 2.13.",
        ).key
        sub1 = issue("Add a Luhn check to the card field")
        sub2 = issue("Log the reason of every declined card")
        sdk = issue("Upgrade the payment SDK to v5")
        contract = issue("Sign the new acquirer contract")
        release = issue("Release 2.14")
        dup = issue("Card number marked invalid at checkout")
        rel = issue("Checkout conversion dashboard")

        links = client.issues[main].links
        links.create(issue=epic, relationship="has epic")
        links.create(issue=parent, relationship="is subtask for")
        links.create(issue=sub1, relationship="is parent task for")
        links.create(issue=sub2, relationship="is parent task for")
        links.create(issue=sdk, relationship="depends on")
        links.create(issue=release, relationship="is dependent by")
        links.create(issue=dup, relationship="is duplicated by")
        links.create(issue=rel, relationship="relates")
        client.issues[sdk].links.create(issue=contract, relationship="depends on")
        client.issues[sub1].links.create(issue=sdk, relationship="depends on")
        client.issues[sdk].transitions["start_progress"].execute()
        client.issues[sub2].transitions["close"].execute()

        for app in (
            {"id": "sentry", "name": "Sentry", "defaultIconUrl": f"{icon_base}/sentry.svg",
             "frontUrl": "https://sentry.example.com/organizations/acme/issues/{{remoteKey}}/",
             "canLinkFromFront": True},
            {"id": "ru.example.git", "name": "Git", "defaultIconUrl": f"{icon_base}/git.svg",
             "frontUrl": "https://git.example.com/shop/-/merge_requests/{{remoteKey}}", "canLinkFromFront": True},
        ):
            r = server.http("POST", "/v2/applications", json=app)
            assert r.status_code in (201, 409), r.text
        for origin, key in (("sentry", "4412345"), ("sentry", "4412399"), ("ru.example.git", "128")):
            r = server.http("POST", f"/v2/issues/{main}/remotelinks", json={"relationship": "relates", "key": key, "origin": origin})
            assert r.status_code == 201, r.text

        log_in(d, server, server.token)
        open_issue(d, server, main)
        assert groups(d) == {
            "Parent issue": [parent],
            "Sub-issues": [sub1, sub2],
            "Epic": [epic],
            "Depends on": [release],
            "Blocks": [sdk],
            "Duplicates": [dup],
            "relates": [rel],
        }
        sentry = d.find_element(By.CSS_SELECTOR, '#remote-links section[data-group="Sentry issues"]')
        hrefs = [a.get_attribute("href") for a in sentry.find_elements(By.TAG_NAME, "a")]
        assert hrefs == [
            "https://sentry.example.com/organizations/acme/issues/4412345/",
            "https://sentry.example.com/organizations/acme/issues/4412399/",
        ]
        loaded = d.execute_script(
            "return Array.from(document.querySelectorAll('#remote-links img')).every(i => i.complete && i.naturalWidth > 0)"
        )
        assert loaded, "the applications' icons did not load"
        _full_page(d, out / "issue.png")

        d.set_window_size(1100, 800)
        d.find_element(By.ID, "graph-link").click()
        WebDriverWait(d, WAIT).until(EC.presence_of_element_located((By.ID, "graph")))
        drawn = {n.get_attribute("data-key") for n in d.find_elements(By.CSS_SELECTOR, "#graph a.node")}
        assert {main, epic, parent, sub1, sub2, sdk, contract, release} <= drawn
        assert dup not in drawn and rel not in drawn, "the graph follows depends, subtask and epic only"
        _full_page(d, out / "graph.png")
    finally:
        icons.shutdown()
        d.set_window_size(1200, 1000)
