"""Fixtures for the compatibility suite.

The suite drives the real, unmodified ``yandex-tracker-client`` against a real ``tether serve``
process, once on SQLite and once on PostgreSQL.

Environment:
- ``TETHER_BIN``: the server binary (default ``target/debug/tether`` under the repository root).
- ``TETHER_TEST_DATABASE_URL``: a PostgreSQL URL whose role may ``CREATE DATABASE``; each server
  gets a fresh database ``tether_compat_<random>`` next to it. Unset: the postgres runs are skipped,
  unless ``TETHER_COMPAT_REQUIRE_POSTGRES=1`` (set by scripts/test.sh), which makes them fail.
"""

from __future__ import annotations

import atexit
import os
import queue
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from yandex_tracker_client import TrackerClient

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0
LISTENING_RE = re.compile(r"^tether: listening on (http://\S+?)/?$")

_DEFAULT = object()
_running: list["TetherServer"] = []


def _tail(path: Path, max_lines: int = 60) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        return f"(cannot read {path}: {e})"
    if not lines:
        return "(empty)"
    return "\n".join(lines[-max_lines:])


def _require_postgres() -> bool:
    return os.environ.get("TETHER_COMPAT_REQUIRE_POSTGRES", "") not in ("", "0")


def _unavailable(reason: str):
    """Skip a postgres run locally; fail it where postgres is required (scripts/test.sh)."""
    if _require_postgres():
        pytest.fail(f"{reason} (TETHER_COMPAT_REQUIRE_POSTGRES is set)", pytrace=False)
    pytest.skip(reason)


def _psql(url: str, sql: str) -> subprocess.CompletedProcess:
    psql = shutil.which("psql")
    assert psql is not None
    return subprocess.run(
        [psql, "-w", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


class PostgresDatabase:
    """A fresh database on the server named by TETHER_TEST_DATABASE_URL."""

    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self.name = f"tether_compat_{secrets.token_hex(6)}"
        parts = urlsplit(admin_url)
        self.url = parts._replace(path="/" + self.name).geturl()

    def create(self) -> None:
        res = _psql(self.admin_url, f'CREATE DATABASE "{self.name}"')
        if res.returncode != 0:
            pytest.fail(
                f"cannot create database {self.name} through TETHER_TEST_DATABASE_URL "
                f"(the role needs CREATEDB):\n{res.stderr.strip()}",
                pytrace=False,
            )

    def drop(self) -> None:
        res = _psql(self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        if res.returncode != 0:
            res = _psql(self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}"')
        if res.returncode != 0:
            print(f"warning: could not drop database {self.name}: {res.stderr.strip()}")


def tether_bin_path() -> Path:
    raw = os.environ.get("TETHER_BIN") or str(REPO_ROOT / "target" / "debug" / "tether")
    p = Path(raw)
    return p if p.is_absolute() else REPO_ROOT / p


class TetherServer:
    """One `tether serve` process with its own database, organization and admin token."""

    def __init__(self, exe: Path, backend: str, database_url: str, workdir: Path):
        self.exe = exe
        self.backend = backend
        self.database_url = database_url
        self.workdir = workdir
        self.org = "org-" + secrets.token_hex(4)
        self.token = secrets.token_urlsafe(24)  # 32 chars of [A-Za-z0-9_-]
        self.base_url: str | None = None
        self.log_path = workdir / "server.stderr.log"
        self.stdout_lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._queue_counter = 0
        self._user_counter = 0

    # -- process ---------------------------------------------------------------------------

    def _env(self, bootstrap: bool) -> dict:
        env = dict(os.environ)
        env["RUST_LOG"] = "warn"
        for k in ("TETHER_BOOTSTRAP_ORG_ID", "TETHER_BOOTSTRAP_TOKEN"):
            env.pop(k, None)
        if bootstrap:
            env["TETHER_BOOTSTRAP_ORG_ID"] = self.org
            env["TETHER_BOOTSTRAP_TOKEN"] = self.token
        return env

    def start(self) -> None:
        cmd = [
            str(self.exe), "serve",
            "--listen", "127.0.0.1:0",
            "--database-url", self.database_url,
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,  # straight to a file: the pipe can never fill up
            env=self._env(bootstrap=True),
            cwd=self.workdir,
        )
        _running.append(self)
        lines: queue.Queue = queue.Queue()

        def pump(stream):
            # Keeps draining stdout for the server's whole life.
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.stdout_lines.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True).start()

        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                self._fail_start(f"did not print 'tether: listening on http://…' within {STARTUP_TIMEOUT:.0f} s")
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                try:
                    rc = self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    rc = "unknown (still running, stdout closed)"
                self.stop()
                self._fail_start(f"closed its stdout before listening; exit status {rc}")
            m = LISTENING_RE.match(line)
            if m:
                self.base_url = m.group(1)
                return

    def _fail_start(self, what: str):
        pytest.fail(
            f"tether serve ({self.backend}, {self.database_url}) {what}\n"
            f"command: {shlex.join([str(self.exe), 'serve', '--listen', '127.0.0.1:0', '--database-url', self.database_url])}\n"
            f"stdout: {self.stdout_lines!r}\n"
            f"stderr ({self.log_path}):\n{_tail(self.log_path)}",
            pytrace=False,
        )

    def stop(self) -> int | None:
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    print(f"warning: tether ({self.backend}) ignored SIGTERM for {STOP_TIMEOUT:.0f} s; killing it")
                    self.proc.kill()
                    self.proc.wait(timeout=STOP_TIMEOUT)
            rc = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        if self in _running:
            _running.remove(self)
        return rc

    def log_tail(self, max_lines: int = 60) -> str:
        return _tail(self.log_path, max_lines)

    # -- CLI -------------------------------------------------------------------------------

    def cli(self, *args: str) -> str:
        """Run `tether <args> --database-url <db>` against this server's database; return stdout."""
        cmd = [str(self.exe), *args, "--database-url", self.database_url]
        try:
            res = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT,
                env=self._env(bootstrap=False),
                cwd=self.workdir,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"`{shlex.join(cmd)}` did not finish within {CLI_TIMEOUT:.0f} s", pytrace=False)
        if res.returncode != 0:
            pytest.fail(
                f"`{shlex.join(cmd)}` exited with {res.returncode}\n"
                f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}",
                pytrace=False,
            )
        return res.stdout.strip()

    def make_user(self, role: str, login: str | None = None) -> "UserInfo":
        """Create a user with a role in this server's organization and a token for it."""
        if login is None:
            self._user_counter += 1
            login = f"{role}{self._user_counter}"
        uid = self.cli("user", "create", "--login", login, "--display", login.title())
        assert re.fullmatch(r"\d+", uid), f"`tether user create` should print only the uid, got {uid!r}"
        self.cli("member", "add", "--org", self.org, "--user", login, "--role", role)
        token = self.cli("token", "create", "--user", login)
        assert re.fullmatch(r"\S+", token), f"`tether token create` should print only the token, got {token!r}"
        return UserInfo(login=login, uid=uid, token=token)

    # -- clients ---------------------------------------------------------------------------

    def client(self, token=_DEFAULT, org_id=_DEFAULT, **kwargs) -> TrackerClient:
        if "iam_token" not in kwargs:
            kwargs["token"] = self.token if token is _DEFAULT else token
        if "cloud_org_id" not in kwargs:
            kwargs["org_id"] = self.org if org_id is _DEFAULT else org_id
        return TrackerClient(base_url=self.base_url, retries=0, **kwargs)

    def http(self, method: str, path: str, token=_DEFAULT, org_id=_DEFAULT, **kwargs) -> requests.Response:
        """A raw HTTP request, for what the client hides (headers, status codes)."""
        headers = dict(kwargs.pop("headers", {}) or {})
        tok = self.token if token is _DEFAULT else token
        org = self.org if org_id is _DEFAULT else org_id
        if tok is not None:
            headers.setdefault("Authorization", f"OAuth {tok}")
        if org is not None:
            headers.setdefault("X-Org-ID", org)
        return requests.request(method, self.base_url + path, headers=headers, timeout=10, **kwargs)

    def new_queue_key(self) -> str:
        """A fresh queue key: 'Q' + base-26 letters (QA, QB, …, QZ, QBA, …)."""
        n = self._queue_counter
        self._queue_counter += 1
        letters = ""
        while True:
            n, r = divmod(n, 26)
            letters = chr(ord("A") + r) + letters
            if n == 0:
                break
        return "Q" + letters


