"""Shared fixtures: writing spec files next to real asset files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "specs" / "conformance" / "assets"
# the head of a spec on the tiny model at the smallest size: renders in a fraction of a second
TINY_HEAD = """\
version: 1
defaults:
  model: ltx-2-tiny:random
  width: 64
  height: 64
  fps: 24
  steps: 2
"""


@pytest.fixture
def film_dir(tmp_path: Path) -> Path:
    """A folder with the corpus assets under assets/, for specs written by a test."""
    shutil.copytree(ASSETS, tmp_path / "assets")
    return tmp_path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path
