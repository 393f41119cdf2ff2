"""Headless Chromium for the page tests: Debian's `chromium`, run as a subprocess (no CDP).

Pages write what they drew or loaded into `#measured`; `measured()` dumps the DOM after a
virtual-time budget and reads it back. Screenshots go to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    def __init__(self, binary: str, profile: Path):
        self.binary, self.profile = binary, profile

    def _run(self, *args: str, timeout: float = 60) -> str:
        res = subprocess.run(
            [self.binary, *FLAGS, f"--user-data-dir={self.profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout

    def dump_dom(self, url: str, budget_ms: int = 3000, size=(1400, 900)) -> str:
        return self._run(
            f"--window-size={size[0]},{size[1]}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        )

    def measured(self, url: str, **kw) -> tuple[dict, str]:
        """The page's own report of what it drew or loaded, and the whole DOM."""
        dom = self.dump_dom(url, **kw)
        m = re.search(r'<pre id="measured"[^>]*>(.*?)</pre>', dom, re.S)
        assert m and m.group(1).strip(), "the page wrote no measurements"
        return json.loads(html.unescape(m.group(1))), dom

    def screenshot(self, url: str, name: str, size=(1400, 900), budget_ms: int = 3000) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        out = ARTIFACTS / name
        out.unlink(missing_ok=True)
        self._run(
            f"--window-size={size[0]},{size[1]}",
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={out}",
            url,
        )
        assert out.is_file() and out.stat().st_size > 1000
        return out


def start_chromium(tmp_path_factory) -> Chromium:
    """Chromium, or a skip when it is absent outside CI (in CI, env CI=true, a failure)."""
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return Chromium(binary, tmp_path_factory.mktemp("chromium-profile"))
