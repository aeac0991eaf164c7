"""Helpers for compat/test_reliability.py: `tether serve` processes on a database that outlives them (SIGKILL and
restart, two replicas on one database), the `tether` CLI, a local receiver standing in for an external application
or for Sentry, and process measurements (RSS, file descriptors).

Everything here talks to 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from conftest import PostgresDatabase, _unavailable

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 120.0
HTTP_TIMEOUT = 15.0
LISTENING_RE = re.compile(r"^tether: listening on (http://\S+?)/?$")


def dead_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (so outbound calls there fail fast)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -- databases ---------------------------------------------------------------------------------


class Database:
    """A SQLite file or a fresh PostgreSQL database that several server processes use in turn or at once."""

    def __init__(self, backend: str, workdir: Path):
        self.backend = backend
        self.workdir = workdir
        self.pg: PostgresDatabase | None = None
        self.path: Path | None = None
        if backend == "sqlite":
            self.path = workdir / "tether.db"
            self.url = f"sqlite://{self.path}"
        else:
            admin_url = os.environ.get("TETHER_TEST_DATABASE_URL", "")
            if not admin_url:
                _unavailable("postgres: TETHER_TEST_DATABASE_URL is not set")
            if shutil.which("psql") is None:
                _unavailable("postgres: psql is not installed, so no test database can be created")
            self.pg = PostgresDatabase(admin_url)
            self.pg.create()
            self.url = self.pg.url

    def drop(self) -> None:
        if self.pg is not None:
            self.pg.drop()


def sqlite_integrity(path: Path) -> str:
    """`PRAGMA integrity_check` on a SQLite file, opened read-only (the server must not be running)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "; ".join(str(r[0]) for r in rows)