class UserInfo:
    def __init__(self, login: str, uid: str, token: str):
        self.login = login
        self.uid = uid
        self.token = token

    def __repr__(self) -> str:
        return f"UserInfo(login={self.login!r}, uid={self.uid!r})"


@atexit.register
def _stop_leftovers() -> None:
    for srv in list(_running):
        try:
            srv.stop()
        except Exception:
            pass


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tether_exe() -> Path:
    p = tether_bin_path()
    if not p.is_file() or not os.access(p, os.X_OK):
        pytest.fail(
            f"tether binary not found at {p}: build it with `cargo build --bin tether` "
            f"or point TETHER_BIN at it",
            pytrace=False,
        )
    return p


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request, tether_exe, tmp_path_factory):
    """A running tether (one per test module and backend) with a bootstrapped org and admin."""
    backend = request.param
    workdir = tmp_path_factory.mktemp(f"tether-{backend}")
    pg = None
    if backend == "sqlite":
        database_url = f"sqlite://{workdir}/t.db"
    else:
        admin_url = os.environ.get("TETHER_TEST_DATABASE_URL", "")
        if not admin_url:
            _unavailable("postgres: TETHER_TEST_DATABASE_URL is not set")
        if shutil.which("psql") is None:
            _unavailable("postgres: psql is not installed, so no test database can be created")
        pg = PostgresDatabase(admin_url)
        pg.create()
        database_url = pg.url
    srv = TetherServer(tether_exe, backend, database_url, workdir)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        if pg is not None:
            pg.drop()


@pytest.fixture(scope="module")
def client(server) -> TrackerClient:
    """The bootstrap admin's client."""
    return server.client()


@pytest.fixture
def queue_key(server, client) -> str:
    """A fresh, empty queue for one test (lead: admin)."""
    key = server.new_queue_key()
    q = client.queues.create(key=key, name=f"Queue {key}", lead="admin")
    assert q.key == key
    return key


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        srv = getattr(item, "funcargs", {}).get("server")
        if isinstance(srv, TetherServer):
            report.sections.append(
                (f"tether server stderr, last lines ({srv.backend}, {srv.log_path})", srv.log_tail())
            )
