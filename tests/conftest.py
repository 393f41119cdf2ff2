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


TINY = "ltx-2-tiny:random"


def tiny_clip(**fields):
    """A ClipRequest on the tiny model: 17 frames at 64x64, 24 fps, 2 steps; `fields` override."""
    from moldbatch.runtime import ClipRequest

    base = dict(
        model=TINY,
        prompt="a red kite over dunes",
        width=64,
        height=64,
        frames=17,
        fps=24.0,
        seed=1,
        steps=2,
        guidance=1.0,
    )
    return ClipRequest(**{**base, **fields})


def render_spec(spec: Path, runtimes: dict):
    """Plan and render `spec` (it must be valid and render): (plan, its artifact store)."""
    from moldbatch.execute.executor import render_plan
    from moldbatch.execute.store import ArtifactStore
    from moldbatch.plan.planner import plan_file

    plan = plan_file(spec)
    assert plan.valid, [str(d) for d in plan.diagnostics]
    summary = render_plan(plan, progress=False, runtimes=runtimes)
    assert summary.ok, summary
    return plan, ArtifactStore(spec.parent / ".moldbatch")
