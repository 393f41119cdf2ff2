"""Shared fixtures: writing spec files next to real asset files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "specs" / "conformance" / "assets"


@pytest.fixture
def film_dir(tmp_path: Path) -> Path:
    """A folder with the corpus assets under assets/, for specs written by a test."""
    shutil.copytree(ASSETS, tmp_path / "assets")
    return tmp_path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path
