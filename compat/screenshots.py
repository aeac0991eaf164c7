"""Regenerates docs/screenshots/issue.png and docs/screenshots/graph.png.

Runs `test_screenshots` of compat/test_web.py (a live `tether serve` on SQLite, headless Chromium) with
TETHER_SCREENSHOTS_DIR pointing at docs/screenshots:

    cargo build --bin tether && .venv/bin/python compat/screenshots.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    out = ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TETHER_SCREENSHOTS_DIR=str(out))
    cmd = [sys.executable, "-m", "pytest", "-q", str(ROOT / "compat" / "test_web.py"), "-k", "test_screenshots and sqlite"]
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    if rc == 0:
        for name in ("issue.png", "graph.png"):
            print(f"wrote {out / name}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