def sqlite_query(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# -- server processes --------------------------------------------------------------------------


class Tether:
    """One `tether serve` process. Unlike conftest's server, it can be killed with SIGKILL and started again on the
    same database (with the same organization and admin token), run next to a replica, and run with extra flags
    and environment (RUST_LOG, Sentry settings)."""

    _serial = 0

    def __init__(
        self,
        exe: Path,
        database_url: str,
        workdir: Path,
        *,
        org: str | None = None,
        token: str | None = None,
        args: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        rust_log: str = "warn",
        bootstrap: bool = True,
        name: str = "tether",
    ):
        self.exe = exe
        self.database_url = database_url
        self.workdir = workdir
        self.org = org or "org-" + secrets.token_hex(4)
        self.token = token or secrets.token_urlsafe(24)
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.rust_log = rust_log
        self.bootstrap = bootstrap
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.base_url: str | None = None
        self.stdout_lines: list[str] = []
        self.logs: list[Path] = []  # every run's stderr, in order
        self._log = None
        self.session = requests.Session()

    def clone(self, **changes) -> "Tether":
        """Another process on the same database, organization and token (a restart, or a replica)."""
        kw = dict(
            org=self.org,
            token=self.token,
            args=self.args,
            env=self.extra_env,
            rust_log=self.rust_log,
            bootstrap=self.bootstrap,
            name=self.name,
        )
        kw.update(changes)
        return Tether(self.exe, self.database_url, self.workdir, **kw)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["RUST_LOG"] = self.rust_log
        for k in ("TETHER_BOOTSTRAP_ORG_ID", "TETHER_BOOTSTRAP_TOKEN"):
            env.pop(k, None)
        if self.bootstrap:
            env["TETHER_BOOTSTRAP_ORG_ID"] = self.org
            env["TETHER_BOOTSTRAP_TOKEN"] = self.token
        env.update(self.extra_env)
        return env

    @property
    def command(self) -> list[str]:
        return [str(self.exe), "serve", "--listen", "127.0.0.1:0", "--database-url", self.database_url, *self.args]

    def start(self) -> "Tether":
        Tether._serial += 1
        log_path = self.workdir / f"{self.name}-{Tether._serial}.stderr.log"
        self.logs.append(log_path)
        self._log = open(log_path, "wb")
        self.stdout_lines = []
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=self.env(),
            cwd=self.workdir,
        )
        lines: queue.Queue = queue.Queue()
        proc = self.proc

        def pump():
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.stdout_lines.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                pytest.fail(f"{shlex.join(self.command)} did not listen within {STARTUP_TIMEOUT:.0f} s\n"
                            f"{self.log_tail()}")
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                rc = proc.wait(timeout=5)
                pytest.fail(f"{shlex.join(self.command)} exited with {rc} before listening\n{self.log_tail()}")
            m = LISTENING_RE.match(line)
            if m:
                self.base_url = m.group(1)
                return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process stops wherever it is."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)
        self._close_log()

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after STOP_TIMEOUT)."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=STOP_TIMEOUT)
            rc = self.proc.returncode
        self._close_log()
        return rc

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        return "\n".join(p.read_text("utf-8", "replace") for p in self.logs if p.exists())

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_text().splitlines()
        return "\n".join(lines[-n:]) or "(empty stderr)"

    # -- measurements --

    def rss_kib(self) -> int:
        """Resident memory of the process (VmRSS), KiB."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc/PID/status")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    # -- HTTP --

    def request(self, method: str, path: str, *, token=..., org=..., session=None, **kw) -> requests.Response:
        headers = dict(kw.pop("headers", None) or {})
        tok = self.token if token is ... else token
        o = self.org if org is ... else org
        if tok is not None:
            headers.setdefault("Authorization", f"OAuth {tok}")
        if o is not None:
            headers.setdefault("X-Org-ID", o)
        kw.setdefault("timeout", HTTP_TIMEOUT)
        return (session or self.session).request(method, self.base_url + path, headers=headers, **kw)

    def ok(self, method: str, path: str, status: int | tuple[int, ...] = (200, 201), **kw):
        """A request that must succeed; returns the JSON body (None when empty)."""
        r = self.request(method, path, **kw)
        wanted = (status,) if isinstance(status, int) else status
        assert r.status_code in wanted, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r.json() if r.content else None

    def healthy(self) -> bool:
        try:
            return requests.get(self.base_url + "/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    # -- CLI --

    def cli(self, *args: str, check: bool = True, rust_log: str | None = None) -> subprocess.CompletedProcess:
        return run_cli(self.exe, self.database_url, *args, check=check, rust_log=rust_log or self.rust_log)

    def make_user(self, role: str, login: str, org: str | None = None) -> str:
        """A user with a role in the organization; returns a token for it."""
        self.cli("user", "create", "--login", login, "--display", login.title())
        self.cli("member", "add", "--org", org or self.org, "--user", login, "--role", role)
        return self.cli("token", "create", "--user", login).stdout.strip()


def run_cli(exe: Path, database_url: str, *args: str, check: bool = True, rust_log: str = "warn",
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    """`tether <args> --database-url <db>`; fails the test on a non-zero exit when `check`."""
    cmd = [str(exe), *args]
    if "--database-url" not in args:
        cmd += ["--database-url", database_url]
    env = dict(os.environ)
    env["RUST_LOG"] = rust_log
    env.pop("TETHER_BOOTSTRAP_ORG_ID", None)
    env.pop("TETHER_BOOTSTRAP_TOKEN", None)
    try:
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{shlex.join(cmd)}` did not finish within {timeout:.0f} s", pytrace=False)
    if check and res.returncode != 0:
        pytest.fail(f"`{shlex.join(cmd)}` exited with {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}",
                    pytrace=False)
    return res


# -- a local HTTP receiver ---------------------------------------------------------------------


class Receiver:
    """A tiny HTTP server on 127.0.0.1 playing an external application (or Sentry): records every request (header
    names in lower case), counts POSTs per Idempotency-Key, and answers with
    `respond(method, path, body) -> (status, json)`."""

    def __init__(self, respond=None):
        self.requests: list[dict] = []
        self.posts_per_key: Counter = Counter()
        self.lock = threading.Lock()
        self.respond = respond or (lambda method, path, body: (201, {}))
        recv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with recv.lock:
                    recv.requests.append(
                        {"method": self.command, "path": self.path, "body": body,
                         "headers": {k.lower(): v for k, v in self.headers.items()}}
                    )
                    if self.command == "POST" and self.headers.get("Idempotency-Key"):
                        recv.posts_per_key[self.headers["Idempotency-Key"]] += 1
                status, out = recv.respond(self.command, self.path, body)
                payload = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sentry_signature(secret: str, body: bytes) -> str:
    """What Sentry sends in Sentry-Hook-Signature / Sentry-App-Signature."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def wait_until(what: str, cond, timeout: float, interval: float = 0.1):
    """Polls `cond()` until it returns something truthy (returned), failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting until {what}", pytrace=False)
        time.sleep(interval)


def tracker_date(ts: float | None = None) -> str:
    """A Tracker date (`YYYY-MM-DDThh:mm:ss.sss+0000`) for a Unix time (default: now)."""
    ts = time.time() if ts is None else ts
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}+0000"
